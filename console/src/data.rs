//! What the pages read: PostgreSQL through the worker's schema, models and pool (plus the
//! console's own audit table), and queue depths from RabbitMQ. Never a notification's raw
//! body.

use chrono::{DateTime, Duration, Utc};
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Double, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use wxpay_runtime::config::Settings;
use wxpay_shared::state::{NotificationOutcome, OrderState};
use wxpay_worker::broker::{self, BrokerError};
use wxpay_worker::db::models::{DbOrderState, DbOutcome, DbUuid, Order, Refund};
use wxpay_worker::db::schema::{anomaly_resolutions, notifications, orders, outbox, refunds};
use wxpay_worker::db::{pool_error_text, DbConn, DbPool};

diesel::table! {
    /// worker/migrations/2026-11-30-200000_console_audit.
    console_audit (id) {
        id -> Int8,
        at -> Timestamptz,
        actor -> Text,
        action -> Text,
        target -> Text,
        note -> Nullable<Text>,
        result -> Text,
    }
}

/// Why a page's data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{0}")]
    Pool(String),
    #[error("database: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
}

async fn conn(pool: &DbPool) -> Result<DbConn, DataError> {
    pool.get()
        .await
        .map_err(|error| DataError::Pool(pool_error_text(&error)))
}

/// One notification as the story shows it: metadata, never the body.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = notifications, check_for_backend(diesel::pg::Pg))]
pub struct NotificationRow {
    pub id: i64,
    pub kind: String,
    pub mch_id: String,
    pub out_trade_no: Option<String>,
    pub out_refund_no: Option<String>,
    pub transaction_id: Option<String>,
    #[diesel(deserialize_as = DbOutcome)]
    pub outcome: NotificationOutcome,
    pub anomaly_reason: Option<String>,
    pub anomaly_detail: Option<String>,
    pub received_at: DateTime<Utc>,
    pub processed_at: DateTime<Utc>,
}

/// One published (or pending) domain event, without its payload.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = outbox, check_for_backend(diesel::pg::Pg))]
pub struct EventRow {
    pub id: DbUuid,
    pub event_type: String,
    pub created_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
}

/// Which order: the key of `orders` (a service provider's sub-merchant in `sub_mch_id`,
/// empty for a direct merchant; several merchants may use the same `out_trade_no`).
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct OrderKey {
    pub mch_id: String,
    pub sub_mch_id: String,
    pub out_trade_no: String,
}

/// An order and everything that happened to it.
#[derive(Debug, Clone)]
pub struct Story {
    pub key: OrderKey,
    /// `None` when only a refund or a notification names an order the table does not have.
    pub order: Option<Order>,
    pub notifications: Vec<NotificationRow>,
    pub refunds: Vec<Refund>,
    pub events: Vec<EventRow>,
}

/// Longest search term looked up: every id searched is at most 64 characters.
pub const MAX_QUERY_LEN: usize = 64;

