//! Forged, tampered, replayed, probe and bad input: the right answer in the route's format,
//! and nothing queued (guarantees 2 and 5).

use wxpay_shared::v2::SignType;

use crate::helpers::*;

async fn assert_queue_empty(app: &TestApp) {
    assert!(app.drain().await.is_empty(), "nothing may be queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_pay_forgeries_and_bad_input_are_refused() {
    let app = TestApp::spawn().await;
    let good = v2_pay_body("order-x", 100);

    let forged = signed_xml(
        v2_pay_fields(V2_MCH, APPID, "order-x", 100),
        "wrongkeywrongkeywrongkeywrongkey",
        SignType::Md5,
        false,
    );
    app.post_v2_pay(&forged)
        .await
        .assert_v2_fail(200, "invalid signature");

    let tampered = good.replace("<total_fee><![CDATA[100]]>", "<total_fee><![CDATA[1]]>");
    assert_ne!(tampered, good, "the amount was changed");
    app.post_v2_pay(&tampered)
        .await
        .assert_v2_fail(200, "invalid signature");

    let unsigned = v2_pay_fields(V2_MCH, APPID, "order-x", 100).to_xml();
    app.post_v2_pay(&unsigned)
        .await
        .assert_v2_fail(200, "invalid signature");

    let unknown = signed_xml(
        v2_pay_fields("1999999999", APPID, "order-x", 100),
        V2_KEY,
        SignType::Md5,
        false,
    );
    app.post_v2_pay(&unknown)
        .await
        .assert_v2_fail(200, "unknown merchant");

    let wrong_appid = signed_xml(
        v2_pay_fields(V2_MCH, "wx0000000000000000", "order-x", 100),
        V2_KEY,
        SignType::Md5,
        false,
    );
    app.post_v2_pay(&wrong_appid)
        .await
        .assert_v2_fail(200, "appid does not belong to the merchant");

    let doctype = format!("<!DOCTYPE xml [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>{good}");
    app.post_v2_pay(&doctype)
        .await
        .assert_v2_fail(200, "DOCTYPE and entities are not allowed");

    app.post_v2_pay("<xml><return_code>SUCCESS</return_code>")
        .await
        .assert_v2_fail(200, "malformed notification");
    app.post_v2_pay("")
        .await
        .assert_v2_fail(200, "malformed notification");

    let unsigned_fail = "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[x]]></return_msg><mch_id>1900000109</mch_id></xml>";
    app.post_v2_pay(unsigned_fail)
        .await
        .assert_v2_fail(200, "invalid signature");

    app.post("/notify/v2/pay", good.clone(), Some("text/plain"), &[])
        .await
        .assert_v2_fail(200, "unsupported content type");

    let oversize = format!("{}{}", good, " ".repeat(9000));
    app.post_v2_pay(&oversize)
        .await
        .assert_v2_fail(413, "body too large");

    assert_queue_empty(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_refund_with_wrong_key_or_garbage_is_refused() {
    let app = TestApp::spawn().await;
    let wrong_key = v2_refund_body(V2_MCH, APPID, V3_V2_KEY, &refund_root("o", "r"));
    app.post_v2_refund(&wrong_key)
        .await
        .assert_v2_fail(200, "req_info does not decrypt");

    let garbage = "<xml><return_code>SUCCESS</return_code><appid>wxd930ea5d5a258f4f</appid><mch_id>1900000109</mch_id><req_info>bm90IGVuY3J5cHRlZCBhdCBhbGw=</req_info></xml>";
    app.post_v2_refund(garbage)
        .await
        .assert_v2_fail(200, "req_info does not decrypt");

    let mut incomplete = refund_root("o", "r");
    incomplete.remove("refund_status");
    app.post_v2_refund(&v2_refund_body(V2_MCH, APPID, V2_KEY, &incomplete))
        .await
        .assert_v2_fail(200, "req_info does not decrypt");

    let unknown = v2_refund_body("1999999999", APPID, V2_KEY, &refund_root("o", "r"));
    app.post_v2_refund(&unknown)
        .await
        .assert_v2_fail(200, "unknown merchant");

    let wrong_appid = v2_refund_body(V2_MCH, "wx0000000000000000", V2_KEY, &refund_root("o", "r"));
    app.post_v2_refund(&wrong_appid)
        .await
        .assert_v2_fail(200, "appid does not belong to the merchant");

    assert_queue_empty(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_forgeries_replays_and_probes_are_refused() {
    let app = TestApp::spawn().await;
    let body = v3_body(
        "TRANSACTION.SUCCESS",
        "transaction",
        &v3_transaction("order-v3-x"),
    );
    let now = now_unix();

    // Signed by someone else.
    app.post_v3(V3_MCH, &body, &v3_headers(&body, now, other_key(), SERIAL))
        .await
        .assert_v3_fail(401, "invalid signature");
    // Body changed after signing.
    let headers = v3_headers(&body, now, platform_key(), SERIAL);
    let tampered = body.replace("TRANSACTION.SUCCESS", "TRANSACTION.SUCCESX");
    app.post_v3(V3_MCH, &tampered, &headers)
        .await
        .assert_v3_fail(401, "invalid signature");
    // Unknown serial.
    app.post_v3(
        V3_MCH,
        &body,
        &v3_headers(&body, now, platform_key(), "PUB_KEY_ID_UNKNOWN"),
    )
    .await
    .assert_v3_fail(401, "unknown Wechatpay-Serial");
    // Stale and future timestamps (correctly signed).
    app.post_v3(
        V3_MCH,
        &body,
        &v3_headers(&body, now - 301 - 5, platform_key(), SERIAL),
    )
    .await
    .assert_v3_fail(401, "timestamp out of range");
    app.post_v3(
        V3_MCH,
        &body,
        &v3_headers(&body, now + 301 + 5, platform_key(), SERIAL),
    )
    .await
    .assert_v3_fail(401, "timestamp out of range");
    // SIGNTEST probe.
    let mut probe = v3_headers(&body, now, platform_key(), SERIAL);
    for (name, value) in probe.iter_mut() {
        if name == "Wechatpay-Signature" {
            *value = format!("WECHATPAY/SIGNTEST/{value}");
        }
    }
    app.post_v3(V3_MCH, &body, &probe)
        .await
        .assert_v3_fail(401, "signature probe rejected");
    // No signature headers at all.
    app.post_v3(V3_MCH, &body, &[])
        .await
        .assert_v3_fail(401, "invalid signature");
    // Unknown merchant in the path.
    app.post_v3(
        "1999999999",
        &body,
        &v3_headers(&body, now, platform_key(), SERIAL),
    )
    .await
    .assert_v3_fail(404, "unknown merchant");
    // Signed but not a notification envelope.
    let malformed = "{\"id\": 1, \"not\": \"an envelope\"";
    app.post_v3(
        V3_MCH,
        malformed,
        &v3_headers(malformed, now, platform_key(), SERIAL),
    )
    .await
    .assert_v3_fail(400, "malformed notification");
    // Wrong content type, oversize.
    app.post(
        &format!("/notify/v3/{V3_MCH}"),
        body.clone(),
        Some("text/plain"),
        &headers,
    )
    .await
    .assert_v3_fail(415, "unsupported content type");
    let oversize = format!("{body}{}", " ".repeat(9000));
    app.post_v3(
        V3_MCH,
        &oversize,
        &v3_headers(&oversize, now, platform_key(), SERIAL),
    )
    .await
    .assert_v3_fail(413, "body too large");

    assert_queue_empty(&app).await;
    app.stop().await;
}
