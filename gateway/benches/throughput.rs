//! Throughput and latency of the gateway against the real RabbitMQ (a benchmark, not a
//! test: `cargo bench -p wxpay-gateway --bench throughput`).
//!
//! 1. Open loop at fixed rates: requests are sent at their intended times whatever the
//!    gateway's speed, and latency is measured from the intended send time (no coordinated
//!    omission). A fixed pool of pre-signed v2 MD5 bodies.
//! 2. Closed loop at a fixed concurrency: the gateway's saturation throughput.
//! 3. The ceiling: a raw lapin publish-with-confirm loop with the same concurrency, the same
//!    body size and the same number of channels.
//!
//! Needs RabbitMQ at `amqp://guest:guest@127.0.0.1:5672/%2f` (or `WXPAY_BENCH_AMQP`).
//! `WXPAY__GATEWAY__…` variables override the gateway settings (e.g. `HTTP_WORKERS`).
//! Each phase uses its own queue, deleted at the end.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::{Confirmation, Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use wxpay_gateway::Application;
use wxpay_runtime::amqp::{durable_queue_options, quorum_queue_arguments, AmqpMessage};
use wxpay_runtime::config::Settings;
use wxpay_shared::message::{NotifyKind, NotifyMessage};
use wxpay_shared::v2::SignType;
use wxpay_testkit::merchants::MERCHANT;
use wxpay_testkit::notifications::{signed_xml, v2_pay_fields};
use wxpay_testkit::services::AMQP_URL;

const RATES: [u64; 4] = [500, 1000, 2000, 3000];
const PHASE: Duration = Duration::from_secs(6);
const WARMUP: Duration = Duration::from_secs(1);
const CONCURRENCY: usize = 64;
const CHANNELS: usize = 4;
const POOL: usize = 1000;

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> BenchResult<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

fn amqp_url() -> String {
    std::env::var("WXPAY_BENCH_AMQP").unwrap_or_else(|_| AMQP_URL.into())
}

/// The gateway's settings, read from their file as the binary reads them (so that
/// `WXPAY__GATEWAY__…` variables apply).
fn settings(queue: &str) -> BenchResult<Settings> {
    let mut settings = wxpay_testkit::default_settings();
    settings.gateway.publish_timeout_ms = 2000;
    settings.gateway.publish_channels = CHANNELS;
    settings.rabbitmq.url = amqp_url().into();
    settings.rabbitmq.queue = queue.to_owned();
    let file = wxpay_testkit::config_file(&settings);
    Ok(Settings::load(file.path())?)
}

/// Pre-signed v2 MD5 payment notifications, distinct order numbers.
fn bodies() -> Vec<Arc<[u8]>> {
    (0..POOL)
        .map(|n| {
            let order = format!("bench-{n:08}");
            let mut fields = v2_pay_fields(MERCHANT.mch_id, MERCHANT.appid, &order, 100);
            fields.insert("nonce_str", format!("{n:032x}"));
            fields.insert("transaction_id", format!("42000000000000{n:014}"));
            let body = signed_xml(fields, MERCHANT.api_v2_key, SignType::Md5, false);
            Arc::from(body.into_bytes())
        })
        .collect()
}

struct Stats {
    histogram: Histogram<u64>,
    ok: u64,
    failed: u64,
    elapsed: Duration,
}

impl Stats {
    fn print(&self, label: &str) {
        let q =
            |p: f64| Duration::from_micros(self.histogram.value_at_quantile(p)).as_secs_f64() * 1e3;
        println!(
            "{label:<24} ok={:>6} failed={:>4} throughput={:>7.0}/s  p50={:>6.2}ms p99={:>6.2}ms p99.9={:>6.2}ms max={:>7.2}ms",
            self.ok,
            self.failed,
            self.ok as f64 / self.elapsed.as_secs_f64(),
            q(0.5),
            q(0.99),
            q(0.999),
            Duration::from_micros(self.histogram.max()).as_secs_f64() * 1e3,
        );
    }
}

/// The latencies (µs) and outcomes of one phase, recorded by its many tasks.
#[derive(Clone)]
struct Recorder(Arc<Mutex<Stats>>);

