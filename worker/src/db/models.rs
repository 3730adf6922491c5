//! Rows read and written by the worker.

use std::io::Write;

use chrono::{DateTime, Utc};
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::prelude::*;
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::Text;
use uuid::Uuid;
use wxpay_shared::state::{NotificationOutcome, OrderState, RefundState};

use super::schema::{orders, outbox, refunds};

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

/// A state column: TEXT holding one of the enum's spellings. The enums live in the
/// protocol crate, which knows nothing of diesel, hence these wrappers.
macro_rules! text_state {
    ($(#[$meta:meta])* $db:ident($state:ty)) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, AsExpression, FromSqlRow)]
        #[diesel(sql_type = Text)]
        pub struct $db(pub $state);

        impl ToSql<Text, Pg> for $db {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                out.write_all(self.0.as_str().as_bytes())?;
                Ok(IsNull::No)
            }
        }

        impl FromSql<Text, Pg> for $db {
            fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
                Ok($db(std::str::from_utf8(bytes.as_bytes())?.parse()?))
            }
        }

        impl From<$state> for $db {
            fn from(state: $state) -> Self {
                $db(state)
            }
        }

        impl From<$db> for $state {
            fn from(db: $db) -> Self {
                db.0
            }
        }
    };
}

text_state! {
    /// `orders.state`.
    DbOrderState(OrderState)
}
text_state! {
    /// `refunds.status`.
    DbRefundState(RefundState)
}
text_state! {
    /// `notifications.outcome`.
    DbOutcome(NotificationOutcome)
}

/// An order, as locked by the worker.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = orders, check_for_backend(Pg))]
pub struct Order {
    pub mch_id: String,
    /// The service provider's sub-merchant; empty for a direct merchant.
    pub sub_mch_id: String,
    pub out_trade_no: String,
    pub appid: String,
    pub amount_total: i64,
    #[diesel(deserialize_as = DbOrderState)]
    pub state: OrderState,
    pub transaction_id: Option<String>,
    pub paid_at: Option<DateTime<Utc>>,
    pub refunded_total: i64,
    pub currency: String,
    /// Sequence number of the order's last event (`order_seq` of the events).
    pub event_seq: i64,
}

impl Order {
    /// The primary key `(mch_id, sub_mch_id, out_trade_no)`, for `orders::table.find`.
    pub fn key(&self) -> (&str, &str, &str) {
        (&self.mch_id, &self.sub_mch_id, &self.out_trade_no)
    }
}

/// A refund row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = refunds, check_for_backend(Pg))]
pub struct Refund {
    pub mch_id: String,
    pub sub_mch_id: String,
    pub out_refund_no: String,
    pub out_trade_no: String,
    pub refund_id: Option<String>,
    pub refund_fee: i64,
    #[diesel(deserialize_as = DbRefundState)]
    pub status: RefundState,
    pub succeeded_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = refunds)]
pub struct NewRefund<'a> {
    pub mch_id: &'a str,
    pub sub_mch_id: &'a str,
    pub out_refund_no: &'a str,
    pub out_trade_no: &'a str,
    pub refund_id: Option<&'a str>,
    pub refund_fee: i64,
    #[diesel(serialize_as = DbRefundState)]
    pub status: RefundState,
    pub succeeded_at: Option<DateTime<Utc>>,
}

/// The log row of one notification; its `dedupe_key` is unique. Written only by the fixed
/// statement `queries::InsertNotification` (hence no `Insertable`: `sub_mch_id` is not in the
/// diesel schema of `notifications`).
#[derive(Debug)]
pub struct NewNotification<'a> {
    pub dedupe_key: &'a str,
    pub message_id: DbUuid,
    pub kind: &'a str,
    pub mch_id: &'a str,
    /// The sub-merchant the notification was for; empty for a direct merchant.
    pub sub_mch_id: &'a str,
    pub out_trade_no: Option<&'a str>,
    pub out_refund_no: Option<&'a str>,
    pub transaction_id: Option<&'a str>,
    pub raw_body: &'a [u8],
    pub outcome: NotificationOutcome,
    pub anomaly_reason: Option<&'a str>,
    pub anomaly_detail: Option<&'a str>,
    pub received_at: DateTime<Utc>,
    /// The v3 signature headers, so that a reapply re-verifies what was received.
    pub wechatpay_headers: Option<serde_json::Value>,
    /// The decrypted resource, for audit (`notifications.resource`).
    pub resource: Option<&'a serde_json::Value>,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The quoted values of the latest `CHECK (column IN ('A', 'B', …))` among the migrations
    /// (a later migration widens a constraint by replacing it).
    fn check_values(column: &str) -> BTreeSet<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut migrations: Vec<_> = std::fs::read_dir(dir)
            .expect("migrations")
            .map(|entry| entry.expect("migration").path().join("up.sql"))
            .collect();
        migrations.sort();
        let start = format!("CHECK ({column} IN (");
        let sql = migrations
            .iter()
            .rev()
            .map(|path| std::fs::read_to_string(path).expect("up.sql"))
            .find(|sql| sql.contains(&start))
            .expect("CHECK constraint");
        let from = sql.find(&start).expect("CHECK constraint") + start.len();
        let list = &sql[from..];
        let list = &list[..list.find(')').expect("closing parenthesis")];
        list.split(',')
            .map(|value| value.trim().trim_matches('\'').to_owned())
            .collect()
    }

    fn spellings<T: Copy>(all: &[T], as_str: fn(T) -> &'static str) -> BTreeSet<String> {
        all.iter().map(|&state| as_str(state).to_owned()).collect()
    }

    #[test]
    fn state_enums_match_the_check_constraints() {
        assert_eq!(
            spellings(OrderState::ALL, OrderState::as_str),
            check_values("state")
        );
        assert_eq!(
            spellings(RefundState::ALL, RefundState::as_str),
            check_values("status")
        );
        assert_eq!(
            spellings(NotificationOutcome::ALL, NotificationOutcome::as_str),
            check_values("outcome")
        );
    }
}
