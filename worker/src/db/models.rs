//! Rows read and written by the worker.

use std::io::Write;

use chrono::{DateTime, Utc};
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::prelude::*;
use diesel::serialize::{self, IsNull, Output, ToSql};
use uuid::Uuid;

use super::schema::{notifications, orders, outbox, refunds};

/// A UUID column. diesel is built without its `uuid` feature in this workspace, so the
/// binary wire form (16 bytes) is written here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, AsExpression, FromSqlRow)]
#[diesel(sql_type = diesel::sql_types::Uuid)]
pub struct DbUuid(pub Uuid);

impl ToSql<diesel::sql_types::Uuid, Pg> for DbUuid {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(self.0.as_bytes())?;
        Ok(IsNull::No)
    }
}

impl FromSql<diesel::sql_types::Uuid, Pg> for DbUuid {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        Ok(DbUuid(Uuid::from_slice(bytes.as_bytes())?))
    }
}

/// Order states (the `orders.state` CHECK constraint).
pub mod state {
    pub const NOTPAY: &str = "NOTPAY";
    pub const PAID: &str = "PAID";
    pub const PARTIALLY_REFUNDED: &str = "PARTIALLY_REFUNDED";
    pub const REFUNDED: &str = "REFUNDED";
    pub const CLOSED: &str = "CLOSED";
}

/// `notifications.outcome` values.
pub mod outcome {
    pub const APPLIED: &str = "APPLIED";
    pub const NOOP: &str = "NOOP";
    pub const RECORDED: &str = "RECORDED";
    pub const ANOMALY: &str = "ANOMALY";
}

/// An order, as locked by the worker.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = orders, check_for_backend(Pg))]
pub struct Order {
    pub mch_id: String,
    pub out_trade_no: String,
    pub appid: String,
    pub amount_total: i64,
    pub state: String,
    pub transaction_id: Option<String>,
    pub paid_at: Option<DateTime<Utc>>,
    pub refunded_total: i64,
}

/// A refund row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = refunds, check_for_backend(Pg))]
pub struct Refund {
    pub mch_id: String,
    pub out_refund_no: String,
    pub out_trade_no: String,
    pub refund_id: Option<String>,
    pub refund_fee: i64,
    pub status: String,
    pub succeeded_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = refunds)]
pub struct NewRefund<'a> {
    pub mch_id: &'a str,
    pub out_refund_no: &'a str,
    pub out_trade_no: &'a str,
    pub refund_id: Option<&'a str>,
    pub refund_fee: i64,
    pub status: &'a str,
    pub succeeded_at: Option<DateTime<Utc>>,
}

/// The log row of one notification; its `dedupe_key` is unique.
#[derive(Debug, Insertable)]
#[diesel(table_name = notifications)]
pub struct NewNotification<'a> {
    pub dedupe_key: &'a str,
    pub message_id: DbUuid,
    pub kind: &'a str,
    pub mch_id: &'a str,
    pub out_trade_no: Option<&'a str>,
    pub out_refund_no: Option<&'a str>,
    pub transaction_id: Option<&'a str>,
    pub raw_body: &'a [u8],
    pub outcome: &'a str,
    pub anomaly_reason: Option<&'a str>,
    pub anomaly_detail: Option<&'a str>,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = outbox)]
pub struct NewOutbox<'a> {
    pub id: DbUuid,
    pub event_type: &'a str,
    pub mch_id: &'a str,
    pub aggregate_key: &'a str,
    pub payload: serde_json::Value,
}

/// An unpublished event picked by the relay.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = outbox, check_for_backend(Pg))]
pub struct OutboxRow {
    pub id: DbUuid,
    pub event_type: String,
    pub mch_id: String,
    pub aggregate_key: String,
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
}
