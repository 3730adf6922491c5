//! End-to-end fixture: the real `wxpay-gateway`, `wxpay-worker` and `wxpay-sim` binaries as
//! child processes, against the real PostgreSQL, RabbitMQ and Redis on loopback, each test
//! with its own database, queues, events exchange, Redis key prefix and ports.
//!
//! [`Stack`] owns every child process and every name it created: on drop it SIGKILLs the
//! children (and reaps them), prints their logs when the test failed, then drops the
//! database (`WITH (FORCE)`), deletes the queues and the exchange and the Redis keys, also
//! after a panic.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use diesel_async::AsyncPgConnection;
use secrecy::ExposeSecret;
use tempfile::TempDir;
use wxpay_shared::state::OrderState;
use wxpay_testkit::db::NewOrder;
use wxpay_testkit::services::free_port;
use wxpay_testkit::{bin_path_async, clean_command, TestEnv};

pub use wxpay_testkit::db::{count, order};
pub use wxpay_testkit::eventually;
pub use wxpay_testkit::metrics::{counter_sum, metric_names};

/// Retry tiers of the worker in these tests (short: a retried message comes back quickly).
pub const RETRY_DELAYS_MS: [u64; 3] = [200, 500, 1000];

/// How long a service may take to answer 200 on /readyz (debug build, busy 2-core machine).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The three binaries: this package's, and the gateway and worker built if they are
/// missing or stale.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub gateway: PathBuf,
    pub worker: PathBuf,
    pub sim: PathBuf,
}

impl Binaries {
    pub async fn locate() -> Binaries {
        Binaries {
            gateway: bin_path_async("wxpay-gateway").await,
            worker: bin_path_async("wxpay-worker").await,
            sim: PathBuf::from(env!("CARGO_BIN_EXE_wxpay-sim")),
        }
    }
}

/// A long-running child process, SIGKILLed and reaped on drop; stdout and stderr go to
/// `log`.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    fn spawn(name: &str, log: PathBuf, stdout: Option<&Path>, mut command: Command) -> Proc {
        let err = File::create(&log).expect("log file");
        let out = match stdout {
            Some(path) => File::create(path).expect("stdout file"),
            None => err.try_clone().expect("log file handle"),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_owned(),
            log,
            child,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL (std's `Child::kill` on Unix), then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status, if it exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the exit, at most `limit`.
    pub async fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut status = None;
        let late = self.late("exit");
        eventually(limit, late, async || {
            status = self.exited();
            status.is_some()
        })
        .await;
        status.expect("the wait ends when the process exited")
    }

    /// What a wait on this process says when it fails: the process did not `what` in time,
    /// and how its log ends then.
    fn late(&self, what: impl Into<String>) -> Late {
        Late {
            name: self.name.clone(),
            what: what.into(),
            log: self.log.clone(),
        }
    }
}

/// A process that did not do something in time; its log is read when the failure is shown.
struct Late {
    name: String,
    what: String,
    log: PathBuf,
}

impl std::fmt::Display for Late {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} to {}\n{}", self.name, self.what, tail(&self.log, 60))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a log file, headed by its name.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    format!(
        "----- {} (last {} of {} lines)\n{}\n",
        path.display(),
        all.len() - from,
        all.len(),
        all[from..].join("\n")
    )
}

/// The output of a one-shot command.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn describe(&self) -> String {
        format!(
            "success: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.success, self.stdout, self.stderr
        )
    }
}

/// The ports of one test's services.
#[derive(Debug, Clone)]
pub struct Ports {
    pub gateway: u16,
    pub worker: u16,
    pub reconciler: u16,
    pub sim: u16,
}

impl Ports {
    fn free() -> Ports {
        Ports {
            gateway: free_port(),
            worker: free_port(),
            reconciler: free_port(),
            sim: free_port(),
        }
    }
}

/// Gateway, worker and the simulator's merchant, for one test.
pub struct Stack {
    pub bins: Binaries,
    /// The test's database, queues, exchange and key prefix, dropped after the children.
    pub env: TestEnv,
    pub ports: Ports,
    pub config: PathBuf,
    pub sim_config: PathBuf,
    pub mch_id: String,
    pub appid: String,
    /// Every appid of the merchant (a provider's: its own, then its sub-merchants').
    pub appids: Vec<String>,
    pub children: Children,
    /// How many children were spawned: numbers their logs.
    spawned: usize,
    // Last: removed after the children are gone.
    pub dir: TempDir,
}

