//! Publishing to RabbitMQ with publisher confirms, and supervision of the broker link.
//!
//! Guarantee 1 (docs/ARCHITECTURE.md): SUCCESS is answered only after the broker confirmed a
//! persistent message on a durable (quorum) queue. So every publish is `mandatory` (an
//! unroutable message comes back instead of vanishing), persistent (delivery mode 2), on a
//! channel in confirm mode, and the caller waits for *its own* confirm.
//!
//! Throughput comes from pipelining: one connection, `gateway.publish_channels` long-lived
//! channels used round-robin, many publishes in flight on each; nobody holds a lock while
//! waiting for a confirm. The only lock is per channel and held for the synchronous
//! enqueue of the frames (see `ConfirmChannel`).
//!
//! lapin can hang on a dead broker, so every lapin await is under a timeout. The link is
//! supervised by a background task: on a connection or channel error (or a publish error)
//! the link is dropped at once (publishes then fail fast with
//! [`PublishError::NotConnected`]), and the task reconnects with exponential backoff and
//! re-declares the queue.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::LongString;
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, Event, PublisherConfirm};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wxpay_runtime::amqp::{durable_queue_options, quorum_queue_arguments, AmqpMessage};
use wxpay_runtime::config::Settings;
use wxpay_runtime::telemetry::{metric, step};
use wxpay_shared::message::NotifyMessage;

/// First reconnect delay; doubled after each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the supervisor looks at the link even without an error callback.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// How long a confirm that came too late is still watched (to log its fate).
const LATE_CONFIRM_WATCH: Duration = Duration::from_secs(60);
/// Time given to lapin's IO thread to stop after a close.
const IO_LOOP_GRACE: Duration = Duration::from_millis(100);
/// AMQP reply code of a normal close.
const REPLY_SUCCESS: u16 = 200;

/// What the publisher needs from the configuration.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub url: SecretString,
    pub queue: String,
    pub channels: usize,
    pub publish_timeout: Duration,
    pub connect_timeout: Duration,
}

impl PublisherConfig {
    pub fn from_settings(settings: &Settings) -> Self {
        PublisherConfig {
            url: settings.rabbitmq.url.clone(),
            queue: settings.rabbitmq.queue.clone(),
            channels: settings.gateway.publish_channels.max(1),
            publish_timeout: Duration::from_millis(settings.gateway.publish_timeout_ms),
            connect_timeout: Duration::from_millis(settings.rabbitmq.connect_timeout_ms.max(1)),
        }
    }
}

/// Why a message was not confirmed: every case answers FAIL so WeChat Pay re-sends.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker not connected")]
    NotConnected,
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("message returned unroutable ({0}): is the queue missing?")]
    Returned(String),
    #[error("no confirm within {0:?}")]
    Timeout(Duration),
    #[error("channel is not in confirm mode")]
    NotConfirmMode,
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
}

impl PublishError {
    /// Stable short code: metric label `reason` and log field.
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::NotConnected => "broker_disconnected",
            PublishError::Nacked => "nack",
            PublishError::Returned(_) => "returned",
            PublishError::Timeout(_) => "confirm_timeout",
            PublishError::NotConfirmMode => "not_confirm_mode",
            PublishError::Broker(_) => "broker_error",
        }
    }

    /// Every code, to pre-register metric labels.
    pub const CODES: [&'static str; 6] = [
        "broker_disconnected",
        "nack",
        "returned",
        "confirm_timeout",
        "not_confirm_mode",
        "broker_error",
    ];

    /// Whether the link must be rebuilt: a lapin error (dead connection or channel), or a
    /// returned message (the queue vanished: reconnecting re-declares it).
    fn breaks_link(&self) -> bool {
        matches!(
            self,
            PublishError::Broker(_) | PublishError::Returned(_) | PublishError::NotConfirmMode
        )
    }
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0} timed out after {1:?}")]
    Timeout(&'static str, Duration),
    #[error("{0}: {1}")]
    Broker(&'static str, lapin::Error),
}

/// One confirm-mode channel.
///
/// lapin assigns the delivery tag (`register_pending`) and enqueues the frames
/// (`push_frames`) under two different locks, in the synchronous first poll of
/// `basic_publish`. Two threads publishing on the same channel could interleave there, and
/// then confirms would be matched to the wrong requests. `enqueue` makes that first poll
/// atomic per channel; it is never held across an await, and not while waiting for the
/// confirm.
struct ConfirmChannel {
    channel: Channel,
    enqueue: Mutex<()>,
}

/// A connection with its confirm channels.
struct Link {
    connection: Connection,
    channels: Vec<ConfirmChannel>,
    broken: Arc<AtomicBool>,
    /// Set when we close the link ourselves: errors after that are expected, not news.
    closing: Arc<AtomicBool>,
    /// Reads the connection's events (see `watch_events`); stopped once the link is closed.
    events: JoinHandle<()>,
}

impl Link {
    fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
            || !self.connection.status().connected()
            || self
                .channels
                .iter()
                .any(|c| !c.channel.status().connected())
    }

    async fn close(&self, timeout: Duration) {
        self.closing.store(true, Ordering::Release);
        for confirm in &self.channels {
            let closing = confirm
                .channel
                .close(REPLY_SUCCESS, "gateway shutdown".into());
            if let Ok(Err(error)) = tokio::time::timeout(timeout, closing).await {
                tracing::debug!(step = step::SHUTDOWN, %error, "channel close");
            }
        }
        let closing = self
            .connection
            .close(REPLY_SUCCESS, "gateway shutdown".into());
        match tokio::time::timeout(timeout, closing).await {
            Ok(Ok(())) => {
                // lapin's IO thread notices the closed connection on its next turn; give
                // it that turn before the runtime (its reactor) may be shut down.
                tokio::time::sleep(IO_LOOP_GRACE).await;
            }
            Ok(Err(error)) => tracing::debug!(step = step::SHUTDOWN, %error, "connection close"),
            Err(_) => warn!(step = step::SHUTDOWN, "connection close timed out"),
        }
        self.events.abort();
    }
}

