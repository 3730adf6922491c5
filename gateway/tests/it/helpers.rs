//! The gateway's test set-up on wxpay-testkit: an in-process gateway on port 0 against the
//! real RabbitMQ with a queue of its own, the real binary, the two test merchants'
//! notifications, and a proxy that forwards the broker's frames whole. Merchants, signed
//! notifications, queues and the TCP fault proxy come from the test kit and are
//! re-exported here.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::message::BasicGetMessage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use wxpay_gateway::{Application, ShutdownHandle, StartError};
use wxpay_runtime::config::Settings;
use wxpay_shared::v2::XmlFields;
use wxpay_testkit::merchants::{MERCHANT, V3_MERCHANT};
use wxpay_testkit::notifications::{refund_resource, transaction_of, transaction_resource, Refund};
use wxpay_testkit::{config_file, TestEnv};

pub use wxpay_testkit::amqp::{delete_queue, header};
pub use wxpay_testkit::merchants::{other_key, platform_key, OTHER_APPID, UNKNOWN_MCH_ID};
pub use wxpay_testkit::notifications::{
    now_unix, signed_xml, v2_pay_body, v2_pay_fields, v2_refund_body, v3_headers,
};
pub use wxpay_testkit::services::{amqp_url, AMQP_URL, BROKER};
pub use wxpay_testkit::{eventually, FaultProxy};

/// A v2 merchant (MD5 or HMAC-SHA256 signatures).
pub const V2_MCH: &str = MERCHANT.mch_id;
pub const V2_KEY: &str = MERCHANT.api_v2_key;
pub const APPID: &str = MERCHANT.appid;
/// A v3 merchant (also has a v2 key: hand-made refunds come as v2).
pub const V3_MCH: &str = V3_MERCHANT.mch_id;
pub const V3_V2_KEY: &str = V3_MERCHANT.api_v2_key;
pub const V3_APPID: &str = V3_MERCHANT.appid;
pub const SERIAL: &str = V3_MERCHANT.platform_serial;

/// Publish timeout of the test gateways: small, so broker failures answer quickly.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);

/// The gateway's settings in these tests: both merchants, a small body limit and small
/// timeouts.
pub fn gateway_settings() -> Settings {
    let mut settings = wxpay_testkit::default_settings();
    let gateway = &mut settings.gateway;
    gateway.body_limit_bytes = 8192;
    gateway.publish_timeout_ms = u64::try_from(PUBLISH_TIMEOUT.as_millis()).expect("small");
    gateway.publish_channels = 2;
    gateway.shutdown_timeout_ms = 5000;
    gateway.http_workers = 2;
    settings.rabbitmq.connect_timeout_ms = 2000;
    settings.merchants = vec![MERCHANT.settings(), V3_MERCHANT.settings()];
    settings
}

/// A refund of 50 out of 100 fen.
fn refund<'a>(out_trade_no: &'a str, out_refund_no: &'a str) -> Refund<'a> {
    let refund_id = "50000000382019052709732678859";
    Refund::new(out_trade_no, out_refund_no, refund_id, 100, 50)
}

/// The decrypted `<root>` of a SUCCESS refund of 50 out of 100 fen.
pub fn refund_root(out_trade_no: &str, out_refund_no: &str) -> XmlFields {
    wxpay_testkit::notifications::refund_root(&refund(out_trade_no, out_refund_no), "SUCCESS")
}

/// A v3 notification body of the v3 merchant: `resource` encrypted under its key.
pub fn v3_body(event_type: &str, original_type: &str, resource: &serde_json::Value) -> String {
    wxpay_testkit::notifications::v3_envelope(
        V3_MERCHANT.api_v3_key,
        event_type,
        original_type,
        resource,
    )
}

/// The v3 merchant's payment of 100 fen.
pub fn v3_transaction(out_trade_no: &str) -> serde_json::Value {
    transaction_resource(
        &V3_MERCHANT,
        out_trade_no,
        &transaction_of(out_trade_no),
        100,
    )
}

