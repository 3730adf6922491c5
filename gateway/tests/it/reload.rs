//! Key rotation without a restart, on the real binary: a serial added to the configuration
//! file verifies after SIGHUP while the old one still does; a broken file is refused with
//! one log line and the keys in use stay; a file changed without a signal is picked up by
//! the poll. With the merchants in their own file (`WXPAY_MERCHANTS_FILE`, a Kubernetes
//! Secret mounted as it is), the kubelet's swap of the volume's `..data` symlink is picked
//! up by the poll too.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use wxpay_shared::v3::{public_key_to_pem, PrivateKey};

use wxpay_testkit::config::config_toml;
use wxpay_testkit::merchants::{
    OTHER_PRIVATE_PEM, PLATFORM_CERTIFICATES, PLATFORM_PUBLIC_PEM, V3_MERCHANT,
};
use wxpay_testkit::TestEnv;

use crate::helpers::*;

const NEW_SERIAL: &str = "PUB_KEY_ID_0119000001102026NEW";

/// The gateway binary with every JSON log line it wrote kept for the test.
struct Gateway {
    child: Child,
    base: String,
    logs: Arc<Mutex<Vec<Value>>>,
    client: reqwest::Client,
}

impl Gateway {
    /// The gateway on `config`, and on the merchants file `merchants` (named by
    /// `WXPAY_MERCHANTS_FILE`, as the Kubernetes manifests do) if given.
    fn start(config: &Path, merchants: Option<&Path>) -> Gateway {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wxpay-gateway"));
        command.arg("--config").arg(config).env("RUST_LOG", "info");
        if let Some(merchants) = merchants {
            command.env("WXPAY_MERCHANTS_FILE", merchants);
        }
        let mut child = command
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary starts");
        let stderr = child.stderr.take().expect("stderr");
        let logs: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lock().expect("logs").push(value);
            }
        });
        let mut gateway = Gateway {
            child,
            base: String::new(),
            logs,
            client: reqwest::Client::new(),
        };
        let listening = gateway.wait_for_log("gateway listening", |_| true);
        gateway.base = format!("http://127.0.0.1:{}", listening["port"]);
        gateway
    }

    /// The first log line with `message` that `matches`, waited for up to 20 s.
    fn wait_for_log(&self, message: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let found = self
                .logs
                .lock()
                .expect("logs")
                .iter()
                .find(|line| line["message"] == message && matches(line))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no log line {message:?}: {:?}",
                self.logs.lock().expect("logs")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_count(&self) -> usize {
        self.logs.lock().expect("logs").len()
    }

    fn sighup(&self) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        kill(pid, Signal::SIGHUP).expect("SIGHUP sent");
    }

    /// Sends a v3 payment notification signed with `key` under `serial`; the HTTP status.
    async fn notify_signed(&self, key: &PrivateKey, serial: &str, out_trade_no: &str) -> u16 {
        let body = v3_body(
            "TRANSACTION.SUCCESS",
            "transaction",
            &v3_transaction(out_trade_no),
        );
        let headers = v3_headers(&body, now_unix(), key, serial);
        let request = headers.iter().fold(
            self.client
                .post(format!("{}/notify/v3/{V3_MCH}", self.base))
                .header("Content-Type", "application/json"),
            |request, (name, value)| request.header(name.as_str(), value.as_str()),
        );
        let response = request.body(body).send().await.expect("gateway answers");
        response.status().as_u16()
    }

    /// The new key and the old one are both accepted (one order each).
    async fn both_keys_verify(&self, orders: [&str; 2]) {
        let new = self.notify_signed(new_key(), NEW_SERIAL, orders[0]).await;
        let old = self.notify_signed(platform_key(), SERIAL, orders[1]).await;
        assert_eq!((new, old), (204, 204), "new key, old key");
    }

    /// What `/metrics` says now.
    async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    async fn reloads_counted(&self, result: &str) -> String {
        let metrics = self.metrics().await;
        let series = format!("wxpay_config_reloads_total{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .unwrap_or("absent")
            .to_owned()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test configuration with the new serial beside the old one (the key table is last).
fn with_new_serial(config: &str, pem: &str) -> String {
    format!("{config}\"{NEW_SERIAL}\" = '''\n{pem}'''\n")
}

/// The new platform key signs with the fixture that is otherwise the forger's.
fn new_key() -> &'static PrivateKey {
    other_key()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_added_and_sighup_verifies_beside_the_old_and_a_broken_file_changes_nothing() {
    let env = TestEnv::new("gateway", gateway_settings());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wxpay.toml");
    let original = config_toml(&env.settings);
    std::fs::write(&path, &original).expect("config");
    let gateway = Gateway::start(&path, None);
    let new_pem = public_key_to_pem(&new_key().public_key());

    assert_eq!(
        gateway.notify_signed(new_key(), NEW_SERIAL, "rot-1").await,
        401,
        "an unknown serial before the reload"
    );

    std::fs::write(&path, with_new_serial(&original, &new_pem)).expect("config");
    gateway.sighup();
    let added = format!("{V3_MCH}/{NEW_SERIAL}");
    let reloaded = gateway.wait_for_log("merchants reloaded", |line| {
        line["serials_added"] == added.as_str()
    });
    assert_eq!(reloaded["merchants"], 2, "{reloaded}");
    assert_eq!(reloaded["merchants_changed"], V3_MCH, "{reloaded}");
    assert_eq!(reloaded["serials_removed"], "", "{reloaded}");
    let text = reloaded.to_string();
    assert!(
        !text.contains("BEGIN") && !text.contains(V3_MERCHANT.api_v3_key),
        "ids only, never keys: {text}"
    );
    gateway.both_keys_verify(["rot-2", "rot-3"]).await;
    assert_ne!(gateway.reloads_counted("ok").await, "0");

    // A PEM that does not parse for the v3 merchant: refused, nothing else logged.
    let broken = with_new_serial(&original, &new_pem.replace("MIIB", "MIIX"));
    let logged_before = gateway.log_count();
    std::fs::write(&path, broken).expect("config");
    gateway.sighup();
    let refused = gateway.wait_for_log("merchants reload refused: the keys in use stay", |line| {
        line["trigger"] == "SIGHUP"
    });
    assert_eq!(refused["mch_id"], V3_MCH, "{refused}");
    assert_eq!(refused["field"], "platform_public_keys", "{refused}");
    assert_eq!(refused["level"], "WARN", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|error| error.contains(NEW_SERIAL)),
        "{refused}"
    );
    gateway.both_keys_verify(["rot-4", "rot-5"]).await;
    let since: Vec<Value> = gateway.logs.lock().expect("logs")[logged_before..].to_vec();
    let reload_lines: Vec<&Value> = since
        .iter()
        .filter(|line| line["step"] == "reload")
        .collect();
    assert!(
        reload_lines
            .iter()
            .all(|line| line["message"] == refused["message"] && line["mch_id"] == V3_MCH),
        "each refusal is one line naming the merchant: {reload_lines:?}"
    );
    assert!(
        since
            .iter()
            .filter(|line| line["level"] == "WARN" || line["level"] == "ERROR")
            .all(|line| line["step"] == "reload"),
        "nothing else went wrong: {since:?}"
    );
    assert_ne!(gateway.reloads_counted("refused").await, "0");

    // WeChat Pay no longer signs with the old key: removed from the file, no signal.
    // As the test kit writes it (toml's multi-line string).
    let old_entry = format!("{SERIAL} = \"\"\"\n{PLATFORM_PUBLIC_PEM}\"\"\"\n");
    assert!(
        original.contains(&old_entry),
        "the old serial's entry: {original}"
    );
    let only_new = with_new_serial(&original.replace(&old_entry, ""), &new_pem);
    let retired = format!("{V3_MCH}/{SERIAL}");
    std::fs::write(&path, only_new).expect("config");
    gateway.wait_for_log("merchants reloaded", |line| {
        line["trigger"] == "file changed" && line["serials_removed"] == retired.as_str()
    });
    assert_eq!(
        gateway.notify_signed(platform_key(), SERIAL, "rot-6").await,
        401
    );
    assert_eq!(
        gateway.notify_signed(new_key(), NEW_SERIAL, "rot-7").await,
        204
    );

    drop(gateway);
    let queued = env.drain().await;
    assert_eq!(queued.len(), 5, "exactly the accepted ones are queued");
}

/// Writes `merchants` into the Secret volume `volume` as the kubelet does: a folder of this
/// version, then a new symlink to it renamed over `..data` (one atomic step). The volume's
/// `merchants.toml` is a symlink to `..data/merchants.toml` and is never touched.
fn kubelet_writes(volume: &Path, version: &str, merchants: &str) {
    let folder = format!("..{version}");
    std::fs::create_dir_all(volume.join(&folder)).expect("version folder");
    std::fs::write(volume.join(&folder).join("merchants.toml"), merchants).expect("merchants");
    let staged = volume.join("..data_tmp");
    std::os::unix::fs::symlink(&folder, &staged).expect("staged symlink");
    std::fs::rename(&staged, volume.join("..data")).expect("..data swapped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchants_from_a_mounted_secret_reload_when_the_kubelet_swaps_its_data_symlink() {
    let env = TestEnv::new("gateway", gateway_settings());
    let dir = tempfile::tempdir().expect("tempdir");
    let whole = config_toml(&env.settings);
    // The ConfigMap's part and the Secret's: the test configuration cut before its merchants.
    let (config, merchants) = whole.split_at(whole.find("[[merchants]]").expect("merchants"));
    let config_path = dir.path().join("wxpay.toml");
    std::fs::write(&config_path, config).expect("config");
    let volume = dir.path().join("wxpay-merchants");
    kubelet_writes(&volume, "2025_06_01_00_00_00.000000001", merchants);
    let merchants_path = volume.join("merchants.toml");
    std::os::unix::fs::symlink("..data/merchants.toml", &merchants_path).expect("file symlink");
    let gateway = Gateway::start(&config_path, Some(&merchants_path));
    let new_pem = public_key_to_pem(&new_key().public_key());
    assert_eq!(
        gateway.notify_signed(new_key(), NEW_SERIAL, "k8s-1").await,
        401,
        "an unknown serial before the Secret's update"
    );

    kubelet_writes(
        &volume,
        "2025_06_01_00_01_00.000000001",
        &with_new_serial(merchants, &new_pem),
    );
    let added = format!("{V3_MCH}/{NEW_SERIAL}");
    let reloaded = gateway.wait_for_log("merchants reloaded", |line| {
        line["serials_added"] == added.as_str()
    });
    assert_eq!(reloaded["trigger"], "file changed", "no signal: {reloaded}");
    assert_eq!(reloaded["merchants"], 2, "{reloaded}");
    assert_eq!(
        reloaded["merchants_path"],
        merchants_path.display().to_string(),
        "{reloaded}"
    );
    gateway.both_keys_verify(["k8s-2", "k8s-3"]).await;
    assert_ne!(gateway.reloads_counted("ok").await, "0");

    drop(gateway);
    assert_eq!(env.drain().await.len(), 2, "the accepted ones");
}

#[test]
fn a_missing_merchants_file_stops_the_gateway_with_one_line_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("wxpay.toml");
    std::fs::write(&config, "[gateway]\nlisten = \"127.0.0.1:0\"\n").expect("config");
    let missing = dir.path().join("wxpay-merchants").join("merchants.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_wxpay-gateway"))
        .arg("--config")
        .arg(&config)
        .arg("--merchants")
        .arg(&missing)
        .env("WXPAY_MERCHANTS_FILE", dir.path().join("not-this-one.toml"))
        .output()
        .expect("binary runs");
    assert_eq!(output.status.code(), Some(2), "a configuration error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(&missing.display().to_string()),
        "--merchants wins over the environment, and is named: {stderr}"
    );
}

