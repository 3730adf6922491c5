//! Payment rules through the steppable `Worker::process_one`.

use wxpay_shared::state::OrderState;
use wxpay_testkit::notifications::RESOURCE_NONCE;
use wxpay_worker::{DedupeLayer, Disposition, Worker};

use crate::builders::{self, transaction_of, v2_pay, v2_pay_with, v3_pay, OTHER_APPID, V2_KEY};
use crate::helpers::{anomaly, assert_duplicate, closed_port_url, wait_for_redis, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notpay_becomes_paid_once_whatever_the_channel() {
    let (env, worker) = TestEnv::with_worker().await;
    env.insert_order("o-1", 888).await;

    let v2 = v2_pay("o-1", "4200001", 888);
    assert_eq!(worker.process_one(&v2).await, Disposition::Applied);
    let order = env.order("o-1").await;
    assert_eq!(order.state, OrderState::Paid.as_str());
    assert_eq!(order.transaction_id.as_deref(), Some("4200001"));

    // The same notification again, a WeChat re-send, and the same payment through v3.
    for again in [
        v2.clone(),
        builders::resend(&v2),
        v3_pay("o-1", "4200001", 888),
    ] {
        assert_duplicate(&worker.process_one(&again).await);
    }

    assert_eq!(env.count("FROM notifications").await, 1);
    assert_eq!(env.outbox_count("order.paid").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_payment_is_verified_decrypted_and_applied() {
    let (env, worker) = TestEnv::with_worker().await;
    env.pay_order(&worker, ("o-v3", 100), &v3_pay("o-v3", "4200v3", 100))
        .await;
    assert_eq!(env.order("o-v3").await.state, OrderState::Paid.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_twice_is_a_duplicate_payment_anomaly() {
    let (env, worker) = TestEnv::with_worker().await;
    env.paid_order(&worker, "o-2", 500).await;
    assert_eq!(
        worker.process_one(&v2_pay("o-2", "4200B", 500)).await,
        anomaly("DUPLICATE_PAYMENT")
    );
    let order = env.order("o-2").await;
    assert_eq!(
        (order.state.as_str(), order.transaction_id.as_deref()),
        (
            OrderState::Paid.as_str(),
            Some(transaction_of("o-2").as_str())
        )
    );
    assert_eq!(env.anomalies("DUPLICATE_PAYMENT").await, 1);
    assert_eq!(env.outbox_count("anomaly.detected").await, 1);
    assert_eq!(env.outbox_count("order.paid").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_on_closed_order_is_an_anomaly() {
    let (env, worker) = TestEnv::with_worker().await;
    env.insert_order_with("o-3", 500, builders::APPID, OrderState::Closed.as_str())
        .await;
    assert_eq!(
        worker.process_one(&v2_pay("o-3", "4200C", 500)).await,
        anomaly("PAID_AFTER_CLOSE")
    );
    assert_eq!(env.order("o-3").await.state, OrderState::Closed.as_str());
    assert_eq!(env.outbox_count("order.paid").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amount_or_appid_mismatch_never_pays() {
    let (env, worker) = TestEnv::with_worker().await;
    env.insert_order("o-4", 1000).await;
    let other_appid = v2_pay_with("o-4", "4200E", 1000, OTHER_APPID, "SUCCESS", V2_KEY);
    for (payment, reason) in [
        (v2_pay("o-4", "4200D", 1), "AMOUNT_MISMATCH"),
        (other_appid, "APPID_MISMATCH"),
    ] {
        assert_eq!(worker.process_one(&payment).await, anomaly(reason));
    }
    assert_eq!(env.order("o-4").await.state, OrderState::NotPay.as_str());
    assert_eq!(env.outbox_count("anomaly.detected").await, 2);
    // Re-sent, the anomaly is not recorded twice.
    assert_duplicate(&worker.process_one(&v2_pay("o-4", "4200D", 1)).await);
    assert_eq!(env.anomalies("AMOUNT_MISMATCH").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_payment_is_recorded_without_transition() {
    let (env, worker) = TestEnv::with_worker().await;
    env.insert_order("o-5", 300).await;
    let failed = v2_pay_with("o-5", "", 300, builders::APPID, "FAIL", V2_KEY);
    assert_eq!(worker.process_one(&failed).await, Disposition::Recorded);
    assert_duplicate(&worker.process_one(&builders::resend(&failed)).await);
    assert_eq!(env.order("o-5").await.state, OrderState::NotPay.as_str());
    assert_eq!(
        env.count("FROM notifications WHERE outcome = 'RECORDED'")
            .await,
        1
    );
    // The payment that follows still applies.
    assert_eq!(
        worker.process_one(&v2_pay("o-5", "4200G", 300)).await,
        Disposition::Applied
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_unknown_merchant_messages_are_parked() {
    let (env, worker) = TestEnv::with_worker().await;
    env.insert_order("o-6", 100).await;
    let forged = v2_pay_with(
        "o-6",
        "4200H",
        100,
        builders::APPID,
        "SUCCESS",
        "00000000000000000000000000000000",
    );
    let mut tampered = v3_pay("o-6", "4200H", 100);
    tampered.body = String::from_utf8_lossy(&tampered.body)
        .replace(RESOURCE_NONCE, "fdasflkja485")
        .into_bytes();
    let mut stranger = v2_pay("o-6", "4200H", 100);
    stranger.mch_id = "1234567890".into();
    for (message, why) in [
        (forged, "bad_signature"),
        (tampered, "bad_signature"),
        (stranger, "unknown_merchant"),
    ] {
        let outcome = worker.process_one(&message).await;
        assert!(
            matches!(&outcome, Disposition::Park { reason } if reason.starts_with(why)),
            "{outcome:?}"
        );
    }
    assert_eq!(env.order("o-6").await.state, OrderState::NotPay.as_str());
    assert_eq!(env.count("FROM notifications").await, 0);
}

/// Two copies of one payment through `worker`: applied, then a duplicate found by `layer`.
async fn second_copy_is_a_duplicate_in(env: &TestEnv, worker: &Worker, layer: DedupeLayer) {
    env.insert_order("o-7", 100).await;
    let message = v2_pay("o-7", "4200I", 100);
    assert_eq!(worker.process_one(&message).await, Disposition::Applied);
    assert_eq!(
        worker.process_one(&message).await,
        Disposition::Duplicate { layer }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_postgres_alone_dedupes() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.redis.url = secrecy::SecretString::from(closed_port_url("redis"));
    let worker = Worker::new(settings).expect("worker");
    second_copy_is_a_duplicate_in(&env, &worker, DedupeLayer::Postgres).await;
    assert_eq!(env.outbox_count("order.paid").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_done_marker_short_circuits() {
    let (env, worker) = TestEnv::with_worker().await;
    wait_for_redis(&worker).await;
    second_copy_is_a_duplicate_in(&env, &worker, DedupeLayer::Redis).await;
}
