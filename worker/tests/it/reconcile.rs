//! The reconciler against `wxpay-sim serve` (spawned as a process, as in a deployment) and the
//! real PostgreSQL / RabbitMQ / Redis: payments and refunds whose notification never came are
//! found by query and applied once through the worker; closed orders are closed; a failing or
//! forging API changes nothing and is counted. Both a v2-only and a v3 merchant.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use diesel::sql_types::{BigInt, Text};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use wxpay_runtime::config::{MerchantSettings, ReconcilerSettings, Settings};
use wxpay_runtime::telemetry;
use wxpay_shared::state::{OrderState, RefundState, TradeState};
use wxpay_testkit::clean_command;
use wxpay_testkit::services::free_port;
use wxpay_worker::reconcile::query::Api;
use wxpay_worker::reconcile::{Reconciler, RoundReport};

use crate::builders::{self, APPID, MCH_ID};
use crate::helpers::{closed_port_url, eventually, TestEnv};

const WAIT: Duration = Duration::from_secs(30);

/// A running `wxpay-sim serve` with its own merchant keys and order book.
pub(crate) struct Sim {
    pub(crate) url: String,
    dir: tempfile::TempDir,
    /// The merchant as `wxpay-sim init` configured it (v2 and v3 credentials).
    pub(crate) merchant: MerchantSettings,
    http: reqwest::Client,
    _child: Child,
}

impl Sim {
    pub(crate) async fn start() -> Sim {
        let binary = wxpay_testkit::bin_path_async("wxpay-sim").await;
        let dir = tempfile::tempdir().expect("temp dir");
        let init = Command::new(&binary)
            .arg("init")
            .arg("--dir")
            .arg(dir.path())
            .args(["--mch-id", MCH_ID, "--appid", APPID, "--key-bits", "2048"])
            .args(["--api-base", "http://127.0.0.1:1"])
            .output()
            .await
            .expect("wxpay-sim init runs");
        wxpay_testkit::assert_success(&init, "wxpay-sim init");
        let example = dir.path().join("example.toml");
        let settings = Settings::load_with_env(&example, Vec::<(String, String)>::new())
            .expect("init's example.toml loads");
        let merchant = settings.merchants[0].clone();

        let mut child = Command::new(&binary)
            .arg("--sim-config")
            .arg(dir.path().join("simulator.toml"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("wxpay-sim serve starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let marker = "query API on ";
        let url = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split(marker).nth(1) {
                    return rest.split_whitespace().next().map(str::to_owned);
                }
            }
            None
        })
        .await
        .expect("wxpay-sim serve announces its address in time")
        .expect("wxpay-sim serve announces its address");
        // Keep draining stderr so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Sim {
            url,
            dir,
            merchant,
            http: reqwest::Client::new(),
            _child: child,
        }
    }

    fn example_toml(&self) -> PathBuf {
        self.dir.path().join("example.toml")
    }

    /// The merchant as the services see it: v3 with its signer, or v2-only without one.
    fn merchant_for(&self, api: Api) -> MerchantSettings {
        let mut merchant = self.merchant.clone();
        if api == Api::V2 {
            merchant.merchant_private_key_pem = None;
            merchant.merchant_serial = None;
        }
        merchant
    }

    async fn admin(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .expect("simulator admin call");
        let status = response.status();
        let answer: Value = response.json().await.expect("admin answer is JSON");
        assert!(status.is_success(), "{path} {body}: {status} {answer}");
        answer
    }

    /// Stages an order at "WeChat Pay"; returns its transaction id when paid.
    pub(crate) async fn order(
        &self,
        out_trade_no: &str,
        amount: i64,
        state: &str,
    ) -> Option<String> {
        let record = self
            .admin(
                "/sim/orders",
                json!({"out_trade_no": out_trade_no, "amount": amount, "state": state}),
            )
            .await;
        record["transaction_id"].as_str().map(str::to_owned)
    }

    async fn refund(&self, out_trade_no: &str, out_refund_no: &str, fee: i64, status: &str) {
        self.admin(
            "/sim/refunds",
            json!({"out_trade_no": out_trade_no, "out_refund_no": out_refund_no,
                   "refund_fee": fee, "status": status}),
        )
        .await;
    }

    pub(crate) async fn faults(&self, faults: Value) {
        self.admin("/sim/faults", faults).await;
    }
}

