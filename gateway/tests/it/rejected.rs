//! Forged, tampered, replayed, probe and bad input: the right answer in the route's format,
//! and nothing queued (guarantees 2 and 5).

use wxpay_shared::v2::SignType;
use wxpay_shared::v3::verify::PROBE_SIGNATURE_PREFIX;
use wxpay_shared::v3::HEADER_SIGNATURE;

use crate::helpers::*;

async fn assert_queue_empty(app: &TestApp) {
    assert!(app.drain().await.is_empty(), "nothing may be queued");
}

/// A v2 payment of order-x for 100 fen by `mch_id` in `appid`, MD5-signed with `key`.
fn v2_pay_signed(mch_id: &str, appid: &str, key: &str) -> String {
    signed_xml(
        v2_pay_fields(mch_id, appid, "order-x", 100),
        key,
        SignType::Md5,
        false,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_pay_forgeries_and_bad_input_are_refused() {
    let app = TestApp::spawn().await;
    let good = v2_pay_body("order-x", 100);
    let tampered = good.replace("<total_fee><![CDATA[100]]>", "<total_fee><![CDATA[1]]>");
    assert_ne!(tampered, good, "the amount was changed");
    let unsigned_fail = "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[x]]></return_msg><mch_id>1900000109</mch_id></xml>";
    // (body, content type, status, message)
    let cases: Vec<(String, &str, u16, &str)> = vec![
        (
            v2_pay_signed(V2_MCH, APPID, "wrongkeywrongkeywrongkeywrongkey"),
            "text/xml",
            200,
            "invalid signature",
        ),
        (tampered, "text/xml", 200, "invalid signature"),
        (
            v2_pay_fields(V2_MCH, APPID, "order-x", 100).to_xml(),
            "text/xml",
            200,
            "invalid signature",
        ),
        (
            v2_pay_signed(UNKNOWN_MCH_ID, APPID, V2_KEY),
            "text/xml",
            200,
            "unknown merchant",
        ),
        (
            v2_pay_signed(V2_MCH, OTHER_APPID, V2_KEY),
            "text/xml",
            200,
            "appid does not belong to the merchant",
        ),
        (
            format!("<!DOCTYPE xml [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>{good}"),
            "text/xml",
            200,
            "DOCTYPE and entities are not allowed",
        ),
        (
            "<xml><return_code>SUCCESS</return_code>".to_owned(),
            "text/xml",
            200,
            "malformed notification",
        ),
        (String::new(), "text/xml", 200, "malformed notification"),
        (
            unsigned_fail.to_owned(),
            "text/xml",
            200,
            "invalid signature",
        ),
        (good.clone(), "text/plain", 200, "unsupported content type"),
        (
            format!("{}{}", good, " ".repeat(9000)),
            "text/xml",
            413,
            "body too large",
        ),
    ];
    for (body, content_type, status, message) in cases {
        app.post("/notify/v2/pay", body, Some(content_type), &[])
            .await
            .assert_v2_fail(status, message);
    }
    assert_queue_empty(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_refund_with_wrong_key_or_garbage_is_refused() {
    let app = TestApp::spawn().await;
    let garbage = "<xml><return_code>SUCCESS</return_code><appid>wxd930ea5d5a258f4f</appid><mch_id>1900000109</mch_id><req_info>bm90IGVuY3J5cHRlZCBhdCBhbGw=</req_info></xml>";
    let mut incomplete = refund_root("o", "r");
    incomplete.remove("refund_status");
    let root = refund_root("o", "r");
    let cases = [
        (
            v2_refund_body(V2_MCH, APPID, V3_V2_KEY, &root),
            "req_info does not decrypt",
        ),
        (garbage.to_owned(), "req_info does not decrypt"),
        (
            v2_refund_body(V2_MCH, APPID, V2_KEY, &incomplete),
            "req_info does not decrypt",
        ),
        (
            v2_refund_body(UNKNOWN_MCH_ID, APPID, V2_KEY, &root),
            "unknown merchant",
        ),
        (
            v2_refund_body(V2_MCH, OTHER_APPID, V2_KEY, &root),
            "appid does not belong to the merchant",
        ),
    ];
    for (body, message) in cases {
        app.post_v2_refund(&body).await.assert_v2_fail(200, message);
    }
    assert_queue_empty(&app).await;
    app.stop().await;
}

/// A v3 request the gateway must refuse, and the answer it must get.
struct Refusal<'a> {
    what: &'a str,
    mch_id_in_path: &'a str,
    body: &'a str,
    headers: Vec<(String, String)>,
    content_type: &'a str,
    status: u16,
    message: &'a str,
}

/// A JSON request to the v3 merchant's route.
fn refusal<'a>(
    what: &'a str,
    body: &'a str,
    headers: Vec<(String, String)>,
    status: u16,
    message: &'a str,
) -> Refusal<'a> {
    Refusal {
        what,
        mch_id_in_path: V3_MCH,
        body,
        headers,
        content_type: "application/json",
        status,
        message,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_forgeries_replays_and_probes_are_refused() {
    let app = TestApp::spawn().await;
    let body = v3_pay_body("order-v3-x");
    let now = now_unix();
    let signed = |body: &str, timestamp: i64| v3_headers(body, timestamp, platform_key(), SERIAL);
    let headers = signed(&body, now);
    // A probe: WeChat Pay's signature test prefix before a genuine signature.
    let mut probe = headers.clone();
    for (name, value) in probe.iter_mut() {
        if name == HEADER_SIGNATURE {
            *value = format!("{PROBE_SIGNATURE_PREFIX}{value}");
        }
    }
    let tampered = body.replace("TRANSACTION.SUCCESS", "TRANSACTION.SUCCESX");
    let malformed = "{\"id\": 1, \"not\": \"an envelope\"";
    let oversize = format!("{body}{}", " ".repeat(9000));
    let invalid = "invalid signature";
    let out_of_range = "timestamp out of range";
    let cases = [
        refusal(
            "signed by someone else",
            &body,
            v3_headers(&body, now, other_key(), SERIAL),
            401,
            invalid,
        ),
        refusal(
            "body changed after signing",
            &tampered,
            headers.clone(),
            401,
            invalid,
        ),
        refusal(
            "unknown serial",
            &body,
            v3_headers(&body, now, platform_key(), "PUB_KEY_ID_UNKNOWN"),
            401,
            "unknown Wechatpay-Serial",
        ),
        refusal(
            "stale",
            &body,
            signed(&body, now - 301 - 5),
            401,
            out_of_range,
        ),
        refusal(
            "future",
            &body,
            signed(&body, now + 301 + 5),
            401,
            out_of_range,
        ),
        refusal(
            "SIGNTEST probe",
            &body,
            probe,
            401,
            "signature probe rejected",
        ),
        refusal(
            "no signature headers at all",
            &body,
            Vec::new(),
            401,
            invalid,
        ),
        Refusal {
            mch_id_in_path: UNKNOWN_MCH_ID,
            ..refusal(
                "unknown merchant in the path",
                &body,
                headers.clone(),
                404,
                "unknown merchant",
            )
        },
        refusal(
            "signed but not a notification envelope",
            malformed,
            signed(malformed, now),
            400,
            "malformed notification",
        ),
        Refusal {
            content_type: "text/plain",
            ..refusal(
                "wrong content type",
                &body,
                headers.clone(),
                415,
                "unsupported content type",
            )
        },
        refusal(
            "oversize",
            &oversize,
            signed(&oversize, now),
            413,
            "body too large",
        ),
    ];
    for case in cases {
        let answer = app
            .post(
                &format!("/notify/v3/{}", case.mch_id_in_path),
                case.body.to_owned(),
                Some(case.content_type),
                &case.headers,
            )
            .await;
        assert_eq!(answer.status, case.status, "{}: {answer:?}", case.what);
        answer.assert_v3_fail(case.status, case.message);
    }
    assert_queue_empty(&app).await;
    app.stop().await;
}
