//! The gateway at the open internet: compression bombs, header abuse, slow clients, a
//! blocked broker, a full publish pipeline, per-source limits. Memory and timing cases run
//! against the real binary.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

const BOMB: &[u8] = include_bytes!("fixtures/zeros-64mib.gz");
const RETRY: &str = "temporarily unavailable, please retry";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// Stops the binary, then takes what it queued.
async fn stop(binary: Binary) -> Vec<lapin::message::BasicGetMessage> {
    let Binary { mut child, env, .. } = binary;
    let _ = child.kill();
    let _ = child.wait();
    env.drain().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_gzip_bombs_are_refused_unread_and_memory_stays_flat() {
    let binary = binary_with(|_| {});
    let base = format!("http://127.0.0.1:{}", binary.port);
    let client = client();
    wait_readyz(&client, &base, 200, Duration::from_secs(10)).await;
    // Warm up the paths a bomb takes, so the baseline includes them.
    let genuine = client
        .post(format!("{base}/notify/v2/pay"))
        .body(v2_pay_body("bomb-warmup", 100))
        .send()
        .await
        .expect("answer");
    assert_eq!(genuine.status().as_u16(), 200);
    let before = peak_rss_kb(binary.child.id());

    let bombs = (0..20).map(|n| {
        let client = client.clone();
        let path = if n % 2 == 0 {
            "/notify/v2/pay".to_owned()
        } else {
            format!("/notify/v3/{V3_MCH}")
        };
        let base = base.clone();
        async move {
            let response = client
                .post(format!("{base}{path}"))
                .header("Content-Encoding", "gzip")
                .header(
                    "Content-Type",
                    if n % 2 == 0 {
                        "text/xml"
                    } else {
                        "application/json"
                    },
                )
                .body(BOMB)
                .send()
                .await
                .expect("bomb answered");
            let status = response.status().as_u16();
            (n, status, response.text().await.expect("body"))
        }
    });
    for (n, status, body) in futures::future::join_all(bombs).await {
        assert_eq!(status, 415, "bomb {n}: {body}");
        if n % 2 == 0 {
            assert!(
                body.contains("<return_code><![CDATA[FAIL]]></return_code>"),
                "{body}"
            );
            assert!(
                body.contains("content encoding not accepted, send identity"),
                "{body}"
            );
        } else {
            let value: serde_json::Value = serde_json::from_str(&body).expect("JSON FAIL");
            assert_eq!(value["code"], "FAIL");
            assert_eq!(
                value["message"],
                "content encoding not accepted, send identity"
            );
        }
    }
    let growth_kb = peak_rss_kb(binary.child.id()).saturating_sub(before);
    eprintln!("peak RSS {before} kB before, grew by {growth_kb} kB");
    assert!(growth_kb < 10 * 1024, "peak RSS grew by {growth_kb} kB");
    // The broker link is up and only the genuine warm-up was queued.
    wait_readyz(&client, &base, 200, Duration::from_secs(10)).await;
    assert_eq!(stop(binary).await.len(), 1);
}

/// Reads what the server sends until `done` says the answer is complete, the server
/// closes, or 10 s pass (then the test fails on what it got).
async fn read_answer(stream: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    let mut buffer = [0u8; 4096];
    while !done(&String::from_utf8_lossy(&got)) && Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buffer[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_senders_are_cut_within_the_deadline() {
    let binary = binary_with(|settings| {
        settings.gateway.answer_deadline_ms = 3000;
        settings.gateway.body_read_timeout_ms = 1000;
        settings.gateway.header_read_timeout_ms = 1000;
    });
    let address = format!("127.0.0.1:{}", binary.port);

    // A body trickled one byte a second.
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    stream
        .write_all(
            b"POST /notify/v2/pay HTTP/1.1\r\nHost: gateway\r\nContent-Type: text/xml\r\n\
              Content-Length: 400\r\n\r\n",
        )
        .await
        .expect("headers");
    let headers_sent = Instant::now();
    let (mut read, mut write) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for byte in v2_pay_body("slow", 100).bytes() {
            if write.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut got = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("</xml>") {
        match tokio::time::timeout(Duration::from_secs(10), read.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buffer[..n]),
            other => panic!("no answer to the slow body: {other:?}"),
        }
    }
    let waited = headers_sent.elapsed();
    trickle.abort();
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("<return_code><![CDATA[FAIL]]></return_code>"),
        "{answer}"
    );
    assert!(answer.contains("body not received in time"), "{answer}");
    // The deadline bound itself (plus a scheduling margin), not a speed figure.
    assert!(
        waited < Duration::from_millis(3000 + 500),
        "answered after {waited:?}"
    );

    // Headers trickled (never finished): 408 from the HTTP layer, connection closed.
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    stream
        .write_all(b"POST /notify/v2/pay HTTP/1.1\r\nHost: gateway\r\n")
        .await
        .expect("partial headers");
    let answer = read_answer(&mut stream, |_| false).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");

    assert!(stop(binary).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_byte_content_type_never_costs_the_broker_link() {
    let app = TestApp::spawn().await;
    let hostile = format!("text/xml; x={}", "a".repeat(300 - "text/xml; x=".len()));
    assert_eq!(hostile.len(), 300);
    let first = app
        .post(
            "/notify/v2/pay",
            v2_pay_body("long-type", 100),
            Some(&hostile),
            &[],
        )
        .await;
    first.assert_v2_success();
    assert_eq!(app.get("/readyz").await, (200, "ready".to_owned()));
    let next = app.post_v2_pay(&v2_pay_body("after-long-type", 100)).await;
    next.assert_v2_success();
    let queued = app.drain().await;
    assert_eq!(queued.len(), 2);
    for message in &queued {
        let content_type = message
            .properties
            .content_type()
            .as_ref()
            .map(|t| t.as_str().to_owned());
        assert_eq!(content_type.as_deref(), Some("text/xml"));
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bodies_get_415_in_each_format_and_nothing_is_queued() {
    let app = TestApp::spawn().await;
    let encoding = [("Content-Encoding".to_owned(), "deflate".to_owned())];
    let v2 = app
        .post_v2_pay_with(&v2_pay_body("deflate", 100), &encoding)
        .await;
    v2.assert_v2_fail(415, "content encoding not accepted, send identity");
    let (body, mut headers) = signed_v3_pay("deflate");
    headers.extend(encoding);
    let v3 = app.post_v3(V3_MCH, &body, &headers).await;
    v3.assert_v3_fail(415, "content encoding not accepted, send identity");
    // identity is what every request means without the header, and is accepted.
    let identity = [("Content-Encoding".to_owned(), "identity".to_owned())];
    let plain = app
        .post_v2_pay_with(&v2_pay_body("identity", 100), &identity)
        .await;
    plain.assert_v2_success();
    app.stop_with_queued(1).await;
}

/// The value of `series` in `metrics`; it must be exposed.
fn metric_value(metrics: &str, series: &str) -> f64 {
    wxpay_testkit::metrics::series(metrics, series)
        .unwrap_or_else(|| panic!("no metric {series} in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_broker_is_shed_at_once_and_readyz_says_so() {
    let proxy = FrameProxy::start(BROKER).await;
    let app = TestApp::spawn_with(&proxy.url(), |_| {}).await;
    assert_eq!(app.get("/readyz").await.0, 200);
    proxy.block().await;
    app.wait_ready(503, Duration::from_secs(10)).await;
    assert_eq!(
        app.get("/readyz").await,
        (503, "broker blocked the connection".to_owned())
    );
    app.post_v2_pay(&v2_pay_body("blocked", 100))
        .await
        .assert_v2_fail(200, RETRY);
    let (body, headers) = signed_v3_pay("blocked");
    app.post_v3(V3_MCH, &body, &headers)
        .await
        .assert_v3_fail(503, RETRY);
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metric_value(
            &metrics,
            "wxpay_gateway_shed_total{reason=\"broker_blocked\"}"
        ) >= 2.0
    );

    proxy.unblock().await;
    app.wait_ready(200, Duration::from_secs(10)).await;
    let after = app.post_v2_pay(&v2_pay_body("unblocked", 100)).await;
    after.assert_v2_success();
    // Only the notification sent after the unblock was queued.
    app.stop_with_queued(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_outside_the_allowlist_get_403_unless_forwarded_by_a_trusted_proxy() {
    let app = TestApp::spawn_with(AMQP_URL, |settings| {
        settings.gateway.allow_sources = vec!["203.0.113.0/24".into()];
        settings.gateway.trusted_proxies = vec!["127.0.0.1/32".into()];
    })
    .await;
    // Direct from 127.0.0.1 (a trusted proxy, but no X-Forwarded-For): not allowed.
    app.post_v2_pay(&v2_pay_body("direct", 100))
        .await
        .assert_v2_fail(403, "source not allowed");
    let (body, mut headers) = signed_v3_pay("outside");
    headers.extend(forwarded_for("198.51.100.7"));
    app.post_v3(V3_MCH, &body, &headers)
        .await
        .assert_v3_fail(403, "source not allowed");
    let inside = app
        .post_v2_pay_with(&v2_pay_body("inside", 100), &forwarded_for("203.0.113.9"))
        .await;
    inside.assert_v2_success();
    app.stop_with_queued(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_over_its_rate_gets_429_others_are_not_affected() {
    let app = TestApp::spawn_with(AMQP_URL, |settings| {
        settings.gateway.rate_limit_per_second = 1;
        settings.gateway.rate_limit_burst = 1;
        settings.gateway.trusted_proxies = vec!["127.0.0.1/32".into()];
    })
    .await;
    let first = app
        .post_v2_pay_with(&v2_pay_body("rate-1", 100), &forwarded_for("203.0.113.1"))
        .await;
    first.assert_v2_success();
    // Bucket of one, refilled at 1/s: sent at once, at least one of three is refused.
    let shared = &app;
    let burst = (0..3).map(|n| {
        let body = v2_pay_body(&format!("rate-burst-{n}"), 100);
        async move {
            shared
                .post_v2_pay_with(&body, &forwarded_for("203.0.113.1"))
                .await
        }
    });
    let answers = futures::future::join_all(burst).await;
    let limited = answers.iter().filter(|a| a.status == 429).count();
    assert!(limited >= 1, "{answers:?}");
    for answer in answers.iter().filter(|a| a.status == 429) {
        answer.assert_v2_fail(429, "too many requests");
    }
    let accepted = answers.iter().filter(|a| a.is_v2_success()).count();
    assert_eq!(accepted + limited, 3, "{answers:?}");
    // Another client address has its own bucket.
    let other = app
        .post_v2_pay_with(
            &v2_pay_body("rate-other", 100),
            &forwarded_for("203.0.113.2"),
        )
        .await;
    other.assert_v2_success();
    app.stop_with_queued(2 + accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_publish_pipeline_sheds_at_once_and_queues_nothing_shed() {
    let proxy = FaultProxy::start(BROKER).await;
    let app = TestApp::spawn_with(&amqp_url(proxy.address()), |settings| {
        settings.gateway.max_in_flight = 1;
    })
    .await;
    proxy.stall();
    // Two notifications while the broker holds its confirms: one takes the only slot
    // and waits for its confirm (FAIL at publish_timeout_ms), the other is shed at once.
    let slot_a = v2_pay_body("slot-a", 100);
    let (first, second) = tokio::join!(app.post_v2_pay(&slot_a), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        app.post_v2_pay(&v2_pay_body("slot-b", 100)).await
    });
    first.assert_v2_fail(200, RETRY);
    second.assert_v2_fail(200, RETRY);
    let (_, metrics) = app.get("/metrics").await;
    assert_eq!(
        metric_value(
            &metrics,
            "wxpay_gateway_shed_total{reason=\"in_flight_full\"}"
        ),
        1.0
    );
    proxy.restore();
    let after = app.post_v2_pay(&v2_pay_body("slot-c", 100)).await;
    after.assert_v2_success();
    // The publish that timed out reaches the queue late (WeChat Pay re-sends it and the
    // worker dedupes); the shed one never does.
    let queued = queued_orders(&app.drain().await);
    assert_eq!(queued.len(), 2, "{queued:?}");
    assert!(queued.contains(&"slot-c".to_owned()), "{queued:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_deadline_bounds_a_slow_broker_not_the_publish_timeout() {
    let proxy = FaultProxy::start(BROKER).await;
    let app = TestApp::spawn_with(&amqp_url(proxy.address()), |settings| {
        settings.gateway.publish_timeout_ms = 20_000;
        settings.gateway.answer_deadline_ms = 1_000;
    })
    .await;
    proxy.stall();
    let started = Instant::now();
    let (body, headers) = signed_v3_pay("deadline");
    app.post_v3(V3_MCH, &body, &headers)
        .await
        .assert_v3_fail(503, RETRY);
    let waited = started.elapsed();
    // Bounded by the 1 s deadline, far from the 20 s publish timeout.
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
    proxy.restore();
    app.stop().await;
}
