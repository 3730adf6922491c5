//! The worker's test set-up on wxpay-testkit: a [`TestEnv`] (the test kit's isolation with
//! the worker's settings and a migrated database), a worker running on a task, and a tap on
//! the events exchange. What isolates a test, the services and the waiting come from the
//! test kit and are re-exported here.

#![allow(dead_code)]

use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::pg::Pg;
use diesel::sql_types::Text;
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::task::JoinHandle;
use wxpay_runtime::amqp::message_id_text;
use wxpay_runtime::config::Settings;
use wxpay_shared::message::NotifyMessage;
use wxpay_shared::state::OrderState;
use wxpay_testkit::event_schemas::assert_valid_event;
use wxpay_testkit::notifications::{transaction_of, v2_pay};
use wxpay_worker::{broker, migrate, Disposition, Worker};

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

    /// A migrated environment and a worker on it, stepped with `Worker::process_one`.
    pub async fn with_worker() -> (TestEnv, Worker) {
        let env = TestEnv::new().await;
        let worker = Worker::new(env.settings()).expect("worker");
        (env, worker)
    }

    /// Inserts the NOTPAY order `out_trade_no` for `amount`; then `payment` applies to it.
    pub async fn pay_order(
        &self,
        worker: &Worker,
        (out_trade_no, amount): (&str, i64),
        payment: &NotifyMessage,
    ) {
        self.insert_order(out_trade_no, amount).await;
        assert_eq!(worker.process_one(payment).await, Disposition::Applied);
    }

    /// [`TestEnv::pay_order`] with a v2 payment by [`transaction_of`] the order, the
    /// transaction the refund builders name.
    pub async fn paid_order(&self, worker: &Worker, out_trade_no: &str, amount: i64) {
        let payment = v2_pay(out_trade_no, &transaction_of(out_trade_no), amount);
        self.pay_order(worker, (out_trade_no, amount), &payment)
            .await;
    }

    /// The text column `value` of the one row `sql` selects, with `binds` as `$1`, `$2`, …;
    /// `row` names that row in the failure when there is none.
    pub async fn text_of(&self, row: &str, sql: &str, binds: &[&str]) -> String {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            value: String,
        }
        let mut query = diesel::sql_query(sql).into_boxed::<Pg>();
        for bind in binds {
            query = query.bind::<Text, _>(*bind);
        }
        let found: Row = query.get_result(&mut self.conn().await).await.expect(row);
        found.value
    }

    /// Asserts the order's state and refunded total.
    pub async fn assert_order(&self, out_trade_no: &str, state: OrderState, refunded_total: i64) {
        let order = self.order(out_trade_no).await;
        assert_eq!(
            (order.state.as_str(), order.refunded_total),
            (state.as_str(), refunded_total),
            "{out_trade_no}"
        );
    }

    /// A queue bound to the events exchange (the worker's topology declared first) for
    /// `routing_key`; collects the event message ids.
    pub async fn bind_events(&self, routing_key: &str) -> EventTap {
        let rabbitmq = &self.settings.rabbitmq;
        let (connection, channel) = declared_topology(&self.settings).await;
        let queue = format!("{}.tap.{}", rabbitmq.queue, routing_key);
        let private = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let no_arguments = FieldTable::default;
        channel
            .queue_declare(queue.as_str().into(), private, no_arguments())
            .await
            .expect("tap queue");
        let exchange = rabbitmq.events_exchange.as_str();
        let bind = QueueBindOptions::default();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                routing_key.into(),
                bind,
                no_arguments(),
            )
            .await
            .expect("bind");
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let mut consumer = channel
            .basic_consume(queue.as_str().into(), "tap".into(), no_ack, no_arguments())
            .await
            .expect("consume");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let event = TappedEvent {
                    id: message_id_text(&delivery.properties)
                        .unwrap_or_default()
                        .to_owned(),
                    routing_key: delivery.routing_key.to_string(),
                    body: serde_json::from_slice(&delivery.data).unwrap_or_default(),
                };
                if let Ok(mut events) = sink.lock() {
                    events.push(event);
                }
            }
            drop(channel);
            drop(connection);
        });
        EventTap { events, task }
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

/// The disposition of a message recorded as the anomaly `reason`.
pub fn anomaly(reason: &str) -> Disposition {
    Disposition::Anomaly {
        reason: reason.to_owned(),
    }
}

/// Asserts that a message was found a duplicate (by either layer).
#[track_caller]
pub fn assert_duplicate(disposition: &Disposition) {
    assert!(
        matches!(disposition, Disposition::Duplicate { .. }),
        "{disposition:?}"
    );
}

/// Waits until `worker` is connected to Redis (it connects in the background).
pub async fn wait_for_redis(worker: &Worker) {
    eventually(Duration::from_secs(5), "redis connected", || {
        let connected = worker.redis_connected();
        async move { connected }
    })
    .await;
}

/// One event as a subscriber received it.
#[derive(Debug, Clone)]
pub struct TappedEvent {
    /// The AMQP message id (the outbox id).
    pub id: String,
    pub routing_key: String,
    /// The JSON body (`null` when it was not JSON: the schema check then fails).
    pub body: serde_json::Value,
}

pub struct EventTap {
    events: Arc<Mutex<Vec<TappedEvent>>>,
    task: JoinHandle<()>,
}

impl EventTap {
    /// The events received so far, each held to its JSON Schema in `docs/events` (a test
    /// that taps events checks the published contract too).
    pub fn events(&self) -> Vec<TappedEvent> {
        let events = self
            .events
            .lock()
            .map(|events| events.clone())
            .unwrap_or_default();
        for event in &events {
            assert_valid_event(&event.routing_key, &event.body);
        }
        events
    }

    /// The message ids of [`Self::events`].
    pub fn ids(&self) -> Vec<String> {
        self.events().into_iter().map(|event| event.id).collect()
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
