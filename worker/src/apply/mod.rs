//! Every money decision, in one PostgreSQL transaction per notification: the notification
//! row (its unique `dedupe_key` is the authority of exactly-once), the locked order, the
//! state change, the refund row and the outbox events commit together or not at all.
//!
//! The rules come from the order lifecycle of WeChat Pay
//! (<https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_7>, "商户系统对于支付结果通知的
//! 内容一定要做签名验证,并校验返回的订单金额是否与商户侧的订单金额一致"): an order is marked
//! paid only when merchant, appid and amount agree with it; anything else is an anomaly, kept
//! and alerted, never a state change.
//!
//! An order that does not exist (yet) is not an anomaly but [`ApplyError::UnknownOrder`]:
//! nothing commits, so the business key stays free for when the order appears (the worker
//! retries through the tiers for `worker.unknown_order_grace_secs`, then parks).
//! Every event of an order carries `order_seq`, the order's `event_seq` bumped under its row
//! lock in the same transaction, so consumers can put an order's events in order.

mod forward;
mod pay;
mod refund;

use chrono::{TimeZone, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use uuid::Uuid;
use wxpay_runtime::config::SubMerchants;
use wxpay_shared::message::NotifyMessage;
use wxpay_shared::state::NotificationOutcome;

use crate::db::models::{DbOutcome, DbUuid, NewNotification, NewOutbox, Order};
use crate::db::queries::{InsertNotification, InsertOutbox};
use crate::db::schema::{notifications, orders};
use crate::db::{pool_error_text, DbPool};
use crate::decode::Decoded;

/// Anomaly reasons (`notifications.anomaly_reason`, label of `wxpay_worker_anomalies_total`).
pub mod reason {
    wxpay_shared::names! {
        AMOUNT_MISMATCH => "AMOUNT_MISMATCH",
        APPID_MISMATCH => "APPID_MISMATCH",
        MCH_ID_MISMATCH => "MCH_ID_MISMATCH",
        /// A service provider's notification for a sub-merchant it does not serve
        /// (`merchants.sub_mch_ids`), or a direct merchant's that names a sub-merchant.
        SUB_MCH_ID_MISMATCH => "SUB_MCH_ID_MISMATCH",
        DUPLICATE_PAYMENT => "DUPLICATE_PAYMENT",
        PAID_AFTER_CLOSE => "PAID_AFTER_CLOSE",
        REFUND_EXCEEDS_PAID => "REFUND_EXCEEDS_PAID",
        REFUND_ON_CLOSED_ORDER => "REFUND_ON_CLOSED_ORDER",
        REFUND_REVERSED => "REFUND_REVERSED",
        /// A v2 refund whose `transaction_id` or `total_fee` is not the order's.
        REFUND_MISMATCH => "REFUND_MISMATCH",
        /// The notification's currency is not the order's `currency`.
        CURRENCY_MISMATCH => "CURRENCY_MISMATCH",
        /// WeChat Pay's order query, asked to confirm a large payment, does not say it was paid
        /// this amount by this transaction ([`super::Confirmation::Disagrees`]).
        QUERY_MISMATCH => "QUERY_MISMATCH",
    }
}

/// Domain event types of the outbox (routing keys on the events exchange).
pub mod event {
    wxpay_shared::names! {
        ORDER_PAID => "order.paid",
        ORDER_REFUNDED => "order.refunded",
        REFUND_UPDATED => "refund.updated",
        ANOMALY_DETECTED => "anomaly.detected",
    }
}

/// What the committed transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A state change (and its events).
    Applied,
    /// Already in that state (e.g. the same payment through another channel): logged only.
    Noop,
    /// Logged, no state change (a failed payment, a refund still processing).
    Recorded,
    /// Logged as an anomaly, with an `anomaly.detected` event; the order is unchanged.
    Anomaly {
        reason: &'static str,
        detail: String,
    },
    /// The dedupe key was already there: nothing was written.
    Duplicate,
    /// Logged `FORWARDED` with its `wechatpay.<event_type>` event.
    Forwarded,
}