/// A merchant that downloads its platform certificates, with a certificate of its own in
/// the file, on a broker where the platform keys stream cannot be declared (a classic queue
/// holds its name): the gateway says so, keeps trying, and verifies with the file's
/// certificate, whose expiry it exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_platform_keys_stream_the_file_keys_serve_and_their_expiry_is_exported() {
    let (certificate, _, cert_serial) = PLATFORM_CERTIFICATES[0];
    let mut settings = gateway_settings();
    let merchant = settings
        .merchants
        .iter_mut()
        .find(|merchant| merchant.mch_id == V3_MCH)
        .expect("the v3 merchant");
    merchant.download_platform_certificates = true;
    merchant.merchant_serial = Some("MERCHANT_SERIAL".into());
    merchant.merchant_private_key_pem = Some(OTHER_PRIVATE_PEM.to_owned().into());
    merchant.platform_public_keys = [(cert_serial.to_owned(), certificate.to_owned())].into();
    let env = TestEnv::new("gateway", settings);
    let connection = wxpay_testkit::amqp::connect().await;
    let channel = connection.create_channel().await.expect("channel");
    let stream = env.settings.rabbitmq.platform_keys_stream();
    channel
        .queue_declare(
            stream.as_str().into(),
            wxpay_runtime::amqp::durable_queue_options(),
            Default::default(),
        )
        .await
        .expect("a classic queue under the stream's name");
    let config = wxpay_testkit::config_file(&env.settings);
    let gateway = Gateway::start(config.path(), None);

    let refused = gateway.wait_for_log(
        "cannot read the platform keys stream: the keys already held stay in use",
        |line| line["stream"] == stream.as_str(),
    );
    assert_eq!(refused["level"], "WARN", "{refused}");
    assert_eq!(
        gateway
            .notify_signed(platform_key(), cert_serial, "nostream-1")
            .await,
        204,
        "the file's certificate verifies"
    );
    let metrics = gateway.metrics().await;
    let series = format!(
        "wxpay_platform_key_expiry_seconds{{mch_id=\"{V3_MCH}\",serial=\"{cert_serial}\"}}"
    );
    let seconds = wxpay_testkit::metrics::series(&metrics, &series).expect(&series);
    assert!(seconds > 9.0 * 365.0 * 86_400.0, "{seconds}");
    drop(gateway);
    assert_eq!(env.drain().await.len(), 1);
}