/// The v3 merchant's refund of 50 of those 100 fen.
pub fn v3_refund(out_trade_no: &str, out_refund_no: &str) -> serde_json::Value {
    refund_resource(
        &V3_MERCHANT,
        &refund(out_trade_no, out_refund_no),
        "SUCCESS",
    )
}

/// A v3 TRANSACTION.SUCCESS body of the v3 merchant (sign it with [`v3_headers`]).
pub fn v3_pay_body(out_trade_no: &str) -> String {
    v3_body(
        "TRANSACTION.SUCCESS",
        "transaction",
        &v3_transaction(out_trade_no),
    )
}

/// [`v3_pay_body`] and its headers, signed now by the platform.
pub fn signed_v3_pay(out_trade_no: &str) -> (String, Vec<(String, String)>) {
    let body = v3_pay_body(out_trade_no);
    let headers = v3_headers(&body, now_unix(), platform_key(), SERIAL);
    (body, headers)
}

/// Waits until `<base>/readyz` answers `status`.
pub async fn wait_readyz(client: &reqwest::Client, base: &str, status: u16, limit: Duration) {
    let url = format!("{base}/readyz");
    eventually(limit, format!("{url} answering {status}"), async || {
        let answer = client.get(&url).send().await;
        answer.is_ok_and(|r| r.status().as_u16() == status)
    })
    .await;
}

/// `X-Forwarded-For: <address>`, as a proxy in front of the gateway sets it.
pub fn forwarded_for(address: &str) -> Vec<(String, String)> {
    vec![("X-Forwarded-For".to_owned(), address.to_owned())]
}

/// The `out_trade_no` of every queued v2 payment.
pub fn queued_orders(messages: &[BasicGetMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| {
            let fields = XmlFields::parse(&m.delivery.data).ok()?;
            fields.get("out_trade_no").map(str::to_owned)
        })
        .collect()
}

/// A gateway running in this process, with its own queue.
pub struct TestApp {
    pub base: String,
    pub queue: String,
    pub client: reqwest::Client,
    shutdown: ShutdownHandle,
    task: JoinHandle<Result<(), StartError>>,
    // Last: its queue is deleted when the test ends, also after a panic.
    env: TestEnv,
}

