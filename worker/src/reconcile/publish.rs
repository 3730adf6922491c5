//! Publishing query answers to the notification queue, as the gateway publishes
//! notifications: persistent, mandatory, and confirmed by the broker before the answer
//! counts as handed over. The worker then applies it through the one apply path, where the
//! business dedupe key makes the query and a (late) notification of the same payment
//! race-free.

use lapin::{Channel, Connection};
use wxpay_runtime::amqp::{durable_queue_options, quorum_queue_arguments, AmqpMessage, PERSISTENT};
use wxpay_runtime::config::RabbitmqSettings;
use wxpay_runtime::platform_keys;
use wxpay_shared::message::NotifyMessage;

use crate::broker::{self, BrokerError};

/// A confirm-mode channel to the notification queue.
pub struct Publisher {
    connection: Connection,
    channel: Channel,
    queue: String,
}

impl Publisher {
    /// Connects, opens a confirm channel and declares the main queue with the same
    /// arguments as the gateway and the worker (declaring is idempotent; it also makes a
    /// first `--once` on an empty broker work).
    pub async fn connect(rabbitmq: &RabbitmqSettings) -> Result<Publisher, BrokerError> {
        let connection = broker::connect(rabbitmq).await?;
        let channel = broker::confirm_channel(&connection).await?;
        broker::bounded(channel.queue_declare(
            rabbitmq.queue.as_str().into(),
            durable_queue_options(),
            quorum_queue_arguments(),
        ))
        .await?;
        Ok(Publisher {
            connection,
            channel,
            queue: rabbitmq.queue.clone(),
        })
    }

    /// Whether the connection and channel are still usable.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Publishes `message` to the queue and waits for the broker's ack. Unroutable
    /// (returned), nacked and unconfirmed-in-time messages are errors.
    pub async fn publish(&self, message: &NotifyMessage) -> Result<(), BrokerError> {
        broker::publish_confirmed(
            &self.channel,
            "",
            &self.queue,
            true,
            &message.body,
            message.properties(),
        )
        .await
    }

    /// Appends downloaded platform certificates to the platform keys stream (declared
    /// first), confirmed. On a channel of its own: a stream the broker refuses to declare
    /// closes that channel only, and the rounds keep theirs.
    pub async fn publish_certificates(
        &self,
        rabbitmq: &RabbitmqSettings,
        body: &[u8],
    ) -> Result<(), BrokerError> {
        let channel = broker::confirm_channel(&self.connection).await?;
        broker::bounded(platform_keys::declare_stream(&channel, rabbitmq)).await?;
        let properties = lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(PERSISTENT);
        let stream = rabbitmq.platform_keys_stream();
        let published =
            broker::publish_confirmed(&channel, "", &stream, true, body, properties).await;
        let _ = channel.close(200, "certificates shared".into()).await;
        published
    }

    /// Closes the connection politely (best effort).
    pub async fn close(&self) {
        broker::close(&self.connection, &[&self.channel], "reconciler done").await;
    }
}