/// The stories of the orders `q` names as `out_trade_no`, `transaction_id`, `out_refund_no`
/// or `refund_id` (several merchants, and a service provider's sub-merchants, may use the
/// same number).
pub async fn search(pool: &DbPool, q: &str) -> Result<Vec<Story>, DataError> {
    let mut conn = conn(pool).await?;
    let mut keys: Vec<OrderKey> = orders::table
        .filter(orders::out_trade_no.eq(q).or(orders::transaction_id.eq(q)))
        .select((orders::mch_id, orders::sub_mch_id, orders::out_trade_no))
        .limit(20)
        .load(&mut conn)
        .await?;
    let by_refund: Vec<OrderKey> = refunds::table
        .filter(refunds::out_refund_no.eq(q).or(refunds::refund_id.eq(q)))
        .select((refunds::mch_id, refunds::sub_mch_id, refunds::out_trade_no))
        .limit(20)
        .load(&mut conn)
        .await?;
    for key in by_refund {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let mut stories = Vec::with_capacity(keys.len());
    for key in keys {
        let OrderKey {
            mch_id,
            sub_mch_id,
            out_trade_no,
        } = &key;
        let order = orders::table
            .find((mch_id, sub_mch_id, out_trade_no))
            .select(Order::as_select())
            .first(&mut conn)
            .await
            .optional()?;
        let notifications = notifications::table
            .filter(notifications::mch_id.eq(mch_id))
            .filter(notifications::out_trade_no.eq(out_trade_no))
            // Not in the diesel schema (worker/src/db/schema.rs says why).
            .filter(sql::<Bool>("sub_mch_id = ").bind::<Text, _>(sub_mch_id))
            .order_by((notifications::received_at.asc(), notifications::id.asc()))
            .select(NotificationRow::as_select())
            .load(&mut conn)
            .await?;
        let refunds = refunds::table
            .filter(refunds::mch_id.eq(mch_id))
            .filter(refunds::sub_mch_id.eq(sub_mch_id))
            .filter(refunds::out_trade_no.eq(out_trade_no))
            .order_by(refunds::created_at.asc())
            .select(Refund::as_select())
            .load(&mut conn)
            .await?;
        // Every event payload names its order (order.*, refund.updated, anomaly.detected).
        let events = outbox::table
            .filter(outbox::mch_id.eq(mch_id))
            .filter(
                outbox::payload
                    .retrieve_as_text("out_trade_no")
                    .eq(out_trade_no),
            )
            // Events before service providers name no sub-merchant: a direct merchant's.
            .filter(
                sql::<Bool>("coalesce(payload->>'sub_mch_id', '') = ").bind::<Text, _>(sub_mch_id),
            )
            .order_by(outbox::created_at.asc())
            .select(EventRow::as_select())
            .load(&mut conn)
            .await?;
        stories.push(Story {
            key,
            order,
            notifications,
            refunds,
            events,
        });
    }
    Ok(stories)
}

/// Processing delay (processed_at − received_at) over the window, seconds.
#[derive(Debug, Clone, Default, QueryableByName)]
pub struct Lag {
    #[diesel(sql_type = BigInt)]
    pub processed: i64,
    #[diesel(sql_type = Double)]
    pub avg_s: f64,
    #[diesel(sql_type = Double)]
    pub p95_s: f64,
    #[diesel(sql_type = Double)]
    pub max_s: f64,
}

/// The oldest `NOTPAY` order the reconciler is still asking WeChat Pay about.
#[derive(Debug, Clone)]
pub struct Unpaid {
    pub mch_id: String,
    pub out_trade_no: String,
    pub created_at: DateTime<Utc>,
}

/// The overview's database part.
#[derive(Debug, Clone, Default)]
pub struct Overview {
    /// (outcome, anomaly reason, count) over the last hour.
    pub outcomes: Vec<(NotificationOutcome, Option<String>, i64)>,
    pub lag: Lag,
    pub oldest_unpaid: Option<Unpaid>,
}

pub async fn overview(pool: &DbPool, settings: &Settings) -> Result<Overview, DataError> {
    let mut conn = conn(pool).await?;
    let since = Utc::now() - Duration::hours(1);
    let outcomes: Vec<(DbOutcome, Option<String>, i64)> = notifications::table
        .filter(notifications::processed_at.gt(since))
        .group_by((notifications::outcome, notifications::anomaly_reason))
        .select((
            notifications::outcome,
            notifications::anomaly_reason,
            diesel::dsl::count_star(),
        ))
        .order_by(notifications::outcome.asc())
        .load(&mut conn)
        .await?;
    let lag: Lag = diesel::sql_query(
        "SELECT count(*) AS processed, \
         COALESCE(EXTRACT(EPOCH FROM avg(processed_at - received_at)), 0)::float8 AS avg_s, \
         COALESCE(percentile_cont(0.95) WITHIN GROUP \
           (ORDER BY EXTRACT(EPOCH FROM processed_at - received_at)), 0)::float8 AS p95_s, \
         COALESCE(EXTRACT(EPOCH FROM max(processed_at - received_at)), 0)::float8 AS max_s \
         FROM notifications WHERE processed_at > $1",
    )
    .bind::<Timestamptz, _>(since)
    .get_result(&mut conn)
    .await?;
    let reconciler = &settings.reconciler;
    let now = Utc::now();
    let window_start = now - seconds(reconciler.horizon_secs);
    let window_end = now - seconds(reconciler.min_age_secs);
    let oldest_unpaid = orders::table
        .filter(orders::state.eq(DbOrderState(OrderState::NotPay)))
        .filter(orders::created_at.gt(window_start))
        .filter(orders::created_at.lt(window_end))
        .order_by(orders::created_at.asc())
        .select((orders::mch_id, orders::out_trade_no, orders::created_at))
        .first::<(String, String, DateTime<Utc>)>(&mut conn)
        .await
        .optional()?
        .map(|(mch_id, out_trade_no, created_at)| Unpaid {
            mch_id,
            out_trade_no,
            created_at,
        });
    Ok(Overview {
        outcomes: outcomes
            .into_iter()
            .map(|(outcome, reason, n)| (outcome.0, reason, n))
            .collect(),
        lag,
        oldest_unpaid,
    })
}

fn seconds(secs: u64) -> Duration {
    Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000))
}

