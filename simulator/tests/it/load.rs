//! The load command without the real services: against an in-test gateway that verifies with
//! wxpay-shared (answers only), and its PostgreSQL audit against the worker's schema in a
//! fresh database with the worker's effects played by hand.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use wxpay_shared::answer::{v2_fail, V2_SUCCESS};
use wxpay_shared::v2::{self, XmlFields};
use wxpay_shared::v3::{verify_notification, TimestampCheck, WechatpayHeaders};
use wxpay_simulator::load::plan::{Fate, Plan, Ratios};
use wxpay_simulator::load::verify::{verify, Answers};
use wxpay_simulator::load::{self, db, LoadOptions};
use wxpay_simulator::secrets::SimMerchant;
use wxpay_testkit::merchants::MERCHANT;
use wxpay_testkit::TestEnv;

use crate::helpers::{serve_on_loopback, Fixture};

/// Verifies like the gateway does (signature and timestamp); `accept_all` plays a gateway
/// that does not verify.
fn gateway_answer(
    m: &SimMerchant,
    req: &HttpRequest,
    body: &[u8],
    accept_all: bool,
) -> HttpResponse {
    let v2 = req.path().starts_with("/notify/v2/");
    let ok = accept_all
        || if v2 {
            XmlFields::parse(body)
                .ok()
                .is_some_and(|f| v2::verify(&f, &m.api_v2_key).is_ok())
        } else {
            WechatpayHeaders::from_lookup(|name| {
                req.headers().get(name).and_then(|v| v.to_str().ok())
            })
            .ok()
            .is_some_and(|h| {
                verify_notification(&h, body, &m.platform_keys(), TimestampCheck::now()).is_ok()
            })
        };
    match (v2, ok) {
        (true, true) => HttpResponse::Ok().body(V2_SUCCESS),
        (true, false) => HttpResponse::Ok().body(v2_fail("signature")),
        (false, true) => HttpResponse::NoContent().finish(),
        (false, false) => {
            HttpResponse::Unauthorized().body(r#"{"code":"FAIL","message":"signature"}"#)
        }
    }
}

fn start_gateway(m: SimMerchant, accept_all: bool) -> (String, actix_web::dev::ServerHandle) {
    let m = Arc::new(m);
    serve_on_loopback(2, move |req: HttpRequest, body: web::Bytes| {
        let m = m.clone();
        async move { gateway_answer(&m, &req, &body, accept_all) }
    })
}

fn options(target: String) -> LoadOptions {
    LoadOptions {
        target,
        rate: 200,
        duration: Duration::from_secs(1),
        ratios: Ratios {
            v2_share: 0.5,
            dup: 0.2,
            forged: 0.1,
            tampered: 0.1,
        },
        database_url: None,
        drain_timeout: Duration::from_secs(1),
        concurrency: 64,
        answer_timeout: Duration::from_secs(5),
        record_order_book: true,
        report: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_against_a_verifying_gateway_is_accepted_exactly_as_planned() {
    let f = Fixture::new();
    let (url, handle) = start_gateway(f.merchant.clone(), false);
    let report = load::run(&f.merchant, &options(url), |_| {}).await.unwrap();
    assert_eq!(report.sent, 200, "{report:?}");
    assert!(report.verified, "{:?}", report.problems);
    assert!(!report.db_checked);
    assert_eq!(report.rejected, report.expected_rejections, "{report:?}");
    assert_eq!(report.accepted + report.rejected, report.sent);
    assert!(report.expected_rejections > 0 && report.duplicates > 0);
    assert!(report.latency_ms.p50 > 0.0 && report.latency_ms.max >= report.latency_ms.p99);
    let json = report.to_json();
    assert_eq!(json["verified"], true);
    assert_eq!(json["sent"], 200);
    // The genuine payments are in the order book for `serve`.
    let book = f.order_book();
    assert_eq!(book.orders.len(), report.genuine_orders);
    handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_report_draws_the_run_and_counts_its_own_cpu() {
    let f = Fixture::new();
    let (url, handle) = start_gateway(f.merchant.clone(), false);
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(url);
    o.duration = Duration::from_secs(2);
    o.report = Some(load::report::ReportOptions {
        dir: dir.path().to_owned(),
        queue: None,
    });
    let report = load::run(&f.merchant, &o, |_| {}).await.unwrap();
    handle.stop(false).await;
    assert!(report.verified, "{:?}", report.problems);
    // This process is the load generator; the in-process gateway is part of it here.
    assert!(
        report
            .cpu_s_per_1000
            .contains_key(load::cpu::LOAD_GENERATOR),
        "{:?}",
        report.cpu_s_per_1000
    );
    for plot in ["latency.png", "throughput.png", "cpu.png"] {
        let bytes = std::fs::read(dir.path().join(plot)).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{plot} is not a PNG"
        );
    }
    // No queue to probe and no database: no queue or lag plot rather than an empty one.
    assert!(!dir.path().join("queue.png").exists());
    assert!(!dir.path().join("lag.png").exists());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["sent"], report.sent);
    assert_eq!(summary["offered_per_s"], 200);
    assert!(summary["cpu_s_per_1000"][load::cpu::LOAD_GENERATOR].is_number());
    let text = std::fs::read_to_string(dir.path().join("summary.txt")).unwrap();
    assert!(text.contains("CPU seconds per 1,000"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_catches_a_gateway_that_accepts_forgeries() {
    let f = Fixture::new();
    let (url, handle) = start_gateway(f.merchant.clone(), true);
    let report = load::run(&f.merchant, &options(url), |_| {}).await.unwrap();
    assert!(!report.verified);
    assert_reported(
        &report.problems,
        &[
            "forged notification acknowledged",
            "tampered notification acknowledged",
        ],
    );
    handle.stop(false).await;
}

/// Every one of `expected` is said by one of `problems`.
fn assert_reported(problems: &[String], expected: &[&str]) {
    for wanted in expected {
        assert!(
            problems.iter().any(|p| p.contains(wanted)),
            "{wanted} not in {problems:#?}"
        );
    }
}

/// A fresh database (wxpay-testkit's, dropped at the end) with the worker's schema.
async fn database_with_the_worker_schema() -> TestEnv {
    let env = TestEnv::new("sim", wxpay_testkit::default_settings());
    env.create_database().await;
    // The tables, and the sub-merchant column every insert names since service providers.
    for schema in [
        include_str!("../../../worker/migrations/2025-01-01-000000_create_tables/up.sql"),
        include_str!("../../../worker/migrations/2026-12-01-000000_sub_merchants/up.sql"),
    ] {
        env.conn().await.batch_execute(schema).await.unwrap();
    }
    env
}

/// Plays the worker: marks `no` PAID with one APPLIED row (plus `extra_applied` more, a bug)
/// and one order.paid event.
async fn apply(
    conn: &mut AsyncPgConnection,
    mch_id: &str,
    no: &str,
    tid: &str,
    extra_applied: usize,
) {
    let sql = format!(
        "UPDATE orders SET state = 'PAID', transaction_id = '{tid}', paid_at = now() WHERE mch_id = '{mch_id}' AND out_trade_no = '{no}';
         INSERT INTO outbox (id, event_type, mch_id, aggregate_key, payload)
           VALUES (gen_random_uuid(), 'order.paid', '{mch_id}', '{no}', jsonb_build_object('out_trade_no', '{no}'));"
    );
    conn.batch_execute(&sql).await.unwrap();
    for i in 0..=extra_applied {
        let u = uuid::Uuid::new_v4().simple();
        let sql = format!(
            "INSERT INTO notifications (dedupe_key, message_id, kind, mch_id, out_trade_no, transaction_id, raw_body, outcome, received_at, processed_at)
             VALUES ('pay:{mch_id}:{no}:{i}:{u}', gen_random_uuid(), 'v2.pay', '{mch_id}', '{no}', '{tid}', '\\x00', 'APPLIED', now() - interval '20 milliseconds', now())"
        );
        conn.batch_execute(&sql).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_reads_the_worker_schema_and_finds_double_application() {
    let env = database_with_the_worker_schema().await;
    let mut conn = db::connect(&env.db_url()).await.unwrap();
    let ratios = Ratios {
        v2_share: 0.5,
        dup: 0.1,
        forged: 0.2,
        tampered: 0.2,
    };
    let prefix = load::new_prefix();
    let plan = Plan::new(&prefix, 60, ratios, &mut rand::thread_rng());
    let (mch_id, appid) = (MERCHANT.mch_id, MERCHANT.appid);
    db::insert_orders(&mut conn, (mch_id, ""), appid, &plan.orders)
        .await
        .unwrap();
    let (paid, rows) = db::progress(&mut conn, mch_id, &prefix).await.unwrap();
    assert_eq!((paid, rows), (0, 0));

    let mut answers = Answers::new(plan.orders.len());
    let genuine: Vec<usize> = (0..plan.orders.len())
        .filter(|&i| plan.orders[i].fate == Fate::Genuine)
        .collect();
    for &i in &genuine {
        answers.genuine_acknowledged[i] = true;
        let o = &plan.orders[i];
        apply(&mut conn, mch_id, &o.out_trade_no, &o.transaction_id, 0).await;
    }
    let observed = db::observe(&mut conn, mch_id, &prefix).await.unwrap();
    assert_eq!(observed.orders.len(), plan.orders.len());
    assert_eq!(verify(&plan, &answers, &observed), Vec::<String>::new());
    let (paid, _) = db::progress(&mut conn, mch_id, &prefix).await.unwrap();
    assert_eq!(paid as usize, genuine.len());
    let lags = db::lags(&mut conn, mch_id, &prefix, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(lags.len(), genuine.len());
    // Received before "now": every receive time is in the past of that clock.
    assert!(lags.iter().all(|l| l.received_s <= 0.0), "{lags:?}");
    let (p50, p99) = load::lag_percentiles(lags.iter().map(|l| l.lag_ms).collect()).unwrap();
    assert!((15.0..1000.0).contains(&p50) && p99 >= p50, "{p50} {p99}");

    // A bug: one genuine order applied twice, one forged order paid.
    let twice = &plan.orders[genuine[0]];
    apply(
        &mut conn,
        mch_id,
        &twice.out_trade_no,
        &twice.transaction_id,
        1,
    )
    .await;
    let forged = plan
        .orders
        .iter()
        .find(|o| o.fate == Fate::Forged)
        .expect("forged orders planned");
    apply(&mut conn, mch_id, &forged.out_trade_no, "4200000000", 0).await;
    let observed = db::observe(&mut conn, mch_id, &prefix).await.unwrap();
    let problems = verify(&plan, &answers, &observed);
    let applied_twice = problems
        .iter()
        .any(|p| p.contains("not APPLIED exactly once") && p.contains(&twice.out_trade_no));
    assert!(applied_twice, "{problems:#?}");
    assert_reported(
        &problems,
        &[
            "order.paid",
            "forged notification changed the order",
            "forged notification reached the worker",
        ],
    );

    // Orders of another run are not looked at.
    let other = load::new_prefix();
    assert!(db::observe(&mut conn, mch_id, &other)
        .await
        .unwrap()
        .orders
        .is_empty());
}