/// What a test got back.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Answer {
    pub fn is_v2_success(&self) -> bool {
        wxpay_shared::answer::v2_answer_is_success(self.status, self.body.as_bytes())
    }

    /// A v2 SUCCESS; otherwise the test fails showing the answer.
    pub fn assert_v2_success(&self) {
        assert!(self.is_v2_success(), "{self:?}");
    }

    /// A v2 FAIL: valid XML with return_code FAIL.
    pub fn assert_v2_fail(&self, status: u16, message: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert!(self.content_type.starts_with("application/xml"), "{self:?}");
        let fields = XmlFields::parse(self.body.as_bytes()).expect("FAIL answer is XML");
        assert_eq!(fields.get("return_code"), Some("FAIL"), "{self:?}");
        assert_eq!(fields.get("return_msg"), Some(message), "{self:?}");
    }

    /// A v3 failure: `status` with `{"code":"FAIL","message":…}`.
    pub fn assert_v3_fail(&self, status: u16, message: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert!(
            self.content_type.starts_with("application/json"),
            "{self:?}"
        );
        let value: serde_json::Value =
            serde_json::from_str(&self.body).expect("FAIL answer is JSON");
        assert_eq!(value["code"], "FAIL", "{self:?}");
        assert_eq!(value["message"].as_str(), Some(message), "{self:?}");
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(AMQP_URL, |_| {}).await
    }

    /// A gateway on `amqp_url` (a proxy's, or the broker's), with its settings read from
    /// the file as the binary reads them, then changed by `adjust`.
    pub async fn spawn_with(amqp_url: &str, adjust: impl FnOnce(&mut Settings)) -> TestApp {
        let env = TestEnv::new("gateway", gateway_settings());
        let file = config_file(&env.settings);
        let mut settings = Settings::load_with_env(file.path(), Vec::new()).expect("config loads");
        settings.gateway.http_workers = 1;
        settings.rabbitmq.url = amqp_url.into();
        adjust(&mut settings);
        let app = Application::build(settings).await.expect("gateway builds");
        let base = format!("http://127.0.0.1:{}", app.port());
        let shutdown = app.shutdown_handle();
        let task = tokio::spawn(app.run_until_stopped());
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        TestApp {
            base,
            queue: env.settings.rabbitmq.queue.clone(),
            client,
            shutdown,
            task,
            env,
        }
    }

    pub async fn post(
        &self,
        path: &str,
        body: impl Into<Vec<u8>>,
        content_type: Option<&str>,
        headers: &[(String, String)],
    ) -> Answer {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .body(body.into());
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request.send().await.expect("gateway answers");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.text().await.expect("body");
        Answer {
            status,
            content_type,
            body,
        }
    }

    pub async fn post_v2_pay(&self, body: &str) -> Answer {
        self.post_v2_pay_with(body, &[]).await
    }

    /// A v2 payment notification with extra `headers`.
    pub async fn post_v2_pay_with(&self, body: &str, headers: &[(String, String)]) -> Answer {
        self.post("/notify/v2/pay", body, Some("text/xml"), headers)
            .await
    }

    pub async fn post_v2_refund(&self, body: &str) -> Answer {
        self.post("/notify/v2/refund", body, Some("text/xml"), &[])
            .await
    }

    pub async fn post_v3(&self, mch_id: &str, body: &str, headers: &[(String, String)]) -> Answer {
        self.post(
            &format!("/notify/v3/{mch_id}"),
            body,
            Some("application/json"),
            headers,
        )
        .await
    }

    /// Waits until `/readyz` answers `status`.
    pub async fn wait_ready(&self, status: u16, limit: Duration) {
        wait_readyz(&self.client, &self.base, status, limit).await;
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// Every message in the queue (acknowledged, so the queue is empty afterwards).
    pub async fn drain(&self) -> Vec<BasicGetMessage> {
        self.env.drain().await
    }

    /// The bodies of every message in the queue, which is empty afterwards.
    pub async fn drain_bodies(&self) -> Vec<Vec<u8>> {
        let messages = self.drain().await;
        messages.into_iter().map(|m| m.delivery.data).collect()
    }

    /// Checks the queue holds exactly the `queued` messages the test let through, then
    /// stops the gateway.
    pub async fn stop_with_queued(self, queued: usize) {
        assert_eq!(self.drain().await.len(), queued);
        self.stop().await;
    }

    /// Stops the gateway gracefully and deletes its queue.
    pub async fn stop(self) {
        self.shutdown.shutdown();
        let result = tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("gateway stops in time")
            .expect("gateway task");
        result.expect("gateway stops cleanly");
        delete_queue(&self.queue).await;
    }
}

/// The real binary, on a port of its own, with a queue of its own (deleted with `env`).
pub struct Binary {
    pub child: Child,
    pub port: u16,
    pub env: TestEnv,
}

/// Starts the binary with [`gateway_settings`] changed by `adjust`, written as its file.
pub fn binary_with(adjust: impl FnOnce(&mut Settings)) -> Binary {
    let mut env = TestEnv::new("gateway", gateway_settings());
    adjust(&mut env.settings);
    let config = config_file(&env.settings);
    let (child, port) = spawn_binary(config.path());
    Binary { child, port, env }
}

/// Spawns the binary with a config on port 0 and returns it with its port (read from the
/// "gateway listening" log line).
pub fn spawn_binary(config: &std::path::Path) -> (Child, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wxpay-gateway"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    // Logs are JSON lines on stderr.
    let logs = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(logs).lines().map_while(Result::ok) {
            if !sent {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
                    if value["message"] == "gateway listening" {
                        let port = value["port"].as_u64().unwrap_or(0);
                        let _ = tx.send(u16::try_from(port).unwrap_or(0));
                        sent = true;
                    }
                }
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("gateway logs its port");
    (child, port)
}

/// Peak resident memory (`VmHWM`, kB) of a process, from /proc.
pub fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM line")
}

