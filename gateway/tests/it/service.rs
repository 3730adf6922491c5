//! Health, readiness and metrics endpoints.

use crate::helpers::*;

const METRICS: [&str; 4] = [
    "wxpay_gateway_requests_total",
    "wxpay_gateway_request_duration_seconds",
    "wxpay_gateway_publish_duration_seconds",
    "wxpay_gateway_broker_connected",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/healthz").await.0, 200);
    assert_eq!(app.get("/readyz").await.0, 200);
    let (status, before) = app.get("/metrics").await;
    assert_eq!(status, 200);
    for name in METRICS {
        assert!(before.contains(name), "{name} listed before traffic");
    }
    assert!(app
        .post_v2_pay(&v2_pay_body("order-m1", 100))
        .await
        .is_v2_success());
    app.post_v2_pay("<xml>")
        .await
        .assert_v2_fail(200, "malformed notification");
    let (_, after) = app.get("/metrics").await;
    for name in METRICS {
        assert!(after.contains(name), "{name} listed after traffic");
    }
    assert!(after.contains(r#"outcome="accepted""#) && after.contains(r#"route="v2_pay""#));
    assert!(after.contains(r#"reason="malformed""#));
    assert!(after.contains("wxpay_gateway_broker_connected 1"));
    app.drain().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_are_not_notify() {
    let app = TestApp::spawn().await;
    let (status, _) = app.get("/notify/v2/pay").await;
    assert!(
        status == 404 || status == 405,
        "GET on a notify route: {status}"
    );
    let answer = app.post("/notify/v4/pay", "x", None, &[]).await;
    assert_eq!(answer.status, 404);
    assert!(app.drain().await.is_empty());
    app.stop().await;
}
