//! Broker outage: the gateway answers FAIL fast (never hangs, never says SUCCESS), /readyz
//! is 503, and it recovers by itself when the broker is back (guarantees 1 and 4).

use std::time::{Duration, Instant};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_answers_fail_then_recovers_without_restart() {
    let proxy = FaultProxy::start(BROKER).await;
    let app = TestApp::spawn_with(&amqp_url(proxy.address()), |_| {}).await;
    assert_eq!(
        app.get("/readyz").await.0,
        200,
        "connected through the proxy"
    );
    let body = v2_pay_body("order-before", 100);
    assert!(app.post_v2_pay(&body).await.is_v2_success());

    proxy.cut();
    let bound = PUBLISH_TIMEOUT + Duration::from_secs(2);
    for index in 0..3 {
        let started = Instant::now();
        let answer = app
            .post_v2_pay(&v2_pay_body(&format!("order-during-{index}"), 100))
            .await;
        assert!(
            started.elapsed() < bound,
            "answered within the publish timeout, not hung"
        );
        answer.assert_v2_fail(200, "temporarily unavailable, please retry");
        let (body, headers) = signed_v3_pay("order-v3-during");
        let started = Instant::now();
        let answer = app.post_v3(V3_MCH, &body, &headers).await;
        assert!(
            started.elapsed() < bound,
            "answered within the publish timeout, not hung"
        );
        answer.assert_v3_fail(503, "temporarily unavailable, please retry");
    }
    app.wait_ready(503, Duration::from_secs(5)).await;
    assert_eq!(app.get("/healthz").await.0, 200, "still alive");
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("wxpay_gateway_broker_connected 0"),
        "gauge says disconnected"
    );

    proxy.restore();
    // Reconnects by itself.
    app.wait_ready(200, Duration::from_secs(15)).await;
    let body_after = v2_pay_body("order-after", 100);
    assert!(
        app.post_v2_pay(&body_after).await.is_v2_success(),
        "SUCCESS again without restart"
    );

    let bodies = app.drain_bodies().await;
    assert!(bodies.contains(&body.into_bytes()));
    assert!(bodies.contains(&body_after.into_bytes()));
    assert!(
        bodies
            .iter()
            .all(|b| !String::from_utf8_lossy(b).contains("order-during")),
        "nothing answered FAIL was needed in the queue (and none was confirmed)"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_starts_without_broker_and_serves_fail_until_it_comes() {
    let proxy = FaultProxy::start(BROKER).await;
    proxy.cut();
    let app = TestApp::spawn_with(&amqp_url(proxy.address()), |settings| {
        settings.rabbitmq.connect_timeout_ms = 300
    })
    .await;
    assert_eq!(app.get("/readyz").await.0, 503);
    app.post_v2_pay(&v2_pay_body("order-early", 100))
        .await
        .assert_v2_fail(200, "temporarily unavailable, please retry");
    proxy.restore();
    // Connects when the broker appears.
    app.wait_ready(200, Duration::from_secs(15)).await;
    assert!(app
        .post_v2_pay(&v2_pay_body("order-late", 100))
        .await
        .is_v2_success());
    app.stop_with_queued(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_unroutable_message_is_fail_and_the_queue_is_redeclared() {
    let app = TestApp::spawn().await;
    assert!(app
        .post_v2_pay(&v2_pay_body("order-1", 100))
        .await
        .is_v2_success());
    // An operator deletes the queue: the next publish is returned (mandatory) and acked;
    // lapin reports that as Ack(Some(returned)), which must not be taken for SUCCESS.
    delete_queue(&app.queue).await;
    let lost = v2_pay_body("order-returned", 100);
    let answer = app.post_v2_pay(&lost).await;
    answer.assert_v2_fail(200, "temporarily unavailable, please retry");
    // The link is rebuilt and the queue declared again, without a restart.
    let again = v2_pay_body("order-again", 100);
    eventually(
        Duration::from_secs(15),
        "queue re-declared and SUCCESS again",
        async || app.post_v2_pay(&again).await.is_v2_success(),
    )
    .await;
    let bodies = app.drain_bodies().await;
    assert_eq!(bodies, vec![again.into_bytes()]);
    app.stop().await;
}
