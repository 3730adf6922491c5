//! Per-test isolation on the shared services: a database, a queue (and the retry tiers,
//! parking queue and events exchange derived from it) and a Redis key prefix of the test's
//! own, named after a fresh id, and all of them dropped when the [`TestEnv`] is, also when
//! the test panicked.

use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use lapin::message::BasicGetMessage;
use lapin::BasicProperties;
use secrecy::{ExposeSecret, SecretString};
use wxpay_runtime::config::{RabbitmqSettings, Settings};
use wxpay_shared::message::NotifyMessage;
use wxpay_shared::state::OrderState;

use crate::db::{self, NewOrder, OrderView};
use crate::merchants::{SubMerchant, TestMerchant, MERCHANT};
use crate::services::{AMQP_URL, PG_BASE, REDIS_URL};

/// Every section at its default, [`MERCHANT`] configured and every listener on a free
/// loopback port: the settings a crate's test set-up starts from.
pub fn default_settings() -> Settings {
    let mut settings = Settings {
        gateway: Default::default(),
        worker: Default::default(),
        rabbitmq: Default::default(),
        redis: Default::default(),
        database: Default::default(),
        wechatpay: Default::default(),
        reconciler: Default::default(),
        merchants: vec![MERCHANT.settings()],
        console: Default::default(),
    };
    settings.gateway.listen = "127.0.0.1:0".into();
    settings.worker.metrics_listen = "127.0.0.1:0".into();
    settings.reconciler.metrics_listen = "127.0.0.1:0".into();
    settings.console.listen = "127.0.0.1:0".into();
    settings
}

/// One test's names on the shared services, in `settings`.
pub struct TestEnv {
    /// The fresh id in every name (`wxpay_<label>_<id>`, `wxpay.<label>.<id>`, …).
    pub id: String,
    pub db_name: String,
    /// The crate's settings with the test's names and the services' URLs.
    pub settings: Settings,
}

impl TestEnv {
    /// `settings` (a crate's own set-up) with only what isolates a test replaced: the
    /// database, queue, events exchange and Redis key prefix, on the loopback services.
    /// `label` says which tests a name that was left behind belongs to. Nothing is created
    /// yet: the database by [`TestEnv::create_database`] or the worker's migration, the
    /// queues by whoever declares them first.
    pub fn new(label: &str, mut settings: Settings) -> TestEnv {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("wxpay_{label}_{id}");
        settings.database.url = SecretString::from(format!("{PG_BASE}/{db_name}"));
        settings.rabbitmq.url = SecretString::from(AMQP_URL);
        settings.rabbitmq.queue = format!("wxpay.{label}.{id}");
        settings.rabbitmq.events_exchange = format!("wxpay.{label}.events.{id}");
        settings.redis.url = SecretString::from(REDIS_URL);
        settings.redis.key_prefix = format!("wxpay:{label}:{id}:");
        TestEnv {
            id,
            db_name,
            settings,
        }
    }

    pub fn db_url(&self) -> String {
        self.settings.database.url.expose_secret().to_owned()
    }

    /// A copy of the settings, for a service to take.
    pub fn settings(&self) -> Settings {
        self.settings.clone()
    }

    /// Creates the (empty) test database.
    pub async fn create_database(&self) {
        let mut admin = db::connect(&format!("{PG_BASE}/postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{}\"", self.db_name))
            .await
            .expect("test database created");
    }

    pub async fn conn(&self) -> AsyncPgConnection {
        db::connect(&self.db_url()).await
    }

    /// Runs `statements` on the test database.
    pub async fn sql(&self, statements: &str) -> Result<(), diesel::result::Error> {
        self.conn().await.batch_execute(statements).await
    }

    /// `SELECT count(*) <tail>` on the test database.
    pub async fn count(&self, tail: &str) -> i64 {
        db::count(&mut self.conn().await, tail).await
    }

    /// A NOTPAY order of [`MERCHANT`].
    pub async fn insert_order(&self, out_trade_no: &str, amount_total: i64) {
        self.insert_order_with(
            out_trade_no,
            amount_total,
            MERCHANT.appid,
            OrderState::NotPay.as_str(),
        )
        .await;
    }

