//! End to end under load: `wxpay-sim load` (open loop, duplicates, forgeries, tampering, then
//! its PostgreSQL audit) against the real gateway and worker; a worker SIGKILLed mid-load;
//! every metric the alert rules and the dashboard use is exported by the running services.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::e2e_support::{count, metric_names, scrape, Stack};

/// The `load` arguments of these tests, at `rate` per second for `duration`.
pub(crate) fn load_args(target: &str, rate: &str, duration: &str) -> Vec<String> {
    [
        "load",
        "--target",
        target,
        "--rate",
        rate,
        "--duration",
        duration,
        "--dup-ratio",
        "0.3",
        "--forged-ratio",
        "0.05",
        "--tampered-ratio",
        "0.05",
        "--drain-timeout",
        "90",
        "--json",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Parses `load --json` and checks what holds for every run: verified against PostgreSQL,
/// every answer as planned.
fn check_report(stdout: &str, logs: impl Fn() -> String) -> serde_json::Value {
    let json: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("load --json printed no JSON ({e}):\n{stdout}\n{}", logs()));
    assert_eq!(
        json["verified"],
        true,
        "load verification failed: {}\n{}",
        json["problems"],
        logs()
    );
    assert_eq!(json["db_checked"], true, "{json}");
    let n = |k: &str| json[k].as_u64().unwrap_or_else(|| panic!("{k} in {json}"));
    assert!(n("sent") > 0, "{json}");
    assert_eq!(n("accepted") + n("rejected"), n("sent"), "{json}");
    // Every planned rejection happened; on a starved CI machine a genuine send may also
    // time out (or get FAIL when the broker confirm is late) and be re-sent: `verified`
    // holds only if each genuine order was acknowledged in the end.
    assert!(n("rejected") >= n("expected_rejections"), "{json}");
    assert!(
        n("duplicates") > 0 && n("expected_rejections") > 0,
        "{json}"
    );
    json
}

/// Runs `load` with `args` to its end, checks its report and [`check_exactly_once`]; the run's
/// prefix and its number of genuine orders.
pub(crate) async fn load_verified_once(s: &Stack, args: &[String]) -> (String, i64) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = s.sim(&args).await;
    let json = check_report(&out.stdout, || format!("{}\n{}", out.stderr, s.logs(40)));
    let prefix = json["run_prefix"].as_str().expect("run_prefix");
    let genuine = json["orders"]["genuine"].as_i64().expect("genuine orders");
    check_exactly_once(s, prefix, genuine).await;
    (prefix.to_owned(), genuine)
}

/// Checks of our own beyond the load's audit, on the whole database of the test.
async fn check_exactly_once(s: &Stack, prefix: &str, genuine: i64) {
    let mut conn = s.conn().await;
    let like = format!("'{prefix}%'");
    assert_eq!(
        count(
            &mut conn,
            &format!("FROM orders WHERE out_trade_no LIKE {like} AND state = 'PAID'")
        )
        .await,
        genuine,
        "every genuine order PAID, nothing else"
    );
    assert_eq!(
        count(
            &mut conn,
            "FROM (SELECT out_trade_no FROM notifications WHERE outcome = 'APPLIED' \
             GROUP BY out_trade_no HAVING count(*) > 1) AS twice"
        )
        .await,
        0,
        "an order APPLIED twice"
    );
    assert_eq!(
        count(
            &mut conn,
            "FROM (SELECT payload->>'out_trade_no' FROM outbox WHERE event_type = 'order.paid' \
             GROUP BY 1 HAVING count(*) > 1) AS twice"
        )
        .await,
        0,
        "an order.paid event twice"
    );
    assert_eq!(
        count(&mut conn, "FROM outbox WHERE event_type = 'order.paid'").await,
        genuine,
        "one order.paid per genuine order"
    );
    let parked = s
        .worker_cmd(&["dlq", "list"], Duration::from_secs(30))
        .await;
    assert!(parked.success, "dlq list failed\n{}", parked.describe());
    assert!(
        parked.stderr.contains("0 parked message(s)"),
        "messages were parked\n{}",
        parked.describe()
    );
}

