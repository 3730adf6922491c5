//! Test merchants, signed notifications, an in-process gateway on port 0 against the real
//! RabbitMQ with its own queue, and a TCP proxy that can cut the broker link.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use wxpay_gateway::{Application, ShutdownHandle, StartError};
use wxpay_runtime::config::Settings;
use wxpay_shared::v2::{encrypt_req_info, sign, SignType, XmlFields};
use wxpay_shared::v3::{aead, load_private_key_pem, sign_notification, PrivateKey};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const BROKER: &str = "127.0.0.1:5672";

/// A v2 merchant (MD5 or HMAC-SHA256 signatures).
pub const V2_MCH: &str = "1900000109";
pub const V2_KEY: &str = "192006250b4c09247ec02edce69f6a2d";
pub const APPID: &str = "wxd930ea5d5a258f4f";
/// A v3 merchant (also has a v2 key: hand-made refunds come as v2).
pub const V3_MCH: &str = "1900000110";
pub const V3_V2_KEY: &str = "Zx9Yw8Xv7Wu6Vt5Us4Tr3Sq2Rp1Qo0Pn";
pub const V3_KEY: &str = "0123456789abcdefghijklmnopqrstuv";
pub const V3_APPID: &str = "wx8888888888888888";
pub const SERIAL: &str = "PUB_KEY_ID_0119000001102025TEST";

pub const PLATFORM_PRIVATE_PEM: &str = include_str!("fixtures/platform_private.pem");
pub const PLATFORM_PUBLIC_PEM: &str = include_str!("fixtures/platform_public.pem");
pub const OTHER_PRIVATE_PEM: &str = include_str!("fixtures/other_private.pem");

/// Publish timeout of the test gateways: small, so broker failures answer quickly.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);

/// The platform key that signs v3 notifications (fixture generated with `openssl genpkey`).
pub fn platform_key() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| load_private_key_pem(PLATFORM_PRIVATE_PEM).expect("fixture key"))
}

/// A key that is not the platform's (forged v3 signatures).
pub fn other_key() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| load_private_key_pem(OTHER_PRIVATE_PEM).expect("fixture key"))
}

pub fn unique_queue() -> String {
    format!("wxpay.test.gateway.{}", uuid::Uuid::new_v4())
}

/// Settings of an in-process test gateway: port 0, its own queue, small timeouts.
pub fn settings(queue: &str, amqp_url: &str) -> Settings {
    let mut settings: Settings = toml_settings("127.0.0.1:0", queue, amqp_url);
    settings.gateway.http_workers = 1;
    settings.gateway.publish_channels = 2;
    settings
}

/// Settings as the binary reads them, from [`config_toml`].
fn toml_settings(listen: &str, queue: &str, amqp_url: &str) -> Settings {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wxpay.toml");
    std::fs::write(&path, config_toml(listen, queue, amqp_url)).expect("write config");
    Settings::load_with_env(&path, Vec::new()).expect("test config loads")
}

/// A complete configuration file for the test merchants.
pub fn config_toml(listen: &str, queue: &str, amqp_url: &str) -> String {
    format!(
        r#"[gateway]
listen = "{listen}"
body_limit_bytes = 8192
publish_timeout_ms = {publish_timeout}
publish_channels = 2
shutdown_timeout_ms = 5000
http_workers = 2

[rabbitmq]
url = "{amqp_url}"
queue = "{queue}"
connect_timeout_ms = 2000

[[merchants]]
mch_id = "{V2_MCH}"
appids = ["{APPID}"]
api_v2_key = "{V2_KEY}"

[[merchants]]
mch_id = "{V3_MCH}"
appids = ["{V3_APPID}"]
api_v2_key = "{V3_V2_KEY}"
api_v3_key = "{V3_KEY}"
[merchants.platform_public_keys]
"{SERIAL}" = '''
{PLATFORM_PUBLIC_PEM}'''
"#,
        publish_timeout = PUBLISH_TIMEOUT.as_millis(),
    )
}

