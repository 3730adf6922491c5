//! PostgreSQL access of a load run: raw SQL through diesel-async (the worker owns the
//! schema and its migrations; the simulator only plays the business system and the auditor).

use diesel::sql_types::{Array, BigInt, Double, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use wxpay_shared::state::{NotificationOutcome, OrderState};

use super::plan::PlannedOrder;
use super::report::LagSample;
use super::verify::Observed;

/// Orders per INSERT statement.
const INSERT_BATCH: usize = 5_000;

/// A database failure, without the URL (it may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(String),
    #[error("{what}: {reason}")]
    Query { what: &'static str, reason: String },
}

fn query_error<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> DbError {
    move |e| DbError::Query {
        what,
        reason: e.to_string(),
    }
}

pub async fn connect(url: &str) -> Result<AsyncPgConnection, DbError> {
    AsyncPgConnection::establish(url)
        .await
        .map_err(|e| DbError::Connect(e.to_string()))
}

/// `LIKE` pattern of every out_trade_no of the run (the prefix holds no `%`, `_` or `\`).
pub fn like(prefix: &str) -> String {
    format!("{prefix}%")
}

/// Inserts the orders as the business system does before the user pays: state NOTPAY.
pub async fn insert_orders(
    conn: &mut AsyncPgConnection,
    (mch_id, sub_mch_id): (&str, &str),
    appid: &str,
    orders: &[PlannedOrder],
) -> Result<(), DbError> {
    for chunk in orders.chunks(INSERT_BATCH) {
        let nos: Vec<String> = chunk.iter().map(|o| o.out_trade_no.clone()).collect();
        let amounts: Vec<i64> = chunk.iter().map(|o| o.amount).collect();
        diesel::sql_query(
            "INSERT INTO orders (mch_id, sub_mch_id, out_trade_no, appid, amount_total, state) \
             SELECT $1, $6, t.no, $2, t.amount, $5 FROM unnest($3::text[], $4::bigint[]) AS t(no, amount)",
        )
        .bind::<Text, _>(mch_id)
        .bind::<Text, _>(appid)
        .bind::<Array<Text>, _>(nos)
        .bind::<Array<BigInt>, _>(amounts)
        .bind::<Text, _>(OrderState::NotPay.as_str())
        .bind::<Text, _>(sub_mch_id)
        .execute(conn)
        .await
        .map_err(query_error("inserting NOTPAY orders (did `wxpay-worker migrate` run?)"))?;
    }
    Ok(())
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Orders of the run in state PAID, and notification rows of the run.
pub async fn progress(
    conn: &mut AsyncPgConnection,
    mch_id: &str,
    prefix: &str,
) -> Result<(i64, i64), DbError> {
    let paid: Count = diesel::sql_query(
        "SELECT COUNT(*)::bigint AS n FROM orders WHERE mch_id = $1 AND out_trade_no LIKE $2 AND state = $3",
    )
    .bind::<Text, _>(mch_id)
    .bind::<Text, _>(like(prefix))
    .bind::<Text, _>(OrderState::Paid.as_str())
    .get_result(conn)
    .await
    .map_err(query_error("counting PAID orders"))?;
    let rows: Count = diesel::sql_query(
        "SELECT COUNT(*)::bigint AS n FROM notifications WHERE mch_id = $1 AND out_trade_no LIKE $2",
    )
    .bind::<Text, _>(mch_id)
    .bind::<Text, _>(like(prefix))
    .get_result(conn)
    .await
    .map_err(query_error("counting notifications"))?;
    Ok((paid.n, rows.n))
}

#[derive(QueryableByName)]
struct OrderRow {
    #[diesel(sql_type = Text)]
    out_trade_no: String,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Nullable<Text>)]
    transaction_id: Option<String>,
}

