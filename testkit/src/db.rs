//! What tests read and write in a test database with the worker's schema (orders inserted
//! as the business system does, order states, counts).

use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

/// A connection to `url`.
pub async fn connect(url: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(url)
        .await
        .unwrap_or_else(|error| panic!("PostgreSQL connection: {error}"))
}

/// The state columns of an order.
#[derive(Debug, QueryableByName, PartialEq, Eq)]
pub struct OrderView {
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub transaction_id: Option<String>,
    #[diesel(sql_type = BigInt)]
    pub refunded_total: i64,
}

/// The order `out_trade_no` of the direct merchant `mch_id`.
pub async fn order(conn: &mut AsyncPgConnection, mch_id: &str, out_trade_no: &str) -> OrderView {
    sub_merchant_order(conn, (mch_id, ""), out_trade_no).await
}

/// The order `out_trade_no` of sub-merchant `sub_mch_id` of the service provider `mch_id`
/// (`""`: of the direct merchant `mch_id`).
pub async fn sub_merchant_order(
    conn: &mut AsyncPgConnection,
    (mch_id, sub_mch_id): (&str, &str),
    out_trade_no: &str,
) -> OrderView {
    diesel::sql_query(
        "SELECT state, transaction_id, refunded_total FROM orders \
         WHERE mch_id = $1 AND sub_mch_id = $2 AND out_trade_no = $3",
    )
    .bind::<Text, _>(mch_id)
    .bind::<Text, _>(sub_mch_id)
    .bind::<Text, _>(out_trade_no)
    .get_result(conn)
    .await
    .unwrap_or_else(|error| panic!("order {out_trade_no}: {error}"))
}

/// An order as the business system inserts it, in `state` (NOTPAY before the user pays).
pub struct NewOrder<'a> {
    /// The merchant, or the service provider of a sub-merchant.
    pub mch_id: &'a str,
    /// The provider's sub-merchant; `""` for a direct merchant.
    pub sub_mch_id: &'a str,
    pub appid: &'a str,
    pub out_trade_no: &'a str,
    pub amount_total: i64,
    pub state: &'a str,
}

impl NewOrder<'_> {
    pub async fn insert(&self, conn: &mut AsyncPgConnection) {
        diesel::sql_query(
            "INSERT INTO orders (mch_id, sub_mch_id, out_trade_no, appid, amount_total, state) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind::<Text, _>(self.mch_id)
        .bind::<Text, _>(self.sub_mch_id)
        .bind::<Text, _>(self.out_trade_no)
        .bind::<Text, _>(self.appid)
        .bind::<BigInt, _>(self.amount_total)
        .bind::<Text, _>(self.state)
        .execute(conn)
        .await
        .unwrap_or_else(|error| panic!("insert order {}: {error}", self.out_trade_no));
    }
}

/// Marks the order `out_trade_no` of `(mch_id, sub_mch_id)` as a sub order of the combine
/// payment `combine_out_trade_no`, as the business system does when it places one.
pub async fn join_combine(
    conn: &mut AsyncPgConnection,
    (mch_id, sub_mch_id): (&str, &str),
    out_trade_no: &str,
    combine_out_trade_no: &str,
) {
    diesel::sql_query(
        "UPDATE orders SET combine_out_trade_no = $4 \
         WHERE mch_id = $1 AND sub_mch_id = $2 AND out_trade_no = $3",
    )
    .bind::<Text, _>(mch_id)
    .bind::<Text, _>(sub_mch_id)
    .bind::<Text, _>(out_trade_no)
    .bind::<Text, _>(combine_out_trade_no)
    .execute(conn)
    .await
    .unwrap_or_else(|error| panic!("order {out_trade_no} joins {combine_out_trade_no}: {error}"));
}

/// `SELECT count(*) <tail>`: `tail` is the query from its `FROM` on.
pub async fn count(conn: &mut AsyncPgConnection, tail: &str) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let row: Count = diesel::sql_query(format!("SELECT count(*)::bigint AS n {tail}"))
        .get_result(conn)
        .await
        .unwrap_or_else(|error| panic!("SELECT count(*) {tail}: {error}"));
    row.n
}
