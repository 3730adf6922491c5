//! Combine payments (合单支付): one message paying several orders, each booked as its own
//! payment (every rule of a plain payment, its own business key), all in one transaction.
//! The notifications are the test kit's outside vectors (Python, OpenSSL:
//! `wxpay_testkit::vectors`), not our signer's.

use wxpay_shared::message::{NotifyKind, NotifyMessage};
use wxpay_shared::state::OrderState;
use wxpay_testkit::db::{self, join_combine, NewOrder};
use wxpay_testkit::merchants::{MERCHANT, V3_MERCHANT};
use wxpay_testkit::notifications::{resend, transaction_resource, v3_signed_message};
use wxpay_testkit::vectors::{
    V3Vector, COMBINE_ORDERS, COMBINE_OUT_TRADE_NO, COMBINE_TRANSACTIONS,
    V3_COMBINE_OTHER_MERCHANTS, V3_COMBINE_TWO_ORDERS, V3_COMBINE_WRONG_AMOUNT,
};
use wxpay_worker::{Disposition, Worker};

use crate::anomalies::{only_open_anomaly, reapply_applies};
use crate::helpers::{anomaly, assert_duplicate, TestEnv};

/// `COMBINE-A` and `COMBINE-B` of [`MERCHANT`], NOTPAY, placed as `COMBINE-1`'s sub orders.
async fn insert_combine_orders(env: &TestEnv) {
    for (out_trade_no, amount) in COMBINE_ORDERS {
        insert_combine_order(env, out_trade_no, amount).await;
    }
}

async fn insert_combine_order(env: &TestEnv, out_trade_no: &str, amount: i64) {
    env.insert_order(out_trade_no, amount).await;
    let conn = &mut env.conn().await;
    join_combine(
        conn,
        (MERCHANT.mch_id, ""),
        out_trade_no,
        COMBINE_OUT_TRADE_NO,
    )
    .await;
}

/// The v3 order query's answer about one sub order, as the reconciler queues it.
fn order_query_answer(index: usize) -> NotifyMessage {
    let (out_trade_no, amount) = COMBINE_ORDERS[index];
    let answer = transaction_resource(&MERCHANT, out_trade_no, COMBINE_TRANSACTIONS[index], amount);
    v3_signed_message(NotifyKind::QueryPay, answer.to_string().into_bytes())
}

async fn states(env: &TestEnv) -> Vec<String> {
    let mut states = Vec::new();
    for (out_trade_no, _) in COMBINE_ORDERS {
        states.push(env.order(out_trade_no).await.state);
    }
    states
}

/// `COMBINE-1`'s orders, then `vector` (a combine payment of them) applied.
async fn combine_orders_and(
    vector: V3Vector,
    expected: Disposition,
) -> (TestEnv, Worker, NotifyMessage) {
    let (env, worker) = TestEnv::with_worker().await;
    insert_combine_orders(&env).await;
    let combine = vector.message_of(&MERCHANT);
    assert_eq!(worker.process_one(&combine).await, expected);
    (env, worker, combine)
}

