//! The `wxpay-worker` binary: `migrate`, `run` with a graceful SIGTERM, `dlq list`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use diesel_async::SimpleAsyncConnection;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use wxpay_shared::state::OrderState;
use wxpay_worker::migrate;

use wxpay_testkit::clean_command;

use crate::builders::v2_pay;
use crate::helpers::{config_file, eventually, TestEnv};

const BIN: &str = env!("CARGO_BIN_EXE_wxpay-worker");

/// `wxpay-worker --config <config> <args>`.
pub(crate) fn worker(config: &tempfile::NamedTempFile, args: &[&str]) -> Command {
    let mut command = clean_command(BIN);
    command
        .arg("--config")
        .arg(config.path())
        .args(args)
        .env("RUST_LOG", "warn");
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_database_and_is_idempotent() {
    let env = TestEnv::with_migration(false).await;
    let config = config_file(&env.settings);
    let embedded = wxpay_worker::schema_check::embedded_versions().expect("embedded");
    let all = format!("migrations applied: {}", embedded.len());
    for expected in [all.as_str(), "migrations applied: 0"] {
        let output = worker(&config, &["migrate"]).output().expect("runs");
        wxpay_testkit::assert_success(&output, "wxpay-worker migrate");
        assert!(String::from_utf8_lossy(&output.stdout).contains(expected));
    }
    assert_eq!(env.count("FROM orders").await, 0);
}

/// `run` and `reconcile` on `config`: they must exit at once, non-zero, with one line that
/// names `wxpay-worker migrate`.
fn assert_refused(config: &tempfile::NamedTempFile, why: &str) {
    for command in ["run", "reconcile"] {
        let output = worker(config, &[command]).output().expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{command} started ({why}): {stderr}"
        );
        let line = stderr
            .lines()
            .find(|line| line.starts_with("wxpay-worker: "))
            .unwrap_or_else(|| panic!("{command} ({why}): no error line in {stderr}"));
        assert!(
            line.contains("`wxpay-worker migrate`") && line.contains(why),
            "{command}: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_and_reconcile_refuse_a_schema_that_is_not_theirs_and_never_migrate() {
    let env = TestEnv::with_migration(false).await;
    let config = config_file(&env.settings);
    // No database at all, then an empty one.
    assert_refused(&config, "not migrated");
    migrate::ensure_database(&env.db_url(), Duration::from_secs(5))
        .await
        .expect("database created");
    assert_refused(&config, "not migrated");
    assert_eq!(
        env.count("FROM pg_tables WHERE schemaname = 'public'")
            .await,
        0,
        "run must not migrate"
    );

    // Migrated by a newer release: a version this binary does not know.
    let migrated = worker(&config, &["migrate"]).output().expect("runs");
    assert!(migrated.status.success());
    let mut conn = env.conn().await;
    conn.batch_execute(
        "INSERT INTO __diesel_schema_migrations (version) VALUES ('29991231000000')",
    )
    .await
    .expect("version inserted");
    assert_refused(&config, "newer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_applies_and_exits_zero_on_sigterm() {
    let env = TestEnv::new().await;
    let config = config_file(&env.settings);
    env.insert_order("cli-1", 100).await;
    env.publish(&v2_pay("cli-1", "4200cli1", 100)).await;
    let mut child = worker(&config, &["run"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawns");
    eventually(Duration::from_secs(30), "paid by the binary", || async {
        env.order("cli-1").await.state == OrderState::Paid.as_str()
    })
    .await;
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
    kill(pid, Signal::SIGTERM).expect("signal sent");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waits") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");

    let listed = worker(&config, &["dlq", "list"]).output().expect("runs");
    assert!(listed.status.success());
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(
        stdout.lines().filter(|l| !l.starts_with('{')).count(),
        1,
        "only the header: {stdout}"
    );
    let replay = worker(&config, &["dlq", "replay"]).output().expect("runs");
    assert!(!replay.status.success(), "replay needs --all or --id");
}