/// The stack's running binaries, all killed when the stack is dropped.
#[derive(Default)]
pub struct Children {
    pub gateway: Option<Proc>,
    pub worker: Option<Proc>,
    /// Other children (reconciler, query API, load).
    pub others: Vec<Proc>,
}

impl Children {
    fn kill_all(&mut self) {
        let procs = self.gateway.iter_mut().chain(&mut self.worker);
        for proc in procs.chain(&mut self.others) {
            proc.kill();
        }
    }
}

impl Stack {
    /// A fresh merchant (`wxpay-sim init`), a configuration of unique names, `wxpay-worker
    /// migrate`, then gateway and worker, both ready.
    pub async fn start() -> Stack {
        Stack::start_with(&[]).await
    }

    /// [`Stack::start`] with `init_args` added to `wxpay-sim init` (`--partner`).
    pub async fn start_with(init_args: &[&str]) -> Stack {
        let mut stack = Stack::prepare_with(init_args, |_| {}).await;
        stack.start_gateway().await;
        stack.start_worker().await;
        stack
    }

    /// Merchant, configuration (changed by `tune` before it is written) and migrated
    /// database; no service running yet.
    pub async fn prepare(tune: impl FnOnce(&mut toml::Table)) -> Stack {
        Stack::prepare_with(&[], tune).await
    }