struct Shared {
    config: PublisherConfig,
    link: RwLock<Option<Arc<Link>>>,
    next_channel: AtomicUsize,
    wake: Arc<Notify>,
    stop: CancellationToken,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    fn current(&self) -> Option<Arc<Link>> {
        self.link
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn install(&self, link: Option<Arc<Link>>) -> Option<Arc<Link>> {
        let connected = link.is_some();
        let previous = std::mem::replace(
            &mut *self.link.write().unwrap_or_else(PoisonError::into_inner),
            link,
        );
        metrics::gauge!(metric::GATEWAY_BROKER_CONNECTED).set(if connected { 1.0 } else { 0.0 });
        previous
    }
}

/// Publishes notifications with confirms; cheap to clone (one shared link).
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("queue", &self.shared.config.queue)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Starts the supervisor, which connects at once and keeps the link up. Must be called
    /// inside a tokio runtime with IO and time (lapin runs on it).
    pub fn start(config: PublisherConfig) -> Publisher {
        metrics::gauge!(metric::GATEWAY_BROKER_CONNECTED).set(0.0);
        let shared = Arc::new(Shared {
            config,
            link: RwLock::new(None),
            next_channel: AtomicUsize::new(0),
            wake: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
            supervisor: Mutex::new(None),
        });
        let task = tokio::spawn(supervise(shared.clone()));
        *shared
            .supervisor
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(task);
        Publisher { shared }
    }

    /// Whether a healthy link is installed (`/readyz`).
    pub fn is_connected(&self) -> bool {
        self.shared.current().is_some_and(|link| !link.is_broken())
    }

    /// Whether RabbitMQ has blocked the connection (`connection.blocked`: a memory or disk
    /// alarm). Publishes would only wait for their timeout, so the gateway sheds instead.
    pub fn is_blocked(&self) -> bool {
        self.shared
            .current()
            .is_some_and(|link| link.connection.status().blocked())
    }

    /// Waits until connected, at most `timeout`; returns whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_connected() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The queue messages are published to.
    pub fn queue(&self) -> &str {
        &self.shared.config.queue
    }

    /// Publishes `message` (persistent, mandatory, to the default exchange with routing key
    /// = queue) and waits for the broker's confirm of this very message, at most
    /// `gateway.publish_timeout_ms` in all. `Ok` only on a plain ack.
    pub async fn publish(&self, message: &NotifyMessage) -> Result<(), PublishError> {
        self.publish_within(message, self.shared.config.publish_timeout)
            .await
    }