#[derive(QueryableByName)]
struct OutcomeRow {
    #[diesel(sql_type = Nullable<Text>)]
    out_trade_no: Option<String>,
    #[diesel(sql_type = Text)]
    outcome: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct EventRow {
    #[diesel(sql_type = Nullable<Text>)]
    key: Option<String>,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct LagRow {
    #[diesel(sql_type = Double)]
    lag_ms: f64,
    #[diesel(sql_type = Double)]
    received_s: f64,
}

/// The out_trade_no inside an outbox key (`aggregate_key` may be `mch_id:out_trade_no` or
/// similar): the run prefix and the digits after it.
pub fn out_trade_no_in(key: &str, prefix: &str) -> Option<String> {
    let start = key.find(prefix)?;
    let rest = &key[start + prefix.len()..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    (digits > 0).then(|| format!("{prefix}{}", &rest[..digits]))
}

/// The rows `sql` selects for the run: `$1` is the merchant, `$2` the run's `LIKE` pattern.
async fn load_run<T>(
    conn: &mut AsyncPgConnection,
    sql: &str,
    mch_id: &str,
    pattern: &str,
    what: &'static str,
) -> Result<Vec<T>, DbError>
where
    T: QueryableByName<diesel::pg::Pg> + Send + 'static,
{
    diesel::sql_query(sql)
        .bind::<Text, _>(mch_id)
        .bind::<Text, _>(pattern)
        .load(conn)
        .await
        .map_err(query_error(what))
}

/// Everything the verifier needs about the run.
pub async fn observe(
    conn: &mut AsyncPgConnection,
    mch_id: &str,
    prefix: &str,
) -> Result<Observed, DbError> {
    let pattern = like(prefix);
    let orders: Vec<OrderRow> = load_run(
        conn,
        "SELECT out_trade_no, state, transaction_id FROM orders WHERE mch_id = $1 AND out_trade_no LIKE $2",
        mch_id,
        &pattern,
        "reading orders",
    )
    .await?;
    let outcomes: Vec<OutcomeRow> = load_run(
        conn,
        "SELECT out_trade_no, outcome, COUNT(*)::bigint AS n FROM notifications \
         WHERE mch_id = $1 AND out_trade_no LIKE $2 GROUP BY out_trade_no, outcome",
        mch_id,
        &pattern,
        "reading notifications",
    )
    .await?;
    let events: Vec<EventRow> = diesel::sql_query(
        "SELECT COALESCE(payload->>'out_trade_no', aggregate_key) AS key, COUNT(*)::bigint AS n FROM outbox \
         WHERE event_type = 'order.paid' AND mch_id = $1 \
           AND (payload->>'out_trade_no' LIKE $2 OR aggregate_key LIKE $3) GROUP BY 1",
    )
    .bind::<Text, _>(mch_id)
    .bind::<Text, _>(&pattern)
    .bind::<Text, _>(format!("%{pattern}"))
    .load(conn)
    .await
    .map_err(query_error("reading the outbox"))?;

    let mut observed = Observed::default();
    for o in orders {
        let state = o.state.parse().map_err(query_error("reading orders"))?;
        observed
            .orders
            .insert(o.out_trade_no, (state, o.transaction_id));
    }
    for r in outcomes {
        if let Some(no) = r.out_trade_no {
            let outcome: NotificationOutcome = r
                .outcome
                .parse()
                .map_err(query_error("reading notifications"))?;
            *observed
                .notifications
                .entry(no)
                .or_default()
                .entry(outcome)
                .or_default() += r.n;
        }
    }
    for e in events {
        if let Some(no) = e.key.as_deref().and_then(|k| out_trade_no_in(k, prefix)) {
            *observed.paid_events.entry(no).or_default() += e.n;
        }
    }
    Ok(observed)
}

/// End-to-end lag of every processed notification of the run (processed_at − received_at),
/// with when it was received, in seconds after `clock_start`.
pub async fn lags(
    conn: &mut AsyncPgConnection,
    mch_id: &str,
    prefix: &str,
    clock_start: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<LagSample>, DbError> {
    let rows: Vec<LagRow> = diesel::sql_query(
        "SELECT (EXTRACT(EPOCH FROM (processed_at - received_at)) * 1000)::float8 AS lag_ms, \
                EXTRACT(EPOCH FROM (received_at - $3))::float8 AS received_s \
         FROM notifications \
         WHERE mch_id = $1 AND out_trade_no LIKE $2 AND processed_at IS NOT NULL AND received_at IS NOT NULL",
    )
    .bind::<Text, _>(mch_id)
    .bind::<Text, _>(like(prefix))
    .bind::<Timestamptz, _>(clock_start)
    .load(conn)
    .await
    .map_err(query_error("reading notification lags"))?;
    Ok(rows
        .into_iter()
        .map(|r| LagSample {
            received_s: r.received_s,
            lag_ms: r.lag_ms,
        })
        .collect())
}

/// Count per key, for callers that need a summary of the observation.
pub fn applied_total(observed: &Observed) -> i64 {
    observed
        .notifications
        .values()
        .filter_map(|m| m.get(&NotificationOutcome::Applied))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_trade_no_is_found_in_keys() {
        let p = "LOADab12cd34-";
        assert_eq!(
            out_trade_no_in("LOADab12cd34-17", p).as_deref(),
            Some("LOADab12cd34-17")
        );
        assert_eq!(
            out_trade_no_in("1900000109:LOADab12cd34-170", p).as_deref(),
            Some("LOADab12cd34-170")
        );
        assert_eq!(out_trade_no_in("1900000109:LOADab12cd34-", p), None);
        assert_eq!(out_trade_no_in("other", p), None);
    }
}
