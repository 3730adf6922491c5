//! Platform certificates shared through RabbitMQ, and the expiry of every certificate a
//! process holds.
//!
//! The reconciler downloads the platform certificates of the merchants with
//! `download_platform_certificates` (`GET /v3/certificates`,
//! <https://pay.weixin.qq.com/doc/v3/merchant/4012551764>) and publishes each answer's
//! certificates, still encrypted as WeChat Pay sent them, to the stream
//! `<queue>.platform-keys` ([`RabbitmqSettings::platform_keys_stream`]). The gateway reads
//! only its configuration and RabbitMQ, so RabbitMQ is the store every process already
//! reads. Every gateway, worker and reconciler reads the stream from its first message
//! ([`PlatformKeysTask`]) and decrypts each certificate itself with the merchant's APIv3
//! key: AES-GCM authenticates it, so the broker is not trusted. A certificate that does not
//! decrypt, is not the one its `serial_no` names or is outside its validity is refused
//! with one log line; the others join the merchant's platform keys through
//! [`MerchantsHandle::learn`], which a reload of the files keeps.
//!
//! The stream keeps [`PLATFORM_KEYS_MAX_AGE_SECS`] of messages (small segments, so that
//! retention can drop old ones); the reconciler publishes at every refresh, far more often,
//! so a process started at any time finds the current certificates. Without the stream
//! (broker down), the file keys keep working and the task keeps trying.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use wxpay_shared::v3::{decrypt_each, CertificateError, EncryptedCertificate};

use crate::amqp::durable_queue_options;
use crate::config::{Merchants, RabbitmqSettings, PLATFORM_KEYS_MAX_AGE_SECS};
use crate::reload::{AbortOnDrop, LearnError, MerchantsHandle};
use crate::telemetry::{metric, step};

/// Segment size of the stream: retention drops whole segments, and the default (500 MB)
/// would never fill with a few kilobytes a day.
const STREAM_MAX_SEGMENT_BYTES: i64 = 1_000_000;
/// Deliveries in flight on the stream consumer (a stream needs a prefetch).
const STREAM_PREFETCH: u16 = 16;
/// How often the expiry gauges are set again, and an idle task looks whether a merchant
/// downloads certificates now (after a reload).
const REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Longest pause between two attempts to read the stream.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One message of the stream: one merchant's certificates as `GET /v3/certificates`
/// answered (`data`), unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedCertificates {
    pub mch_id: String,
    pub data: Vec<EncryptedCertificate>,
}

impl SharedCertificates {
    /// The message body (JSON).
    pub fn to_body(&self) -> Vec<u8> {
        // Strings only: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The declaration of the stream, identical in every process (RabbitMQ refuses a second
/// declaration with other arguments).
pub fn stream_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    let mut put = |name: &str, value: AMQPValue| {
        arguments.insert(ShortString::from(name), value);
    };
    put("x-queue-type", text("stream"));
    put("x-max-age", text(&format!("{PLATFORM_KEYS_MAX_AGE_SECS}s")));
    put(
        "x-stream-max-segment-size-bytes",
        AMQPValue::LongLongInt(STREAM_MAX_SEGMENT_BYTES),
    );
    arguments
}

/// Declares the stream (whoever starts first creates it).
pub async fn declare_stream(
    channel: &Channel,
    rabbitmq: &RabbitmqSettings,
) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            rabbitmq.platform_keys_stream().as_str().into(),
            durable_queue_options(),
            stream_arguments(),
        )
        .await
        .map(drop)
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes()))
}

/// What became of one message of the stream.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// Serials new to the merchant.
    pub added: Vec<String>,
    /// Certificates refused, by `serial_no`, with the reason's code.
    pub refused: Vec<(String, &'static str)>,
}