    /// [`Publisher::publish`], waiting at most `limit` (and never longer than
    /// `gateway.publish_timeout_ms`): the caller's answer deadline.
    pub async fn publish_within(
        &self,
        message: &NotifyMessage,
        limit: Duration,
    ) -> Result<(), PublishError> {
        let started = Instant::now();
        let timeout = limit.min(self.shared.config.publish_timeout);
        let result = self.publish_inner(message, timeout).await;
        metrics::histogram!(metric::GATEWAY_PUBLISH_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn publish_inner(
        &self,
        message: &NotifyMessage,
        timeout: Duration,
    ) -> Result<(), PublishError> {
        let link = self
            .shared
            .current()
            .filter(|link| !link.broken.load(Ordering::Acquire))
            .ok_or(PublishError::NotConnected)?;
        let count = link.channels.len().max(1);
        let index = self.shared.next_channel.fetch_add(1, Ordering::Relaxed) % count;
        let confirm_channel = link.channels.get(index).ok_or(PublishError::NotConnected)?;
        let result = publish_on(confirm_channel, &self.shared.config.queue, message, timeout).await;
        if let Err(error) = &result {
            if error.breaks_link() {
                link.broken.store(true, Ordering::Release);
                self.shared.wake.notify_one();
            }
        }
        result
    }

    /// Stops the supervisor and closes channels and connection (each step bounded). Call
    /// after the HTTP server drained, so in-flight confirms are already answered.
    pub async fn close(&self) {
        self.shared.stop.cancel();
        let task = self
            .shared
            .supervisor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            if tokio::time::timeout(self.shared.config.connect_timeout, task)
                .await
                .is_err()
            {
                warn!(
                    step = step::SHUTDOWN,
                    "broker supervisor did not stop in time"
                );
            }
        }
        if let Some(link) = self.shared.install(None) {
            link.close(self.shared.config.connect_timeout).await;
            info!(step = step::SHUTDOWN, "broker connection closed");
        }
    }
}

async fn publish_on(
    confirm_channel: &ConfirmChannel,
    queue: &str,
    message: &NotifyMessage,
    timeout: Duration,
) -> Result<(), PublishError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut publish = std::pin::pin!(confirm_channel.channel.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions {
            mandatory: true,
            immediate: false
        },
        &message.body,
        message.properties(),
    ));
    let enqueue = std::future::poll_fn(|cx| {
        let _atomic = confirm_channel
            .enqueue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        publish.as_mut().poll(cx)
    });
    let mut confirm = match tokio::time::timeout_at(deadline, enqueue).await {
        Err(_) => return Err(PublishError::Timeout(timeout)),
        Ok(result) => result?,
    };
    match tokio::time::timeout_at(deadline, &mut confirm).await {
        Err(_) => {
            watch_late_confirm(confirm, message.message_id);
            Err(PublishError::Timeout(timeout))
        }
        Ok(Err(error)) => Err(PublishError::Broker(error)),
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        // A mandatory message the broker could not route comes back (basic.return) and is
        // then *acked*: lapin hands it over as Ack(Some(returned)). That is a loss, not a
        // success. lapin attaches a pending return to the first confirm it resolves, which
        // under a multiple-ack may be another message of the same batch; returns only
        // happen when the queue is gone, so the caller rebuilds the link (re-declaring the
        // queue) at the first one, which bounds that window.
        Ok(Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)))) => Err(
            PublishError::Returned(format!("{} {}", returned.reply_code, returned.reply_text)),
        ),
        Ok(Ok(Confirmation::Nack(None))) => Err(PublishError::Nacked),
        Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::NotConfirmMode),
    }
}

/// A confirm that missed the deadline was answered FAIL (WeChat Pay re-sends; the worker
/// dedupes). Keep watching it for a while so the log says whether the broker took it after
/// all, and so lapin does not keep the dropped promise until the channel closes.
fn watch_late_confirm(confirm: PublisherConfirm, message_id: uuid::Uuid) {
    tokio::spawn(async move {
        let fate = match tokio::time::timeout(LATE_CONFIRM_WATCH, confirm).await {
            Ok(Ok(Confirmation::Ack(None))) => "acked late (a re-send will be deduplicated)",
            Ok(Ok(_)) => "nacked or returned late",
            Ok(Err(_)) => "failed late",
            Err(_) => "never confirmed",
        };
        warn!(step = step::PUBLISH, request_id = %message_id, fate, "late publisher confirm");
    });
}

