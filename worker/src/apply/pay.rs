//! Payment results: `NOTPAY → PAID` when merchant, appid, amount and currency agree (and,
//! for a payment that needed it, WeChat Pay's order query confirmed it); anomalies
//! otherwise, and a transient [`ApplyError::UnknownOrder`] when there is no order.
//!
//! The hot path is four round trips: `BEGIN`; the order lock and the notification row
//! (inserted optimistically as `APPLIED`) pipelined; the order update and the outbox event
//! pipelined; `COMMIT`. When the order check disagrees, the row's outcome is amended in the
//! same transaction.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{
    event, new_event, reason, with_details, ApplyError, Confirmation, Context, LogRow, Verdict,
};
use wxpay_shared::state::{NotificationOutcome, OrderState};

use crate::db::models::Order;
use crate::db::queries::{InsertNotification, InsertOutbox, MarkPaid};
use crate::db::schema::orders;
use crate::decode::PayEvent;

pub(super) async fn apply(
    conn: &mut AsyncPgConnection,
    ctx: &Context<'_>,
    pay: &PayEvent,
) -> Result<Verdict, ApplyError> {
    let out_trade_no = Some(pay.out_trade_no.as_str()).filter(|no| !no.is_empty());
    let row = LogRow {
        transaction_id: pay.transaction_id.as_deref(),
        ..LogRow::of_order(ctx, &pay.sub_mch_id, out_trade_no)
    };
    // result_code / trade_state not SUCCESS: kept for the record, no transition.
    if !pay.success {
        return Ok(ctx
            .record(conn, &row, NotificationOutcome::Recorded, Verdict::Recorded)
            .await?);
    }
    // Another merchant, or a sub-merchant not served: never touch anyone's orders.
    if let Some((reason, detail)) = ctx.merchant_mismatch(&pay.mch_id, &pay.sub_mch_id) {
        return Ok(ctx.anomaly(conn, &row, None, reason, detail).await?);
    }
    // Pipelined (futures on a shared borrow of the connection, polled together): the
    // server locks the order, then inserts the row (the unique key decides whether this is
    // a duplicate).
    let lock = orders::table
        .find((&pay.mch_id, &pay.sub_mch_id, &pay.out_trade_no))
        .select(Order::as_select())
        .for_update()
        .first::<Order>(&mut &*conn);
    let insert = InsertNotification(ctx.new_row(&row, NotificationOutcome::Applied, None))
        .get_result::<i64>(&mut &*conn);
    let (order, inserted) = futures::join!(lock, insert);
    let order = order.optional()?;
    let Some(id) = inserted.optional()? else {
        return Ok(Verdict::Duplicate);
    };

    // No order (yet): the error rolls the transaction back, the row just inserted with it,
    // so the business key stays free for when the order exists.
    let Some(order) = order else {
        return Err(ApplyError::UnknownOrder(pay.out_trade_no.clone()));
    };
    let order = &order;
    // WeChat Pay's own order query contradicts the notification: whatever the order says,
    // nothing moves until a person has looked (a verified body may still be a leaked key's).
    if let Confirmation::Disagrees { detail } = ctx.confirmation {
        return Ok(ctx
            .amend_anomaly(
                conn,
                id,
                &row,
                order,
                reason::QUERY_MISMATCH,
                detail.clone(),
            )
            .await?);
    }
    let mismatch = if order.appid != pay.appid {
        Some((
            reason::APPID_MISMATCH,
            format!("order appid {}, notified {}", order.appid, pay.appid),
        ))
    } else if order.amount_total != pay.amount_total {
        Some((
            reason::AMOUNT_MISMATCH,
            format!(
                "order amount {} fen, notified {} fen",
                order.amount_total, pay.amount_total
            ),
        ))
    } else if order.currency != pay.currency {
        Some((
            reason::CURRENCY_MISMATCH,
            format!(
                "order currency {}, notified {}",
                order.currency, pay.currency
            ),
        ))
    } else {
        None
    };
    if let Some((reason, detail)) = mismatch {
        return Ok(ctx
            .amend_anomaly(conn, id, &row, order, reason, detail)
            .await?);
    }
    match order.state {
        OrderState::NotPay => {
            let paid_at = pay.paid_at.unwrap_or_else(Utc::now);
            // Locked above: the next number is ours.
            let order_seq = order.event_seq + 1;
            let payload = serde_json::json!({
                "order_seq": order_seq,
                "mch_id": order.mch_id,
                "sub_mch_id": order.sub_mch_id,
                "out_trade_no": order.out_trade_no,
                "appid": order.appid,
                "transaction_id": pay.transaction_id,
                "amount_total": order.amount_total,
                "currency": order.currency,
                "paid_at": paid_at.to_rfc3339(),
                // Shipping may wait for this on large payments (confirm_by_query_min_fen).
                "confirmed_by_query": *ctx.confirmation == Confirmation::Confirmed,
            });
            let payload = with_details(payload, &pay.details);
            let update = MarkPaid {
                mch_id: &order.mch_id,
                sub_mch_id: &order.sub_mch_id,
                out_trade_no: &order.out_trade_no,
                transaction_id: pay.transaction_id.as_deref(),
                paid_at,
                event_seq: order_seq,
            }
            .execute(&mut &*conn);
            let emit = InsertOutbox(new_event(
                event::ORDER_PAID,
                &order.mch_id,
                &order.out_trade_no,
                payload,
            ))
            .execute(&mut &*conn);
            futures::try_join!(update, emit)?;
            Ok(Verdict::Applied)
        }
        OrderState::Closed => {
            let detail = format!("order {} is {}", order.out_trade_no, order.state);
            Ok(ctx
                .amend_anomaly(conn, id, &row, order, reason::PAID_AFTER_CLOSE, detail)
                .await?)
        }
        OrderState::Paid | OrderState::PartiallyRefunded | OrderState::Refunded => {
            if order.transaction_id.as_deref() == pay.transaction_id.as_deref() {
                ctx.amend(conn, id, NotificationOutcome::Noop, None).await?;
                Ok(Verdict::Noop)
            } else {
                let detail = format!(
                    "order {} already paid by transaction {}",
                    order.out_trade_no,
                    order.transaction_id.as_deref().unwrap_or("?")
                );
                Ok(ctx
                    .amend_anomaly(conn, id, &row, order, reason::DUPLICATE_PAYMENT, detail)
                    .await?)
            }
        }
    }
}