/// The fields of a successful v2 payment notification (unsigned).
pub fn v2_pay_fields(mch_id: &str, appid: &str, out_trade_no: &str, total_fee: i64) -> XmlFields {
    [
        ("appid", appid.to_owned()),
        ("bank_type", "CMC".to_owned()),
        ("cash_fee", total_fee.to_string()),
        ("fee_type", "CNY".to_owned()),
        ("is_subscribe", "N".to_owned()),
        ("mch_id", mch_id.to_owned()),
        ("nonce_str", "5d2b6c2a8db53831f7eda20af46e531c".to_owned()),
        ("openid", "oUpF8uMEb4qRXf22hE3X68TekukE".to_owned()),
        ("out_trade_no", out_trade_no.to_owned()),
        ("result_code", "SUCCESS".to_owned()),
        ("return_code", "SUCCESS".to_owned()),
        ("time_end", "20240102030405".to_owned()),
        ("total_fee", total_fee.to_string()),
        ("trade_type", "JSAPI".to_owned()),
        ("transaction_id", format!("4200000{out_trade_no}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Signs `fields` with `key`; `sign_type` written into the body only when `declare` is set.
pub fn signed_xml(mut fields: XmlFields, key: &str, sign_type: SignType, declare: bool) -> String {
    if declare {
        fields.insert("sign_type", sign_type.as_str());
    }
    let signature = sign(&fields, key, sign_type);
    fields.insert("sign", signature);
    fields.to_xml()
}

/// A signed, successful v2 payment notification of the v2 merchant (MD5).
pub fn v2_pay_body(out_trade_no: &str, total_fee: i64) -> String {
    signed_xml(
        v2_pay_fields(V2_MCH, APPID, out_trade_no, total_fee),
        V2_KEY,
        SignType::Md5,
        false,
    )
}

/// The decrypted `<root>` of a refund notification.
pub fn refund_root(out_trade_no: &str, out_refund_no: &str) -> XmlFields {
    [
        ("out_refund_no", out_refund_no),
        ("out_trade_no", out_trade_no),
        ("refund_account", "REFUND_SOURCE_RECHARGE_FUNDS"),
        ("refund_fee", "50"),
        ("refund_id", "50000000382019052709732678859"),
        ("refund_recv_accout", "支付用户零钱"),
        ("refund_request_source", "API"),
        ("refund_status", "SUCCESS"),
        ("settlement_refund_fee", "50"),
        ("settlement_total_fee", "100"),
        ("success_time", "2024-01-02 03:04:05"),
        ("total_fee", "100"),
        ("transaction_id", "4200000000000000000000000001"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A v2 refund notification whose `req_info` is encrypted with `encrypt_key`.
pub fn v2_refund_body(mch_id: &str, appid: &str, encrypt_key: &str, root: &XmlFields) -> String {
    let fields: XmlFields = [
        ("return_code", "SUCCESS".to_owned()),
        ("appid", appid.to_owned()),
        ("mch_id", mch_id.to_owned()),
        ("nonce_str", "TeqClE3i0mvn3DrK".to_owned()),
        ("req_info", encrypt_req_info(root, encrypt_key)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    fields.to_xml()
}

/// A v3 notification body: the envelope with `resource` encrypted under the merchant's key.
pub fn v3_body(event_type: &str, original_type: &str, resource: &serde_json::Value) -> String {
    let nonce = "fdasflkja484";
    let aad = original_type;
    let ciphertext = aead::encrypt(
        V3_KEY.as_bytes(),
        nonce,
        aad,
        resource.to_string().as_bytes(),
    )
    .expect("encrypt");
    serde_json::json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "create_time": "2024-01-02T03:04:05+08:00",
        "resource_type": "encrypt-resource",
        "event_type": event_type,
        "summary": "支付成功",
        "resource": {
            "original_type": original_type,
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": ciphertext,
            "associated_data": aad,
            "nonce": nonce,
        }
    })
    .to_string()
}

pub fn v3_transaction(out_trade_no: &str) -> serde_json::Value {
    serde_json::json!({
        "appid": V3_APPID, "mchid": V3_MCH, "out_trade_no": out_trade_no,
        "transaction_id": format!("4200000{out_trade_no}"), "trade_type": "JSAPI",
        "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "CMC",
        "success_time": "2024-01-02T03:04:05+08:00",
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {"total": 100, "payer_total": 100, "currency": "CNY", "payer_currency": "CNY"}
    })
}

pub fn v3_refund(out_trade_no: &str, out_refund_no: &str) -> serde_json::Value {
    serde_json::json!({
        "mchid": V3_MCH, "out_trade_no": out_trade_no, "transaction_id": "4200000000000000000000000002",
        "out_refund_no": out_refund_no, "refund_id": "50000000382019052709732678860",
        "refund_status": "SUCCESS", "success_time": "2024-01-02T03:04:05+08:00",
        "user_received_account": "支付用户零钱",
        "amount": {"total": 100, "refund": 50, "payer_total": 100, "payer_refund": 50}
    })
}

pub fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The five `Wechatpay-*` headers of `body`, signed with `key` at `timestamp`.
pub fn v3_headers(
    body: &str,
    timestamp: i64,
    key: &PrivateKey,
    serial: &str,
) -> Vec<(String, String)> {
    let timestamp = timestamp.to_string();
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let signature = sign_notification(key, &timestamp, &nonce, body.as_bytes());
    vec![
        ("Wechatpay-Timestamp".into(), timestamp),
        ("Wechatpay-Nonce".into(), nonce),
        ("Wechatpay-Signature".into(), signature),
        ("Wechatpay-Serial".into(), serial.into()),
        (
            "Wechatpay-Signature-Type".into(),
            "WECHATPAY2-SHA256-RSA2048".into(),
        ),
    ]
}

/// A gateway running in this process, with its own queue.
pub struct TestApp {
    pub base: String,
    pub queue: String,
    pub client: reqwest::Client,
    shutdown: ShutdownHandle,
    task: JoinHandle<Result<(), StartError>>,
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

    pub async fn spawn_with(amqp_url: &str, adjust: impl FnOnce(&mut Settings)) -> TestApp {
        let queue = unique_queue();
        let mut settings = settings(&queue, amqp_url);
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
            queue,
            client,
            shutdown,
            task,
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
        self.post("/notify/v2/pay", body, Some("text/xml"), &[])
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
        drain_queue(&self.queue).await
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

pub async fn amqp() -> Connection {
    let properties = ConnectionProperties::default();
    tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(AMQP_URL, properties),
    )
    .await
    .expect("broker connect in time")
    .expect("broker connect")
}

pub async fn drain_queue(queue: &str) -> Vec<BasicGetMessage> {
    let connection = amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    let mut messages = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("basic.get")
    {
        let acked = message
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        assert!(acked, "ack sent");
        messages.push(message);
    }
    let _ = connection.close(200, "test done".into()).await;
    messages
}

pub async fn delete_queue(queue: &str) {
    let connection = amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
    let _ = connection.close(200, "test done".into()).await;
}

/// A string header of a queued message.
pub fn header(message: &BasicGetMessage, name: &str) -> Option<String> {
    let headers = message.delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        lapin::types::AMQPValue::LongString(value) => {
            Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
        }
        lapin::types::AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        lapin::types::AMQPValue::LongLongInt(value) => Some(value.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// A TCP proxy between the gateway and RabbitMQ that a test can cut (close every
/// connection and refuse new ones) and restore.
pub struct Proxy {
    pub port: u16,
    enabled: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let target: SocketAddr = target.parse().expect("target address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let enabled = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let enabled = enabled.clone();
            let connections = connections.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !enabled.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    connections.lock().expect("proxy lock").push(task);
                }
            }
        });
        Proxy {
            port,
            enabled,
            connections,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Closes every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        for task in self.connections.lock().expect("proxy lock").drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Spawns the binary with a config on port 0 and returns it with its port (read from the
/// "gateway listening" log line).
pub fn spawn_binary(config: &std::path::Path) -> (std::process::Child, u16) {
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
    paused: tokio::sync::Mutex<Vec<tokio::sync::OwnedMutexGuard<OwnedWriteHalf>>>,
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
            paused: tokio::sync::Mutex::default(),
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
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

    /// Holds back every frame from the broker (confirms included) until [`Self::resume`]:
    /// a broker that has become slow.
    pub async fn pause(&self) {
        let clients = self.clients.lock().expect("proxy lock").clone();
        let mut paused = self.paused.lock().await;
        for client in clients {
            paused.push(client.lock_owned().await);
        }
    }

    /// Lets the held-back frames through.
    pub async fn resume(&self) {
        self.paused.lock().await.clear();
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
