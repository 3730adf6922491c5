//! Delivery with WeChat Pay's re-sends against a tiny in-test gateway.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use wxpay_shared::answer::{v2_fail, V2_SUCCESS};
use wxpay_shared::state::TradeState;
use wxpay_simulator::build::{self, Notification, Payment, V2Signing, Variant};
use wxpay_simulator::notify::{deliver, DeliveryOptions};

use crate::helpers::{serve_on_loopback, Fixture};

/// What the fake gateway saw.
#[derive(Default)]
struct Seen {
    paths: Vec<String>,
    wechatpay_headers: Vec<usize>,
}

/// A server answering the i-th request with `answers[i]` (the last one repeats).
struct FakeGateway {
    url: String,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Seen>>,
    handle: actix_web::dev::ServerHandle,
}

impl FakeGateway {
    fn start(answers: Vec<(u16, &'static str)>) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let answers = Arc::new(answers);
        let (h, s, a) = (hits.clone(), seen.clone(), answers.clone());
        let (url, handle) = serve_on_loopback(1, move |req: HttpRequest, _body: web::Bytes| {
            let (h, s, a) = (h.clone(), s.clone(), a.clone());
            async move {
                let i = h.fetch_add(1, Ordering::SeqCst);
                {
                    let mut seen = s.lock().unwrap();
                    seen.paths.push(req.path().to_owned());
                    let n = req
                        .headers()
                        .iter()
                        .filter(|(k, _)| k.as_str().starts_with("wechatpay-"))
                        .count();
                    seen.wechatpay_headers.push(n);
                }
                let (status, body) = a[i.min(a.len() - 1)];
                HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                    .body(body)
            }
        });
        Self {
            url,
            hits,
            seen,
            handle,
        }
    }

    async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// A genuine v2 payment notification of the fixture's merchant.
fn genuine_v2(f: &Fixture, out_trade_no: &str, amount: i64) -> Notification {
    let payment = Payment::new(out_trade_no, amount);
    build::v2_pay(
        &f.merchant,
        &payment,
        V2Signing::default(),
        Variant::Genuine,
    )
    .unwrap()
}

/// A genuine v3 payment notification of the fixture's merchant, signed now.
fn genuine_v3(f: &Fixture, out_trade_no: &str, amount: i64) -> Notification {
    let payment = Payment::new(out_trade_no, amount);
    build::v3_pay(&f.merchant, &payment, Variant::Genuine, chrono::Utc::now()).unwrap()
}

/// `wxpay-sim --sim-config <the fixture's> notify --target <target> <args>` (`args`
/// separated by spaces), on a blocking thread.
async fn cli_notify(f: &Fixture, target: &str, args: &str) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wxpay-sim"));
    command
        .arg("--sim-config")
        .arg(f.sim_config())
        .args(["notify", "--target", target])
        .args(args.split_whitespace());
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn fast(max_attempts: u32) -> DeliveryOptions {
    DeliveryOptions {
        time_scale: 0.001,
        max_attempts,
        ..DeliveryOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_twice_then_success_takes_three_attempts_on_schedule() {
    let fail = Box::leak(v2_fail("broker busy").into_boxed_str());
    let gw = FakeGateway::start(vec![(200, fail), (200, fail), (200, V2_SUCCESS)]);
    let f = Fixture::new();
    let n = genuine_v2(&f, "O-1", 100);
    let client = reqwest::Client::new();
    let mut printed = Vec::new();
    let started = Instant::now();
    let d = deliver(&client, &gw.url, &n, &fast(16), |a| printed.push(a.clone()))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(d.acknowledged);
    assert_eq!(d.attempts.len(), 3);
    assert_eq!(printed.len(), 3);
    assert!(
        !d.attempts[0].judgement.success && d.attempts[0].judgement.reason.contains("broker busy")
    );
    assert!(d.attempts[2].judgement.success);
    assert_eq!(gw.hits.load(Ordering::SeqCst), 3);
    // 15 s + 15 s scaled by 0.001.
    assert!(elapsed >= Duration::from_millis(30), "{elapsed:?}");
    assert!(gw
        .seen
        .lock()
        .unwrap()
        .paths
        .iter()
        .all(|p| p == "/notify/v2/pay"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_success_is_a_failure_until_attempts_run_out() {
    let gw = FakeGateway::start(vec![(200, "success")]);
    let f = Fixture::new();
    let n = genuine_v2(&f, "O-2", 100);
    let d = deliver(&reqwest::Client::new(), &gw.url, &n, &fast(4), |_| {})
        .await
        .unwrap();
    assert!(!d.acknowledged);
    assert_eq!(d.attempts.len(), 4);
    assert!(d
        .attempts
        .iter()
        .all(|a| a.status == Some(200) && !a.judgement.success));
    assert!(d.attempts[0]
        .judgement
        .reason
        .contains("not the v2 XML answer"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_is_judged_by_status_and_carries_its_headers() {
    let gw = FakeGateway::start(vec![(500, r#"{"code":"FAIL","message":"x"}"#), (204, "")]);
    let f = Fixture::new();
    let n = genuine_v3(&f, "O-3", 100);
    let d = deliver(
        &reqwest::Client::new(),
        &format!("{}/", gw.url),
        &n,
        &fast(16),
        |_| {},
    )
    .await
    .unwrap();
    assert!(d.acknowledged);
    assert_eq!(d.attempts.len(), 2);
    assert_eq!(d.attempts[0].status, Some(500));
    let (path, headers) = {
        let seen = gw.seen.lock().unwrap();
        (seen.paths[0].clone(), seen.wechatpay_headers[0])
    };
    assert_eq!(path, format!("/notify/v3/{}", f.merchant.mch_id));
    assert_eq!(headers, 5);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_is_a_failure_not_an_error() {
    let f = Fixture::new();
    let n = genuine_v3(&f, "O-4", 1);
    // A port that was just free: nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = deliver(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{port}"),
        &n,
        &fast(2),
        |_| {},
    )
    .await
    .unwrap();
    assert!(!d.acknowledged);
    assert_eq!(d.attempts[0].status, None);
    assert!(
        deliver(&reqwest::Client::new(), "not a url", &n, &fast(2), |_| {})
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_notify_prints_attempts_records_the_order_and_exits_by_outcome() {
    let fail = Box::leak(v2_fail("nope").into_boxed_str());
    let gw = FakeGateway::start(vec![(200, fail), (200, V2_SUCCESS)]);
    let f = Fixture::new();
    let args = "--kind v2-pay --out-trade-no CLI-1 --amount 2500 \
                --sign-type HMAC-SHA256 --time-scale 0.001";
    let out = cli_notify(&f, &gw.url, args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("attempt 1:") && stdout.contains("attempt 2:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("acknowledged after 2 attempt(s)"),
        "{stdout}"
    );
    let book = f.order_book();
    let order = &book.orders["CLI-1"];
    assert_eq!((order.amount, order.state), (2500, TradeState::Success));

    // Every attempt fails: non-zero exit.
    let gw2 = FakeGateway::start(vec![(503, "down")]);
    let out = cli_notify(
        &f,
        &gw2.url,
        "--kind v3-pay --out-trade-no CLI-2 --amount 1 --time-scale 0 --max-attempts 3 --forge",
    )
    .await;
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("not acknowledged after 3 attempt(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("HTTP 503"), "{stdout}");
    // A forged notification is not a payment WeChat Pay knows about.
    let book = f.order_book();
    assert!(!book.orders.contains_key("CLI-2"));
    gw.stop().await;
    gw2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_notify_sends_the_other_kinds_by_their_own_numbers_and_books_no_order() {
    let gw = FakeGateway::start(vec![(204, "")]);
    let f = Fixture::new();
    let args = "--kind v3-transfer --out-bill-no CLI-BILL-1 --state FAIL --amount 100 \
                --max-attempts 1";
    let out = cli_notify(&f, &gw.url, args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("v3-transfer genuine out_bill_no=CLI-BILL-1")
            && stdout.contains("acknowledged after 1 attempt(s)"),
        "{stdout}"
    );
    let path = gw.seen.lock().unwrap().paths[0].clone();
    assert_eq!(path, format!("/notify/v3/{}", f.merchant.mch_id));
    assert!(f.order_book().orders.is_empty());

    let refused = [
        // Another kind's number, an event type of another family, a state of a kind that
        // has none, and a payment without its order.
        (
            "--kind v3-payscore --out-bill-no X --amount 1",
            "--out-bill-no does not apply",
        ),
        (
            "--kind v3-transfer-batch --event-type PAYSCORE.USER_PAID --amount 1",
            "has no event type",
        ),
        (
            "--kind v3-profitsharing --state SUCCESS --amount 1",
            "--state does not apply",
        ),
        ("--kind v3-pay --amount 1", "--out-trade-no is required"),
    ];
    for (args, why) in refused {
        let out = cli_notify(&f, &gw.url, &format!("{args} --max-attempts 1")).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(why),
            "{args}: {stderr}"
        );
    }
    assert_eq!(
        gw.hits.load(Ordering::SeqCst),
        1,
        "nothing refused was sent"
    );
    gw.stop().await;
}
