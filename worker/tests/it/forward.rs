//! Every verified notification is acted on: the kinds that move no order here (merchant
//! transfers, profit sharing, pay score, any new kind) are logged `FORWARDED` and published
//! as `wechatpay.<event_type>` once per business key; payments and refunds carry what the
//! business system needs in their events; and the decrypted resource is kept for audit.

use std::time::Duration;

use serde_json::{json, Value};
use wxpay_shared::message::NotifyMessage;
use wxpay_testkit::merchants::MERCHANT;
use wxpay_testkit::notifications::{v3_message_of, v3_refund};
use wxpay_testkit::vectors::{
    TRANSFER_AMOUNT_FEN, TRANSFER_OUT_BILL_NO, V3_FUTURE_SOMETHING, V3_PAYSCORE_USER_CONFIRM,
    V3_PROFITSHARING_AS_TRANSACTION, V3_PROFITSHARING_SUCCESS, V3_TRANSFER_BILL_RESENT,
    V3_TRANSFER_BILL_SUCCESS,
};
use wxpay_worker::Disposition;

use crate::builders::{resend, v2_pay, v3_pay, MCH_ID};
use crate::helpers::{anomaly, assert_duplicate, eventually, TestEnv};

/// A 商家转账 bill result of [`MERCHANT`] (<https://pay.weixin.qq.com/doc/v3/merchant/4012712115>).
fn transfer_bill(mch_id: &str, out_bill_no: &str, state: &str) -> Value {
    json!({
        "mch_id": mch_id, "out_bill_no": out_bill_no,
        "transfer_bill_no": "1330000071100999991182020050700019480001",
        "state": state, "transfer_amount": 2000, "openid": "o-MYE42l80oelYMDE34nYD456Xoy",
        "create_time": "2026-12-01T10:00:00+08:00", "update_time": "2026-12-01T10:00:05+08:00"
    })
}

fn notification(event_type: &str, original_type: &str, resource: &Value) -> NotifyMessage {
    v3_message_of(&MERCHANT, event_type, original_type, resource)
}

fn transfer_finished(out_bill_no: &str, state: &str) -> NotifyMessage {
    notification(
        "MCHTRANSFER.BILL.FINISHED",
        "mch_payment",
        &transfer_bill(MCH_ID, out_bill_no, state),
    )
}

/// One column of the notification row whose dedupe key starts with `key_prefix`.
async fn row_text(env: &TestEnv, column: &str, key_prefix: &str) -> String {
    env.text_of(
        "value",
        &format!("SELECT {column}::text AS value FROM notifications WHERE dedupe_key LIKE $1"),
        &[&format!("{key_prefix}%")],
    )
    .await
}

async fn forwarded_rows(env: &TestEnv) -> i64 {
    env.count("FROM notifications WHERE outcome = 'FORWARDED'")
        .await
}