/// A test database / queue / key prefix, a simulator, and settings pointing at both.
pub(crate) struct Setup {
    pub(crate) env: TestEnv,
    pub(crate) sim: Sim,
    pub(crate) settings: Settings,
}

pub(crate) async fn setup(api: Api) -> Setup {
    let (env, sim) = tokio::join!(TestEnv::new(), Sim::start());
    let mut settings = env.settings();
    settings.merchants = vec![sim.merchant_for(api)];
    settings.wechatpay.api_base = sim.url.clone();
    settings.wechatpay.request_timeout_ms = 3_000;
    settings.reconciler = ReconcilerSettings {
        interval_secs: 1,
        min_age_secs: 0,
        horizon_secs: 3_600,
        // Small pages, so that the tests page through several.
        batch_size: 2,
        rate_per_merchant: 100,
        close_unpaid: true,
        metrics_listen: "127.0.0.1:0".into(),
    };
    Setup { env, sim, settings }
}

impl Setup {
    pub(crate) async fn round(&self) -> RoundReport {
        let reconciler = Reconciler::new(&self.settings).expect("reconciler builds");
        let report = reconciler
            .round(&CancellationToken::new())
            .await
            .expect("round runs");
        reconciler.close().await;
        report
    }

    pub(crate) async fn state(&self, out_trade_no: &str) -> String {
        self.env.order(out_trade_no).await.state
    }

    pub(crate) async fn wait_state(&self, out_trade_no: &str, expected: &str) {
        eventually(
            WAIT,
            &format!("order {out_trade_no} {expected}"),
            || async { self.state(out_trade_no).await == expected },
        )
        .await;
    }

    async fn insert_refund(&self, out_trade_no: &str, out_refund_no: &str, fee: i64) {
        let mut conn = self.env.conn().await;
        diesel::sql_query(
            "INSERT INTO refunds (mch_id, out_refund_no, out_trade_no, refund_fee, status) \
             VALUES ($1, $2, $3, $4, 'PROCESSING')",
        )
        .bind::<Text, _>(MCH_ID)
        .bind::<Text, _>(out_refund_no)
        .bind::<Text, _>(out_trade_no)
        .bind::<BigInt, _>(fee)
        .execute(&mut conn)
        .await
        .expect("refund inserted");
    }

    async fn refund_status(&self, out_refund_no: &str) -> String {
        self.env
            .text_of(
                "refund exists",
                "SELECT status AS value FROM refunds WHERE mch_id = $1 AND out_refund_no = $2",
                &[MCH_ID, out_refund_no],
            )
            .await
    }

    async fn applied(&self, kind: &str) -> i64 {
        self.env
            .count(&format!(
                "FROM notifications WHERE kind = '{kind}' AND outcome = 'APPLIED'"
            ))
            .await
    }
}

/// Two tests of `body`: against the simulator as a v3 merchant (with its merchant key: v3
/// queries) and as a v2-only one (v2 queries).
macro_rules! per_api {
    ($body:ident: fn $v3:ident, fn $v2:ident) => {
        #[tokio::test]
        async fn $v3() {
            $body(Api::V3).await;
        }

        #[tokio::test]
        async fn $v2() {
            $body(Api::V2).await;
        }
    };
}

/// The value of one series in a Prometheus text rendering (0 when absent).
pub(crate) fn metric(rendered: &str, series: &str) -> f64 {
    wxpay_testkit::metrics::series(rendered, series).unwrap_or(0.0)
}

// ------------------------------------------------------------------ found only by query

