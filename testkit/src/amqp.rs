//! What tests do on RabbitMQ: publish a queue message as the gateway does (persistent,
//! mandatory, confirmed), take every message out of a queue, read a message's headers,
//! delete what a test declared.

use std::time::Duration;

use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};
use wxpay_runtime::amqp::{durable_queue_options, quorum_queue_arguments, AmqpMessage};
use wxpay_runtime::config::RabbitmqSettings;
use wxpay_shared::message::NotifyMessage;

use crate::services::AMQP_URL;

/// Appends `body` to the platform keys stream of `rabbitmq` (declared first, as the
/// services declare it), confirmed.
pub async fn publish_to_stream(rabbitmq: &RabbitmqSettings, body: &[u8]) {
    let connection = connect().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    wxpay_runtime::platform_keys::declare_stream(&channel, rabbitmq)
        .await
        .expect("the stream declared");
    let stream = rabbitmq.platform_keys_stream();
    let confirm = channel
        .basic_publish(
            "".into(),
            stream.as_str().into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .expect("published");
    let confirmation = confirm.await.expect("confirmed");
    assert!(
        matches!(confirmation, Confirmation::Ack(None)),
        "{confirmation:?}"
    );
    let _ = connection.close(200, "published".into()).await;
}

/// A connection to the test broker, bounded so that a broker that is down fails the test.
pub async fn connect() -> Connection {
    try_connect(AMQP_URL).await.expect("broker connection")
}

pub(crate) async fn try_connect(url: &str) -> Result<Connection, String> {
    tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| "broker connect timed out".to_owned())?
    .map_err(|error| error.to_string())
}

/// A confirm channel on which `queue` is declared as the gateway declares the main queue
/// (durable quorum): publishing before any service started is safe.
pub async fn confirm_channel_to(connection: &Connection, queue: &str) -> Channel {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    channel
        .queue_declare(
            queue.into(),
            durable_queue_options(),
            quorum_queue_arguments(),
        )
        .await
        .expect("main queue declared");
    channel
}

/// Publishes `messages` to `queue` (declared first), mandatory, and waits until the broker
/// confirmed every one of them (a plain ack: not returned, not nacked).
pub async fn publish(queue: &str, messages: &[NotifyMessage]) {
    let bodies: Vec<(&[u8], BasicProperties)> = messages
        .iter()
        .map(|message| (message.body.as_slice(), message.properties()))
        .collect();
    publish_raw(queue, &bodies).await;
}

/// [`publish`] of bodies with the properties given (a message the worker cannot decode).
pub async fn publish_raw(queue: &str, messages: &[(&[u8], BasicProperties)]) {
    let connection = connect().await;
    let channel = confirm_channel_to(&connection, queue).await;
    // Bounded batches: the confirms of a batch are awaited before the next is sent.
    for batch in messages.chunks(1000) {
        let mut confirms = Vec::with_capacity(batch.len());
        for (body, properties) in batch {
            confirms.push(send(&channel, queue, body, properties).await);
        }
        for ((body, properties), confirm) in batch.iter().zip(confirms) {
            let mut confirmation = confirm.await.expect("confirm");
            // A quorum queue declared a moment ago may nack while it elects its leader:
            // sent again, as a publisher does with a nack.
            for _ in 0..5 {
                if !matches!(confirmation, Confirmation::Nack(_)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let again = send(&channel, queue, body, properties).await;
                confirmation = again.await.expect("confirm");
            }
            assert!(
                matches!(confirmation, Confirmation::Ack(None)),
                "not a plain ack: {confirmation:?}"
            );
        }
    }
    let _ = connection.close(200, "published".into()).await;
}

/// One mandatory publish to `queue`; its confirm to await.
async fn send(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    properties: &BasicProperties,
) -> PublisherConfirm {
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    channel
        .basic_publish("".into(), queue.into(), mandatory, body, properties.clone())
        .await
        .expect("publish")
}

/// Messages ready in `queue` (declared first, so an absent queue counts 0).
pub async fn queue_depth(queue: &str) -> u32 {
    let connection = connect().await;
    let channel = confirm_channel_to(&connection, queue).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .expect("queue exists");
    let _ = connection.close(200, "counted".into()).await;
    declared.message_count()
}

/// Every message in `queue`, acknowledged: the queue is empty afterwards.
pub async fn drain_queue(queue: &str) -> Vec<BasicGetMessage> {
    let connection = connect().await;
    let channel = connection.create_channel().await.expect("channel");
    let mut messages = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("basic.get")
    {
        let acked = message
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        assert!(acked, "ack sent");
        messages.push(message);
    }
    let _ = connection.close(200, "drained".into()).await;
    messages
}

/// Deletes `queue`; the broker must accept it.
pub async fn delete_queue(queue: &str) {
    let connection = connect().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_delete(queue.into(), Default::default())
        .await
        .expect("queue.delete");
    let _ = connection.close(200, "deleted".into()).await;
}

/// A header of a queued message, as text.
pub fn header(message: &BasicGetMessage, name: &str) -> Option<String> {
    let headers = message.delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(value) => {
            Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        AMQPValue::LongLongInt(value) => Some(value.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Deletes every queue and exchange a service declares for `rabbitmq` with `retry_tiers`
/// tiers, best effort: what is absent is skipped (one channel per deletion, since a
/// failed one closes its channel).
pub(crate) async fn delete_declared(
    connection: &Connection,
    rabbitmq: &RabbitmqSettings,
    retry_tiers: usize,
) {
    let mut queues = vec![
        rabbitmq.queue.clone(),
        rabbitmq.parked_queue(),
        rabbitmq.unrouted_events(),
        rabbitmq.platform_keys_stream(),
    ];
    queues.extend((0..retry_tiers).map(|tier| rabbitmq.retry_queue(tier)));
    let exchanges = [rabbitmq.events_exchange.clone(), rabbitmq.unrouted_events()];
    for queue in &queues {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
    }
    for exchange in &exchanges {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await;
        }
    }
}