/// How a person closed an anomaly (`anomaly_resolutions`), from the console or the CLI.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = anomaly_resolutions, check_for_backend(diesel::pg::Pg))]
pub struct ResolutionRow {
    pub action: String,
    pub actor: String,
    pub note: String,
    pub result: String,
    pub at: DateTime<Utc>,
}

/// A recorded anomaly and its resolution, `None` while it is open.
#[derive(Debug, Clone)]
pub struct RecordedAnomaly {
    pub notification: NotificationRow,
    pub resolution: Option<ResolutionRow>,
}

/// Anomalies, newest first, each with its resolution (at most one: `anomaly_id` is unique).
pub async fn anomalies(pool: &DbPool, limit: i64) -> Result<Vec<RecordedAnomaly>, DataError> {
    let mut conn = conn(pool).await?;
    let rows: Vec<(NotificationRow, Option<ResolutionRow>)> = notifications::table
        .left_join(
            anomaly_resolutions::table.on(anomaly_resolutions::anomaly_id.eq(notifications::id)),
        )
        .filter(notifications::outcome.eq(DbOutcome(NotificationOutcome::Anomaly)))
        .order_by(notifications::processed_at.desc())
        .limit(limit)
        .select((
            NotificationRow::as_select(),
            Option::<ResolutionRow>::as_select(),
        ))
        .load(&mut conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(notification, resolution)| RecordedAnomaly {
            notification,
            resolution,
        })
        .collect())
}

/// One line of the audit trail.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = console_audit, check_for_backend(diesel::pg::Pg))]
pub struct AuditRow {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub note: Option<String>,
    pub result: String,
}

/// Records what an operator did and how it ended.
pub async fn audit(
    pool: &DbPool,
    actor: &str,
    action: &str,
    target: &str,
    note: Option<&str>,
    result: &str,
) -> Result<(), DataError> {
    let mut conn = conn(pool).await?;
    diesel::insert_into(console_audit::table)
        .values((
            console_audit::actor.eq(actor),
            console_audit::action.eq(action),
            console_audit::target.eq(target),
            console_audit::note.eq(note),
            console_audit::result.eq(result),
        ))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// The latest audit lines of the actions whose name starts with `prefix` (e.g. `parked.`).
pub async fn audit_trail(
    pool: &DbPool,
    prefix: &str,
    limit: i64,
) -> Result<Vec<AuditRow>, DataError> {
    let mut conn = conn(pool).await?;
    Ok(console_audit::table
        .filter(console_audit::action.like(format!("{prefix}%")))
        .order_by((console_audit::at.desc(), console_audit::id.desc()))
        .limit(limit)
        .select(AuditRow::as_select())
        .load(&mut conn)
        .await?)
}

/// Ready messages per queue (main, retry tiers, parked) by passive declaration; `None` for
/// a queue that does not exist (yet).
pub async fn queue_depths(settings: &Settings) -> Result<Vec<(String, Option<u32>)>, DataError> {
    let rabbitmq = &settings.rabbitmq;
    let mut names = vec![rabbitmq.queue.clone()];
    names.extend((0..settings.worker.retry_delays_ms.len()).map(|tier| rabbitmq.retry_queue(tier)));
    names.push(rabbitmq.parked_queue());
    let connection = broker::connect(rabbitmq).await?;
    let mut depths = Vec::with_capacity(names.len());
    let mut channels = Vec::new();
    for name in names {
        // A passive declaration of a missing queue closes its channel: one channel each.
        let channel = broker::bounded(connection.create_channel()).await?;
        let depth = broker::bounded(channel.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await
        .ok()
        .map(|queue| queue.message_count());
        depths.push((name, depth));
        channels.push(channel);
    }
    let open: Vec<&lapin::Channel> = channels.iter().filter(|c| c.status().connected()).collect();
    broker::close(&connection, &open, "depths").await;
    Ok(depths)
}
