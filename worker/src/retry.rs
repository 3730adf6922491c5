//! Retry tiers, parking, and the `dlq` commands.
//!
//! A transient failure (database down, lock timeout, out-of-order refund) re-publishes the
//! message, with confirm, to the delay queue of its tier (`<queue>.retry.<tier>`): it comes
//! back to the main queue when the tier's TTL expires. `x-wxpay-attempt` counts; past the
//! last tier the message is parked. Poison (undecodable, bad signature, unknown merchant) is
//! parked at once in `<queue>.parked` with `x-wxpay-park-reason`. The original is acked
//! only after the broker confirmed the copy: nothing is lost, and nothing is ever
//! `nack(requeue)`d in a hot loop.

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use wxpay_runtime::amqp::{message_id_text, AmqpMessage};
use wxpay_runtime::config::Settings;
use wxpay_runtime::telemetry::{metric, step};
use wxpay_shared::message::{header, NotifyKind, NotifyMessage};

use crate::apply::UNKNOWN_ORDER_REASON;
use crate::broker::{self, BrokerError};

/// Header carrying why the last attempt failed (diagnostics of retried messages).
pub const RETRY_REASON_HEADER: &str = "x-wxpay-retry-reason";

/// Where a failed message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheduled {
    /// To the delay queue of this tier (0-based).
    Retry { tier: usize },
    /// Past the last tier: parked.
    Parked,
}

/// Copies `properties` with the attempt and reason headers set (or removed when `None`).
pub fn with_headers(
    properties: &BasicProperties,
    attempt: Option<u32>,
    park_reason: Option<&str>,
    retry_reason: Option<&str>,
) -> BasicProperties {
    let mut headers: FieldTable = properties.headers().clone().unwrap_or_default();
    let mut inner = headers.inner().clone();
    let mut set = |name: &str, value: Option<AMQPValue>| match value {
        Some(value) => {
            inner.insert(ShortString::from(name), value);
        }
        None => {
            inner.remove(name);
        }
    };
    set(
        header::ATTEMPT,
        attempt
            .filter(|a| *a > 1)
            .map(|a| AMQPValue::LongLongInt(i64::from(a))),
    );
    set(
        header::PARK_REASON,
        park_reason.map(|r| AMQPValue::LongString(LongString::from(r.as_bytes()))),
    );
    set(
        RETRY_REASON_HEADER,
        retry_reason.map(|r| AMQPValue::LongString(LongString::from(r.as_bytes()))),
    );
    headers = FieldTable::from(inner);
    properties.clone().with_headers(headers)
}

/// Parks a delivery with `reason` (confirmed). The caller acks the original afterwards.
pub async fn park(
    channel: &Channel,
    settings: &Settings,
    delivery: &Delivery,
    reason: &str,
) -> Result<(), BrokerError> {
    let attempt = header_attempt(&delivery.properties);
    let properties = with_headers(&delivery.properties, attempt, Some(reason), None);
    broker::publish_confirmed(
        channel,
        "",
        &settings.rabbitmq.parked_queue(),
        true,
        &delivery.data,
        properties,
    )
    .await?;
    metrics::counter!(metric::WORKER_PARKED_TOTAL, "reason" => reason_label(reason)).increment(1);
    Ok(())
}

/// The label of a park reason: its code, before any `:` detail.
pub fn reason_label(reason: &str) -> String {
    reason.split(':').next().unwrap_or(reason).to_owned()
}

fn header_attempt(properties: &BasicProperties) -> Option<u32> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(header::ATTEMPT)? {
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        _ => None,
    }
}

/// Sends a transiently failed delivery to its next retry tier, or parks it when the tiers
/// are exhausted. `attempt` is the attempt that just failed (1 = first delivery).
pub async fn schedule(
    channel: &Channel,
    settings: &Settings,
    delivery: &Delivery,
    attempt: u32,
    reason: &str,
) -> Result<Scheduled, BrokerError> {
    let tiers = settings.worker.retry_delays_ms.len();
    let mut tier = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
    // An unknown order waits out worker.unknown_order_grace_secs in the last tier, however
    // short the tiers are; the worker parks it itself once the grace period is over.
    if tier >= tiers && tiers > 0 && reason_label(reason) == UNKNOWN_ORDER_REASON {
        tier = tiers - 1;
    }
    if tier >= tiers {
        park(
            channel,
            settings,
            delivery,
            &format!("retries_exhausted: {reason}"),
        )
        .await?;
        return Ok(Scheduled::Parked);
    }
    let properties = with_headers(&delivery.properties, Some(attempt + 1), None, Some(reason));
    broker::publish_confirmed(
        channel,
        "",
        &settings.rabbitmq.retry_queue(tier),
        true,
        &delivery.data,
        properties,
    )
    .await?;
    metrics::counter!(metric::WORKER_RETRIES_TOTAL).increment(1);
    Ok(Scheduled::Retry { tier })
}

