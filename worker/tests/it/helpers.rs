//! Test environment: a fresh database, queue names, events exchange and Redis key prefix per
//! test (real PostgreSQL, RabbitMQ and Redis on loopback), dropped at the end, even when the
//! test fails.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wxpay_runtime::amqp::AmqpMessage;
use wxpay_runtime::config::{
    DatabaseSettings, RabbitmqSettings, RedisSettings, Settings, WorkerSettings,
};
use wxpay_shared::message::NotifyMessage;
use wxpay_shared::state::OrderState;
use wxpay_worker::{broker, migrate, Worker};

use crate::builders;

pub const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A port nothing listens on.
pub fn closed_port_url(scheme: &str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("{scheme}://127.0.0.1:{port}")
}

pub struct TestEnv {
    pub id: String,
    pub db_name: String,
    pub settings: Settings,
}

impl TestEnv {
    /// A fresh, migrated database and unique broker / Redis names.
    pub async fn new() -> TestEnv {
        Self::with_migration(true).await
    }

    pub async fn with_migration(migrated: bool) -> TestEnv {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("wxpay_test_{id}");
        let settings = Settings {
            gateway: Default::default(),
            worker: WorkerSettings {
                metrics_listen: "127.0.0.1:0".into(),
                prefetch: 50,
                retry_delays_ms: vec![200, 400, 800, 1600, 3200],
                claim_ttl_ms: 5_000,
                done_ttl_secs: 600,
                db_pool_size: 8,
                outbox_poll_ms: 50,
                shutdown_timeout_ms: 10_000,
                unknown_order_grace_secs: 600,
            },
            rabbitmq: RabbitmqSettings {
                url: SecretString::from(AMQP_URL),
                queue: format!("wxpay.test.{id}"),
                events_exchange: format!("wxpay.events.test.{id}"),
                connect_timeout_ms: 3_000,
            },
            redis: RedisSettings {
                url: SecretString::from(REDIS_URL),
                key_prefix: format!("wxpay:test:{id}:"),
                response_timeout_ms: 200,
                connect_timeout_ms: 300,
            },
            database: DatabaseSettings {
                url: SecretString::from(format!("{PG_BASE}/{db_name}")),
                connect_timeout_ms: 2_000,
                ..DatabaseSettings::default()
            },
            wechatpay: Default::default(),
            reconciler: Default::default(),
            merchants: vec![builders::merchant_settings()],
            console: Default::default(),
        };
        let env = TestEnv {
            id,
            db_name,
            settings,
        };
        if migrated {
            migrate::migrate(&env.db_url(), Duration::from_secs(5))
                .await
                .expect("migrates");
        }
        env
    }

    pub fn db_url(&self) -> String {
        self.settings.database.url.expose_secret().to_owned()
    }

    pub fn settings(&self) -> Settings {
        self.settings.clone()
    }