/// What WeChat Pay's order query said of a payment before it is applied
/// (`merchants.confirm_by_query_min_fen`). It is asked by [`crate::confirm`] before the
/// transaction begins: a network call never runs inside one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// Not asked: below the merchant's threshold or no threshold, a refund, a reconciler's
    /// query answer (itself the query), or a person's reapply.
    NotRequired,
    /// The query answered `SUCCESS` with the same amount, currency and transaction.
    Confirmed,
    /// The query answered otherwise: the payment is a `QUERY_MISMATCH` anomaly.
    Disagrees { detail: String },
}

/// Why nothing was committed. All are transient: the message goes to a retry tier.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Pool(String),
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
    /// Out of order: e.g. a refund for an order whose payment is not applied yet.
    #[error("not yet: {0}")]
    NotYet(String),
    /// No such order (yet): the business system's insert may be late or on a replica.
    #[error("no order {0}")]
    UnknownOrder(String),
}

impl ApplyError {
    /// Short label for logs and the retry reason header.
    pub fn code(&self) -> &'static str {
        match self {
            ApplyError::Pool(_) => "database_unavailable",
            ApplyError::Database(_) => "database_error",
            ApplyError::NotYet(_) => "out_of_order",
            ApplyError::UnknownOrder(_) => UNKNOWN_ORDER_REASON,
        }
    }
}

/// Park reason (and retry reason code) of a notification whose order never appeared.
pub const UNKNOWN_ORDER_REASON: &str = "unknown_order";

/// The notification being applied.
pub(crate) struct Context<'a> {
    pub message: &'a NotifyMessage,
    pub dedupe_key: &'a str,
    pub confirmation: &'a Confirmation,
    /// The sub-merchants the message's merchant serves.
    pub sub_merchants: &'a SubMerchants,
    /// The decrypted resource, stored with the notification row.
    pub resource: Option<&'a Value>,
}

/// The notification row to insert.
pub(crate) struct LogRow<'a> {
    pub mch_id: &'a str,
    /// The sub-merchant the body names; empty for a direct merchant.
    pub sub_mch_id: &'a str,
    pub out_trade_no: Option<&'a str>,
    pub out_refund_no: Option<&'a str>,
    pub transaction_id: Option<&'a str>,
}

impl<'a> LogRow<'a> {
    /// The row of a message to `ctx`'s merchant about the order `out_trade_no` of
    /// `sub_mch_id`: what payments and refunds both record; each adds its own number.
    fn of_order(
        ctx: &'a Context<'_>,
        sub_mch_id: &'a str,
        out_trade_no: Option<&'a str>,
    ) -> LogRow<'a> {
        LogRow {
            mch_id: &ctx.message.mch_id,
            sub_mch_id,
            out_trade_no,
            out_refund_no: None,
            transaction_id: None,
        }
    }
}

