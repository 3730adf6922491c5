//! Payment results: `NOTPAY → PAID` when merchant, appid and amount agree; anomalies
//! otherwise.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{emit, event, reason, ApplyError, Context, LogRow, Verdict};
use crate::db::models::{outcome, state, Order};
use crate::db::schema::orders;
use crate::decode::PayEvent;

pub(super) async fn apply(
    conn: &mut AsyncPgConnection,
    ctx: &Context<'_>,
    pay: &PayEvent,
) -> Result<Verdict, ApplyError> {
    let row = LogRow {
        mch_id: &ctx.message.mch_id,
        out_trade_no: Some(pay.out_trade_no.as_str()).filter(|no| !no.is_empty()),
        out_refund_no: None,
        transaction_id: pay.transaction_id.as_deref(),
    };
    // result_code / trade_state not SUCCESS: kept for the record, no transition.
    if !pay.success {
        return Ok(ctx
            .record(conn, &row, outcome::RECORDED, Verdict::Recorded)
            .await?);
    }
    // Verified with the keys of the merchant the message is addressed to, but naming
    // another merchant inside: never touch either merchant's orders.
    if pay.mch_id != ctx.message.mch_id {
        let detail = format!("body names merchant {}", pay.mch_id);
        return Ok(ctx
            .anomaly(conn, &row, reason::MCH_ID_MISMATCH, detail)
            .await?);
    }
    let order: Option<Order> = orders::table
        .find((&pay.mch_id, &pay.out_trade_no))
        .select(Order::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?;
    let Some(order) = order else {
        let detail = format!("no order {}", pay.out_trade_no);
        return Ok(ctx
            .anomaly(conn, &row, reason::UNKNOWN_ORDER, detail)
            .await?);
    };
    if order.appid != pay.appid {
        let detail = format!("order appid {}, notified {}", order.appid, pay.appid);
        return Ok(ctx
            .anomaly(conn, &row, reason::APPID_MISMATCH, detail)
            .await?);
    }
    if order.amount_total != pay.amount_total {
        let detail = format!(
            "order amount {} fen, notified {} fen",
            order.amount_total, pay.amount_total
        );
        return Ok(ctx
            .anomaly(conn, &row, reason::AMOUNT_MISMATCH, detail)
            .await?);
    }
    match order.state.as_str() {
        state::NOTPAY => {
            if !ctx.log(conn, &row, outcome::APPLIED, None).await? {
                return Ok(Verdict::Duplicate);
            }
            let paid_at = pay.paid_at.unwrap_or_else(Utc::now);
            diesel::update(orders::table.find((&order.mch_id, &order.out_trade_no)))
                .set((
                    orders::state.eq(state::PAID),
                    orders::transaction_id.eq(pay.transaction_id.as_deref()),
                    orders::paid_at.eq(Some(paid_at)),
                    orders::updated_at.eq(Utc::now()),
                ))
                .execute(conn)
                .await?;
            let payload = serde_json::json!({
                "mch_id": order.mch_id,
                "out_trade_no": order.out_trade_no,
                "appid": order.appid,
                "transaction_id": pay.transaction_id,
                "amount_total": order.amount_total,
                "paid_at": paid_at.to_rfc3339(),
            });
            emit(
                conn,
                event::ORDER_PAID,
                &order.mch_id,
                &order.out_trade_no,
                payload,
            )
            .await?;
            Ok(Verdict::Applied)
        }
        state::CLOSED => {
            let detail = format!("order {} is CLOSED", order.out_trade_no);
            Ok(ctx
                .anomaly(conn, &row, reason::PAID_AFTER_CLOSE, detail)
                .await?)
        }
        // PAID, PARTIALLY_REFUNDED, REFUNDED: paid already.
        _ => {
            if order.transaction_id.as_deref() == pay.transaction_id.as_deref() {
                Ok(ctx.record(conn, &row, outcome::NOOP, Verdict::Noop).await?)
            } else {
                let detail = format!(
                    "order {} already paid by transaction {}",
                    order.out_trade_no,
                    order.transaction_id.as_deref().unwrap_or("?")
                );
                Ok(ctx
                    .anomaly(conn, &row, reason::DUPLICATE_PAYMENT, detail)
                    .await?)
            }
        }
    }
}
