//! The worker's test set-up on wxpay-testkit: a [`TestEnv`] (the test kit's isolation with
//! the worker's settings and a migrated database), a worker running on a task, and a tap on
//! the events exchange. What isolates a test, the services and the waiting come from the
//! test kit and are re-exported here.

#![allow(dead_code)]

use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::task::JoinHandle;
use wxpay_runtime::config::Settings;
use wxpay_worker::{broker, migrate, Worker};

pub use wxpay_testkit::services::{closed_port_url, POSTGRES, REDIS_URL};
pub use wxpay_testkit::{config_file, eventually, Background, FaultProxy};

/// The worker's settings in these tests: short retry tiers and polls, small pools.
pub fn worker_settings() -> Settings {
    let mut settings = wxpay_testkit::default_settings();
    let worker = &mut settings.worker;
    worker.prefetch = 50;
    worker.retry_delays_ms = vec![200, 400, 800, 1600, 3200];
    worker.claim_ttl_ms = 5_000;
    worker.done_ttl_secs = 600;
    worker.db_pool_size = 8;
    worker.outbox_poll_ms = 50;
    worker.shutdown_timeout_ms = 10_000;
    settings.rabbitmq.connect_timeout_ms = 3_000;
    settings.redis.response_timeout_ms = 200;
    settings.redis.connect_timeout_ms = 300;
    settings.database.connect_timeout_ms = 2_000;
    settings
}

/// The test kit's [`wxpay_testkit::TestEnv`] with [`worker_settings`].
pub struct TestEnv(wxpay_testkit::TestEnv);

impl Deref for TestEnv {
    type Target = wxpay_testkit::TestEnv;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl TestEnv {
    /// A fresh, migrated database and unique broker / Redis names.
    pub async fn new() -> TestEnv {
        Self::with_migration(true).await
    }

    pub async fn with_migration(migrated: bool) -> TestEnv {
        let env = TestEnv(wxpay_testkit::TestEnv::new("worker", worker_settings()));
        if migrated {
            migrate::migrate(&env.db_url(), Duration::from_secs(5))
                .await
                .expect("migrates");
        }
        env
    }

    /// A queue bound to the events exchange (the worker's topology declared first) for
    /// `routing_key`; collects the event message ids.
    pub async fn bind_events(&self, routing_key: &str) -> EventTap {
        let rabbitmq = &self.settings.rabbitmq;
        let (connection, channel) = declared_topology(&self.settings).await;
        let queue = format!("{}.tap.{}", rabbitmq.queue, routing_key);
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
                rabbitmq.events_exchange.as_str().into(),
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
        let runner = worker.clone();
        let task = Background::spawn(|token| async move { runner.run(token).await });
        RunningWorker { worker, task }
    }
}

/// A connection and a confirm channel on which the worker's topology (queues, tiers,
/// parking, events exchange) is declared, as `wxpay-worker run` does at start-up.
pub async fn declared_topology(settings: &Settings) -> (Connection, Channel) {
    let connection = broker::connect(&settings.rabbitmq).await.expect("broker");
    let channel = broker::confirm_channel(&connection).await.expect("channel");
    broker::declare_topology(&channel, &settings.rabbitmq, &settings.worker)
        .await
        .expect("topology");
    (connection, channel)
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
    task: Background,
}

impl RunningWorker {
    /// Graceful stop; waits for it.
    pub async fn stop(self) {
        self.task.stop().await;
    }
}
