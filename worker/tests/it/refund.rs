//! Refund rules through the steppable `Worker::process_one`.

use wxpay_shared::state::OrderState;
use wxpay_worker::Disposition;

use crate::builders::{transaction_of, v2_pay, v2_refund, v3_refund};
use crate::helpers::{anomaly, assert_duplicate, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_then_full_refund_moves_money_once_per_refund() {
    let (env, worker) = TestEnv::with_worker().await;
    env.paid_order(&worker, "r-1", 1000).await;

    let first = v2_refund("r-1", "rf-1", "5001", 1000, 300, "SUCCESS");
    assert_eq!(worker.process_one(&first).await, Disposition::Applied);
    env.assert_order("r-1", OrderState::PartiallyRefunded, 300)
        .await;

    // The same refund again, through v3: no money moves twice.
    let same = v3_refund("r-1", "rf-1", "5001", 1000, 300, "SUCCESS");
    assert_duplicate(&worker.process_one(&same).await);
    assert_eq!(env.order("r-1").await.refunded_total, 300);

    let second = v3_refund("r-1", "rf-2", "5002", 1000, 700, "SUCCESS");
    assert_eq!(worker.process_one(&second).await, Disposition::Applied);
    env.assert_order("r-1", OrderState::Refunded, 1000).await;
    assert_eq!(env.outbox_count("order.refunded").await, 2);
    assert_eq!(env.count("FROM refunds WHERE status = 'SUCCESS'").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_exceeding_paid_is_an_anomaly() {
    let (env, worker) = TestEnv::with_worker().await;
    env.paid_order(&worker, "r-2", 1000).await;
    assert_eq!(
        worker
            .process_one(&v2_refund("r-2", "rf-3", "5003", 1000, 800, "SUCCESS"))
            .await,
        Disposition::Applied
    );
    assert_eq!(
        worker
            .process_one(&v2_refund("r-2", "rf-4", "5004", 1000, 300, "SUCCESS"))
            .await,
        anomaly("REFUND_EXCEEDS_PAID")
    );
    env.assert_order("r-2", OrderState::PartiallyRefunded, 800)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_and_closed_update_the_refund_without_money() {
    let (env, worker) = TestEnv::with_worker().await;
    env.paid_order(&worker, "r-3", 1000).await;
    // v2 CHANGE is the refund ABNORMAL; v3 ABNORMAL is the same news, a duplicate. v3
    // CLOSED closes another refund; v2 REFUNDCLOSE is the same news.
    let steps = [
        (
            v2_refund("r-3", "rf-5", "5005", 1000, 100, "CHANGE"),
            v3_refund("r-3", "rf-5", "5005", 1000, 100, "ABNORMAL"),
            "rf-5",
            "ABNORMAL",
        ),
        (
            v3_refund("r-3", "rf-6", "5006", 1000, 100, "CLOSED"),
            v2_refund("r-3", "rf-6", "5006", 1000, 100, "REFUNDCLOSE"),
            "rf-6",
            "CLOSED",
        ),
    ];
    for (news, same_news, out_refund_no, status) in steps {
        assert_eq!(worker.process_one(&news).await, Disposition::Applied);
        assert_duplicate(&worker.process_one(&same_news).await);
        assert_eq!(
            env.count(&format!(
                "FROM refunds WHERE out_refund_no = '{out_refund_no}' AND status = '{status}'"
            ))
            .await,
            1
        );
    }
    env.assert_order("r-3", OrderState::Paid, 0).await;
    assert_eq!(env.outbox_count("refund.updated").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_before_payment_is_retried_then_applied() {
    let (env, worker) = TestEnv::with_worker().await;
    env.insert_order("r-4", 1000).await;
    let refund = v2_refund("r-4", "rf-7", "5007", 1000, 1000, "SUCCESS");
    let early = worker.process_one(&refund).await;
    assert!(
        matches!(&early, Disposition::Retry { reason } if reason.starts_with("out_of_order")),
        "{early:?}"
    );
    assert_eq!(env.count("FROM notifications").await, 0);
    assert_eq!(
        worker
            .process_one(&v2_pay("r-4", &transaction_of("r-4"), 1000))
            .await,
        Disposition::Applied
    );
    // The claim was released on failure: the retry is not blocked by it.
    assert_eq!(worker.process_one(&refund).await, Disposition::Applied);
    assert_eq!(env.order("r-4").await.state, OrderState::Refunded.as_str());
}
