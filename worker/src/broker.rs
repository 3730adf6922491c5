//! RabbitMQ plumbing shared by the consumer, the retry tiers, the outbox relay and `dlq`:
//! connection, topology, confirmed publishing.

use std::future::Future;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use secrecy::ExposeSecret;
use wxpay_runtime::amqp::{durable_queue_options, quorum_queue_arguments};
use wxpay_runtime::config::{RabbitmqSettings, WorkerSettings};

/// Why a broker operation failed. All of them are transient for the caller.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker connection timed out")]
    Timeout,
    #[error("broker did not confirm the publish (nack)")]
    Nacked,
    #[error("message was unroutable (returned by the broker)")]
    Returned,
    #[error("the broker ended the consumer")]
    ConsumerEnded,
    #[error("delivery not settled: its channel is gone or it was settled already")]
    Unsettled,
}

/// Bound on one broker operation (channel, declaration, publish, confirm, close): lapin
/// can wait forever on a broker that stopped answering.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Time given to lapin's IO loop to finish after a close, before the runtime goes away
/// (otherwise it logs errors about a runtime shutting down).
const IO_LOOP_GRACE: Duration = Duration::from_millis(100);

/// Runs one lapin operation under [`OPERATION_TIMEOUT`].
pub async fn bounded<T>(
    operation: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(OPERATION_TIMEOUT, operation).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(BrokerError::Timeout),
    }
}

/// Acks, nacks or rejects a delivery under [`OPERATION_TIMEOUT`]. lapin answers `Ok(false)`
/// rather than an error when the delivery's channel is gone: the broker will redeliver, so
/// it is a failure here.
pub async fn settle(
    operation: impl Future<Output = Result<bool, lapin::Error>>,
) -> Result<(), BrokerError> {
    if bounded(operation).await? {
        Ok(())
    } else {
        Err(BrokerError::Unsettled)
    }
}

/// Closes channels, then the connection, politely and bounded; best effort, for the ends
/// of runs and shutdowns.
pub async fn close(connection: &Connection, channels: &[&Channel], reason: &str) {
    for channel in channels {
        let _ = bounded(channel.close(200, reason.into())).await;
    }
    if connection.status().connected() {
        let _ = bounded(connection.close(200, reason.into())).await;
    }
    tokio::time::sleep(IO_LOOP_GRACE).await;
}

/// Connects, bounded by `rabbitmq.connect_timeout_ms`.
pub async fn connect(settings: &RabbitmqSettings) -> Result<Connection, BrokerError> {
    // lapin runs on the current tokio runtime (its default with the `tokio` feature).
    let properties = ConnectionProperties::default()
        .with_connection_name(lapin::types::LongString::from("wxpay-worker"));
    let timeout = Duration::from_millis(settings.connect_timeout_ms.max(1));
    match tokio::time::timeout(
        timeout,
        Connection::connect(settings.url.expose_secret(), properties),
    )
    .await
    {
        Ok(connection) => Ok(connection?),
        Err(_) => Err(BrokerError::Timeout),
    }
}

/// A channel in confirm mode.
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = bounded(connection.create_channel()).await?;
    bounded(channel.confirm_select(ConfirmSelectOptions::default())).await?;
    Ok(channel)
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes()))
}

/// Declares the main queue (durable quorum, as the gateway does), one delay queue per retry
/// tier (durable; messages expire after the tier's delay and are dead-lettered back to the
/// main queue), the parking queue (durable quorum) and the events exchange (durable topic).
pub async fn declare_topology(
    channel: &Channel,
    rabbitmq: &RabbitmqSettings,
    worker: &WorkerSettings,
) -> Result<(), BrokerError> {
    bounded(channel.queue_declare(
        rabbitmq.queue.as_str().into(),
        durable_queue_options(),
        quorum_queue_arguments(),
    ))
    .await?;
    for (tier, delay) in worker.retry_delays_ms.iter().enumerate() {
        let mut arguments = FieldTable::default();
        let ttl = i64::try_from(*delay).unwrap_or(i64::MAX);
        arguments.insert(
            ShortString::from("x-message-ttl"),
            AMQPValue::LongLongInt(ttl),
        );
        arguments.insert(ShortString::from("x-dead-letter-exchange"), text(""));
        arguments.insert(
            ShortString::from("x-dead-letter-routing-key"),
            text(&rabbitmq.queue),
        );
        bounded(channel.queue_declare(
            rabbitmq.retry_queue(tier).into(),
            durable_queue_options(),
            arguments,
        ))
        .await?;
    }
    bounded(channel.queue_declare(
        rabbitmq.parked_queue().into(),
        durable_queue_options(),
        quorum_queue_arguments(),
    ))
    .await?;
    bounded(channel.exchange_declare(
        rabbitmq.events_exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await?;
    Ok(())
}

/// Publishes and waits for the broker's confirm, each step bounded. `mandatory` turns an
/// unroutable message (e.g. a queue deleted under us) into an error instead of a silent
/// drop.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), BrokerError> {
    let confirm = bounded(channel.basic_publish(
        exchange.into(),
        routing_key.into(),
        BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        },
        body,
        properties,
    ))
    .await?;
    check_confirmation(bounded(confirm).await?)
}

/// Maps a confirmation to success or error.
pub fn check_confirmation(confirmation: Confirmation) -> Result<(), BrokerError> {
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(BrokerError::Returned),
        Confirmation::Nack(_) => Err(BrokerError::Nacked),
    }
}
