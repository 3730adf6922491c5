//! A notification for an order that does not exist yet is transient: retried through the
//! tiers for `worker.unknown_order_grace_secs`, then parked as `unknown_order`; its business
//! key is never taken by that, so the payment applies once the order exists.

use std::time::Duration;

use wxpay_shared::state::OrderState;
use wxpay_worker::retry::{self, ReplaySelection};
use wxpay_worker::{Disposition, Worker};

use crate::builders::{v2_pay, v2_refund, v3_pay};
use crate::helpers::{eventually, TestEnv};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_order_takes_no_key_and_applies_once_the_order_exists() {
    let (env, worker) = TestEnv::with_worker().await;
    let early = worker.process_one(&v3_pay("u-1", "4200u1", 500)).await;
    assert!(
        matches!(&early, Disposition::Retry { reason } if reason.starts_with("unknown_order")),
        "{early:?}"
    );
    let refund = v2_refund("u-2", "ur-2", "5030u2", 500, 500, "SUCCESS");
    let early = worker.process_one(&refund).await;
    assert!(
        matches!(&early, Disposition::Retry { reason } if reason.starts_with("unknown_order")),
        "{early:?}"
    );
    assert_eq!(env.count("FROM notifications").await, 0, "no key taken");
    assert_eq!(env.count("FROM outbox").await, 0, "no anomaly event");

    env.pay_order(&worker, ("u-1", 500), &v3_pay("u-1", "4200u1", 500))
        .await;
    assert_eq!(env.order("u-1").await.state, OrderState::Paid.as_str());
    env.paid_order(&worker, "u-2", 500).await;
    assert_eq!(worker.process_one(&refund).await, Disposition::Applied);
    assert_eq!(env.order("u-2").await.state, OrderState::Refunded.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_grace_period_it_is_parked_as_unknown_order() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.worker.unknown_order_grace_secs = 60;
    let worker = Worker::new(settings).expect("worker");
    let mut old = v2_pay("u-3", "4200u3", 100);
    old.received_at_ms -= 61_000;
    let outcome = worker.process_one(&old).await;
    assert!(
        matches!(&outcome, Disposition::Park { reason } if reason.starts_with("unknown_order")),
        "{outcome:?}"
    );
    let young = v2_pay("u-3", "4200u3", 100);
    assert!(matches!(
        worker.process_one(&young).await,
        Disposition::Retry { .. }
    ));
    assert_eq!(env.count("FROM notifications").await, 0);
}

/// From outside: the payment is notified three seconds before its order is inserted, and
/// ends PAID exactly once, within the grace window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_notified_before_its_order_ends_paid_once() {
    let env = TestEnv::new().await;
    let running = env.spawn_worker(env.settings());
    let payment = v2_pay("u-4", "4200u4", 300);
    env.publish(&payment).await;
    // WeChat Pay re-sends meanwhile.
    env.publish(&crate::builders::resend(&payment)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.count("FROM orders").await, 0);
    env.insert_order("u-4", 300).await;
    eventually(WAIT, "paid once the order exists", || async {
        env.order("u-4").await.state == OrderState::Paid.as_str()
    })
    .await;
    eventually(WAIT, "every copy settled", || {
        let stats = running.worker.stats();
        let settled = stats.get("applied") + stats.get("duplicate");
        async move { settled == 2 }
    })
    .await;
    assert!(
        running.worker.stats().get("retried") >= 2,
        "went through the retry tiers"
    );
    assert_eq!(running.worker.stats().get("parked"), 0);
    running.stop().await;
    assert_eq!(env.count("FROM notifications").await, 1);
    assert_eq!(env.outbox_count("order.paid").await, 1);
    assert_eq!(env.outbox_count("anomaly.detected").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_unknown_order_is_replayed_once_the_order_exists() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.worker.unknown_order_grace_secs = 1;
    let running = env.spawn_worker(settings.clone());
    let payment = v2_pay("u-5", "4200u5", 700);
    env.publish(&payment).await;
    eventually(WAIT, "parked as unknown_order", || {
        let parked = running.worker.stats().get("parked");
        async move { parked == 1 }
    })
    .await;
    assert!(running.worker.stats().get("retried") >= 1, "retried first");
    let parked = retry::dlq_list(&settings).await.expect("dlq list");
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert!(
        parked[0].reason.starts_with("unknown_order"),
        "{}",
        parked[0].reason
    );

    env.insert_order("u-5", 700).await;
    let moved = retry::dlq_replay(&settings, &ReplaySelection::All)
        .await
        .expect("replayed");
    assert_eq!(moved, 1);
    eventually(WAIT, "paid after the replay", || async {
        env.order("u-5").await.state == OrderState::Paid.as_str()
    })
    .await;
    running.stop().await;
    assert_eq!(env.count("FROM notifications").await, 1);
    assert_eq!(env.outbox_count("order.paid").await, 1);
}