/// Why a whole message is refused.
#[derive(Debug, thiserror::Error)]
pub enum MessageRefused {
    #[error("not a platform certificates message: {0}")]
    Malformed(String),
    #[error(transparent)]
    Merchant(#[from] LearnError),
    #[error("the merchant has no APIv3 key to decrypt with")]
    NoApiV3Key,
}

/// Decrypts and checks each certificate of a stream message with the merchant's APIv3 key,
/// and adds those that pass to the merchant's platform keys. Logs one line per refused
/// certificate (or message) and one when serials were added.
pub fn receive(
    merchants: &MerchantsHandle,
    body: &[u8],
    now: SystemTime,
) -> Result<Received, MessageRefused> {
    let outcome = serde_json::from_slice(body)
        .map_err(|error| MessageRefused::Malformed(error.to_string()))
        .and_then(|message| decrypt_and_learn(merchants, &message, now));
    match &outcome {
        Ok(received) => {
            if !received.added.is_empty() {
                info!(
                    step = step::PLATFORM_KEYS,
                    serials_added = %received.added.join(","),
                    "platform certificates added"
                );
            }
        }
        // Another deployment's merchant (the stream is shared by every process of the
        // vhost): not ours to judge, and not worth a warning at every start.
        Err(error @ MessageRefused::Merchant(_)) => tracing::debug!(
            step = step::PLATFORM_KEYS,
            %error,
            "platform certificates message skipped"
        ),
        Err(error) => warn!(
            step = step::PLATFORM_KEYS,
            %error,
            "platform certificates message refused"
        ),
    }
    outcome
}

fn decrypt_and_learn(
    merchants: &MerchantsHandle,
    message: &SharedCertificates,
    now: SystemTime,
) -> Result<Received, MessageRefused> {
    let mch_id = message.mch_id.as_str();
    let merchant = merchants.downloading(mch_id)?;
    let api_v3_key = merchant
        .api_v3_key
        .as_ref()
        .ok_or(MessageRefused::NoApiV3Key)?;
    let (accepted, refused) =
        decrypt_each(&message.data, api_v3_key.expose_secret().as_bytes(), now);
    for (serial, error) in &refused {
        log_refused(mch_id, serial, error);
    }
    let added = merchants.learn(mch_id, &accepted)?;
    if !added.is_empty() {
        report_expiry(&merchants.current());
    }
    Ok(Received {
        added: added
            .into_iter()
            .map(|serial| format!("{mch_id}/{serial}"))
            .collect(),
        refused: refused
            .into_iter()
            .map(|(serial, error)| (serial, error.code()))
            .collect(),
    })
}

/// One line for a certificate refused (ids and the reason, never the certificate).
pub fn log_refused(mch_id: &str, serial: &str, error: &CertificateError) {
    warn!(
        step = step::PLATFORM_KEYS,
        mch_id,
        serial,
        reason = error.code(),
        %error,
        "platform certificate refused"
    );
}

/// Describes the expiry gauge (every process holding platform keys calls it).
pub fn register_metrics() {
    metrics::describe_gauge!(
        metric::PLATFORM_KEY_EXPIRY_SECONDS,
        "Seconds until the notAfter of each platform certificate held, by mch_id and serial"
    );
}

/// Every certificate this process has held, by merchant and serial: a series cannot be
/// dropped from the exporter, so one that a reload removed keeps counting down truthfully
/// instead of freezing.
fn held() -> &'static Mutex<BTreeMap<(String, String), SystemTime>> {
    static HELD: std::sync::OnceLock<Mutex<BTreeMap<(String, String), SystemTime>>> =
        std::sync::OnceLock::new();
    HELD.get_or_init(Mutex::default)
}

/// Sets `wxpay_platform_key_expiry_seconds{mch_id,serial}` to the seconds until `notAfter`
/// of every certificate of `merchants` (and of those held before). WeChat Pay public keys
/// (`PUB_KEY_ID_…`) have no expiry and no series.
pub fn report_expiry(merchants: &Merchants) {
    let mut held = held()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for merchant in merchants.iter() {
        for (serial, not_after) in merchant.platform_keys.certificates() {
            held.insert((merchant.mch_id.clone(), serial.to_owned()), not_after);
        }
    }
    let now = SystemTime::now();
    for ((mch_id, serial), not_after) in held.iter() {
        let seconds = match not_after.duration_since(now) {
            Ok(left) => left.as_secs_f64(),
            Err(past) => -past.duration().as_secs_f64(),
        };
        metrics::gauge!(metric::PLATFORM_KEY_EXPIRY_SECONDS, "mch_id" => mch_id.clone(), "serial" => serial.clone())
            .set(seconds.floor());
    }
}

/// Keeps the expiry gauges current and, while a merchant downloads certificates, reads the
/// stream from its first message into the merchants. Stops when dropped.
pub struct PlatformKeysTask {
    _task: AbortOnDrop,
}

impl PlatformKeysTask {
    /// Starts the task (within a Tokio runtime). `service` names the connection.
    pub fn spawn(
        rabbitmq: RabbitmqSettings,
        merchants: MerchantsHandle,
        service: &'static str,
    ) -> PlatformKeysTask {
        // The recorder first: gauges set before it exists would be lost.
        crate::telemetry::metrics_handle();
        register_metrics();
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                report_expiry(&merchants.current());
                if !merchants
                    .current()
                    .iter()
                    .any(|m| m.download_platform_certificates)
                {
                    tokio::time::sleep(REFRESH_INTERVAL).await;
                    continue;
                }
                match follow(&rabbitmq, &merchants, service).await {
                    Ok(()) => backoff = Duration::from_secs(1),
                    Err(error) => {
                        warn!(
                            step = step::PLATFORM_KEYS,
                            %error,
                            stream = rabbitmq.platform_keys_stream(),
                            retry_in_secs = backoff.as_secs(),
                            "cannot read the platform keys stream: the keys already held stay in use"
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        });
        PlatformKeysTask {
            _task: AbortOnDrop(task),
        }
    }
}

/// Why the stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker did not answer in time")]
    Timeout,
    #[error("the stream consumer ended")]
    Ended,
}