    /// [`Stack::prepare`] with `init_args` added to `wxpay-sim init` (`--partner`).
    pub async fn prepare_with(init_args: &[&str], tune: impl FnOnce(&mut toml::Table)) -> Stack {
        let bins = Binaries::locate().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = wxpay_testkit::default_settings();
        settings.worker.retry_delays_ms = RETRY_DELAYS_MS.to_vec();
        let env = TestEnv::new("e2e", settings);
        let ports = Ports::free();
        let init = run(
            &bins.sim,
            &[
                "init",
                "--dir",
                path_str(dir.path()),
                "--api-base",
                &format!("http://127.0.0.1:{}", ports.sim),
            ]
            .into_iter()
            .chain(init_args.iter().copied())
            .collect::<Vec<_>>(),
            Duration::from_secs(60),
        )
        .await;
        assert!(init.success, "wxpay-sim init failed\n{}", init.describe());
        let example = dir.path().join("example.toml");
        let text = std::fs::read_to_string(&example).expect("example.toml written by init");
        let mut table: toml::Table = text.parse().expect("example.toml is TOML");
        let (mch_id, appids) = {
            let merchant = table["merchants"]
                .as_array()
                .and_then(|m| <[toml::Value]>::first(m))
                .and_then(|m| m.as_table())
                .expect("one merchant in example.toml");
            let appids = merchant["appids"].as_array().expect("appids").iter();
            (
                merchant["mch_id"].as_str().expect("mch_id").to_owned(),
                appids
                    .map(|appid| appid.as_str().expect("appid").to_owned())
                    .collect::<Vec<_>>(),
            )
        };
        configure(&mut table, &env, &ports);
        tune(&mut table);
        let config = dir.path().join("wxpay.toml");
        std::fs::write(&config, toml::to_string(&table).expect("config serialises"))
            .expect("config written");
        let stack = Stack {
            sim_config: dir.path().join("simulator.toml"),
            bins,
            env,
            ports,
            config,
            mch_id,
            appid: appids[0].clone(),
            appids,
            children: Children::default(),
            spawned: 0,
            dir,
        };
        let migrate = stack
            .worker_cmd(&["migrate"], Duration::from_secs(60))
            .await;
        assert!(
            migrate.success,
            "wxpay-worker migrate failed\n{}",
            migrate.describe()
        );
        stack
    }

    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.gateway)
    }

    pub fn worker_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.worker)
    }

    pub fn reconciler_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.reconciler)
    }

    pub fn sim_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.sim)
    }

    fn log_path(&mut self, name: &str) -> PathBuf {
        self.spawned += 1;
        self.dir
            .path()
            .join(format!("{:02}-{name}.log", self.spawned))
    }

    /// Spawns a long-running binary with `--config` (and `--sim-config` for the simulator).
    pub fn spawn(&mut self, name: &str, program: &Path, args: &[&str]) -> Proc {
        self.spawn_to(name, program, args, None)
    }

    /// [`Stack::spawn`] with stdout to a file of its own (stderr still to the log).
    pub fn spawn_to(
        &mut self,
        name: &str,
        program: &Path,
        args: &[&str],
        stdout: Option<&Path>,
    ) -> Proc {
        let log = self.log_path(name);
        let mut command = clean_command(program);
        if program == self.bins.sim {
            command.arg("--sim-config").arg(&self.sim_config);
        }
        command.arg("--config").arg(&self.config).args(args);
        Proc::spawn(name, log, stdout, command)
    }

    pub async fn start_gateway(&mut self) {
        let gateway = self.bins.gateway.clone();
        let mut proc = self.spawn("gateway", &gateway, &[]);
        wait_ready(&mut proc, &self.gateway_url()).await;
        self.children.gateway = Some(proc);
    }

    /// The gateway, the worker and `wxpay-sim serve`, each ready: the whole path a
    /// notification or a reconciler's query answer takes.
    pub async fn start_all(&mut self) {
        self.start_gateway().await;
        self.start_worker().await;
        self.start_sim_serve().await;
    }

    /// `wxpay-sim serve` (WeChat Pay's API) on the stack's simulator port, listening.
    pub async fn start_sim_serve(&mut self) {
        let sim = self.bins.sim.clone();
        let listen = format!("127.0.0.1:{}", self.ports.sim);
        let serve = self.spawn("sim-serve", &sim, &["serve", "--listen", &listen]);
        let late = serve.late(format!("listen on {listen}"));
        eventually(Duration::from_secs(30), late, async || {
            tokio::net::TcpStream::connect(&listen).await.is_ok()
        })
        .await;
        self.children.others.push(serve);
    }

    /// `wxpay-worker reconcile` (rounds every reconciler.interval_secs), ready.
    pub async fn start_reconciler(&mut self) {
        let worker = self.bins.worker.clone();
        let mut proc = self.spawn("reconciler", &worker, &["reconcile"]);
        wait_ready(&mut proc, &self.reconciler_url()).await;
        self.children.others.push(proc);
    }

    pub async fn start_worker(&mut self) {
        let worker = self.bins.worker.clone();
        let mut proc = self.spawn("worker", &worker, &["run"]);
        wait_ready(&mut proc, &self.worker_url()).await;
        self.children.worker = Some(proc);
    }

    /// SIGKILL, no drain: what the OOM killer or a lost node does.
    pub fn kill_worker(&mut self) {
        if let Some(mut worker) = self.children.worker.take() {
            worker.kill();
        }
    }

    /// `wxpay-sim --sim-config … --config … <args>`, to completion.
    pub async fn sim(&self, args: &[&str]) -> Output {
        let mut full = vec![
            "--sim-config",
            path_str(&self.sim_config),
            "--config",
            path_str(&self.config),
        ];
        full.extend_from_slice(args);
        run(&self.bins.sim, &full, Duration::from_secs(120)).await
    }

    /// `wxpay-sim notify` to the stack's gateway, one attempt, re-sends in milliseconds, then
    /// `args`.
    pub async fn notify_once(&self, args: &[&str]) -> Output {
        let target = self.gateway_url();
        let mut full = vec![
            "notify",
            "--target",
            &target,
            "--time-scale",
            "0.001",
            "--max-attempts",
            "1",
        ];
        full.extend_from_slice(args);
        self.sim(&full).await
    }

    /// [`Stack::notify_once`], which must be acknowledged at that attempt.
    pub async fn notify_acknowledged(&self, args: &[&str]) {
        let out = self.notify_once(args).await;
        assert!(
            out.success && out.stdout.contains("acknowledged after 1 attempt(s)"),
            "notification {args:?} not acknowledged\n{}\n{}",
            out.describe(),
            self.logs(30)
        );
    }

    /// `wxpay-sim notify` of a v3 payment of `amount` fen to the gateway, one attempt.
    pub async fn notify_v3_pay_once(&self, out_trade_no: &str, amount: &str) -> Output {
        self.notify_once(&[
            "--kind",
            "v3-pay",
            "--out-trade-no",
            out_trade_no,
            "--amount",
            amount,
        ])
        .await
    }

    /// `wxpay-worker --config … <args>`, to completion.
    pub async fn worker_cmd(&self, args: &[&str], limit: Duration) -> Output {
        let mut full = vec!["--config", path_str(&self.config)];
        full.extend_from_slice(args);
        run(&self.bins.worker, &full, limit).await
    }

    /// The messages the worker has finished with so far ([`worker_done`]).
    pub async fn worker_done(&self) -> f64 {
        worker_done(&scrape(&self.worker_url()).await)
    }

    /// Waits (30 s at most) until the worker has finished with more than `before` messages:
    /// `what` was handled.
    pub async fn until_worker_done_beyond(&self, before: f64, what: &str) {
        eventually(Duration::from_secs(30), what, async || {
            self.worker_done().await > before
        })
        .await;
    }

    pub async fn conn(&self) -> AsyncPgConnection {
        self.env.conn().await
    }

    /// `SELECT count(*) <tail>` on the test database.
    pub async fn count(&self, tail: &str) -> i64 {
        self.env.count(tail).await
    }

    /// Every log so far, last lines of each (for assertion messages).
    pub fn logs(&self, lines: usize) -> String {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        paths.sort();
        paths.iter().map(|p| tail(p, lines)).collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.children.kill_all();
        if std::thread::panicking() {
            eprintln!(
                "===== e2e {}: logs of the child processes\n{}",
                self.env.id,
                self.logs(80)
            );
        }
    }
}