    /// An order of [`MERCHANT`] in `appid` and `state`.
    pub async fn insert_order_with(
        &self,
        out_trade_no: &str,
        amount_total: i64,
        appid: &str,
        state: &str,
    ) {
        let order = NewOrder {
            mch_id: MERCHANT.mch_id,
            sub_mch_id: "",
            appid,
            out_trade_no,
            amount_total,
            state,
        };
        order.insert(&mut self.conn().await).await;
    }

    /// An order of [`MERCHANT`].
    pub async fn order(&self, out_trade_no: &str) -> OrderView {
        db::order(&mut self.conn().await, MERCHANT.mch_id, out_trade_no).await
    }

    /// A NOTPAY order of `sub` of the service provider `provider`, in the appid it is
    /// placed with ([`SubMerchant::order_appid`]).
    pub async fn insert_sub_merchant_order(
        &self,
        (provider, sub): (&TestMerchant, &SubMerchant),
        out_trade_no: &str,
        amount_total: i64,
    ) {
        let order = NewOrder {
            mch_id: provider.mch_id,
            sub_mch_id: sub.sub_mch_id,
            appid: sub.order_appid(provider),
            out_trade_no,
            amount_total,
            state: OrderState::NotPay.as_str(),
        };
        order.insert(&mut self.conn().await).await;
    }

    /// An order of `sub` of the service provider `provider`.
    pub async fn sub_merchant_order(
        &self,
        (provider, sub): (&TestMerchant, &SubMerchant),
        out_trade_no: &str,
    ) -> OrderView {
        let of = (provider.mch_id, sub.sub_mch_id);
        db::sub_merchant_order(&mut self.conn().await, of, out_trade_no).await
    }

    /// Outbox events of `event_type`.
    pub async fn outbox_count(&self, event_type: &str) -> i64 {
        self.count(&format!("FROM outbox WHERE event_type = '{event_type}'"))
            .await
    }

    /// Notifications recorded as an anomaly for `reason`.
    pub async fn anomalies(&self, reason: &str) -> i64 {
        self.count(&format!(
            "FROM notifications WHERE outcome = 'ANOMALY' AND anomaly_reason = '{reason}'"
        ))
        .await
    }

    /// Publishes `message` to the test's queue as the gateway does, confirmed.
    pub async fn publish(&self, message: &NotifyMessage) {
        self.publish_all(std::slice::from_ref(message)).await;
    }

    /// Publishes every message over one channel, all confirmed.
    pub async fn publish_all(&self, messages: &[NotifyMessage]) {
        crate::amqp::publish(&self.settings.rabbitmq.queue, messages).await;
    }

    /// Publishes a body with `properties` (not necessarily a queue message), confirmed.
    pub async fn publish_raw(&self, body: &[u8], properties: BasicProperties) {
        crate::amqp::publish_raw(&self.settings.rabbitmq.queue, &[(body, properties)]).await;
    }

    /// Messages ready in the test's queue.
    pub async fn queue_depth(&self) -> u32 {
        crate::amqp::queue_depth(&self.settings.rabbitmq.queue).await
    }

    /// Every message in the test's queue, acknowledged.
    pub async fn drain(&self) -> Vec<BasicGetMessage> {
        crate::amqp::drain_queue(&self.settings.rabbitmq.queue).await
    }
}

impl Drop for TestEnv {
    /// Drops the database, the queues and exchanges and the Redis keys, on a thread of its
    /// own: Drop cannot await, and may run inside the test's runtime.
    fn drop(&mut self) {
        let db_name = self.db_name.clone();
        let rabbitmq: RabbitmqSettings = self.settings.rabbitmq.clone();
        let retry_tiers = self.settings.worker.retry_delays_ms.len();
        let prefix = self.settings.redis.key_prefix.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                use diesel_async::AsyncConnection;
                if let Ok(mut admin) =
                    AsyncPgConnection::establish(&format!("{PG_BASE}/postgres")).await
                {
                    let _ = admin
                        .batch_execute(&format!(
                            "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
                        ))
                        .await;
                }
                // The loopback broker whatever URL the test pointed a service at (a proxy).
                if let Ok(connection) = crate::amqp::try_connect(AMQP_URL).await {
                    crate::amqp::delete_declared(&connection, &rabbitmq, retry_tiers).await;
                    let _ = connection.close(200, "cleanup".into()).await;
                }
                delete_redis_keys(&prefix).await;
            });
        });
        let _ = cleanup.join();
    }
}

async fn delete_redis_keys(prefix: &str) {
    let Ok(client) = redis::Client::open(REDIS_URL) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}