/// The messages the stream retains, oldest first, read until `idle` passes without one
/// (`wxpay-worker doctor`). Creates nothing: a stream not declared yet is an error.
pub async fn retained(
    connection: &Connection,
    rabbitmq: &RabbitmqSettings,
    idle: Duration,
) -> Result<Vec<SharedCertificates>, FollowError> {
    let channel = connection.create_channel().await?;
    let stream = rabbitmq.platform_keys_stream();
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..durable_queue_options()
    };
    channel
        .queue_declare(stream.as_str().into(), passive, FieldTable::default())
        .await?;
    let mut consumer = consume_from_first(&channel, rabbitmq, "wxpay-doctor").await?;
    let mut messages = Vec::new();
    while let Ok(next) = tokio::time::timeout(idle, consumer.next()).await {
        let Some(delivery) = next else { break };
        let delivery = delivery?;
        if let Ok(message) = serde_json::from_slice(&delivery.data) {
            messages.push(message);
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    let _ = channel.close(200, "read".into()).await;
    Ok(messages)
}

/// Reads what the stream retains into `merchants` ([`receive`]), for one-shot commands that
/// verify (`wxpay-worker anomaly resolve`, the console's reapply): without it, a merchant
/// with no key in its file could verify nothing. Nothing to do when no merchant downloads.
/// Returns the serials added.
pub async fn learn_retained(
    rabbitmq: &RabbitmqSettings,
    merchants: &MerchantsHandle,
) -> Result<usize, FollowError> {
    if !merchants
        .current()
        .iter()
        .any(|merchant| merchant.download_platform_certificates)
    {
        return Ok(0);
    }
    let connect = Connection::connect(
        rabbitmq.url.expose_secret(),
        ConnectionProperties::default(),
    );
    let timeout = Duration::from_millis(rabbitmq.connect_timeout_ms.max(1));
    let connection = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| FollowError::Timeout)??;
    // Declared if this is the first process of the deployment (then it holds nothing yet).
    let declared = match connection.create_channel().await {
        Ok(channel) => declare_stream(&channel, rabbitmq).await,
        Err(error) => Err(error),
    };
    let messages = match declared {
        Ok(()) => retained(&connection, rabbitmq, RETAINED_IDLE).await,
        Err(error) => Err(error.into()),
    };
    let _ = connection.close(200, "read".into()).await;
    let now = SystemTime::now();
    Ok(messages?
        .iter()
        .filter_map(|message| decrypt_and_learn(merchants, message, now).ok())
        .map(|received| received.added.len())
        .sum())
}

/// How long the stream may stay silent before everything it retains counts as read.
pub const RETAINED_IDLE: Duration = Duration::from_secs(1);

/// A consumer of the stream from its first retained message. A stream consumer needs a
/// prefetch and manual acks; `first` replays what was downloaded before this process.
async fn consume_from_first(
    channel: &Channel,
    rabbitmq: &RabbitmqSettings,
    service: &str,
) -> Result<lapin::Consumer, lapin::Error> {
    channel
        .basic_qos(STREAM_PREFETCH, BasicQosOptions::default())
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(ShortString::from("x-stream-offset"), text("first"));
    channel
        .basic_consume(
            rabbitmq.platform_keys_stream().as_str().into(),
            format!("{service}-platform-keys-{}", uuid::Uuid::now_v7())
                .as_str()
                .into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
}

/// One connection's reading of the stream, from its first message; returns when no
/// merchant downloads certificates any more.
async fn follow(
    rabbitmq: &RabbitmqSettings,
    merchants: &MerchantsHandle,
    service: &'static str,
) -> Result<(), FollowError> {
    let setup = async {
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from(format!("{service}-platform-keys")));
        let connection = Connection::connect(rabbitmq.url.expose_secret(), properties).await?;
        let channel = connection.create_channel().await?;
        declare_stream(&channel, rabbitmq).await?;
        let consumer = consume_from_first(&channel, rabbitmq, service).await?;
        Ok::<_, FollowError>((connection, channel, consumer))
    };
    let timeout = Duration::from_millis(rabbitmq.connect_timeout_ms.max(1) * 2);
    let (connection, _channel, mut consumer) = tokio::time::timeout(timeout, setup)
        .await
        .map_err(|_| FollowError::Timeout)??;
    info!(
        step = step::PLATFORM_KEYS,
        stream = rabbitmq.platform_keys_stream(),
        "reading the platform keys stream"
    );
    let mut ticks = tokio::time::interval(REFRESH_INTERVAL);
    let result = loop {
        tokio::select! {
            _ = ticks.tick() => {
                report_expiry(&merchants.current());
                if !merchants.current().iter().any(|m| m.download_platform_certificates) {
                    break Ok(());
                }
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    // A refused message is logged and acknowledged: reading it again
                    // would refuse it again.
                    let _ = receive(merchants, &delivery.data, SystemTime::now());
                    if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
                        break Err(error.into());
                    }
                }
                Some(Err(error)) => break Err(error.into()),
                None => break Err(FollowError::Ended),
            }
        }
    };
    let _ = connection.close(200, "done".into()).await;
    result
}
