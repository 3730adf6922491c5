//! Forwarded notifications: merchant transfers, profit sharing, pay score and any kind WeChat
//! Pay adds. Verified and decrypted like payments, they move no order here: each is logged
//! `FORWARDED` (its dedupe key a business key, so the same news under two notification ids
//! is one event) and published as `wechatpay.<event_type>` with its decrypted resource, for
//! the business system that owns transfers, sharing and service orders.
//!
//! A resource that names another merchant than the one whose keys decrypted it, or a
//! sub-merchant that merchant does not serve, is an anomaly and is not forwarded: the
//! business system must never act on news addressed to someone else.

use diesel_async::AsyncPgConnection;
use wxpay_shared::state::NotificationOutcome;

use super::{emit, reason, ApplyError, Context, LogRow, Verdict};
use crate::decode::ForwardEvent;

pub(super) async fn apply(
    conn: &mut AsyncPgConnection,
    ctx: &Context<'_>,
    forward: &ForwardEvent,
) -> Result<Verdict, ApplyError> {
    let row = LogRow::of_order(ctx, &forward.sub_mch_id, None);
    if let Some((reason, detail)) = mismatch(ctx, forward) {
        return Ok(ctx.anomaly(conn, &row, None, reason, detail).await?);
    }
    if !ctx
        .log(conn, &row, NotificationOutcome::Forwarded, None)
        .await?
    {
        return Ok(Verdict::Duplicate);
    }
    let payload = serde_json::json!({
        "notification_id": forward.notification_id,
        "mch_id": forward.mch_id,
        "sub_mch_id": forward.sub_mch_id,
        "event_type": forward.event_type,
        "original_type": forward.original_type,
        "create_time": forward.create_time,
        "summary": forward.summary,
        "kind": forward.family.as_str(),
        "resource": forward.resource,
    });
    emit(
        conn,
        &forward.routing_key(),
        &forward.mch_id,
        &forward.business_id,
        payload,
    )
    .await?;
    Ok(Verdict::Forwarded)
}

/// Why `forward` must not reach the business system: its resource names another merchant,
/// or a sub-merchant the merchant does not serve. A resource naming no sub-merchant is the
/// merchant's own business (a service provider's own transfers), never a mismatch.
fn mismatch(ctx: &Context<'_>, forward: &ForwardEvent) -> Option<(&'static str, String)> {
    let named = forward.named_mch_id.as_str();
    if !named.is_empty() && named != ctx.message.mch_id {
        return Some((
            reason::MCH_ID_MISMATCH,
            format!("resource names merchant {named}"),
        ));
    }
    if forward.sub_mch_id.is_empty() {
        return None;
    }
    ctx.merchant_mismatch(&ctx.message.mch_id, &forward.sub_mch_id)
}
