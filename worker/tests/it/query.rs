//! The reconciler's query answers (`query.pay`, `query.refund`) through `process_one`:
//! verified like notifications and deduped with the same business keys.

use wxpay_shared::message::{NotifyKind, NotifyMessage};
use wxpay_shared::state::{OrderState, TradeState};
use wxpay_shared::v2::XmlFields;
use wxpay_testkit::merchants::MERCHANT;
use wxpay_testkit::notifications::{transaction_resource, v2_signed_message, v3_signed_message};
use wxpay_worker::Disposition;

use crate::builders::{self, transaction_of, v2_pay, APPID, MCH_ID, V2_KEY};
use crate::helpers::{assert_duplicate, wait_for_redis, TestEnv, REDIS_URL};

/// `pairs` signed with `key` (MD5), as the reconciler queues a v2 query answer.
fn signed_v2(kind: NotifyKind, pairs: &[(&str, &str)], key: &str) -> NotifyMessage {
    let mut fields = XmlFields::new();
    for (k, v) in pairs {
        fields.insert(*k, *v);
    }
    v2_signed_message(kind, fields, key)
}

fn v2_order_query(
    out_trade_no: &str,
    transaction_id: &str,
    total_fee: &str,
    trade_state: &str,
) -> NotifyMessage {
    signed_v2(
        NotifyKind::QueryPay,
        &[
            ("return_code", "SUCCESS"),
            ("result_code", "SUCCESS"),
            ("appid", APPID),
            ("mch_id", MCH_ID),
            ("nonce_str", "q1"),
            ("out_trade_no", out_trade_no),
            ("transaction_id", transaction_id),
            ("total_fee", total_fee),
            ("trade_state", trade_state),
            ("time_end", "20240102030405"),
        ],
        V2_KEY,
    )
}

/// A v3 query answer: plain JSON, signed in the response headers.
fn v3_response(kind: NotifyKind, body: serde_json::Value) -> NotifyMessage {
    v3_signed_message(kind, serde_json::to_vec(&body).expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_order_query_applies_and_dedupes_with_the_notification() {
    let (env, worker) = TestEnv::with_worker().await;
    env.insert_order("q-1", 700).await;
    env.insert_order("q-2", 700).await;
    assert_eq!(
        worker
            .process_one(&v2_order_query("q-1", "", "", TradeState::NotPay.as_str()))
            .await,
        Disposition::Recorded
    );
    assert_eq!(
        worker
            .process_one(&v2_order_query("q-1", "4200q1", "700", "SUCCESS"))
            .await,
        Disposition::Applied
    );
    let notified = worker.process_one(&v2_pay("q-1", "4200q1", 700)).await;
    assert_duplicate(&notified);
    // A forged answer (wrong key) is parked.
    let forged = signed_v2(
        NotifyKind::QueryPay,
        &[("return_code", "SUCCESS")],
        "ffffffffffffffffffffffffffffffff",
    );
    assert!(matches!(
        worker.process_one(&forged).await,
        Disposition::Park { .. }
    ));
    // v3 answer: plain JSON, signed in the response headers.
    let answer = v3_response(
        NotifyKind::QueryPay,
        transaction_resource(&MERCHANT, "q-2", "4200q2", 700),
    );
    assert_eq!(worker.process_one(&answer).await, Disposition::Applied);
    assert_eq!(env.order("q-2").await.state, OrderState::Paid.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_queries_apply_like_notifications() {
    let (env, worker) = TestEnv::with_worker().await;
    env.paid_order(&worker, "q-3", 1000).await;
    let transaction_id = transaction_of("q-3");
    let v2_answer = signed_v2(
        NotifyKind::QueryRefund,
        &[
            ("return_code", "SUCCESS"),
            ("result_code", "SUCCESS"),
            ("appid", APPID),
            ("mch_id", MCH_ID),
            ("nonce_str", "q3"),
            ("out_trade_no", "q-3"),
            ("transaction_id", transaction_id.as_str()),
            ("refund_count", "1"),
            ("out_refund_no_0", "qr-1"),
            ("refund_id_0", "5030q1"),
            ("refund_fee_0", "400"),
            ("refund_status_0", "SUCCESS"),
            ("refund_success_time_0", "2024-01-02 03:04:05"),
        ],
        V2_KEY,
    );
    assert_eq!(worker.process_one(&v2_answer).await, Disposition::Applied);
    let same = worker
        .process_one(&builders::v3_refund(
            "q-3", "qr-1", "5030q1", 1000, 400, "SUCCESS",
        ))
        .await;
    assert_duplicate(&same);
    let v3_answer = v3_response(
        NotifyKind::QueryRefund,
        serde_json::json!({
            "refund_id": "5030q2", "out_refund_no": "qr-2", "transaction_id": transaction_id,
            "out_trade_no": "q-3", "status": "PROCESSING",
            "amount": { "total": 1000, "refund": 600, "payer_total": 1000, "payer_refund": 600 }
        }),
    );
    assert_eq!(worker.process_one(&v3_answer).await, Disposition::Recorded);
    let order = env.order("q-3").await;
    assert_eq!(
        (order.state.as_str(), order.refunded_total),
        (OrderState::PartiallyRefunded.as_str(), 400)
    );
    assert_eq!(
        env.count("FROM refunds WHERE out_refund_no = 'qr-2' AND status = 'PROCESSING'")
            .await,
        1
    );
}

/// After a PostgreSQL restore the Redis `done` markers outlive the rows they stood for: a
/// notification is skipped by its marker, but the reconciler's answer is decided by
/// PostgreSQL and applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_answers_skip_the_redis_done_marker() {
    let (env, worker) = TestEnv::with_worker().await;
    env.insert_order("q-9", 900).await;
    wait_for_redis(&worker).await;
    // The marker of a payment whose row the restore lost.
    let client = redis::Client::open(REDIS_URL).expect("redis");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let _: () = redis::cmd("SET")
        .arg(format!(
            "{}done:pay:{MCH_ID}:4200q9",
            env.settings.redis.key_prefix
        ))
        .arg("1")
        .query_async(&mut conn)
        .await
        .expect("marker set");

    let notified = worker.process_one(&v2_pay("q-9", "4200q9", 900)).await;
    assert_eq!(
        notified,
        Disposition::Duplicate {
            layer: wxpay_worker::DedupeLayer::Redis
        }
    );
    assert_eq!(
        worker
            .process_one(&v2_order_query("q-9", "4200q9", "900", "SUCCESS"))
            .await,
        Disposition::Applied
    );
    assert_eq!(env.order("q-9").await.state, OrderState::Paid.as_str());
}