    pub async fn conn(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.db_url())
            .await
            .expect("database connection")
    }

    pub async fn insert_order(&self, out_trade_no: &str, amount_total: i64) {
        self.insert_order_with(
            out_trade_no,
            amount_total,
            builders::APPID,
            OrderState::NotPay.as_str(),
        )
        .await;
    }

    pub async fn insert_order_with(
        &self,
        out_trade_no: &str,
        amount_total: i64,
        appid: &str,
        state: &str,
    ) {
        let mut conn = self.conn().await;
        diesel::sql_query(
            "INSERT INTO orders (mch_id, out_trade_no, appid, amount_total, state) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind::<Text, _>(builders::MCH_ID)
        .bind::<Text, _>(out_trade_no)
        .bind::<Text, _>(appid)
        .bind::<BigInt, _>(amount_total)
        .bind::<Text, _>(state)
        .execute(&mut conn)
        .await
        .expect("order inserted");
    }

    pub async fn order(&self, out_trade_no: &str) -> OrderView {
        let mut conn = self.conn().await;
        diesel::sql_query(
            "SELECT state, transaction_id, refunded_total FROM orders WHERE mch_id = $1 AND out_trade_no = $2",
        )
        .bind::<Text, _>(builders::MCH_ID)
        .bind::<Text, _>(out_trade_no)
        .get_result(&mut conn)
        .await
        .expect("order exists")
    }

    /// `SELECT count(*) … ` with the query's tail given.
    pub async fn count(&self, sql: &str) -> i64 {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = self.conn().await;
        let row: N = diesel::sql_query(format!("SELECT count(*) AS n {sql}"))
            .get_result(&mut conn)
            .await
            .expect("count");
        row.n
    }

    pub async fn outbox_count(&self, event_type: &str) -> i64 {
        self.count(&format!("FROM outbox WHERE event_type = '{event_type}'"))
            .await
    }

    pub async fn anomalies(&self, reason: &str) -> i64 {
        self.count(&format!(
            "FROM notifications WHERE outcome = 'ANOMALY' AND anomaly_reason = '{reason}'"
        ))
        .await
    }

    /// A connection and a confirm channel, with the topology declared: what every broker
    /// helper below starts from.
    async fn channel(&self) -> (lapin::Connection, lapin::Channel) {
        let connection = broker::connect(&self.settings.rabbitmq)
            .await
            .expect("broker");
        let channel = broker::confirm_channel(&connection).await.expect("channel");
        broker::declare_topology(&channel, &self.settings.rabbitmq, &self.settings.worker)
            .await
            .expect("topology");
        (connection, channel)
    }

    /// Publishes `message` to the main queue (declared first), with confirm.
    pub async fn publish(&self, message: &NotifyMessage) {
        self.publish_raw(&message.body, message.properties()).await;
    }

    pub async fn publish_raw(&self, body: &[u8], properties: lapin::BasicProperties) {
        let (connection, channel) = self.channel().await;
        broker::publish_confirmed(
            &channel,
            "",
            &self.settings.rabbitmq.queue,
            true,
            body,
            properties,
        )
        .await
        .expect("published");
        let _ = connection.close(200, "done".into()).await;
    }

    /// Publishes many messages over one channel, all confirmed.
    pub async fn publish_all(&self, messages: &[NotifyMessage]) {
        let (connection, channel) = self.channel().await;
        for chunk in messages.chunks(1000) {
            let mut confirms = Vec::with_capacity(chunk.len());
            for message in chunk {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        self.settings.rabbitmq.queue.as_str().into(),
                        lapin::options::BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &message.body,
                        message.properties(),
                    )
                    .await
                    .expect("publish");
                confirms.push(confirm);
            }
            for confirm in confirms {
                broker::check_confirmation(confirm.await.expect("confirm")).expect("acked");
            }
        }
        let _ = connection.close(200, "done".into()).await;
    }

    /// Messages ready in the main queue (declared first, so an absent queue counts 0).
    pub async fn queue_depth(&self) -> u32 {
        let (connection, channel) = self.channel().await;
        let queue = channel
            .queue_declare(
                self.settings.rabbitmq.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue exists");
        let _ = connection.close(200, "done".into()).await;
        queue.message_count()
    }

    /// A queue bound to the events exchange for `routing_key`; returns a receiver of the
    /// event message ids.
    pub async fn bind_events(&self, routing_key: &str) -> EventTap {
        let (connection, channel) = self.channel().await;
        let queue = format!("{}.tap.{}", self.settings.rabbitmq.queue, routing_key);
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("tap queue");
        channel
            .queue_bind(
                queue.as_str().into(),
                self.settings.rabbitmq.events_exchange.as_str().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "tap".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let ids = Arc::new(Mutex::new(Vec::new()));
        let sink = ids.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.as_str().to_owned())
                    .unwrap_or_default();
                if let Ok(mut ids) = sink.lock() {
                    ids.push(id);
                }
            }
            drop(channel);
            drop(connection);
        });
        EventTap { ids, task }
    }

    /// Starts a worker on its own task.
    pub fn spawn_worker(&self, settings: Settings) -> RunningWorker {
        let worker = Worker::new(settings).expect("worker builds");
        let shutdown = CancellationToken::new();
        let runner = worker.clone();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move { runner.run(token).await });
        RunningWorker {
            worker,
            shutdown,
            handle,
        }
    }
}

impl Drop for TestEnv {
    /// Drops the database, the queues, the exchange and the Redis keys, on a thread of its
    /// own (Drop cannot await), also when the test panicked.
    fn drop(&mut self) {
        let db_name = self.db_name.clone();
        let rabbitmq = self.settings.rabbitmq.clone();
        let worker = self.settings.worker.clone();
        let prefix = self.settings.redis.key_prefix.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut conn) =
                    AsyncPgConnection::establish(&format!("{PG_BASE}/postgres")).await
                {
                    let _ = conn
                        .batch_execute(&format!(
                            "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
                        ))
                        .await;
                }
                if let Ok(connection) = broker::connect(&rabbitmq).await {
                    broker::delete_topology(&connection, &rabbitmq, &worker).await;
                    let _ = connection.close(200, "cleanup".into()).await;
                }
                if let Ok(client) = redis::Client::open(REDIS_URL) {
                    if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                        let keys: Vec<String> = redis::cmd("KEYS")
                            .arg(format!("{prefix}*"))
                            .query_async(&mut conn)
                            .await
                            .unwrap_or_default();
                        if !keys.is_empty() {
                            let _: redis::RedisResult<i64> =
                                redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
                        }
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

#[derive(Debug, QueryableByName, PartialEq, Eq)]
pub struct OrderView {
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub transaction_id: Option<String>,
    #[diesel(sql_type = BigInt)]
    pub refunded_total: i64,
}

pub struct EventTap {
    pub ids: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl EventTap {
    pub fn ids(&self) -> Vec<String> {
        self.ids.lock().map(|ids| ids.clone()).unwrap_or_default()
    }
}

impl Drop for EventTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct RunningWorker {
    pub worker: Worker,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<()>,
}

impl RunningWorker {
    /// Graceful stop; waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("worker stops in time")
            .expect("worker task");
    }
}

/// Polls `check` until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy to PostgreSQL that can be cut (every connection dropped, new ones refused)
/// and restored: the database "goes away" without touching the shared server.
pub struct CuttableProxy {
    pub address: SocketAddr,
    enabled: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl CuttableProxy {
    pub async fn start(upstream: &'static str) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let address = listener.local_addr().expect("proxy address");
        let enabled = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (on, list) = (enabled.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !AtomicBool::load(&on, Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                if let Ok(mut list) = list.lock() {
                    list.push(task);
                }
            }
        });
        CuttableProxy {
            address,
            enabled,
            connections,
            accept,
        }
    }

    pub fn cut(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        if let Ok(mut list) = self.connections.lock() {
            for task in list.drain(..) {
                task.abort();
            }
        }
    }

    pub fn restore(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