/// The payload of the only outbox event of `event_type`.
async fn payload_of(env: &TestEnv, event_type: &str) -> Value {
    let text = env
        .text_of(
            "value",
            "SELECT payload::text AS value FROM outbox WHERE event_type = $1",
            &[event_type],
        )
        .await;
    serde_json::from_str(&text).expect("JSON payload")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_result_is_forwarded_once_per_bill_and_state() {
    let (env, worker) = TestEnv::with_worker().await;
    let first = transfer_finished("plfk2020042013", "SUCCESS");
    assert_eq!(worker.process_one(&first).await, Disposition::Forwarded);
    // WeChat Pay's re-send, and the same bill under another notification id: one event.
    assert_duplicate(&worker.process_one(&resend(&first)).await);
    let same_bill = transfer_finished("plfk2020042013", "SUCCESS");
    assert_duplicate(&worker.process_one(&same_bill).await);
    // Another bill is another event.
    let other = transfer_finished("plfk2020042014", "FAIL");
    assert_eq!(worker.process_one(&other).await, Disposition::Forwarded);

    let routing_key = "wechatpay.MCHTRANSFER.BILL.FINISHED";
    assert_eq!(env.outbox_count(routing_key).await, 2);
    assert_eq!(forwarded_rows(&env).await, 2);
    let key = format!("transfer:{MCH_ID}:plfk2020042013:SUCCESS");
    assert_eq!(row_text(&env, "outcome", &key).await, "FORWARDED");
    let stored: Value =
        serde_json::from_str(&row_text(&env, "resource", &key).await).expect("resource");
    assert_eq!(stored["out_bill_no"], "plfk2020042013");
    assert_eq!(stored["transfer_amount"], 2000);
}

/// The other kinds as made outside this workspace (Python `cryptography` and OpenSSL:
/// `testkit/fixtures/kinds/make.py`), not by our signer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_made_outside_are_each_forwarded_once() {
    let (env, worker) = TestEnv::with_worker().await;
    for vector in [
        V3_TRANSFER_BILL_SUCCESS,
        V3_PROFITSHARING_SUCCESS,
        V3_PROFITSHARING_AS_TRANSACTION,
        V3_PAYSCORE_USER_CONFIRM,
        V3_FUTURE_SOMETHING,
    ] {
        let message = vector.message_of(&MERCHANT);
        assert_eq!(worker.process_one(&message).await, Disposition::Forwarded);
        assert_duplicate(&worker.process_one(&resend(&message)).await);
    }
    // The same bill and state under another notification id: the same business fact.
    assert_duplicate(
        &worker
            .process_one(&V3_TRANSFER_BILL_RESENT.message_of(&MERCHANT))
            .await,
    );
    assert_eq!(forwarded_rows(&env).await, 5);
    let transfer = payload_of(&env, "wechatpay.MCHTRANSFER.BILL.FINISHED").await;
    assert_eq!(transfer["resource"]["out_bill_no"], TRANSFER_OUT_BILL_NO);
    assert_eq!(transfer["resource"]["transfer_amount"], TRANSFER_AMOUNT_FEN);
    assert_eq!(env.count("FROM orders").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profit_sharing_sent_as_a_transaction_is_forwarded_not_applied() {
    let (env, worker) = TestEnv::with_worker().await;
    // A direct merchant's 分账动账通知 arrives as TRANSACTION.SUCCESS
    // (<https://pay.weixin.qq.com/wiki/doc/apiv3/apis/chapter8_1_10.shtml>).
    let sharing = json!({
        "mchid": MCH_ID, "transaction_id": "4200000000000000000000000001",
        "order_id": "3008450740201411110007820472", "out_order_no": "P20150806125346",
        "receiver": {"type": "MERCHANT_ID", "account": "1900000110", "amount": 888,
                     "description": "分给商户1900000110"},
        "success_time": "2026-12-01T10:34:56+08:00"
    });
    let message = notification("TRANSACTION.SUCCESS", "profitsharing", &sharing);
    assert_eq!(worker.process_one(&message).await, Disposition::Forwarded);
    let payload = payload_of(&env, "wechatpay.TRANSACTION.SUCCESS").await;
    assert_eq!(payload["kind"], "profitsharing");
    assert_eq!(payload["original_type"], "profitsharing");
    assert_eq!(payload["resource"]["receiver"]["amount"], 888);
    assert_eq!(env.outbox_count("order.paid").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_nobody_knows_yet_is_forwarded_by_notification_id() {
    let (env, worker) = TestEnv::with_worker().await;
    let future = json!({"anything": [1, 2, 3]});
    let message = notification("FUTURE.SOMETHING", "future", &future);
    assert_eq!(worker.process_one(&message).await, Disposition::Forwarded);
    assert_duplicate(&worker.process_one(&resend(&message)).await);
    let payload = payload_of(&env, "wechatpay.FUTURE.SOMETHING").await;
    assert_eq!(payload["kind"], "notification");
    assert_eq!(payload["resource"]["anything"], json!([1, 2, 3]));
    assert_eq!(forwarded_rows(&env).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_naming_another_merchant_is_an_anomaly_never_forwarded() {
    let (env, worker) = TestEnv::with_worker().await;
    let addressed_elsewhere = transfer_bill("1900000110", "plfk-other", "SUCCESS");
    let message = notification(
        "MCHTRANSFER.BILL.FINISHED",
        "mch_payment",
        &addressed_elsewhere,
    );
    let disposition = worker.process_one(&message).await;
    assert_eq!(disposition, anomaly("MCH_ID_MISMATCH"));
    assert_eq!(
        env.outbox_count("wechatpay.MCHTRANSFER.BILL.FINISHED")
            .await,
        0
    );
    assert_eq!(env.outbox_count("anomaly.detected").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_kind_without_its_business_fields_is_parked_not_forwarded() {
    let (env, worker) = TestEnv::with_worker().await;
    let without_bill = json!({"mch_id": MCH_ID, "state": "SUCCESS"});
    let message = notification("MCHTRANSFER.BILL.FINISHED", "mch_payment", &without_bill);
    assert!(matches!(
        worker.process_one(&message).await,
        Disposition::Park { reason } if reason.starts_with("malformed")
    ));
    assert_eq!(env.count("FROM outbox").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_and_refund_events_carry_what_the_business_needs() {
    let (env, worker) = TestEnv::with_worker().await;
    env.pay_order(
        &worker,
        ("full-1", 1000),
        &v3_pay("full-1", "4200full1", 1000),
    )
    .await;
    let paid = payload_of(&env, "order.paid").await;
    assert_eq!(paid["attach"], "gift-wrap");
    assert_eq!(paid["payer_openid"], "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");
    assert_eq!(paid["payer_total"], 1000);
    assert_eq!(paid["trade_type"], "JSAPI");
    assert_eq!(paid["bank_type"], "CMC");
    // The stored raw body is ciphertext: the decrypted resource is kept beside it.
    let stored: Value =
        serde_json::from_str(&row_text(&env, "resource", &format!("pay:{MCH_ID}:4200full1")).await)
            .expect("resource");
    assert_eq!(stored["out_trade_no"], "full-1");

    let refund = v3_refund("full-1", "full-1-r1", "5030full1", 1000, 300, "SUCCESS");
    assert_eq!(worker.process_one(&refund).await, Disposition::Applied);
    let refunded = payload_of(&env, "order.refunded").await;
    assert_eq!(refunded["payer_refund"], 300);
    assert_eq!(refunded["payer_total"], 1000);
    assert_eq!(refunded["user_received_account"], "支付用户零钱");
    assert_eq!(refunded["currency"], "CNY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_event_matches_its_json_schema() {
    let env = TestEnv::new().await;
    env.insert_order("schema-1", 1000).await;
    env.insert_order("schema-2", 500).await;
    let tap = env.bind_events("#").await;
    let running = env.spawn_worker(env.settings());
    env.publish_all(&[
        v3_pay("schema-1", "4200schema1", 1000),
        v2_pay("schema-2", "4200schema2", 500),
        v3_refund(
            "schema-1",
            "schema-1-r1",
            "5030schema1",
            1000,
            1000,
            "SUCCESS",
        ),
        v3_refund(
            "schema-2",
            "schema-2-r1",
            "5030schema2",
            500,
            100,
            "ABNORMAL",
        ),
        // An amount mismatch: anomaly.detected.
        v2_pay("schema-2", "4200schema2-other", 499),
        transfer_finished("schema-bill", "SUCCESS"),
        notification(
            "PAYSCORE.USER_CONFIRM",
            "payscore",
            &json!({
                "appid": MERCHANT.appid, "mchid": MCH_ID, "out_order_no": "1234323JKHDFE1243252",
                "service_id": "500001", "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
                "state": "DOING", "total_amount": 50000, "order_id": "15646546545165651651"
            }),
        ),
    ])
    .await;
    let expected = [
        "order.paid",
        "order.refunded",
        "refund.updated",
        "anomaly.detected",
        "wechatpay.MCHTRANSFER.BILL.FINISHED",
        "wechatpay.PAYSCORE.USER_CONFIRM",
    ];
    eventually(
        Duration::from_secs(30),
        "every kind of event relayed",
        || async {
            let seen: Vec<String> = tap.events().into_iter().map(|e| e.routing_key).collect();
            expected
                .iter()
                .all(|key| seen.iter().any(|seen| seen == key))
        },
    )
    .await;
    running.stop().await;
    // `events` held each to its schema; both payments paid.
    assert_eq!(
        tap.events()
            .iter()
            .filter(|e| e.routing_key == "order.paid")
            .count(),
        2
    );
}