/// For [`Stack::prepare`]: a reconciler that asks about orders at once, fast, and closes the
/// ones WeChat Pay closed.
pub fn reconcile_at_once(config: &mut toml::Table) {
    let reconciler = config
        .entry("reconciler")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(r) = reconciler.as_table_mut() {
        r.insert("min_age_secs".into(), toml::Value::Integer(0));
        r.insert("rate_per_merchant".into(), toml::Value::Integer(100));
        r.insert("close_unpaid".into(), toml::Value::Boolean(true));
    }
}

/// The test's names, free ports and small delays on top of what `wxpay-sim init` wrote.
fn configure(table: &mut toml::Table, env: &TestEnv, ports: &Ports) {
    let isolated = &env.settings;
    use toml::Value;
    let section = |table: &mut toml::Table, name: &str| -> toml::Table {
        table
            .get(name)
            .and_then(Value::as_table)
            .cloned()
            .unwrap_or_default()
    };
    let mut set = |name: &str, pairs: Vec<(&str, Value)>| {
        let mut s = section(table, name);
        for (k, v) in pairs {
            s.insert(k.to_owned(), v);
        }
        table.insert(name.to_owned(), Value::Table(s));
    };
    let s = |v: &str| Value::String(v.to_owned());
    let i = |v: u64| Value::Integer(i64::try_from(v).expect("small"));
    set(
        "gateway",
        vec![
            ("listen", s(&format!("127.0.0.1:{}", ports.gateway))),
            ("shutdown_timeout_ms", i(2_000)),
            ("http_workers", i(2)),
        ],
    );
    set(
        "worker",
        vec![
            ("metrics_listen", s(&format!("127.0.0.1:{}", ports.worker))),
            ("prefetch", i(100)),
            (
                "retry_delays_ms",
                Value::Array(RETRY_DELAYS_MS.iter().map(|d| i(*d)).collect()),
            ),
            ("claim_ttl_ms", i(2_000)),
            ("done_ttl_secs", i(600)),
            ("db_pool_size", i(8)),
            ("outbox_poll_ms", i(100)),
            ("shutdown_timeout_ms", i(2_000)),
        ],
    );
    set(
        "rabbitmq",
        vec![
            ("url", s(isolated.rabbitmq.url.expose_secret())),
            ("queue", s(&isolated.rabbitmq.queue)),
            ("events_exchange", s(&isolated.rabbitmq.events_exchange)),
        ],
    );
    set(
        "redis",
        vec![
            ("url", s(isolated.redis.url.expose_secret())),
            ("key_prefix", s(&isolated.redis.key_prefix)),
        ],
    );
    set("database", vec![("url", s(&env.db_url()))]);
    set(
        "reconciler",
        vec![(
            "metrics_listen",
            s(&format!("127.0.0.1:{}", ports.reconciler)),
        )],
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Runs `program args` to completion (killed after `limit`).
pub async fn run(program: &Path, args: &[&str], limit: Duration) -> Output {
    let mut command = tokio::process::Command::from(clean_command(program));
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} {args:?} did not finish within {} s",
                program.display(),
                limit.as_secs()
            )
        })
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    Output {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Polls `<base>/readyz` until 200; fails early with the log when the process exited.
pub async fn wait_ready(proc: &mut Proc, base: &str) {
    let client = reqwest::Client::new();
    let url = format!("{base}/readyz");
    let late = proc.late(format!("be ready on {url}"));
    eventually(READY_TIMEOUT, late, async || {
        if let Some(status) = proc.exited() {
            panic!(
                "{} exited ({status}) before it was ready\n{}",
                proc.name,
                tail(&proc.log, 60)
            );
        }
        client
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}

/// Inserts an order of the stack's merchant as the business system does before the user
/// pays: NOTPAY.
pub async fn insert_order(conn: &mut AsyncPgConnection, s: &Stack, no: &str, amount: i64) {
    insert_sub_merchant_order(conn, (s, "", &s.appid), no, amount).await;
}

/// Inserts a NOTPAY order of the stack's merchant's sub-merchant `sub_mch_id` (`""`: of the
/// merchant itself), placed in `appid`.
pub async fn insert_sub_merchant_order(
    conn: &mut AsyncPgConnection,
    (s, sub_mch_id, appid): (&Stack, &str, &str),
    no: &str,
    amount: i64,
) {
    let order = NewOrder {
        mch_id: &s.mch_id,
        sub_mch_id,
        appid,
        out_trade_no: no,
        amount_total: amount,
        state: OrderState::NotPay.as_str(),
    };
    order.insert(conn).await;
}

/// Waits (30 s at most) until the worker has marked order `no` of the stack's merchant paid.
pub async fn wait_paid(conn: &mut AsyncPgConnection, s: &Stack, no: &str) {
    eventually(Duration::from_secs(30), &format!("{no} PAID"), async || {
        order(conn, &s.mch_id, no).await.state == OrderState::Paid.as_str()
    })
    .await;
}

/// Messages the worker finished with (everything but a hand-over to a retry tier).
pub fn worker_done(exposition: &str) -> f64 {
    counter_sum(exposition, "wxpay_worker_messages_total", &[])
        - counter_sum(
            exposition,
            "wxpay_worker_messages_total",
            &[("outcome", "retried")],
        )
}

/// GET `<base>/metrics`.
pub async fn scrape(base: &str) -> String {
    let url = format!("{base}/metrics");
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response.text().await.expect("metrics body")
}

/// A private queue bound to the stack's events exchange (declared by the worker: start it
/// first) for one routing key pattern; the events it caught, parsed, oldest first. Deleted
/// with its connection.
pub struct EventsTap {
    connection: lapin::Connection,
    channel: lapin::Channel,
    queue: String,
    /// Every event caught so far.
    pub events: Vec<serde_json::Value>,
}

impl EventsTap {
    pub async fn bind(s: &Stack, routing_key: &str) -> EventsTap {
        use lapin::options::{QueueBindOptions, QueueDeclareOptions};
        use lapin::types::FieldTable;
        let rabbitmq = &s.env.settings.rabbitmq;
        let connection = wxpay_testkit::amqp::connect().await;
        let channel = connection.create_channel().await.expect("channel");
        let queue = format!("{}.tap", rabbitmq.queue);
        let private = QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.as_str().into(), private, FieldTable::default())
            .await
            .expect("tap queue");
        let exchange = rabbitmq.events_exchange.as_str();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("tap bound to the events exchange");
        EventsTap {
            connection,
            channel,
            queue,
            events: Vec::new(),
        }
    }

    /// Takes what arrived since the last call into [`EventsTap::events`].
    pub async fn collect(&mut self) -> &[serde_json::Value] {
        use lapin::options::BasicGetOptions;
        while let Some(message) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            let event = serde_json::from_slice(&message.delivery.data).expect("a JSON event");
            self.events.push(event);
        }
        &self.events
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "tap done".into()).await;
    }
}