/// A proxy between the gateway and RabbitMQ that forwards the broker's frames whole, so a
/// test can slip `connection.blocked` / `connection.unblocked` in between them, as
/// RabbitMQ sends them on a memory or disk alarm (which a shared broker cannot be put in).
pub struct FrameProxy {
    pub port: u16,
    clients: Arc<Mutex<Vec<Arc<tokio::sync::Mutex<OwnedWriteHalf>>>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl FrameProxy {
    pub async fn start(target: &str) -> FrameProxy {
        let target: SocketAddr = target.parse().expect("target address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let clients: Arc<Mutex<Vec<Arc<tokio::sync::Mutex<OwnedWriteHalf>>>>> = Arc::default();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (clients, tasks) = (clients.clone(), tasks.clone());
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        continue;
                    };
                    let (mut client_read, client_write) = inbound.into_split();
                    let (mut broker_read, mut broker_write) = outbound.into_split();
                    let client_write = Arc::new(tokio::sync::Mutex::new(client_write));
                    clients
                        .lock()
                        .expect("proxy lock")
                        .push(client_write.clone());
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut broker_write).await;
                    });
                    let down = tokio::spawn(async move {
                        // Frame: type (1), channel (2), size (4), payload, 0xCE.
                        let mut header = [0u8; 7];
                        while broker_read.read_exact(&mut header).await.is_ok() {
                            let size =
                                u32::from_be_bytes([header[3], header[4], header[5], header[6]]);
                            let mut rest = vec![0u8; size as usize + 1];
                            if broker_read.read_exact(&mut rest).await.is_err() {
                                break;
                            }
                            let mut writer = client_write.lock().await;
                            if writer.write_all(&header).await.is_err()
                                || writer.write_all(&rest).await.is_err()
                            {
                                break;
                            }
                        }
                    });
                    tasks.lock().expect("proxy lock").extend([up, down]);
                }
            }
        });
        tasks.lock().expect("proxy lock").push(accept);
        FrameProxy {
            port,
            clients,
            tasks,
        }
    }

    pub fn url(&self) -> String {
        amqp_url(format!("127.0.0.1:{}", self.port))
    }

    /// Sends `connection.blocked` (as on a memory alarm) to every proxied connection.
    pub async fn block(&self) {
        self.send(&connection_method(60, Some("low on memory")))
            .await;
    }

    /// Sends `connection.unblocked`.
    pub async fn unblock(&self) {
        self.send(&connection_method(61, None)).await;
    }

    async fn send(&self, frame: &[u8]) {
        let clients = self.clients.lock().expect("proxy lock").clone();
        assert!(!clients.is_empty(), "no connection through the proxy");
        for client in clients {
            client
                .lock()
                .await
                .write_all(frame)
                .await
                .expect("frame sent");
        }
    }
}

impl Drop for FrameProxy {
    fn drop(&mut self) {
        for task in self.tasks.lock().expect("proxy lock").drain(..) {
            task.abort();
        }
    }
}

/// A method frame of class `connection` (10) on channel 0, with an optional short-string
/// argument (the reason of `connection.blocked`).
fn connection_method(method: u16, reason: Option<&str>) -> Vec<u8> {
    let mut payload = vec![0, 10];
    payload.extend(method.to_be_bytes());
    if let Some(reason) = reason {
        payload.push(u8::try_from(reason.len()).expect("short reason"));
        payload.extend(reason.as_bytes());
    }
    let mut frame = vec![1, 0, 0];
    frame.extend(
        u32::try_from(payload.len())
            .expect("small frame")
            .to_be_bytes(),
    );
    frame.extend(payload);
    frame.push(0xCE);
    frame
}
