//! Key rotation without a restart, on the real `wxpay-worker run`: a v3 notification signed
//! with a serial the worker does not know is parked; after the serial is added to the file
//! and SIGHUP, its replay applies and the old key still verifies; a broken file is refused
//! with one log line and the keys in use stay.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use wxpay_shared::message::NotifyMessage;
use wxpay_shared::state::OrderState;
use wxpay_shared::v3::{self, load_private_key_pem, public_key_to_pem, PrivateKey};
use wxpay_worker::retry::{self, ReplaySelection};

use crate::builders::{v3_pay, MCH_ID};
use wxpay_testkit::merchants::{MERCHANT, OTHER_PRIVATE_PEM};

use crate::cli::worker;
use crate::helpers::{config_file, eventually, TestEnv};

const WAIT: Duration = Duration::from_secs(30);
const NEW_SERIAL: &str = "PUB_KEY_ID_0119000001092026NEW";

/// WeChat Pay's next platform key (a fixture that is not the current one).
fn new_key() -> PrivateKey {
    load_private_key_pem(OTHER_PRIVATE_PEM).expect("fixture key")
}

/// `message` as WeChat Pay signs it with the new key, under the new serial.
fn signed_with(key: &PrivateKey, mut message: NotifyMessage) -> NotifyMessage {
    let headers = message.wechatpay.as_mut().expect("v3 headers");
    headers.signature =
        v3::sign_notification(key, &headers.timestamp, &headers.nonce, &message.body);
    headers.serial = NEW_SERIAL.to_owned();
    message
}

/// The JSON log lines the process has written to `path` so far.
fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

async fn logged(path: &Path, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    eventually(WAIT, what, || {
        found = log_lines(path).into_iter().find(&matches);
        let seen = found.is_some();
        async move { seen }
    })
    .await;
    found.expect("found")
}

async fn state(env: &TestEnv, out_trade_no: &str) -> String {
    env.order(out_trade_no).await.state
}

fn signal(child: &Child, signal: Signal) {
    kill(
        Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        signal,
    )
    .expect("signal sent");
}

/// SIGTERM, then the exit status, which must be success.
async fn stop(mut child: Child) {
    signal(&child, Signal::SIGTERM);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_added_and_sighup_applies_what_it_signed_and_a_broken_file_changes_nothing() {
    let env = TestEnv::new().await;
    let config = config_file(&env.settings);
    let original = std::fs::read_to_string(config.path()).expect("config");
    let new_key = new_key();
    let new_pem = public_key_to_pem(&new_key.public_key());
    let with_new_serial = format!("{original}\"{NEW_SERIAL}\" = '''\n{new_pem}'''\n");
    for order in ["hup-1", "hup-2", "hup-3"] {
        env.insert_order(order, 100).await;
    }
    let logs_dir = tempfile::tempdir().expect("tempdir");
    let logs = logs_dir.path().join("worker.log");
    let child = worker(&config, &["run"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&logs).expect("log file"))
        .spawn()
        .expect("spawns");

    // Signed with a key the worker does not have yet: parked, never applied.
    let first = signed_with(&new_key, v3_pay("hup-1", "4200hup1", 100));
    env.publish(&first).await;
    eventually(WAIT, "parked", || async {
        retry::dlq_list(&env.settings)
            .await
            .is_ok_and(|parked| parked.iter().any(|m| m.id == first.message_id.to_string()))
    })
    .await;
    assert_eq!(state(&env, "hup-1").await, OrderState::NotPay.as_str());

    std::fs::write(config.path(), &with_new_serial).expect("config");
    signal(&child, Signal::SIGHUP);
    let added = format!("{MCH_ID}/{NEW_SERIAL}");
    logged(&logs, "merchants reloaded", |line| {
        line["message"] == "merchants reloaded" && line["serials_added"] == added.as_str()
    })
    .await;
    assert_eq!(
        retry::dlq_replay(&env.settings, &ReplaySelection::All)
            .await
            .expect("replay"),
        1
    );
    eventually(WAIT, "the replay applied", || async {
        state(&env, "hup-1").await == OrderState::Paid.as_str()
    })
    .await;
    // The old key still verifies beside the new one.
    env.publish(&v3_pay("hup-2", "4200hup2", 100)).await;
    eventually(WAIT, "old key applied", || async {
        state(&env, "hup-2").await == OrderState::Paid.as_str()
    })
    .await;

    // The APIv3 key of the wrong length: refused, the keys in use stay.
    let broken = with_new_serial.replace(MERCHANT.api_v3_key, "not-32-bytes");
    std::fs::write(config.path(), broken).expect("config");
    signal(&child, Signal::SIGHUP);
    let refused = logged(&logs, "refused", |line| {
        line["step"] == "reload" && line["trigger"] == "SIGHUP" && line["level"] == "WARN"
    })
    .await;
    assert_eq!(refused["mch_id"], MCH_ID, "{refused}");
    assert_eq!(refused["field"], "api_v3_key", "{refused}");
    assert!(!refused.to_string().contains("not-32-bytes"), "{refused}");
    env.publish(&signed_with(&new_key, v3_pay("hup-3", "4200hup3", 100)))
        .await;
    eventually(WAIT, "still the reloaded keys", || async {
        state(&env, "hup-3").await == OrderState::Paid.as_str()
    })
    .await;

    stop(child).await;
    let lines = log_lines(&logs);
    let reload_warnings: Vec<&Value> = lines
        .iter()
        .filter(|line| line["step"] == "reload" && line["level"] == "WARN")
        .collect();
    assert!(
        reload_warnings
            .iter()
            .all(|line| line["field"] == "api_v3_key"),
        "one line per refusal, naming the field: {reload_warnings:?}"
    );
    assert_eq!(
        env.count("FROM notifications WHERE outcome = 'APPLIED'")
            .await,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_reloads_on_sighup_instead_of_ending() {
    let env = TestEnv::new().await;
    let config = config_file(&env.settings);
    let original = std::fs::read_to_string(config.path()).expect("config");
    // The kit's settings give the reconciler a metrics listener on a free port.
    let new_pem = public_key_to_pem(&new_key().public_key());
    let logs_dir = tempfile::tempdir().expect("tempdir");
    let logs = logs_dir.path().join("reconcile.log");
    let mut child = worker(&config, &["reconcile"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&logs).expect("log file"))
        .spawn()
        .expect("spawns");
    logged(&logs, "listening", |line| {
        line["message"] == "reconciler health and metrics listening"
    })
    .await;

    let with_new_serial = format!("{original}\"{NEW_SERIAL}\" = '''\n{new_pem}'''\n");
    std::fs::write(config.path(), with_new_serial).expect("config");
    signal(&child, Signal::SIGHUP);
    let added = format!("{MCH_ID}/{NEW_SERIAL}");
    logged(&logs, "merchants reloaded", |line| {
        line["message"] == "merchants reloaded" && line["serials_added"] == added.as_str()
    })
    .await;
    assert!(child.try_wait().expect("status").is_none(), "still running");
    stop(child).await;
}