const PAID: &str = OrderState::Paid.as_str();
const NOTPAY: &str = OrderState::NotPay.as_str();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_combine_payment_pays_each_order_once_whatever_else_brings_it() {
    let (env, worker, combine) =
        combine_orders_and(V3_COMBINE_TWO_ORDERS, Disposition::Applied).await;
    assert_eq!(states(&env).await, [PAID, PAID]);
    for (index, (out_trade_no, _)) in COMBINE_ORDERS.into_iter().enumerate() {
        let order = env.order(out_trade_no).await;
        assert_eq!(
            order.transaction_id.as_deref(),
            Some(COMBINE_TRANSACTIONS[index])
        );
    }
    assert_eq!(env.outbox_count("order.paid").await, 2);
    // Each order.paid carries its sub order's details and the combine payment's payer; every
    // row keeps the decrypted combine resource.
    let details =
        "FROM outbox WHERE event_type = 'order.paid' AND payload->>'out_trade_no' = 'COMBINE-B' \
         AND payload->>'payer_total' = '800' AND payload->>'bank_type' = 'CMC' \
         AND payload->>'payer_openid' = 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o'";
    assert_eq!(env.count(details).await, 1);
    let resource = format!(
        "FROM notifications WHERE resource->>'combine_out_trade_no' = '{COMBINE_OUT_TRADE_NO}'"
    );
    assert_eq!(env.count(&resource).await, 3);
    // WeChat Pay's re-send, and a later order query about a sub order: duplicates.
    assert_duplicate(&worker.process_one(&resend(&combine)).await);
    assert_duplicate(&worker.process_one(&order_query_answer(1)).await);
    assert_eq!(env.outbox_count("order.paid").await, 2);
    // The combine message's own row, and one row per sub order under its payment key.
    assert_eq!(env.count("FROM notifications").await, 3);
    let keys = [
        format!("pay:{}:{}", MERCHANT.mch_id, COMBINE_TRANSACTIONS[0]),
        format!("pay:{}:{}", MERCHANT.mch_id, COMBINE_TRANSACTIONS[1]),
    ];
    for key in keys {
        let tail = format!("FROM notifications WHERE dedupe_key = '{key}' AND outcome = 'APPLIED'");
        assert_eq!(env.count(&tail).await, 1, "{key}");
    }
    let combine_row = format!(
        "FROM notifications WHERE dedupe_key LIKE 'combine:{}:{COMBINE_OUT_TRADE_NO}:%' \
         AND outcome = 'APPLIED'",
        MERCHANT.mch_id
    );
    assert_eq!(env.count(&combine_row).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_order_booked_by_its_order_query_first_is_a_duplicate_inside_the_combine() {
    let (env, worker) = TestEnv::with_worker().await;
    insert_combine_orders(&env).await;
    assert_eq!(
        worker.process_one(&order_query_answer(0)).await,
        Disposition::Applied
    );
    let combine = V3_COMBINE_TWO_ORDERS.message_of(&MERCHANT);
    assert_eq!(worker.process_one(&combine).await, Disposition::Applied);
    assert_eq!(states(&env).await, [PAID, PAID]);
    assert_eq!(env.outbox_count("order.paid").await, 2);
    // Every sub order already booked: the whole is a duplicate.
    let env2 = TestEnv::new().await;
    let worker2 = Worker::new(env2.settings()).expect("worker");
    insert_combine_orders(&env2).await;
    for index in 0..2 {
        assert_eq!(
            worker2.process_one(&order_query_answer(index)).await,
            Disposition::Applied
        );
    }
    assert_duplicate(&worker2.process_one(&combine).await);
    assert_eq!(env2.outbox_count("order.paid").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_amount_sub_order_is_an_anomaly_beside_the_other_ones_booking() {
    // One sub order booked, the other an anomaly: the message counts as the anomaly, so
    // wxpay_worker_anomalies_total and its alert see it.
    let (env, worker, combine) =
        combine_orders_and(V3_COMBINE_WRONG_AMOUNT, anomaly("AMOUNT_MISMATCH")).await;
    assert_eq!(states(&env).await, [PAID, NOTPAY]);
    assert_eq!(env.anomalies("AMOUNT_MISMATCH").await, 1);
    assert_eq!(env.outbox_count("order.paid").await, 1);
    assert_eq!(env.outbox_count("anomaly.detected").await, 1);
    // The anomaly is the sub order's own: corrected by hand and reapplied, that order alone
    // is booked, once.
    let open = only_open_anomaly(&env).await;
    assert_eq!(open.out_trade_no.as_deref(), Some(COMBINE_ORDERS[1].0));
    env.sql("UPDATE orders SET amount_total = 1 WHERE out_trade_no = 'COMBINE-B'")
        .await
        .expect("corrected");
    let merchants = env.settings().merchants().expect("merchants");
    reapply_applies(&env, &merchants, open.id, "1 fen agreed").await;
    assert_eq!(states(&env).await, [PAID, PAID]);
    assert_eq!(env.outbox_count("order.paid").await, 2);
    assert_duplicate(&worker.process_one(&resend(&combine)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_sub_order_leaves_every_order_unpaid_until_it_exists() {
    let (env, worker) = TestEnv::with_worker().await;
    let (out_trade_no, amount) = COMBINE_ORDERS[0];
    insert_combine_order(&env, out_trade_no, amount).await;
    let combine = V3_COMBINE_TWO_ORDERS.message_of(&MERCHANT);
    let outcome = worker.process_one(&combine).await;
    assert!(
        matches!(&outcome, Disposition::Retry { reason } if reason.starts_with("unknown_order")),
        "{outcome:?}"
    );
    assert_eq!(env.order(out_trade_no).await.state, NOTPAY);
    assert_eq!(env.count("FROM notifications").await, 0);
    assert_eq!(env.count("FROM outbox").await, 0);
    // The order arrives: the retried message books both.
    let (out_trade_no, amount) = COMBINE_ORDERS[1];
    insert_combine_order(&env, out_trade_no, amount).await;
    assert_eq!(worker.process_one(&combine).await, Disposition::Applied);
    assert_eq!(states(&env).await, [PAID, PAID]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_order_of_another_configured_merchant_is_its_own_and_an_unknown_ones_mismatched() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.merchants.push(V3_MERCHANT.settings());
    let worker = Worker::new(settings).expect("worker");
    // Paid in the combine's app: the order was placed there.
    let order = NewOrder {
        mch_id: V3_MERCHANT.mch_id,
        sub_mch_id: "",
        appid: MERCHANT.appid,
        out_trade_no: "COMBINE-V3",
        amount_total: 500,
        state: NOTPAY,
    };
    order.insert(&mut env.conn().await).await;
    let combine = V3_COMBINE_OTHER_MERCHANTS.message_of(&MERCHANT);
    assert_eq!(
        worker.process_one(&combine).await,
        anomaly("MCH_ID_MISMATCH")
    );
    let conn = &mut env.conn().await;
    assert_eq!(
        db::order(conn, V3_MERCHANT.mch_id, "COMBINE-V3")
            .await
            .state,
        PAID
    );
    assert_eq!(env.anomalies("MCH_ID_MISMATCH").await, 1);
    // Without a booking, the same.
    let (env, worker) = TestEnv::with_worker().await;
    let combine = V3_COMBINE_OTHER_MERCHANTS.message_of(&MERCHANT);
    assert_eq!(
        worker.process_one(&combine).await,
        anomaly("MCH_ID_MISMATCH")
    );
    assert_eq!(env.anomalies("MCH_ID_MISMATCH").await, 2);
}
