//! Whole-worker tests: consumer, retry tiers, parking, outbox relay, crash and outages.

use std::sync::atomic::Ordering;
use std::time::Duration;

use secrecy::SecretString;
use wxpay_shared::state::OrderState;
use wxpay_testkit::services::postgres_url;
use wxpay_worker::retry::{self, ReplaySelection};

use crate::builders::{self, v2_pay, v3_pay};
use crate::helpers::{closed_port_url, eventually, FaultProxy, TestEnv, POSTGRES};

const WAIT: Duration = Duration::from_secs(30);

async fn twenty_copies_on_two_workers(env: &TestEnv, redis_down: bool) {
    let mut settings = env.settings();
    if redis_down {
        settings.redis.url = SecretString::from(closed_port_url("redis"));
    }
    env.insert_order("c-1", 4200).await;
    let tap = env.bind_events("order.paid").await;
    let original = v2_pay("c-1", "4200c1", 4200);
    let mut copies: Vec<_> = (0..10).map(|_| builders::resend(&original)).collect();
    copies.extend((0..10).map(|_| v3_pay("c-1", "4200c1", 4200)));
    env.publish_all(&copies).await;

    let a = env.spawn_worker(settings.clone());
    let b = env.spawn_worker(settings);
    eventually(WAIT, "all 20 settled", || {
        let settled = a.worker.stats().acked() + b.worker.stats().acked();
        async move { settled == 20 }
    })
    .await;
    let applied = a.worker.stats().get("applied") + b.worker.stats().get("applied");
    let duplicates = a.worker.stats().get("duplicate") + b.worker.stats().get("duplicate");
    assert_eq!((applied, duplicates), (1, 19));
    assert_eq!(env.order("c-1").await.state, OrderState::Paid.as_str());
    assert_eq!(env.count("FROM notifications").await, 1);
    assert_eq!(env.outbox_count("order.paid").await, 1);
    eventually(WAIT, "event published", || {
        let ids = tap.ids();
        async move { ids.len() == 1 }
    })
    .await;
    eventually(WAIT, "outbox marked published", || async {
        env.count("FROM outbox WHERE published_at IS NULL").await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tap.ids().len(), 1, "one order.paid event on the exchange");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_notification_twenty_times_on_two_workers_has_one_effect() {
    let env = TestEnv::new().await;
    twenty_copies_on_two_workers(&env, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_without_redis_still_one_effect() {
    let env = TestEnv::new().await;
    twenty_copies_on_two_workers(&env, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_commit_before_ack_is_redelivered_without_second_effect() {
    let env = TestEnv::new().await;
    env.insert_order("k-1", 100).await;
    let running = env.spawn_worker(env.settings());
    running
        .worker
        .hooks()
        .crash_after_commit
        .store(1, Ordering::SeqCst);
    env.publish(&v2_pay("k-1", "4200k1", 100)).await;
    eventually(WAIT, "redelivered and acked", || {
        let acked = running.worker.stats().acked();
        async move { acked == 1 }
    })
    .await;
    let stats = running.worker.stats();
    assert_eq!((stats.get("applied"), stats.get("duplicate")), (1, 1));
    assert_eq!(env.order("k-1").await.state, OrderState::Paid.as_str());
    assert_eq!(env.count("FROM notifications").await, 1);
    assert_eq!(env.outbox_count("order.paid").await, 1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_goes_through_retry_tiers_and_applies_after() {
    let env = TestEnv::new().await;
    env.insert_order("d-1", 100).await;
    let proxy = FaultProxy::start(POSTGRES).await;
    let mut settings = env.settings();
    settings.database.url = SecretString::from(postgres_url(proxy.address(), &env.db_name));
    settings.database.connect_timeout_ms = 500;
    proxy.cut();
    let running = env.spawn_worker(settings);
    env.publish(&v2_pay("d-1", "4200d1", 100)).await;
    eventually(WAIT, "retried at least twice", || {
        let retried = running.worker.stats().get("retried");
        async move { retried >= 2 }
    })
    .await;
    assert_eq!(env.order("d-1").await.state, OrderState::NotPay.as_str());
    proxy.restore();
    eventually(WAIT, "applied after the database returned", || async {
        env.order("d-1").await.state == OrderState::Paid.as_str()
    })
    .await;
    eventually(WAIT, "counted as applied", || {
        let applied = running.worker.stats().get("applied");
        async move { applied == 1 }
    })
    .await;
    assert_eq!(running.worker.stats().get("parked"), 0);
    running.stop().await;
    assert!(retry::dlq_list(&env.settings)
        .await
        .expect("dlq list")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_message_is_parked_with_its_reason() {
    let env = TestEnv::new().await;
    env.insert_order("f-1", 100).await;
    let running = env.spawn_worker(env.settings());
    let forged = builders::v2_pay_with(
        "f-1",
        "4200f1",
        100,
        builders::APPID,
        "SUCCESS",
        "ffffffffffffffffffffffffffffffff",
    );
    env.publish(&forged).await;
    // Not even a queue message: missing metadata.
    env.publish_raw(b"<xml>garbage</xml>", lapin::BasicProperties::default())
        .await;
    eventually(WAIT, "both parked", || {
        let parked = running.worker.stats().get("parked");
        async move { parked == 2 }
    })
    .await;
    running.stop().await;
    let parked = retry::dlq_list(&env.settings).await.expect("dlq list");
    assert_eq!(parked.len(), 2, "{parked:?}");
    let forged_line = parked
        .iter()
        .find(|p| p.id == forged.message_id.to_string())
        .expect("listed");
    assert!(
        forged_line.reason.starts_with("bad_signature"),
        "{forged_line:?}"
    );
    assert_eq!(
        (forged_line.kind.as_str(), forged_line.mch_id.as_str()),
        ("v2.pay", builders::MCH_ID)
    );
    assert!(parked.iter().any(|p| p.reason.starts_with("undecodable")));
    // Listing does not consume.
    assert_eq!(
        retry::dlq_list(&env.settings)
            .await
            .expect("dlq list")
            .len(),
        2
    );
    assert_eq!(env.order("f-1").await.state, OrderState::NotPay.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_for_unknown_merchant_is_replayed_once_configured() {
    let env = TestEnv::new().await;
    env.insert_order("p-1", 100).await;
    let mut without_merchant = env.settings();
    without_merchant.merchants.clear();
    let running = env.spawn_worker(without_merchant);
    let message = v2_pay("p-1", "4200p1", 100);
    let other = v2_pay("p-1", "4200p2", 100);
    env.publish(&message).await;
    env.publish(&other).await;
    eventually(WAIT, "parked", || {
        let parked = running.worker.stats().get("parked");
        async move { parked == 2 }
    })
    .await;
    running.stop().await;
    assert_eq!(env.order("p-1").await.state, OrderState::NotPay.as_str());

    let running = env.spawn_worker(env.settings());
    let id = message.message_id.to_string();
    assert_eq!(
        retry::dlq_replay(&env.settings, &ReplaySelection::Id(id))
            .await
            .expect("replay"),
        1
    );
    eventually(WAIT, "applied", || async {
        env.order("p-1").await.state == OrderState::Paid.as_str()
    })
    .await;
    // The other one stays parked; replaying everything applies it as the anomaly it is.
    let still = retry::dlq_list(&env.settings).await.expect("list");
    assert_eq!(still.len(), 1);
    assert_eq!(still[0].id, other.message_id.to_string());
    assert_eq!(
        retry::dlq_replay(&env.settings, &ReplaySelection::All)
            .await
            .expect("replay"),
        1
    );
    eventually(WAIT, "second applied as an anomaly", || async {
        env.anomalies("DUPLICATE_PAYMENT").await == 1
    })
    .await;
    assert_eq!(env.outbox_count("order.paid").await, 1);
    assert_eq!(running.worker.stats().get("applied"), 1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_and_metrics() {
    let env = TestEnv::new().await;
    let prometheus = wxpay_runtime::telemetry::metrics_handle();
    let running = env.spawn_worker(env.settings());
    let (server, address) =
        wxpay_worker::http::serve("127.0.0.1:0", running.worker.clone(), prometheus)
            .expect("binds");
    let handle = server.handle();
    tokio::spawn(server);
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{address}{path}");
    assert_eq!(
        client
            .get(url("/healthz"))
            .send()
            .await
            .expect("healthz")
            .status(),
        200
    );
    eventually(WAIT, "ready", || {
        let request = client.get(url("/readyz")).send();
        async move { matches!(request.await, Ok(r) if r.status() == 200) }
    })
    .await;
    let metrics = client
        .get(url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "wxpay_worker_messages_total",
        "wxpay_worker_process_duration_seconds",
        "wxpay_worker_lag_seconds",
        "wxpay_worker_dedupe_hits_total",
        "wxpay_worker_anomalies_total",
        "wxpay_worker_retries_total",
        "wxpay_worker_parked_total",
        "wxpay_worker_broker_connected",
        "wxpay_worker_redis_errors_total",
        "wxpay_outbox_pending",
        "wxpay_outbox_published_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    handle.stop(true).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_last_tier_a_transient_failure_is_parked() {
    let env = TestEnv::new().await;
    env.insert_order("t-1", 100).await;
    // A refund whose payment never comes: out of order on every attempt.
    let refund = builders::v2_refund("t-1", "tr-1", "5030t1", 100, 100, "SUCCESS");
    let running = env.spawn_worker(env.settings());
    env.publish(&refund).await;
    eventually(WAIT, "parked after the tiers", || {
        let parked = running.worker.stats().get("parked");
        async move { parked == 1 }
    })
    .await;
    let tiers = env.settings.worker.retry_delays_ms.len() as u64;
    assert_eq!(running.worker.stats().get("retried"), tiers + 1);
    running.stop().await;
    let parked = retry::dlq_list(&env.settings).await.expect("dlq list");
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].id, refund.message_id.to_string());
    assert!(
        parked[0]
            .reason
            .starts_with("retries_exhausted: out_of_order"),
        "{parked:?}"
    );
    assert_eq!(u64::from(parked[0].attempt), tiers + 1);
    assert_eq!(env.count("FROM notifications").await, 0);
}
