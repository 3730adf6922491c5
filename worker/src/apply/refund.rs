//! Refund results: a successful refund moves money once (distinct refunds only) and never
//! beyond the paid amount; other statuses update the refund row and move no money. A v2
//! refund that describes another order (`transaction_id`, `total_fee`) or a refund in
//! another currency is an anomaly; no order at all is the transient
//! [`ApplyError::UnknownOrder`].
//! <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_16&index=10>

use chrono::Utc;
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{bump_seq, emit, event, reason, with_details, ApplyError, Context, LogRow, Verdict};
use wxpay_shared::state::{NotificationOutcome, OrderState, RefundState};

use crate::db::models::{DbRefundState, NewRefund, Order};
use crate::db::schema::{orders, refunds};
use crate::decode::RefundEvent;

pub(super) async fn apply(
    conn: &mut AsyncPgConnection,
    ctx: &Context<'_>,
    refund: &RefundEvent,
) -> Result<Verdict, ApplyError> {
    let row = LogRow {
        out_refund_no: Some(refund.out_refund_no.as_str()),
        ..LogRow::of_order(ctx, &refund.sub_mch_id, Some(&refund.out_trade_no))
    };
    if let Some((reason, detail)) = ctx.merchant_mismatch(&refund.mch_id, &refund.sub_mch_id) {
        return Ok(ctx.anomaly(conn, &row, None, reason, detail).await?);
    }
    // The order lock serialises every change to this order's money.
    let order: Option<Order> = orders::table
        .find((&refund.mch_id, &refund.sub_mch_id, &refund.out_trade_no))
        .select(Order::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?;
    let Some(order) = order else {
        return Err(ApplyError::UnknownOrder(refund.out_trade_no.clone()));
    };
    let order = &order;
    match order.state {
        // Its payment notification is not applied yet: transient, retried later.
        OrderState::NotPay => {
            return Err(ApplyError::NotYet(format!(
                "refund {} for order {} that is not paid yet",
                refund.out_refund_no, order.out_trade_no
            )))
        }
        OrderState::Closed => {
            let detail = format!("order {} is {}", order.out_trade_no, order.state);
            return Ok(ctx
                .anomaly(
                    conn,
                    &row,
                    Some(order),
                    reason::REFUND_ON_CLOSED_ORDER,
                    detail,
                )
                .await?);
        }
        OrderState::Paid | OrderState::PartiallyRefunded | OrderState::Refunded => {}
    }
    if let Some((reason, detail)) = mismatch(order, refund) {
        return Ok(ctx.anomaly(conn, &row, Some(order), reason, detail).await?);
    }
    // Of the refund row only its status matters: whether we know the refund, and whether
    // its money went back already. Locked all the same, as the order is.
    let existing: Option<RefundState> = refunds::table
        .find((&refund.mch_id, &refund.sub_mch_id, &refund.out_refund_no))
        .select(refunds::status)
        .for_update()
        .first::<DbRefundState>(conn)
        .await
        .optional()?
        .map(RefundState::from);
    let already_succeeded = existing == Some(RefundState::Success);
    match refund.status {
        RefundState::Success => {
            if already_succeeded {
                return Ok(ctx
                    .record(conn, &row, NotificationOutcome::Noop, Verdict::Noop)
                    .await?);
            }
            let refunded_total = order.refunded_total.checked_add(refund.refund_fee);
            let Some(refunded_total) = refunded_total.filter(|t| *t <= order.amount_total) else {
                let detail = format!(
                    "refund {} of {} fen on top of {} fen refunded exceeds the {} fen paid",
                    refund.out_refund_no,
                    refund.refund_fee,
                    order.refunded_total,
                    order.amount_total
                );
                return Ok(ctx
                    .anomaly(conn, &row, Some(order), reason::REFUND_EXCEEDS_PAID, detail)
                    .await?);
            };
            if !log_applied_and_store(ctx, conn, &row, refund).await? {
                return Ok(Verdict::Duplicate);
            }
            let new_state = if refunded_total == order.amount_total {
                OrderState::Refunded
            } else {
                OrderState::PartiallyRefunded
            };
            // The order is locked: the next number is ours.
            let order_seq = order.event_seq + 1;
            diesel::update(orders::table.find(order.key()))
                .set((
                    orders::state.eq(new_state.as_str()),
                    orders::refunded_total.eq(refunded_total),
                    orders::event_seq.eq(order_seq),
                    orders::updated_at.eq(Utc::now()),
                ))
                .execute(conn)
                .await?;
            let payload = serde_json::json!({
                "order_seq": order_seq,
                "mch_id": order.mch_id,
                "sub_mch_id": order.sub_mch_id,
                "out_trade_no": order.out_trade_no,
                "out_refund_no": refund.out_refund_no,
                "refund_id": refund.refund_id,
                "refund_fee": refund.refund_fee,
                "refunded_total": refunded_total,
                "amount_total": order.amount_total,
                "state": new_state.as_str(),
                "succeeded_at": refund.succeeded_at.map(|t| t.to_rfc3339()),
                "currency": refund.currency,
            });
            let payload = with_details(payload, &refund.details);
            emit(
                conn,
                event::ORDER_REFUNDED,
                &order.mch_id,
                &order.out_trade_no,
                payload,
            )
            .await?;
            Ok(Verdict::Applied)
        }
        RefundState::Processing => {
            // Nothing to move; remember the refund exists if we did not know it.
            if !ctx
                .log(conn, &row, NotificationOutcome::Recorded, None)
                .await?
            {
                return Ok(Verdict::Duplicate);
            }
            if existing.is_none() {
                store_refund(conn, refund, IfKnown::Keep).await?;
            }
            Ok(Verdict::Recorded)
        }
        // CHANGE is never decoded (it is normalised to ABNORMAL); listed for exhaustiveness.
        RefundState::Closed | RefundState::Abnormal | RefundState::Change => {
            if already_succeeded {
                // The money went back already; a later failure status contradicts it.
                let detail = format!(
                    "refund {} is SUCCESS, notified {}",
                    refund.out_refund_no,
                    refund.status.as_str()
                );
                return Ok(ctx
                    .anomaly(conn, &row, Some(order), reason::REFUND_REVERSED, detail)
                    .await?);
            }
            if !log_applied_and_store(ctx, conn, &row, refund).await? {
                return Ok(Verdict::Duplicate);
            }
            let order_seq = bump_seq(conn, order).await?;
            let payload = serde_json::json!({
                "order_seq": order_seq,
                "mch_id": refund.mch_id,
                "sub_mch_id": refund.sub_mch_id,
                "out_trade_no": refund.out_trade_no,
                "out_refund_no": refund.out_refund_no,
                "refund_id": refund.refund_id,
                "refund_fee": refund.refund_fee,
                "status": refund.status.as_str(),
                "succeeded_at": refund.succeeded_at.map(|t| t.to_rfc3339()),
                "currency": refund.currency,
            });
            let payload = with_details(payload, &refund.details);
            emit(
                conn,
                event::REFUND_UPDATED,
                &refund.mch_id,
                &refund.out_refund_no,
                payload,
            )
            .await?;
            Ok(Verdict::Applied)
        }
    }
}

/// Why `refund` cannot be for `order`: it names another payment or order total (v2's
/// unauthenticated `req_info`), or another currency.
fn mismatch(order: &Order, refund: &RefundEvent) -> Option<(&'static str, String)> {
    if let Some(check) = &refund.order_check {
        if order.transaction_id.as_deref() != Some(check.transaction_id.as_str())
            || order.amount_total != check.total_fee
        {
            let detail = format!(
                "refund {} names transaction {} of {} fen; order {} is transaction {} of {} fen",
                refund.out_refund_no,
                check.transaction_id,
                check.total_fee,
                order.out_trade_no,
                order.transaction_id.as_deref().unwrap_or("?"),
                order.amount_total
            );
            return Some((reason::REFUND_MISMATCH, detail));
        }
    }
    if order.currency != refund.currency {
        let detail = format!(
            "order currency {}, refund {} in {}",
            order.currency, refund.out_refund_no, refund.currency
        );
        return Some((reason::CURRENCY_MISMATCH, detail));
    }
    None
}

fn new_refund(refund: &RefundEvent) -> NewRefund<'_> {
    NewRefund {
        mch_id: &refund.mch_id,
        sub_mch_id: &refund.sub_mch_id,
        out_refund_no: &refund.out_refund_no,
        out_trade_no: &refund.out_trade_no,
        refund_id: Some(refund.refund_id.as_str()).filter(|id| !id.is_empty()),
        refund_fee: refund.refund_fee,
        status: refund.status,
        succeeded_at: refund.succeeded_at,
    }
}