impl Context<'_> {
    /// Why a body naming merchant `mch_id` and sub-merchant `sub_mch_id` must touch no
    /// order: verified with the keys of the merchant the message is addressed to, it names
    /// another merchant, or a sub-merchant that merchant does not serve (a provider's
    /// `sub_mch_ids`; a direct merchant serves none).
    fn merchant_mismatch(&self, mch_id: &str, sub_mch_id: &str) -> Option<(&'static str, String)> {
        if mch_id != self.message.mch_id {
            Some((
                reason::MCH_ID_MISMATCH,
                format!("body names merchant {mch_id}"),
            ))
        } else if !self.sub_merchants.serves(sub_mch_id) {
            let detail = match sub_mch_id {
                "" => format!("merchant {mch_id} serves sub-merchants; the body names none"),
                _ => format!("merchant {mch_id} does not serve sub-merchant {sub_mch_id}"),
            };
            Some((reason::SUB_MCH_ID_MISMATCH, detail))
        } else {
            None
        }
    }

    /// The notification row to insert.
    fn new_row<'r>(
        &'r self,
        row: &LogRow<'r>,
        outcome: NotificationOutcome,
        anomaly: Option<(&'r str, &'r str)>,
    ) -> NewNotification<'r> {
        let received_at = Utc
            .timestamp_millis_opt(self.message.received_at_ms)
            .single()
            .unwrap_or_else(Utc::now);
        NewNotification {
            dedupe_key: self.dedupe_key,
            message_id: DbUuid(self.message.message_id),
            kind: self.message.kind.as_str(),
            mch_id: row.mch_id,
            sub_mch_id: row.sub_mch_id,
            out_trade_no: row.out_trade_no,
            out_refund_no: row.out_refund_no,
            transaction_id: row.transaction_id,
            raw_body: &self.message.body,
            outcome,
            anomaly_reason: anomaly.map(|(reason, _)| reason),
            anomaly_detail: anomaly.map(|(_, detail)| detail),
            received_at,
            resource: self.resource,
            wechatpay_headers: self.message.wechatpay.as_ref().map(|headers| {
                Value::Object(
                    headers
                        .pairs()
                        .into_iter()
                        .map(|(name, value)| (name.to_owned(), Value::from(value)))
                        .collect(),
                )
            }),
        }
    }

    /// Inserts the notification row; `false` when the dedupe key exists (a duplicate).
    async fn log(
        &self,
        conn: &mut AsyncPgConnection,
        row: &LogRow<'_>,
        outcome: NotificationOutcome,
        anomaly: Option<(&str, &str)>,
    ) -> Result<bool, diesel::result::Error> {
        let inserted: Option<i64> = InsertNotification(self.new_row(row, outcome, anomaly))
            .get_result(conn)
            .await
            .optional()?;
        Ok(inserted.is_some())
    }

    /// Changes the outcome of the row inserted optimistically as `APPLIED` (the rare path:
    /// the order check said otherwise).
    async fn amend(
        &self,
        conn: &mut AsyncPgConnection,
        id: i64,
        outcome: NotificationOutcome,
        anomaly: Option<(&str, &str)>,
    ) -> Result<(), diesel::result::Error> {
        diesel::update(notifications::table.find(id))
            .set((
                notifications::outcome.eq(DbOutcome(outcome)),
                notifications::anomaly_reason.eq(anomaly.map(|(reason, _)| reason)),
                notifications::anomaly_detail.eq(anomaly.map(|(_, detail)| detail)),
            ))
            .execute(conn)
            .await
            .map(|_| ())
    }

    /// The `anomaly.detected` payload; `order_seq` is null when no order row is involved.
    fn anomaly_payload(
        &self,
        row: &LogRow<'_>,
        reason: &str,
        detail: &str,
        order_seq: Option<i64>,
    ) -> Value {
        serde_json::json!({
            "order_seq": order_seq,
            "reason": reason,
            "detail": detail,
            "mch_id": row.mch_id,
            "sub_mch_id": row.sub_mch_id,
            "out_trade_no": row.out_trade_no,
            "out_refund_no": row.out_refund_no,
            "transaction_id": row.transaction_id,
            "kind": self.message.kind.as_str(),
            "message_id": self.message.message_id.to_string(),
        })
    }

    /// Turns the optimistically inserted row `id` (of a locked order) into an anomaly, with
    /// its event.
    async fn amend_anomaly(
        &self,
        conn: &mut AsyncPgConnection,
        id: i64,
        row: &LogRow<'_>,
        order: &Order,
        reason: &'static str,
        detail: String,
    ) -> Result<Verdict, diesel::result::Error> {
        self.amend(
            conn,
            id,
            NotificationOutcome::Anomaly,
            Some((reason, &detail)),
        )
        .await?;
        self.emit_anomaly(conn, row, Some(order), reason, &detail)
            .await?;
        Ok(Verdict::Anomaly { reason, detail })
    }

    /// The `anomaly.detected` event of an anomaly just logged (numbered in the order's
    /// sequence when the order, locked by the caller, is known).
    async fn emit_anomaly(
        &self,
        conn: &mut AsyncPgConnection,
        row: &LogRow<'_>,
        order: Option<&Order>,
        reason: &str,
        detail: &str,
    ) -> Result<(), diesel::result::Error> {
        let aggregate = row.out_refund_no.or(row.out_trade_no).unwrap_or_default();
        let order_seq = match order {
            Some(order) => Some(bump_seq(conn, order).await?),
            None => None,
        };
        let payload = self.anomaly_payload(row, reason, detail, order_seq);
        emit(
            conn,
            event::ANOMALY_DETECTED,
            row.mch_id,
            aggregate,
            payload,
        )
        .await
    }

    /// Logs an anomaly and its `anomaly.detected` event.
    async fn anomaly(
        &self,
        conn: &mut AsyncPgConnection,
        row: &LogRow<'_>,
        order: Option<&Order>,
        reason: &'static str,
        detail: String,
    ) -> Result<Verdict, diesel::result::Error> {
        if !self
            .log(
                conn,
                row,
                NotificationOutcome::Anomaly,
                Some((reason, &detail)),
            )
            .await?
        {
            return Ok(Verdict::Duplicate);
        }
        self.emit_anomaly(conn, row, order, reason, &detail).await?;
        Ok(Verdict::Anomaly { reason, detail })
    }

    /// Logs a notification that changes nothing.
    async fn record(
        &self,
        conn: &mut AsyncPgConnection,
        row: &LogRow<'_>,
        outcome: NotificationOutcome,
        verdict: Verdict,
    ) -> Result<Verdict, diesel::result::Error> {
        if self.log(conn, row, outcome, None).await? {
            Ok(verdict)
        } else {
            Ok(Verdict::Duplicate)
        }
    }
}

