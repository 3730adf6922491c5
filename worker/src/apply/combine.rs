//! Combine payments (合单支付): several orders paid at once
//! (<https://pay.weixin.qq.com/docs/merchant/apis/combine-payment/orders/combine-payment-notice.html>).
//!
//! All in the caller's one transaction:
//! 1. the row of the combine message itself, under [`CombineEvent::dedupe_key`]: a re-send
//!    ends here as a duplicate;
//! 2. each sub order through [`pay::apply`], with every rule of a plain payment, under its
//!    own payment key (`pay:{mchid}:{transaction_id}`), so the same order paid news from any
//!    other channel (its order query, a re-send of a later combine answer) is a duplicate,
//!    and the other way round. One sub order's anomaly is committed beside the others'
//!    bookings; an unknown order for any of them is an error that rolls the whole message
//!    back (retried, then parked, as a plain payment);
//! 3. the combine row's outcome set from the whole's [`Verdict`].
//!
//! A sub order's `mchid` must be the combine's merchant (the one the message is addressed
//! to and verified with) or another configured merchant (a combine payment may pay orders of
//! several of ours); any other is that sub order's `MCH_ID_MISMATCH`.

use diesel::OptionalExtension;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use wxpay_runtime::config::Merchants;
use wxpay_shared::state::NotificationOutcome;

use super::{pay, reason, ApplyError, Context, LogRow, Verdict};
use crate::db::queries::InsertNotification;
use crate::decode::{CombineEvent, PayEvent};

pub(super) async fn apply(
    conn: &mut AsyncPgConnection,
    ctx: &Context<'_>,
    merchants: &Merchants,
    combine: &CombineEvent,
) -> Result<Verdict, ApplyError> {
    let row = LogRow::of_order(ctx, "", Some(&combine.combine_out_trade_no));
    // Verified with the keys of the merchant it is addressed to, it names another one as
    // its starter: none of its orders is touched.
    if combine.combine_mch_id != ctx.mch_id {
        let detail = format!("combine payment names merchant {}", combine.combine_mch_id);
        return Ok(ctx
            .anomaly(conn, &row, None, reason::MCH_ID_MISMATCH, detail)
            .await?);
    }
    let inserted: Option<i64> =
        InsertNotification(ctx.new_row(&row, NotificationOutcome::Recorded, None))
            .get_result(conn)
            .await
            .optional()?;
    let Some(id) = inserted else {
        return Ok(Verdict::Duplicate);
    };
    let mut verdicts = Vec::with_capacity(combine.sub_orders.len());
    for sub_order in &combine.sub_orders {
        let key = sub_order.dedupe_key(&ctx.message.body);
        let sub_ctx = Context {
            dedupe_key: &key,
            ..*ctx
        };
        let sub_ctx = sub_order_context(&sub_ctx, merchants, sub_order);
        verdicts.push(pay::apply(conn, &sub_ctx, sub_order).await?);
    }
    let outcome = outcome_of(&verdicts);
    ctx.amend(conn, id, outcome, None).await?;
    Ok(whole(verdicts))
}

/// The context of `sub_order` under `ctx` (whose `dedupe_key` stays): the merchant it
/// belongs to when that is another configured merchant (its orders, its sub-merchants), else
/// the combine's, where `pay::apply` finds an unknown merchant mismatched.
pub(super) fn sub_order_context<'a>(
    ctx: &Context<'a>,
    merchants: &'a Merchants,
    sub_order: &PayEvent,
) -> Context<'a> {
    match merchants.get(&sub_order.mch_id) {
        Some(merchant) => Context {
            mch_id: &merchant.mch_id,
            sub_merchants: &merchant.sub_merchants,
            ..*ctx
        },
        None => *ctx,
    }
}

/// The verdict of a whole combine payment, the strongest of its sub orders': an `Anomaly`
/// (the first; a person must look, so the message counts in `wxpay_worker_anomalies_total`
/// and its alert fires even when another sub order was booked beside it) over `Applied` over
/// `Recorded` (a sub order not paid yet) over `Noop` (already paid by this transaction) over
/// `Duplicate` (every sub order was booked before). The events of what was booked are
/// committed either way.
fn whole(verdicts: Vec<Verdict>) -> Verdict {
    let rank = |verdict: &Verdict| match verdict {
        Verdict::Anomaly { .. } => 4,
        Verdict::Applied => 3,
        // A sub order is a payment: never forwarded; ranked as what it would be, a record.
        Verdict::Recorded | Verdict::Forwarded => 2,
        Verdict::Noop => 1,
        Verdict::Duplicate => 0,
    };
    let mut strongest = Verdict::Duplicate;
    for verdict in verdicts {
        if rank(&verdict) > rank(&strongest) {
            strongest = verdict;
        }
    }
    strongest
}

/// The combine row's outcome: `APPLIED` when a sub order was, `NOOP` when every one was
/// already booked, else `RECORDED`. Never `ANOMALY`: an anomaly is its sub order's own row,
/// the one a person resolves.
fn outcome_of(verdicts: &[Verdict]) -> NotificationOutcome {
    if verdicts.contains(&Verdict::Applied) {
        NotificationOutcome::Applied
    } else if verdicts
        .iter()
        .all(|verdict| matches!(verdict, Verdict::Noop | Verdict::Duplicate))
    {
        NotificationOutcome::Noop
    } else {
        NotificationOutcome::Recorded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anomaly(reason: &'static str) -> Verdict {
        Verdict::Anomaly {
            reason,
            detail: String::new(),
        }
    }

    #[test]
    fn an_anomaly_outranks_a_booking_and_a_booking_the_rest() {
        let amount = anomaly(reason::AMOUNT_MISMATCH);
        let booked_beside_an_anomaly = vec![amount.clone(), Verdict::Applied, Verdict::Duplicate];
        assert_eq!(
            outcome_of(&booked_beside_an_anomaly),
            NotificationOutcome::Applied
        );
        assert_eq!(whole(booked_beside_an_anomaly), amount);
        assert_eq!(
            whole(vec![Verdict::Recorded, Verdict::Applied]),
            Verdict::Applied
        );
        let two = vec![
            Verdict::Recorded,
            amount.clone(),
            anomaly(reason::APPID_MISMATCH),
        ];
        assert_eq!(outcome_of(&two), NotificationOutcome::Recorded);
        assert_eq!(whole(two), amount);
        assert_eq!(
            whole(vec![Verdict::Noop, Verdict::Recorded]),
            Verdict::Recorded
        );
        let booked_before = vec![Verdict::Duplicate, Verdict::Noop];
        assert_eq!(outcome_of(&booked_before), NotificationOutcome::Noop);
        assert_eq!(whole(booked_before), Verdict::Noop);
        assert_eq!(
            whole(vec![Verdict::Duplicate, Verdict::Duplicate]),
            Verdict::Duplicate
        );
    }
}