/// Keeps a link installed: connect, watch, reconnect with backoff, until stopped.
async fn supervise(shared: Arc<Shared>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        let attempt = tokio::select! {
            _ = shared.stop.cancelled() => return,
            attempt = connect(&shared.config, shared.wake.clone()) => attempt,
        };
        match attempt {
            Ok(link) => {
                let link = Arc::new(link);
                shared.install(Some(link.clone()));
                backoff = MIN_BACKOFF;
                info!(
                    step = step::STARTUP,
                    queue = %shared.config.queue,
                    channels = link.channels.len(),
                    "broker connected, queue declared"
                );
                loop {
                    tokio::select! {
                        _ = shared.stop.cancelled() => return,
                        _ = shared.wake.notified() => {}
                        _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                    }
                    if link.is_broken() {
                        break;
                    }
                }
                shared.install(None);
                warn!(
                    step = step::PUBLISH,
                    "broker link lost: answering FAIL until reconnected"
                );
                link.close(shared.config.connect_timeout.min(Duration::from_secs(1)))
                    .await;
            }
            Err(error) => {
                warn!(
                    step = step::STARTUP,
                    %error,
                    retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                    "broker connection failed"
                );
                tokio::select! {
                    _ = shared.stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn bounded<T>(
    what: &'static str,
    timeout: Duration,
    future: impl Future<Output = lapin::Result<T>>,
) -> Result<T, ConnectError> {
    match tokio::time::timeout(timeout, future).await {
        Err(_) => Err(ConnectError::Timeout(what, timeout)),
        Ok(Err(error)) => Err(ConnectError::Broker(what, error)),
        Ok(Ok(value)) => Ok(value),
    }
}

/// Connects, declares the queue and opens the confirm channels; every step bounded.
async fn connect(config: &PublisherConfig, wake: Arc<Notify>) -> Result<Link, ConnectError> {
    // lapin runs on the current tokio runtime (its default with the `tokio` feature).
    let properties =
        ConnectionProperties::default().with_connection_name(LongString::from("wxpay-gateway"));
    let timeout = config.connect_timeout;
    let connection = bounded(
        "connect",
        timeout,
        Connection::connect(config.url.expose_secret(), properties),
    )
    .await?;
    let broken = Arc::new(AtomicBool::new(false));
    let closing = Arc::new(AtomicBool::new(false));
    let events = watch_events(&connection, broken.clone(), closing.clone(), wake);
    match open_channels(&connection, config).await {
        Ok(channels) => Ok(Link {
            connection,
            channels,
            broken,
            closing,
            events,
        }),
        Err(error) => {
            let closing = connection.close(REPLY_SUCCESS, "setup failed".into());
            let _ = tokio::time::timeout(timeout, closing).await;
            events.abort();
            Err(error)
        }
    }
}

/// lapin reports connection and channel errors (and broker flow control) as connection
/// events: an error marks the link broken and wakes the supervisor at once. A blocked
/// connection stays up; publishes then wait and time out, so it is only logged.
fn watch_events(
    connection: &Connection,
    broken: Arc<AtomicBool>,
    closing: Arc<AtomicBool>,
    wake: Arc<Notify>,
) -> JoinHandle<()> {
    let events = connection.events_listener();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Event::Error(error) => {
                    if closing.load(Ordering::Acquire) {
                        tracing::debug!(step = step::SHUTDOWN, %error, "broker error while closing");
                    } else {
                        warn!(step = step::PUBLISH, %error, "broker error");
                    }
                    broken.store(true, Ordering::Release);
                    wake.notify_one();
                }
                Event::ConnectionBlocked(reason) => {
                    warn!(step = step::PUBLISH, %reason, "broker blocked the connection");
                }
                Event::ConnectionUnblocked => {
                    info!(step = step::PUBLISH, "broker unblocked the connection");
                }
                _ => {}
            }
        }
    })
}

async fn open_channels(
    connection: &Connection,
    config: &PublisherConfig,
) -> Result<Vec<ConfirmChannel>, ConnectError> {
    let timeout = config.connect_timeout;
    let mut channels = Vec::with_capacity(config.channels);
    for index in 0..config.channels {
        let channel = bounded("create channel", timeout, connection.create_channel()).await?;
        if index == 0 {
            bounded(
                "declare queue",
                timeout,
                channel.queue_declare(
                    config.queue.as_str().into(),
                    durable_queue_options(),
                    quorum_queue_arguments(),
                ),
            )
            .await?;
        }
        bounded(
            "confirm select",
            timeout,
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        channels.push(ConfirmChannel {
            channel,
            enqueue: Mutex::new(()),
        });
    }
    Ok(channels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lapin_errors_and_returns_rebuild_the_link() {
        assert!(PublishError::Returned("312 NO_ROUTE".into()).breaks_link());
        assert!(!PublishError::Nacked.breaks_link());
        assert!(!PublishError::Timeout(Duration::from_millis(1)).breaks_link());
        assert!(!PublishError::NotConnected.breaks_link());
        for error in [
            PublishError::NotConnected,
            PublishError::Nacked,
            PublishError::NotConfirmMode,
        ] {
            assert!(PublishError::CODES.contains(&error.code()));
        }
    }
}