/// The next `order_seq` of `order` (locked `FOR UPDATE` by the caller), stored on the row.
async fn bump_seq(
    conn: &mut AsyncPgConnection,
    order: &Order,
) -> Result<i64, diesel::result::Error> {
    let seq = order.event_seq + 1;
    diesel::update(orders::table.find(order.key()))
        .set(orders::event_seq.eq(seq))
        .execute(conn)
        .await?;
    Ok(seq)
}

/// `payload` with the fields of `details` ([`crate::decode::PayDetails`],
/// [`crate::decode::RefundDetails`]): what the message said beyond the money.
fn with_details(mut payload: Value, details: &impl serde::Serialize) -> Value {
    if let (Value::Object(fields), Ok(Value::Object(extra))) =
        (&mut payload, serde_json::to_value(details))
    {
        fields.extend(extra);
    }
    payload
}

/// An outbox row with a fresh stable id.
fn new_event<'a>(
    event_type: &'a str,
    mch_id: &'a str,
    aggregate_key: &'a str,
    payload: Value,
) -> NewOutbox<'a> {
    NewOutbox {
        id: DbUuid(Uuid::now_v7()),
        event_type,
        mch_id,
        aggregate_key,
        payload,
    }
}

/// Inserts an outbox event with a fresh stable id.
async fn emit(
    conn: &mut AsyncPgConnection,
    event_type: &str,
    mch_id: &str,
    aggregate_key: &str,
    payload: Value,
) -> Result<(), diesel::result::Error> {
    InsertOutbox(new_event(event_type, mch_id, aggregate_key, payload))
        .execute(conn)
        .await
        .map(|_| ())
}

/// What is applied: the message, its decoded event and dedupe key, the order query's word,
/// and the sub-merchants the message's merchant serves (`Merchant::sub_merchants`).
pub struct Applying<'a> {
    pub message: &'a NotifyMessage,
    pub decoded: &'a Decoded,
    pub dedupe_key: &'a str,
    pub confirmation: &'a Confirmation,
    pub sub_merchants: &'a SubMerchants,
}

/// Applies in one transaction.
pub async fn apply(pool: &DbPool, applying: &Applying<'_>) -> Result<Verdict, ApplyError> {
    let mut conn = pool
        .get()
        .await
        .map_err(|error| ApplyError::Pool(pool_error_text(&error)))?;
    conn.transaction::<_, ApplyError, _>(async |conn| apply_in(conn, applying).await)
        .await
}

/// Applies inside the caller's transaction (an `Err` must roll it back): the one apply
/// path, shared by the consumer and `anomaly resolve --action reapply`.
pub async fn apply_in(
    conn: &mut AsyncPgConnection,
    applying: &Applying<'_>,
) -> Result<Verdict, ApplyError> {
    let ctx = Context {
        message: applying.message,
        dedupe_key: applying.dedupe_key,
        confirmation: applying.confirmation,
        sub_merchants: applying.sub_merchants,
        resource: applying.decoded.resource(),
    };
    let decoded = applying.decoded;
    match decoded {
        Decoded::Pay(event) => pay::apply(conn, &ctx, event).await,
        Decoded::Refund(event) => refund::apply(conn, &ctx, event).await,
        Decoded::Forward(event) => forward::apply(conn, &ctx, event).await,
    }
}