/// The wxpay_* names the rules and the dashboard use (scripts/validate-deploy).
fn referenced_metrics() -> BTreeSet<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/validate-deploy");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("--list-metrics")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    wxpay_testkit::assert_success(&out, format_args!("{} --list-metrics", script.display()));
    let names: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(
        names.len() >= 10,
        "too few metrics referenced by deploy/: {names:?}"
    );
    names
}

/// Series that exist only while a process holds what they measure (this stack's merchant
/// verifies with a WeChat Pay public key, which has no expiry): e2e_certificates.rs checks
/// that the gateway, worker and reconciler export them once they hold certificates.
const HELD_ONLY: [&str; 1] = ["wxpay_platform_key_expiry_seconds"];

/// Which process must export `name`.
fn owner(name: &str) -> &'static str {
    if name.starts_with("wxpay_gateway_") {
        "gateway"
    } else if name.starts_with("wxpay_reconciler_") {
        "reconciler (wxpay-worker reconcile)"
    } else {
        "worker (wxpay-worker run)"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_is_verified_and_every_referenced_metric_is_exported() {
    let mut s = Stack::start().await;
    s.start_reconciler().await;
    let args = load_args(&s.gateway_url(), "100", "4s");
    load_verified_once(&s, &args).await;

    // Every metric of the rules and the dashboard, scraped from the process that owns it.
    let referenced = referenced_metrics();
    let exported = [
        ("gateway", scrape(&s.gateway_url()).await),
        ("worker (wxpay-worker run)", scrape(&s.worker_url()).await),
        (
            "reconciler (wxpay-worker reconcile)",
            scrape(&s.reconciler_url()).await,
        ),
    ]
    .map(|(service, text)| (service, metric_names(&text)));
    let missing: Vec<String> = referenced
        .iter()
        .filter(|name| !HELD_ONLY.contains(&name.as_str()))
        .filter(|name| {
            !exported
                .iter()
                .any(|(service, names)| *service == owner(name) && names.contains(*name))
        })
        .map(|name| {
            let elsewhere: Vec<&str> = exported
                .iter()
                .filter(|(_, names)| names.contains(name))
                .map(|(service, _)| *service)
                .collect();
            format!(
                "{name}: not exported by the {}{}",
                owner(name),
                if elsewhere.is_empty() {
                    String::new()
                } else {
                    format!(" (only by {})", elsewhere.join(", "))
                }
            )
        })
        .collect();
    assert!(
        missing.is_empty(),
        "metrics used by deploy/ (rules, dashboard) but not exported:\n  {}",
        missing.join("\n  ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sigkilled_mid_load_loses_nothing_and_applies_nothing_twice() {
    let mut s = Stack::start().await;
    let stdout = s.dir.path().join("load.json");
    let args = load_args(&s.gateway_url(), "200", "8s");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sim = s.bins.sim.clone();
    let mut load = s.spawn_to("load", &sim, &args, Some(&stdout));

    // Kill once the worker is busy with the run (bodies are built ahead of the clock, so
    // the first sends come a moment after the start).
    let started = Instant::now();
    let mut conn = s.conn().await;
    loop {
        let processed = count(&mut conn, "FROM notifications").await;
        if processed >= 200 {
            break;
        }
        assert!(
            load.exited().is_none(),
            "load ended before the worker was killed\n{}",
            s.logs(40)
        );
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the worker processed only {processed} notifications in 90 s\n{}",
            s.logs(40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.kill_worker();
    let at_kill = count(&mut conn, "FROM notifications").await;
    assert!(
        load.exited().is_none(),
        "the load must still be running when the worker is killed"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.start_worker().await;

    let status = load.wait(Duration::from_secs(180)).await;
    let text = std::fs::read_to_string(&stdout).unwrap_or_default();
    let json = check_report(&text, || s.logs(40));
    assert!(status.success(), "load exited with {status}");
    let prefix = json["run_prefix"].as_str().expect("run_prefix");
    let genuine = json["orders"]["genuine"].as_i64().expect("genuine orders");
    let finished = count(&mut conn, "FROM notifications").await;
    assert!(
        finished > at_kill,
        "the restarted worker took over ({at_kill} notifications at the kill, {finished} at the end)"
    );
    check_exactly_once(&s, prefix, genuine).await;
}