impl Recorder {
    fn new() -> BenchResult<Recorder> {
        Ok(Recorder(Arc::new(Mutex::new(Stats {
            histogram: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            ok: 0,
            failed: 0,
            elapsed: Duration::ZERO,
        }))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One answer, `ok` or not, `latency` after it was due.
    fn record(&self, ok: bool, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut stats = self.lock();
        let _ = stats.histogram.record(micros);
        if ok {
            stats.ok += 1;
        } else {
            stats.failed += 1;
        }
    }

    /// What was recorded, over a phase of `elapsed`.
    fn stats(&self, elapsed: Duration) -> Stats {
        let stats = self.lock();
        Stats {
            histogram: stats.histogram.clone(),
            ok: stats.ok,
            failed: stats.failed,
            elapsed,
        }
    }
}

/// A minimal HTTP/1.1 keep-alive client: the load generator shares the 2 cores with the
/// gateway and the broker, so it must cost as little CPU as possible. At most `CONCURRENCY`
/// connections; a request waits for a free one (that wait counts in its latency).
#[derive(Clone)]
struct Client {
    address: std::net::SocketAddr,
    idle: Arc<Mutex<Vec<TcpStream>>>,
    slots: Arc<Semaphore>,
}

impl Client {
    fn new(port: u16) -> Client {
        Client {
            address: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            idle: Arc::new(Mutex::new(Vec::new())),
            slots: Arc::new(Semaphore::new(CONCURRENCY)),
        }
    }

    /// Posts `body`; true when the answer is a v2 SUCCESS.
    async fn send(&self, body: &[u8]) -> bool {
        let Ok(_slot) = self.slots.acquire().await else {
            return false;
        };
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        // An idle connection may have been closed by the server's keep-alive timeout
        // (between phases): then retry once on a fresh connection, as HTTP clients do.
        if let Some(stream) = idle {
            if let Some(ok) = self.attempt(stream, body).await {
                return ok;
            }
        }
        let Ok(stream) = TcpStream::connect(self.address).await else {
            return false;
        };
        let _ = stream.set_nodelay(true);
        self.attempt(stream, body).await.unwrap_or(false)
    }

    async fn attempt(&self, mut stream: TcpStream, body: &[u8]) -> Option<bool> {
        let (ok, keep_alive) = exchange(&mut stream, body).await?;
        if keep_alive {
            self.idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(stream);
        }
        Some(ok)
    }
}

/// One request/response on `stream`: (is v2 SUCCESS, connection reusable).
async fn exchange(stream: &mut TcpStream, body: &[u8]) -> Option<(bool, bool)> {
    let mut request = format!(
        "POST /notify/v2/pay HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).await.ok()?;
    let mut buffer = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let header_end = loop {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = std::str::from_utf8(&buffer[..header_end])
        .ok()?
        .to_ascii_lowercase();
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    while buffer.len() < header_end + length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    let keep_alive = !head.contains("connection: close");
    let body = &buffer[header_end..header_end + length];
    Some((
        wxpay_shared::answer::v2_answer_is_success(status, body),
        keep_alive,
    ))
}

/// Open loop: request `i` is due at `start + i / rate`; latency counts from that instant.
async fn open_loop<F, Fut>(
    send: F,
    bodies: &[Arc<[u8]>],
    rate: u64,
    phase: Duration,
) -> BenchResult<Stats>
where
    F: Fn(Arc<[u8]>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let recorder = Recorder::new()?;
    let total = rate * phase.as_secs();
    let period = Duration::from_nanos(1_000_000_000 / rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(10);
    let mut tasks = Vec::with_capacity(usize::try_from(total)?);
    for i in 0..total {
        let intended = start + period * u32::try_from(i)?;
        tokio::time::sleep_until(intended).await;
        let send = send.clone();
        let body = bodies[usize::try_from(i)? % bodies.len()].clone();
        let recorder = recorder.clone();
        tasks.push(tokio::spawn(async move {
            let ok = send(body).await;
            recorder.record(ok, intended.elapsed());
        }));
    }
    for task in tasks {
        task.await?;
    }
    Ok(recorder.stats(start.elapsed()))
}

/// Closed loop: `CONCURRENCY` clients each send their next request on the previous answer.
async fn closed_loop<F, Fut>(send: F, bodies: &[Arc<[u8]>], phase: Duration) -> BenchResult<Stats>
where
    F: Fn(Arc<[u8]>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let recorder = Recorder::new()?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY {
        let send = send.clone();
        let bodies: Vec<Arc<[u8]>> = bodies.to_vec();
        let recorder = recorder.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = worker;
            while start.elapsed() < phase {
                let sent = Instant::now();
                let ok = send(bodies[n % bodies.len()].clone()).await;
                recorder.record(ok, sent.elapsed());
                n += CONCURRENCY;
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    Ok(recorder.stats(start.elapsed()))
}

async fn connect() -> BenchResult<Connection> {
    Ok(Connection::connect(&amqp_url(), ConnectionProperties::default()).await?)
}

/// The ceiling: publish with confirm straight on lapin, on `CHANNELS` channels of one
/// connection, with the same body and the same properties as the gateway's messages.
struct RawPublisher {
    connection: Connection,
    channels: Vec<lapin::Channel>,
    next: std::sync::atomic::AtomicUsize,
    queue: String,
}

impl RawPublisher {
    async fn open(queue: &str) -> BenchResult<Arc<RawPublisher>> {
        let connection = connect().await?;
        let mut channels = Vec::new();
        for index in 0..CHANNELS {
            let channel = connection.create_channel().await?;
            if index == 0 {
                channel
                    .queue_declare(
                        queue.into(),
                        durable_queue_options(),
                        quorum_queue_arguments(),
                    )
                    .await?;
            }
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            channels.push(channel);
        }
        Ok(Arc::new(RawPublisher {
            connection,
            channels,
            next: std::sync::atomic::AtomicUsize::new(0),
            queue: queue.to_owned(),
        }))
    }

    async fn publish(&self, body: Arc<[u8]>) -> bool {
        let index =
            self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.channels.len();
        let message = NotifyMessage::new(
            NotifyKind::V2Pay,
            MERCHANT.mch_id,
            body.to_vec(),
            Some("text/xml".into()),
            None,
        );
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        match self.channels[index]
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                options,
                &message.body,
                message.properties(),
            )
            .await
        {
            Ok(confirm) => matches!(confirm.await, Ok(Confirmation::Ack(None))),
            Err(_) => false,
        }
    }

    async fn close(&self) -> BenchResult<()> {
        let channel = self.connection.create_channel().await?;
        channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        let _ = self.connection.close(200, "bench done".into()).await;
        Ok(())
    }
}

async fn purge(queue: &str) -> BenchResult<()> {
    let connection = connect().await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await?;
    let _ = connection.close(200, "purged".into()).await;
    Ok(())
}

async fn run() -> BenchResult<()> {
    let queue = format!("wxpay.bench.gateway.{}", uuid::Uuid::new_v4());
    let app = Application::build(settings(&queue)?).await?;
    let client = Client::new(app.port());
    let shutdown = app.shutdown_handle();
    let server = tokio::spawn(app.run_until_stopped());
    let bodies = bodies();
    let body_len = bodies[0].len();
    println!(
        "gateway throughput bench: {} cores, body {body_len} B, {CHANNELS} confirm channels, open-loop phases of {}s",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        PHASE.as_secs()
    );

    // Warm up connections and the broker.
    open_loop(
        {
            let client = client.clone();
            move |body: Arc<[u8]>| {
                let client = client.clone();
                async move { client.send(&body).await }
            }
        },
        &bodies,
        500,
        WARMUP,
    )
    .await?;
    purge(&queue).await?;

    let raw_queue = format!("wxpay.bench.raw.{}", uuid::Uuid::new_v4());
    let raw = RawPublisher::open(&raw_queue).await?;
    let gateway_send = {
        let client = client.clone();
        move |body: Arc<[u8]>| {
            let client = client.clone();
            async move { client.send(&body).await }
        }
    };
    let raw_send = {
        let raw = raw.clone();
        move |body: Arc<[u8]>| {
            let raw = raw.clone();
            async move { raw.publish(body).await }
        }
    };
    for rate in RATES {
        let stats = open_loop(gateway_send.clone(), &bodies, rate, PHASE).await?;
        stats.print(&format!("gateway open {rate}/s"));
        purge(&queue).await?;
        let stats = open_loop(raw_send.clone(), &bodies, rate, PHASE).await?;
        stats.print(&format!("raw lapin open {rate}/s"));
        purge(&raw_queue).await?;
    }
    let gateway = closed_loop(gateway_send.clone(), &bodies, PHASE).await?;
    gateway.print(&format!("gateway closed c={CONCURRENCY}"));
    purge(&queue).await?;
    let ceiling = closed_loop(raw_send.clone(), &bodies, PHASE).await?;
    ceiling.print(&format!("raw lapin closed c={CONCURRENCY}"));
    raw.close().await?;

    let ratio = (gateway.ok as f64 / gateway.elapsed.as_secs_f64())
        / (ceiling.ok as f64 / ceiling.elapsed.as_secs_f64());
    println!("gateway / raw lapin throughput: {:.0}%", ratio * 100.0);

    shutdown.shutdown();
    server.await??;
    let connection = connect().await?;
    connection
        .create_channel()
        .await?
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    let _ = connection.close(200, "bench done".into()).await;
    Ok(())
}