async fn payment_found_only_by_query_is_applied_once(api: Api) {
    let prometheus = telemetry::metrics_handle();
    let s = setup(api).await;
    // Paid at WeChat Pay, never notified; still unpaid at WeChat Pay; unknown to WeChat Pay.
    let transaction_id = s.sim.order("lost-1", 2_500, "SUCCESS").await;
    s.sim
        .order("waiting-1", 300, TradeState::NotPay.as_str())
        .await;
    s.sim.order("paying-1", 300, "USERPAYING").await;
    for (order, amount) in [
        ("lost-1", 2_500),
        ("waiting-1", 300),
        ("paying-1", 300),
        ("never-opened-1", 100),
    ] {
        s.env.insert_order(order, amount).await;
    }

    let report = s.round().await;
    assert_eq!(report.checked, 4, "{report:?}");
    assert_eq!(report.published, 1, "{report:?}");
    assert_eq!(report.recovered_payments, 1, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    let rendered = prometheus.render();
    assert!(
        metric(&rendered, "wxpay_reconciler_recovered_total{kind=\"pay\"}") >= 1.0,
        "{rendered}"
    );
    assert!(
        metric(&rendered, "wxpay_reconciler_checked_total") >= 4.0,
        "{rendered}"
    );
    // Published, not applied: the worker applies it.
    assert_eq!(s.state("lost-1").await, OrderState::NotPay.as_str());

    let worker = s.env.spawn_worker(s.settings.clone());
    s.wait_state("lost-1", OrderState::Paid.as_str()).await;
    let order = s.env.order("lost-1").await;
    assert_eq!(order.transaction_id, transaction_id);
    assert_eq!(s.applied("query.pay").await, 1);
    assert_eq!(s.env.outbox_count("order.paid").await, 1);
    for unpaid in ["waiting-1", "paying-1", "never-opened-1"] {
        assert_eq!(
            s.state(unpaid).await,
            OrderState::NotPay.as_str(),
            "{unpaid}"
        );
    }

    // The next round no longer asks about the paid order, and publishes nothing new.
    let report = s.round().await;
    assert_eq!(report.checked, 3, "{report:?}");
    assert_eq!(report.published, 0, "{report:?}");
    worker.stop().await;
    assert_eq!(s.applied("query.pay").await, 1);
    assert_eq!(s.env.outbox_count("order.paid").await, 1);
}

per_api!(payment_found_only_by_query_is_applied_once: fn v3_payment_found_only_by_query_is_applied_once, fn v2_payment_found_only_by_query_is_applied_once);

/// The notification arrives while the round queries the same payment: one effect.
///
/// Both messages are in the queue before a worker consumes. Were a worker running while
/// the round reads its due orders, it could apply the notification first and the round
/// would find nothing to ask about: the race would not be exercised (and the test would
/// fail by timing). Staged this way, the round always sees the order unpaid and publishes
/// its `query.pay` answer, and the worker then takes both deliveries at once (prefetch)
/// and applies them concurrently: the order lock and the state check must let exactly one
/// of the two channels apply it, whichever wins.
async fn notification_racing_the_query_is_applied_once(api: Api) {
    let s = setup(api).await;
    let transaction_id = s
        .sim
        .order("race-1", 990, "SUCCESS")
        .await
        .expect("paid order has a transaction id");
    s.env.insert_order("race-1", 990).await;
    let notification = builders::v2_pay_with(
        "race-1",
        &transaction_id,
        990,
        APPID,
        "SUCCESS",
        s.sim.merchant.api_v2_key.expose_secret(),
    );
    let (report, ()) = tokio::join!(s.round(), s.env.publish(&notification));
    assert_eq!(report.checked, 1, "{report:?}");
    assert_eq!(report.published, 1, "{report:?}");
    assert_eq!(report.recovered_payments, 1, "{report:?}");
    assert_eq!(
        s.state("race-1").await,
        OrderState::NotPay.as_str(),
        "nothing applied before the worker"
    );

    let worker = s.env.spawn_worker(s.settings.clone());
    let handle = worker.worker.clone();
    let settled = || {
        let stats = handle.stats();
        stats.get("applied") + stats.get("recorded") + stats.get("duplicate")
    };
    s.wait_state("race-1", OrderState::Paid.as_str()).await;
    eventually(WAIT, "both messages settled", || async { settled() >= 2 }).await;
    worker.stop().await;
    assert_eq!(settled(), 2, "each message settled once");
    assert_eq!(
        handle.stats().get("applied"),
        1,
        "one of the two applied it"
    );
    let applied = s
        .env
        .count("FROM notifications WHERE out_trade_no = 'race-1' AND outcome = 'APPLIED'")
        .await;
    assert_eq!(applied, 1, "one APPLIED notification row");
    assert_eq!(s.env.outbox_count("order.paid").await, 1);
    assert_eq!(s.state("race-1").await, OrderState::Paid.as_str());
    assert_eq!(
        s.env.order("race-1").await.transaction_id.as_deref(),
        Some(transaction_id.as_str())
    );
}

per_api!(notification_racing_the_query_is_applied_once: fn v3_notification_racing_the_query_is_applied_once, fn v2_notification_racing_the_query_is_applied_once);

async fn stalled_refund_is_found(api: Api) {
    let s = setup(api).await;
    s.sim.order("refunded-1", 1_000, "SUCCESS").await;
    s.env.insert_order("refunded-1", 1_000).await;
    let worker = s.env.spawn_worker(s.settings.clone());
    assert_eq!(s.round().await.published, 1);
    s.wait_state("refunded-1", OrderState::Paid.as_str()).await;

    // Two refunds asked for; the notification of the first never came; the second is still
    // processing at WeChat Pay; a third is unknown to WeChat Pay.
    s.insert_refund("refunded-1", "R-done", 400).await;
    s.insert_refund("refunded-1", "R-busy", 100).await;
    s.insert_refund("refunded-1", "R-unknown", 50).await;
    s.sim.refund("refunded-1", "R-done", 400, "SUCCESS").await;
    s.sim
        .refund("refunded-1", "R-busy", 100, "PROCESSING")
        .await;

    let report = s.round().await;
    assert_eq!(report.checked, 3, "{report:?}");
    assert_eq!(report.published, 1, "{report:?}");
    assert_eq!(report.recovered_refunds, 1, "{report:?}");
    assert_eq!(
        report.errors, 1,
        "the unknown refund is counted: {report:?}"
    );

    eventually(WAIT, "refund R-done SUCCESS", || async {
        s.refund_status("R-done").await == RefundState::Success.as_str()
    })
    .await;
    s.wait_state("refunded-1", OrderState::PartiallyRefunded.as_str())
        .await;
    worker.stop().await;
    assert_eq!(s.env.order("refunded-1").await.refunded_total, 400);
    assert_eq!(
        s.refund_status("R-busy").await,
        RefundState::Processing.as_str()
    );
    assert_eq!(s.applied("query.refund").await, 1);
    assert_eq!(s.env.outbox_count("order.refunded").await, 1);
}

per_api!(stalled_refund_is_found: fn v3_stalled_refund_is_found, fn v2_stalled_refund_is_found);

// ------------------------------------------------------------------ closed orders

async fn orders_closed_at_wechat_pay_are_closed(api: Api) {
    let mut s = setup(api).await;
    let closed = ["closed-1", "payerror-1", "revoked-1"];
    for (order, state) in closed.iter().zip(["CLOSED", "PAYERROR", "REVOKED"]) {
        s.sim.order(order, 100, state).await;
        s.env.insert_order(order, 100).await;
    }
    s.sim
        .order("open-1", 100, TradeState::NotPay.as_str())
        .await;
    s.env.insert_order("open-1", 100).await;

    s.settings.reconciler.close_unpaid = false;
    let report = s.round().await;
    assert_eq!((report.checked, report.closed), (4, 0), "{report:?}");
    for order in closed {
        assert_eq!(
            s.state(order).await,
            OrderState::NotPay.as_str(),
            "close_unpaid = false: {order}"
        );
    }

    s.settings.reconciler.close_unpaid = true;
    let report = s.round().await;
    assert_eq!(
        (report.checked, report.closed, report.published),
        (4, 3, 0),
        "{report:?}"
    );
    for order in closed {
        assert_eq!(s.state(order).await, OrderState::Closed.as_str(), "{order}");
    }
    assert_eq!(s.state("open-1").await, OrderState::NotPay.as_str());
    // Closing moves no money: no notification row, no event.
    assert_eq!(s.env.count("FROM notifications").await, 0);
    assert_eq!(s.env.count("FROM outbox").await, 0);

    let report = s.round().await;
    assert_eq!(
        report.checked, 1,
        "closed orders are no longer due: {report:?}"
    );
}

per_api!(orders_closed_at_wechat_pay_are_closed: fn v3_orders_closed_at_wechat_pay_are_closed, fn v2_orders_closed_at_wechat_pay_are_closed);

// ------------------------------------------------------------------ failures

async fn failing_or_forging_api_changes_nothing(api: Api) {
    let prometheus = telemetry::metrics_handle();
    let s = setup(api).await;
    s.sim.order("paid-1", 700, "SUCCESS").await;
    s.sim
        .order("closed-1", 700, TradeState::Closed.as_str())
        .await;
    s.env.insert_order("paid-1", 700).await;
    s.env.insert_order("closed-1", 700).await;

    for (fault, reason) in [
        (json!({"status": 500}), "status"),
        (json!({"bad_signature": true}), "bad_signature"),
    ] {
        s.sim.faults(fault).await;
        let report = s.round().await;
        assert_eq!((report.published, report.closed), (0, 0), "{report:?}");
        assert_eq!(report.errors, 2, "{report:?}");
        let rendered = prometheus.render();
        let errors = format!("wxpay_reconciler_errors_total{{reason=\"{reason}\"}}");
        assert!(metric(&rendered, &errors) >= 2.0, "{rendered}");
    }
    let rendered = prometheus.render();
    assert_eq!(
        metric(&rendered, "wxpay_reconciler_recovered_total{kind=\"pay\"}"),
        0.0
    );

    // Nothing was published or changed.
    for order in ["paid-1", "closed-1"] {
        assert_eq!(s.state(order).await, OrderState::NotPay.as_str(), "{order}");
    }
    // Published messages are confirmed before the round ends: none may be waiting.
    assert_eq!(s.env.queue_depth().await, 0, "nothing reached the queue");
    let worker = s.env.spawn_worker(s.settings.clone());

    // Once the API behaves, the next round recovers.
    s.sim.faults(json!({})).await;
    let report = s.round().await;
    assert_eq!(
        (report.published, report.closed, report.errors),
        (1, 1, 0),
        "{report:?}"
    );
    s.wait_state("paid-1", OrderState::Paid.as_str()).await;
    assert_eq!(s.state("closed-1").await, OrderState::Closed.as_str());
    worker.stop().await;
}

per_api!(failing_or_forging_api_changes_nothing: fn v3_failing_or_forging_api_changes_nothing, fn v2_failing_or_forging_api_changes_nothing);

#[tokio::test]
async fn unreachable_broker_fails_the_round() {
    let mut s = setup(Api::V3).await;
    s.sim.order("paid-1", 100, "SUCCESS").await;
    s.env.insert_order("paid-1", 100).await;
    s.settings.rabbitmq.url = closed_port_url("amqp").into();
    s.settings.rabbitmq.connect_timeout_ms = 1_000;
    let reconciler = Reconciler::new(&s.settings).expect("reconciler builds");
    let result = reconciler.round(&CancellationToken::new()).await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(s.state("paid-1").await, OrderState::NotPay.as_str());
}

#[tokio::test]
async fn a_second_reconciler_skips_the_round_while_one_holds_the_lock() {
    let prometheus = telemetry::metrics_handle();
    let s = setup(Api::V3).await;
    s.sim.order("locked-1", 100, "SUCCESS").await;
    s.env.insert_order("locked-1", 100).await;
    // Another replica in the middle of its round: a session holding the round lock.
    let mut other = s.env.conn().await;
    other
        .batch_execute(&format!(
            "SELECT pg_advisory_lock({})",
            wxpay_worker::reconcile::lock::ROUND_LOCK_KEY
        ))
        .await
        .expect("lock taken");

    let report = s.round().await;
    assert!(report.skipped, "{report:?}");
    assert_eq!(report.checked, 0, "{report:?}");
    assert!(
        metric(
            &prometheus.render(),
            "wxpay_reconciler_rounds_skipped_total"
        ) >= 1.0
    );

    // The other replica gone (its session closed): the next round runs.
    drop(other);
    let report = s.round().await;
    assert!(!report.skipped, "{report:?}");
    assert_eq!(report.checked, 1, "{report:?}");
    assert_eq!(report.published, 1, "{report:?}");
}

#[tokio::test]
async fn due_orders_are_paged_in_batches() {
    // batch_size 2, seven due orders: every one is checked in one round.
    let s = setup(Api::V3).await;
    for n in 0..7 {
        let order = format!("page-{n}");
        s.sim
            .order(
                &order,
                100,
                if n % 2 == 0 {
                    TradeState::Success.as_str()
                } else {
                    TradeState::NotPay.as_str()
                },
            )
            .await;
        s.env.insert_order(&order, 100).await;
    }
    let report = s.round().await;
    assert_eq!((report.checked, report.published), (7, 4), "{report:?}");
}

// ------------------------------------------------------------------ the binary

/// `wxpay-worker reconcile …` with the simulator's example.toml and this test's overrides.
fn worker_command(s: &Setup, extra_env: &[(&str, String)]) -> Command {
    let mut command = Command::from(clean_command(env!("CARGO_BIN_EXE_wxpay-worker")));
    command
        .arg("--config")
        .arg(s.sim.example_toml())
        .arg("reconcile")
        .env("WXPAY__DATABASE__URL", s.env.db_url())
        .env("WXPAY__RABBITMQ__QUEUE", &s.settings.rabbitmq.queue)
        .env("WXPAY__WECHATPAY__API_BASE", &s.sim.url)
        .env("WXPAY__RECONCILER__MIN_AGE_SECS", "0")
        .env("WXPAY__RECONCILER__INTERVAL_SECS", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in extra_env {
        command.env(key, value);
    }
    command
}

#[tokio::test]
async fn reconcile_once_exits_zero_after_a_round_and_non_zero_when_it_cannot_run() {
    let s = setup(Api::V3).await;
    s.sim.order("cli-1", 100, "SUCCESS").await;
    s.env.insert_order("cli-1", 100).await;

    let output = worker_command(&s, &[])
        .arg("--once")
        .output()
        .await
        .expect("wxpay-worker runs");
    wxpay_testkit::assert_success(&output, "wxpay-worker reconcile --once");
    let worker = s.env.spawn_worker(s.settings.clone());
    s.wait_state("cli-1", OrderState::Paid.as_str()).await;
    worker.stop().await;

    let output = worker_command(&s, &[("WXPAY__RABBITMQ__URL", closed_port_url("amqp"))])
        .arg("--once")
        .output()
        .await
        .expect("wxpay-worker runs");
    assert!(
        !output.status.success(),
        "a round without a broker must fail"
    );
}

/// `wxpay-worker reconcile` running as a service on a port of its own.
struct ReconcilerService {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl ReconcilerService {
    /// Starts it with `extra_env` over [`worker_command`]'s.
    fn start(s: &Setup, extra_env: &[(&str, String)]) -> ReconcilerService {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut env = vec![("WXPAY__RECONCILER__METRICS_LISTEN", listen.clone())];
        env.extend(extra_env.iter().cloned());
        let child = worker_command(s, &env)
            .spawn()
            .expect("wxpay-worker reconcile starts");
        ReconcilerService {
            child,
            base: format!("http://{listen}"),
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> reqwest::Result<reqwest::Response> {
        self.http.get(format!("{}{path}", self.base)).send().await
    }

    /// Waits until `path` answers a success.
    async fn wait_for_success(&self, path: &str) {
        eventually(WAIT, format!("{path} 200"), || async {
            matches!(self.get(path).await, Ok(r) if r.status().is_success())
        })
        .await;
    }

    /// Waits until the /metrics text satisfies `check`.
    async fn wait_for_metrics(&self, what: &str, check: impl Fn(&str) -> bool) {
        eventually(WAIT, what, || async {
            let Ok(response) = self.get("/metrics").await else {
                return false;
            };
            check(&response.text().await.unwrap_or_default())
        })
        .await;
    }

    /// SIGTERM; it must exit 0 within 15 s.
    async fn stop(mut self) {
        let pid = i32::try_from(self.child.id().expect("running")).expect("pid");
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM sent");
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("stops in time after SIGTERM")
            .expect("exit status");
        assert!(status.success(), "{status:?}");
    }
}

#[tokio::test]
async fn reconcile_serves_health_and_metrics_and_stops_on_sigterm() {
    let s = setup(Api::V2).await;
    s.sim.order("svc-1", 100, "SUCCESS").await;
    s.env.insert_order("svc-1", 100).await;
    let service = ReconcilerService::start(&s, &[]);
    service.wait_for_success("/readyz").await;
    let health = service.get("/healthz").await.expect("healthz");
    assert!(health.status().is_success());
    service
        .wait_for_metrics("a finished round in /metrics", |text| {
            metric(text, "wxpay_reconciler_recovered_total{kind=\"pay\"}") >= 1.0
                && text.contains("wxpay_reconciler_round_duration_seconds")
                && text.contains("wxpay_reconciler_errors_total{reason=\"bad_signature\"} 0")
        })
        .await;
    service.stop().await;
}

#[tokio::test]
async fn reconcile_without_a_broker_is_alive_but_not_ready_and_keeps_trying() {
    let s = setup(Api::V3).await;
    let mut service =
        ReconcilerService::start(&s, &[("WXPAY__RABBITMQ__URL", closed_port_url("amqp"))]);
    service.wait_for_success("/healthz").await;
    service
        .wait_for_metrics("two failed rounds counted", |text| {
            metric(text, "wxpay_reconciler_errors_total{reason=\"broker\"}") >= 2.0
        })
        .await;
    let ready = service.get("/readyz").await.expect("readyz");
    assert_eq!(ready.status().as_u16(), 503);
    let reason: Value = ready.json().await.expect("readyz names what is down");
    assert_eq!(reason, json!({"broker": false, "database": true}));
    assert!(
        service.child.try_wait().expect("status").is_none(),
        "still running"
    );
    service.stop().await;
}
