//! Refund rules through the steppable `Worker::process_one`.

use wxpay_shared::state::OrderState;
use wxpay_worker::{Disposition, Worker};

use crate::builders::{transaction_of, v2_pay, v2_refund, v3_refund};
use crate::helpers::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_then_full_refund_moves_money_once_per_refund() {
    let env = TestEnv::new().await;
    let worker = Worker::new(env.settings()).expect("worker");
    env.insert_order("r-1", 1000).await;
    assert_eq!(
        worker
            .process_one(&v2_pay("r-1", &transaction_of("r-1"), 1000))
            .await,
        Disposition::Applied
    );

    let first = v2_refund("r-1", "rf-1", "5001", 1000, 300, "SUCCESS");
    assert_eq!(worker.process_one(&first).await, Disposition::Applied);
    let order = env.order("r-1").await;
    assert_eq!(
        (order.state.as_str(), order.refunded_total),
        (OrderState::PartiallyRefunded.as_str(), 300)
    );

    // The same refund again, through v3: no money moves twice.
    let same = worker
        .process_one(&v3_refund("r-1", "rf-1", "5001", 1000, 300, "SUCCESS"))
        .await;
    assert!(matches!(same, Disposition::Duplicate { .. }), "{same:?}");
    assert_eq!(env.order("r-1").await.refunded_total, 300);

    let second = v3_refund("r-1", "rf-2", "5002", 1000, 700, "SUCCESS");
    assert_eq!(worker.process_one(&second).await, Disposition::Applied);
    let order = env.order("r-1").await;
    assert_eq!(
        (order.state.as_str(), order.refunded_total),
        (OrderState::Refunded.as_str(), 1000)
    );
    assert_eq!(env.outbox_count("order.refunded").await, 2);
    assert_eq!(env.count("FROM refunds WHERE status = 'SUCCESS'").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_exceeding_paid_is_an_anomaly() {
    let env = TestEnv::new().await;
    let worker = Worker::new(env.settings()).expect("worker");
    env.insert_order("r-2", 1000).await;
    assert_eq!(
        worker
            .process_one(&v2_pay("r-2", &transaction_of("r-2"), 1000))
            .await,
        Disposition::Applied
    );
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
        Disposition::Anomaly {
            reason: "REFUND_EXCEEDS_PAID".into()
        }
    );
    let order = env.order("r-2").await;
    assert_eq!(
        (order.state.as_str(), order.refunded_total),
        (OrderState::PartiallyRefunded.as_str(), 800)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_and_closed_update_the_refund_without_money() {
    let env = TestEnv::new().await;
    let worker = Worker::new(env.settings()).expect("worker");
    env.insert_order("r-3", 1000).await;
    assert_eq!(
        worker
            .process_one(&v2_pay("r-3", &transaction_of("r-3"), 1000))
            .await,
        Disposition::Applied
    );
    assert_eq!(
        worker
            .process_one(&v2_refund("r-3", "rf-5", "5005", 1000, 100, "CHANGE"))
            .await,
        Disposition::Applied
    );
    assert_eq!(
        env.count("FROM refunds WHERE out_refund_no = 'rf-5' AND status = 'ABNORMAL'")
            .await,
        1
    );
    // v3 ABNORMAL is the same news as v2 CHANGE.
    let abnormal = worker
        .process_one(&v3_refund("r-3", "rf-5", "5005", 1000, 100, "ABNORMAL"))
        .await;
    assert!(
        matches!(abnormal, Disposition::Duplicate { .. }),
        "{abnormal:?}"
    );
    assert_eq!(
        worker
            .process_one(&v3_refund("r-3", "rf-6", "5006", 1000, 100, "CLOSED"))
            .await,
        Disposition::Applied
    );
    let closed_v2 = worker
        .process_one(&v2_refund("r-3", "rf-6", "5006", 1000, 100, "REFUNDCLOSE"))
        .await;
    assert!(
        matches!(closed_v2, Disposition::Duplicate { .. }),
        "{closed_v2:?}"
    );
    assert_eq!(
        env.count("FROM refunds WHERE out_refund_no = 'rf-6' AND status = 'CLOSED'")
            .await,
        1
    );
    let order = env.order("r-3").await;
    assert_eq!(
        (order.state.as_str(), order.refunded_total),
        (OrderState::Paid.as_str(), 0)
    );
    assert_eq!(env.outbox_count("refund.updated").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_before_payment_is_retried_then_applied() {
    let env = TestEnv::new().await;
    let worker = Worker::new(env.settings()).expect("worker");
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
