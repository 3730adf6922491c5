//! Money checks: a v2 refund must describe the order it refunds, currencies must agree, and
//! the schema refuses refunds beyond the paid amount and a refund id used twice.

use wxpay_shared::state::OrderState;
use wxpay_worker::Disposition;

use crate::builders::{v2_pay, v2_pay_in, v2_refund, MCH_ID};
use crate::helpers::{anomaly, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_refund_that_names_another_payment_or_total_is_an_anomaly() {
    let (env, worker) = TestEnv::with_worker().await;
    // Paid by another transaction than the one the refund names.
    env.pay_order(&worker, ("m-1", 1000), &v2_pay("m-1", "4200m1", 1000))
        .await;
    // m-2: the right payment, another order total.
    env.paid_order(&worker, "m-2", 1000).await;
    for refund in [
        v2_refund("m-1", "mr-1", "5030m1", 1000, 100, "SUCCESS"),
        v2_refund("m-2", "mr-2", "5030m2", 999, 100, "SUCCESS"),
    ] {
        assert_eq!(
            worker.process_one(&refund).await,
            anomaly("REFUND_MISMATCH")
        );
    }
    for order in ["m-1", "m-2"] {
        env.assert_order(order, OrderState::Paid, 0).await;
    }
    assert_eq!(env.count("FROM refunds").await, 0);
    assert_eq!(env.anomalies("REFUND_MISMATCH").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_in_another_currency_is_an_anomaly() {
    let (env, worker) = TestEnv::with_worker().await;
    env.insert_order("m-3", 500).await;
    assert_eq!(
        worker
            .process_one(&v2_pay_in("m-3", "4200m3", 500, "USD"))
            .await,
        anomaly("CURRENCY_MISMATCH")
    );
    assert_eq!(env.order("m-3").await.state, OrderState::NotPay.as_str());
    // An order in USD: the CNY default of a notification without fee_type disagrees too,
    // a USD one pays.
    env.insert_order("m-4", 500).await;
    env.sql("UPDATE orders SET currency = 'USD' WHERE out_trade_no = 'm-4'")
        .await
        .expect("currency set");
    assert_eq!(
        worker.process_one(&v2_pay("m-4", "4200m4", 500)).await,
        anomaly("CURRENCY_MISMATCH")
    );
    assert_eq!(
        worker
            .process_one(&v2_pay_in("m-4", "4200m4b", 500, "USD"))
            .await,
        Disposition::Applied
    );
    assert_eq!(env.anomalies("CURRENCY_MISMATCH").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_refuses_over_refunds_and_a_refund_id_used_twice() {
    let env = TestEnv::new().await;
    env.insert_order("m-5", 1000).await;
    let over = env
        .sql("UPDATE orders SET refunded_total = 1001 WHERE out_trade_no = 'm-5'")
        .await;
    assert!(
        over.as_ref()
            .is_err_and(|e| e.to_string().contains("orders_refunded_within_amount")),
        "{over:?}"
    );
    env.sql("UPDATE orders SET refunded_total = 1000 WHERE out_trade_no = 'm-5'")
        .await
        .expect("the whole amount may be refunded");

    let insert = |out_refund_no: &str, refund_id: &str| {
        let refund_id = if refund_id.is_empty() {
            "NULL".to_owned()
        } else {
            format!("'{refund_id}'")
        };
        format!(
            "INSERT INTO refunds (mch_id, out_refund_no, out_trade_no, refund_id, refund_fee, status) \
             VALUES ('{MCH_ID}', '{out_refund_no}', 'm-5', {refund_id}, 1, 'PROCESSING')"
        )
    };
    env.sql(&insert("mr-5", "5030m5")).await.expect("first");
    let twice = env.sql(&insert("mr-6", "5030m5")).await;
    assert!(
        twice
            .as_ref()
            .is_err_and(|e| e.to_string().contains("refunds_mch_refund_id")),
        "{twice:?}"
    );
    // Refunds not yet numbered by WeChat Pay do not collide.
    env.sql(&insert("mr-7", "")).await.expect("no refund id");
    env.sql(&insert("mr-8", ""))
        .await
        .expect("no refund id either");
}
