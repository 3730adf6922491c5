//! Verified notifications are queued byte for byte with the contract's metadata, and
//! answered SUCCESS (guarantee 1).

use lapin::message::BasicGetMessage;
use wxpay_runtime::amqp::AmqpMessage;
use wxpay_shared::message::{NotifyKind, NotifyMessage};
use wxpay_shared::v2::SignType;

use crate::helpers::*;

/// The queue holds exactly one message: `body` byte for byte, with the contract's headers.
async fn assert_single_message(
    app: &TestApp,
    body: &str,
    kind: NotifyKind,
    mch_id: &str,
) -> BasicGetMessage {
    let mut messages = app.drain().await;
    assert_eq!(messages.len(), 1, "exactly one message queued");
    let message = messages.remove(0);
    assert_eq!(
        message.delivery.data,
        body.as_bytes(),
        "body is the raw request body"
    );
    let properties = &message.delivery.properties;
    assert_eq!(properties.delivery_mode(), &Some(2), "persistent");
    let id = properties
        .message_id()
        .as_ref()
        .expect("message_id")
        .to_string();
    let id = uuid::Uuid::parse_str(&id).expect("message_id is a uuid");
    assert_eq!(id.get_version_num(), 7, "message_id is a UUIDv7");
    assert_eq!(
        header(&message, "x-wxpay-kind").as_deref(),
        Some(kind.as_str())
    );
    assert_eq!(header(&message, "x-wxpay-mch-id").as_deref(), Some(mch_id));
    let received: i64 = header(&message, "x-wxpay-received-at-ms")
        .expect("received-at")
        .parse()
        .expect("integer");
    assert!(
        (now_unix() * 1000 - received).abs() < 60_000,
        "received-at is now"
    );
    let decoded = NotifyMessage::from_amqp(properties, message.delivery.data.clone())
        .expect("worker can decode it");
    assert_eq!(decoded.kind, kind);
    assert_eq!(decoded.attempt, 1);
    message
}

/// Posts `body`, a payment of the v2 merchant: answered SUCCESS and queued as it came.
async fn assert_v2_pay_queued(app: &TestApp, body: &str) -> BasicGetMessage {
    let answer = app.post_v2_pay(body).await;
    assert!(answer.is_v2_success(), "{body}: {answer:?}");
    assert_eq!(answer.body, wxpay_shared::answer::V2_SUCCESS);
    assert_single_message(app, body, NotifyKind::V2Pay, V2_MCH).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_md5_pay_is_queued() {
    let app = TestApp::spawn().await;
    let body = v2_pay_body("order-md5-1", 100);
    let message = assert_v2_pay_queued(&app, &body).await;
    assert_eq!(
        header(&message, "wechatpay-signature"),
        None,
        "no v3 headers on v2"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_hmac_pay_is_queued_with_or_without_sign_type() {
    let app = TestApp::spawn().await;
    for (order, declare) in [
        ("order-hmac-declared", true),
        ("order-hmac-undeclared", false),
    ] {
        let body = signed_xml(
            v2_pay_fields(V2_MCH, APPID, order, 250),
            V2_KEY,
            SignType::HmacSha256,
            declare,
        );
        assert_v2_pay_queued(&app, &body).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_payment_failure_is_queued_for_the_worker_to_record() {
    let app = TestApp::spawn().await;
    let mut fields = v2_pay_fields(V2_MCH, APPID, "order-failed", 100);
    fields.insert("result_code", "FAIL");
    fields.insert("err_code", "NOTENOUGH");
    let body = signed_xml(fields, V2_KEY, SignType::Md5, true);
    assert_v2_pay_queued(&app, &body).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_refund_is_queued_for_v2_and_v3_merchants() {
    let app = TestApp::spawn().await;
    // A v3 merchant's refund made by hand in the merchant platform comes in v2 format, and
    // no content type is accepted.
    let cases = [
        (V2_MCH, APPID, V2_KEY, "order-r1", Some("text/xml")),
        (V3_MCH, V3_APPID, V3_V2_KEY, "order-r2", None),
    ];
    for (mch_id, appid, key, order, content_type) in cases {
        let root = refund_root(order, &order.replace("order", "refund"));
        let body = v2_refund_body(mch_id, appid, key, &root);
        let answer = app
            .post("/notify/v2/refund", body.clone(), content_type, &[])
            .await;
        assert!(
            answer.is_v2_success(),
            "{mch_id} {content_type:?}: {answer:?}"
        );
        assert_single_message(&app, &body, NotifyKind::V2Refund, mch_id).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_pay_and_refund_are_queued_with_the_wechatpay_headers() {
    let app = TestApp::spawn().await;
    let cases = [
        v3_pay_body("order-v3-1"),
        v3_body(
            "REFUND.SUCCESS",
            "refund",
            &v3_refund("order-v3-1", "refund-v3-1"),
        ),
    ];
    for body in cases {
        let headers = v3_headers(&body, now_unix(), platform_key(), SERIAL);
        let answer = app.post_v3(V3_MCH, &body, &headers).await;
        assert_eq!(answer.status, 204, "{answer:?}");
        assert!(answer.body.is_empty(), "{answer:?}");
        let message = assert_single_message(&app, &body, NotifyKind::V3, V3_MCH).await;
        for (name, value) in &headers {
            assert_eq!(
                header(&message, &name.to_ascii_lowercase()).as_deref(),
                Some(value.as_str()),
                "{name}"
            );
        }
        assert_eq!(
            message
                .delivery
                .properties
                .content_type()
                .as_ref()
                .map(|c| c.to_string())
                .as_deref(),
            Some("application/json")
        );
    }
    app.stop().await;
}
