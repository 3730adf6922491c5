//! RabbitMQ plumbing shared by the consumer, the retry tiers, the outbox relay and `dlq`:
//! connection, topology, confirmed publishing.

use std::future::Future;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use secrecy::ExposeSecret;
use wxpay_runtime::amqp::{
    durable_exchange_options, durable_queue_options, quorum_queue_arguments,
};
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
    /// The broker refused a declaration: the queue or exchange exists with other arguments.
    #[error("the broker refused to declare {what}: {fix} ({detail})")]
    Inequivalent {
        what: String,
        fix: String,
        detail: String,
    },
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

/// Deliveries of one message from a retry tier before the broker dead-letters it (to the
/// main queue, like an expiry): nothing consumes the tiers, so only an operator's tool
/// fetching and returning a message counts; past the limit it moves on instead of being
/// dropped.
pub const RETRY_TIER_DELIVERY_LIMIT: i64 = 5;

/// The arguments of retry tier queue with `delay_ms`: a quorum queue (replicated: these
/// hold notifications the gateway already answered SUCCESS for) whose messages expire after
/// the delay and are dead-lettered back to the main queue at least once (the broker
/// re-publishes with confirms and keeps the message until the main queue took it; this
/// needs `reject-publish` overflow).
pub fn retry_tier_arguments(rabbitmq: &RabbitmqSettings, delay_ms: u64) -> FieldTable {
    let mut arguments = quorum_queue_arguments();
    let mut put = |name: &str, value: AMQPValue| {
        arguments.insert(ShortString::from(name), value);
    };
    put(
        "x-message-ttl",
        AMQPValue::LongLongInt(i64::try_from(delay_ms).unwrap_or(i64::MAX)),
    );
    put("x-dead-letter-exchange", text(""));
    put("x-dead-letter-routing-key", text(&rabbitmq.queue));
    put("x-dead-letter-strategy", text("at-least-once"));
    put("x-overflow", text("reject-publish"));
    put(
        "x-delivery-limit",
        AMQPValue::LongLongInt(RETRY_TIER_DELIVERY_LIMIT),
    );
    arguments
}

/// The events exchange's arguments: unroutable events go to `<events_exchange>.unrouted`.
pub fn events_exchange_arguments(rabbitmq: &RabbitmqSettings) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("alternate-exchange"),
        text(&rabbitmq.unrouted_events()),
    );
    arguments
}

/// A declaration the broker refused because the queue or exchange exists with other
/// arguments: says which, and the step that fixes it (README, "Upgrading the broker
/// topology").
fn refused(error: BrokerError, what: &str, fix: &str) -> BrokerError {
    let text = error.to_string();
    if text.contains("PRECONDITION_FAILED") || text.contains("inequivalent arg") {
        BrokerError::Inequivalent {
            what: what.to_owned(),
            fix: fix.to_owned(),
            detail: text,
        }
    } else {
        error
    }
}

/// Declares the main queue (durable quorum, as the gateway does), one delay queue per retry
/// tier ([`retry_tier_arguments`]), the parking queue (durable quorum), the events exchange
/// (durable topic) with its alternate exchange (fanout) and that exchange's quorum queue.
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
        let queue = rabbitmq.retry_queue(tier);
        bounded(channel.queue_declare(
            queue.as_str().into(),
            durable_queue_options(),
            retry_tier_arguments(rabbitmq, *delay),
        ))
        .await
        .map_err(|error| {
            refused(
                error,
                &format!("retry tier queue {queue}"),
                &format!(
                    "it is a classic queue of an older release (or its delay changed): stop the \
                     workers, wait until it is empty (`rabbitmqctl list_queues name messages`), \
                     delete it (`rabbitmqctl delete_queue {queue}`), then start the worker, which \
                     declares it as a quorum queue"
                ),
            )
        })?;
    }
    bounded(channel.queue_declare(
        rabbitmq.parked_queue().into(),
        durable_queue_options(),
        quorum_queue_arguments(),
    ))
    .await?;
    let unrouted = rabbitmq.unrouted_events();
    bounded(channel.exchange_declare(
        unrouted.as_str().into(),
        ExchangeKind::Fanout,
        durable_exchange_options(),
        FieldTable::default(),
    ))
    .await?;
    bounded(channel.queue_declare(
        unrouted.as_str().into(),
        durable_queue_options(),
        quorum_queue_arguments(),
    ))
    .await?;
    bounded(channel.queue_bind(
        unrouted.as_str().into(),
        unrouted.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await?;
    let exchange = &rabbitmq.events_exchange;
    bounded(channel.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        durable_exchange_options(),
        events_exchange_arguments(rabbitmq),
    ))
    .await
    .map_err(|error| {
        refused(
            error,
            &format!("events exchange {exchange}"),
            &format!(
                "it was declared by an older release without alternate-exchange={unrouted}: \
                 delete it (`rabbitmqadmin delete exchange name={exchange}`; its subscribers' \
                 bindings go with it and must be re-created) or set rabbitmq.events_exchange to \
                 a new name, then start the worker, which declares it"
            ),
        )
    })?;
    Ok(())
}

/// Deletes what [`declare_topology`] declares, best effort (tests and benchmarks clean up
/// their own names with it). Never for a production name: the queues hold messages.
pub async fn delete_topology(
    connection: &Connection,
    rabbitmq: &RabbitmqSettings,
    worker: &WorkerSettings,
) {
    let mut queues = vec![
        rabbitmq.queue.clone(),
        rabbitmq.parked_queue(),
        rabbitmq.unrouted_events(),
    ];
    queues.extend((0..worker.retry_delays_ms.len()).map(|tier| rabbitmq.retry_queue(tier)));
    // A channel per deletion: a failed one closes its channel.
    for queue in queues {
        if let Ok(channel) = bounded(connection.create_channel()).await {
            let _ = bounded(channel.queue_delete(queue.as_str().into(), Default::default())).await;
        }
    }
    for exchange in [rabbitmq.events_exchange.clone(), rabbitmq.unrouted_events()] {
        if let Ok(channel) = bounded(connection.create_channel()).await {
            let _ = bounded(channel.exchange_delete(exchange.as_str().into(), Default::default()))
                .await;
        }
    }
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
