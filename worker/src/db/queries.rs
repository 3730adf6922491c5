//! The hot-path statements, written once with fixed SQL so that they are prepared once per
//! connection and then only bound and executed.
//!
//! diesel (still in 2.3, with diesel-async 0.9) never caches the prepared statement of an
//! `UPDATE` or of a single-row `INSERT` (their SQL may vary with the values: `DEFAULT` for
//! `None`), so each would cost an extra Parse / Describe round trip and a fresh plan on
//! every message. These have no such variation and declare a static query id.

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::HasSqlType;
use diesel::sql_types::{BigInt, Bytea, Jsonb, Nullable, Text, Timestamptz, Uuid};
use diesel::QueryResult;

use super::models::{NewNotification, NewOutbox};

/// An `INSERT INTO … VALUES (…)` written value by value, each bound in turn with `", "`
/// between them, so that a list of values cannot lose a separator or gain one.
struct Values<'x, 'a, 'b> {
    out: &'x mut AstPass<'a, 'b, Pg>,
    first: bool,
}

impl<'x, 'a, 'b> Values<'x, 'a, 'b> {
    /// `INSERT INTO {table_and_columns} VALUES (`: the values follow.
    fn insert(out: &'x mut AstPass<'a, 'b, Pg>, table_and_columns: &str) -> Self {
        out.push_sql("INSERT INTO ");
        out.push_sql(table_and_columns);
        out.push_sql(" VALUES (");
        Values { out, first: true }
    }

    /// Closes the values, then `tail` (`ON CONFLICT …`, `RETURNING …`).
    fn end(self, tail: &str) {
        self.out.push_sql(")");
        self.out.push_sql(tail);
    }

    fn bind<ST, U>(&mut self, value: &'b U) -> QueryResult<()>
    where
        Pg: HasSqlType<ST>,
        U: ToSql<ST, Pg> + ?Sized,
    {
        if !std::mem::take(&mut self.first) {
            self.out.push_sql(", ");
        }
        self.out.push_bind_param::<ST, U>(value)
    }
}

/// `INSERT INTO notifications … ON CONFLICT (dedupe_key) DO NOTHING RETURNING id`.
pub struct InsertNotification<'a>(pub NewNotification<'a>);

impl QueryId for InsertNotification<'_> {
    type QueryId = InsertNotification<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for InsertNotification<'_> {
    type SqlType = BigInt;
}

impl QueryFragment<Pg> for InsertNotification<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let row = &self.0;
        let mut values = Values::insert(
            &mut out,
            "notifications (dedupe_key, message_id, kind, mch_id, sub_mch_id, out_trade_no, \
             out_refund_no, transaction_id, raw_body, outcome, anomaly_reason, anomaly_detail, \
             received_at, wechatpay_headers, resource)",
        );
        values.bind::<Text, _>(&row.dedupe_key)?;
        values.bind::<Uuid, _>(&row.message_id)?;
        values.bind::<Text, _>(&row.kind)?;
        values.bind::<Text, _>(&row.mch_id)?;
        values.bind::<Text, _>(&row.sub_mch_id)?;
        values.bind::<Nullable<Text>, _>(&row.out_trade_no)?;
        values.bind::<Nullable<Text>, _>(&row.out_refund_no)?;
        values.bind::<Nullable<Text>, _>(&row.transaction_id)?;
        values.bind::<Bytea, _>(&row.raw_body)?;
        values.bind::<Text, str>(row.outcome.as_str())?;
        values.bind::<Nullable<Text>, _>(&row.anomaly_reason)?;
        values.bind::<Nullable<Text>, _>(&row.anomaly_detail)?;
        values.bind::<Timestamptz, _>(&row.received_at)?;
        values.bind::<Nullable<Jsonb>, _>(&row.wechatpay_headers)?;
        values.bind::<Nullable<Jsonb>, _>(&row.resource)?;
        values.end(" ON CONFLICT (dedupe_key) DO NOTHING RETURNING id");
        Ok(())
    }
}

/// `INSERT INTO outbox …`.
pub struct InsertOutbox<'a>(pub NewOutbox<'a>);

impl QueryId for InsertOutbox<'_> {
    type QueryId = InsertOutbox<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for InsertOutbox<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let row = &self.0;
        let columns = "outbox (id, event_type, mch_id, aggregate_key, payload)";
        let mut values = Values::insert(&mut out, columns);
        values.bind::<Uuid, _>(&row.id)?;
        values.bind::<Text, _>(&row.event_type)?;
        values.bind::<Text, _>(&row.mch_id)?;
        values.bind::<Text, _>(&row.aggregate_key)?;
        values.bind::<Jsonb, _>(&row.payload)?;
        values.end("");
        Ok(())
    }
}

/// `UPDATE orders SET state = 'PAID', …` for one order, with the `event_seq` of its
/// `order.paid` event.
pub struct MarkPaid<'a> {
    pub mch_id: &'a str,
    pub sub_mch_id: &'a str,
    pub out_trade_no: &'a str,
    pub transaction_id: Option<&'a str>,
    pub paid_at: DateTime<Utc>,
    pub event_seq: i64,
}

impl QueryId for MarkPaid<'_> {
    type QueryId = MarkPaid<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for MarkPaid<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("UPDATE orders SET state = 'PAID', transaction_id = ");
        out.push_bind_param::<Nullable<Text>, _>(&self.transaction_id)?;
        out.push_sql(", paid_at = ");
        out.push_bind_param::<Timestamptz, _>(&self.paid_at)?;
        out.push_sql(", event_seq = ");
        out.push_bind_param::<BigInt, _>(&self.event_seq)?;
        out.push_sql(", updated_at = now() WHERE mch_id = ");
        out.push_bind_param::<Text, _>(&self.mch_id)?;
        out.push_sql(" AND sub_mch_id = ");
        out.push_bind_param::<Text, _>(&self.sub_mch_id)?;
        out.push_sql(" AND out_trade_no = ");
        out.push_bind_param::<Text, _>(&self.out_trade_no)?;
        Ok(())
    }
}