/// Logs the notification `APPLIED` and stores the refund; `false` when another delivery of
/// the same news logged it first (a duplicate: nothing stored).
async fn log_applied_and_store(
    ctx: &Context<'_>,
    conn: &mut AsyncPgConnection,
    row: &LogRow<'_>,
    refund: &RefundEvent,
) -> Result<bool, diesel::result::Error> {
    if !ctx
        .log(conn, row, NotificationOutcome::Applied, None)
        .await?
    {
        return Ok(false);
    }
    store_refund(conn, refund, IfKnown::Update).await?;
    Ok(true)
}

/// What writing a refund does to its row when the row exists already.
#[derive(Clone, Copy)]
enum IfKnown {
    /// Take the notified status, refund id, amount and success time.
    Update,
    /// Leave it as it is: a `PROCESSING` notification only records a refund we did not know.
    Keep,
}

/// Inserts the notified refund's row; a known row is updated or kept as `if_known` says.
async fn store_refund(
    conn: &mut AsyncPgConnection,
    refund: &RefundEvent,
    if_known: IfKnown,
) -> Result<(), diesel::result::Error> {
    let insert = diesel::insert_into(refunds::table).values(new_refund(refund));
    let written = match if_known {
        IfKnown::Update => {
            insert
                .on_conflict((refunds::mch_id, refunds::sub_mch_id, refunds::out_refund_no))
                .do_update()
                .set((
                    refunds::status.eq(excluded(refunds::status)),
                    refunds::refund_id.eq(excluded(refunds::refund_id)),
                    refunds::refund_fee.eq(excluded(refunds::refund_fee)),
                    refunds::succeeded_at.eq(excluded(refunds::succeeded_at)),
                    refunds::updated_at.eq(Utc::now()),
                ))
                .execute(conn)
                .await
        }
        IfKnown::Keep => insert.on_conflict_do_nothing().execute(conn).await,
    };
    written.map(|_| ())
}