/// One line of `dlq list`: metadata only, never the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedInfo {
    pub id: String,
    pub kind: String,
    pub mch_id: String,
    pub attempt: u32,
    pub reason: String,
    pub received_at: String,
}

impl std::fmt::Display for ParkedInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\t{}\t{}\t{}\t{}\t{}",
            self.id, self.kind, self.mch_id, self.attempt, self.reason, self.received_at
        )
    }
}

fn info(delivery: &Delivery) -> ParkedInfo {
    let properties = &delivery.properties;
    let id = message_id_text(properties).unwrap_or("-").to_owned();
    let text = |name: &str| -> String {
        properties
            .headers()
            .as_ref()
            .and_then(|h| match h.inner().get(name) {
                Some(AMQPValue::LongString(s)) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
                _ => None,
            })
            .unwrap_or_else(|| "-".to_owned())
    };
    let received_at = NotifyMessage::from_amqp(properties, Vec::new())
        .ok()
        .and_then(|m| chrono::DateTime::from_timestamp_millis(m.received_at_ms))
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| "-".to_owned());
    let kind = text(header::KIND);
    ParkedInfo {
        id,
        kind: NotifyKind::parse(&kind)
            .map(|k| k.as_str().to_owned())
            .unwrap_or(kind),
        mch_id: text(header::MCH_ID),
        attempt: header_attempt(properties).unwrap_or(1),
        reason: text(header::PARK_REASON),
        received_at,
    }
}

/// Lists the parked messages without consuming them: each is fetched unacknowledged and
/// returned to the queue when the channel closes.
pub async fn dlq_list(settings: &Settings) -> Result<Vec<ParkedInfo>, BrokerError> {
    let connection = broker::connect(&settings.rabbitmq).await?;
    let channel = broker::bounded(connection.create_channel()).await?;
    broker::declare_topology(&channel, &settings.rabbitmq, &settings.worker).await?;
    let mut parked = Vec::new();
    while let Some(message) = broker::bounded(channel.basic_get(
        settings.rabbitmq.parked_queue().into(),
        BasicGetOptions { no_ack: false },
    ))
    .await?
    {
        parked.push(info(&message.delivery));
    }
    // Closing returns every fetched message to the queue.
    broker::close(&connection, &[&channel], "listed").await;
    Ok(parked)
}

/// Which parked messages to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplaySelection {
    All,
    Id(String),
}

/// Moves parked messages back to the main queue (attempt reset, reason removed), each with
/// a confirm; the parked copy is acked only after the confirm. Returns how many moved.
pub async fn dlq_replay(
    settings: &Settings,
    selection: &ReplaySelection,
) -> Result<usize, BrokerError> {
    let connection = broker::connect(&settings.rabbitmq).await?;
    let channel = broker::confirm_channel(&connection).await?;
    broker::declare_topology(&channel, &settings.rabbitmq, &settings.worker).await?;
    let mut moved = 0;
    while let Some(message) = broker::bounded(channel.basic_get(
        settings.rabbitmq.parked_queue().into(),
        BasicGetOptions { no_ack: false },
    ))
    .await?
    {
        let delivery = message.delivery;
        let wanted = match selection {
            ReplaySelection::All => true,
            ReplaySelection::Id(id) => message_id_text(&delivery.properties) == Some(id.as_str()),
        };
        if !wanted {
            continue;
        }
        let properties = with_headers(&delivery.properties, None, None, None);
        broker::publish_confirmed(
            &channel,
            "",
            &settings.rabbitmq.queue,
            true,
            &delivery.data,
            properties,
        )
        .await?;
        broker::settle(delivery.acker.ack(BasicAckOptions::default())).await?;
        moved += 1;
        tracing::info!(step = step::PARK, request_id = %info(&delivery).id, "parked message replayed");
    }
    // Not selected ones return to the queue when the channel closes.
    broker::close(&connection, &[&channel], "replayed").await;
    Ok(moved)
}
