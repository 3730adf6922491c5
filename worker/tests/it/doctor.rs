//! `wxpay-worker doctor`, the binary: a public URL WeChat Pay would never call, a wrong-length
//! APIv3 key and an expired platform certificate each fail with their own line; a healthy
//! deployment (simulator as WeChat Pay's API, a gateway on loopback, real services) passes
//! every check, the route from outside included. Downloaded platform certificates are
//! counted in the platform keys stream. No traffic leaves loopback: a public URL
//! that breaks the rules is never probed.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::process::Command;
use wxpay_gateway::answer::public_message;
use wxpay_gateway::verify::RejectReason;
use wxpay_runtime::config::{MerchantSettings, Settings, WechatpaySettings};
use wxpay_runtime::platform_keys::{self, SharedCertificates};
use wxpay_runtime::reload::MerchantsHandle;
use wxpay_shared::answer;
use wxpay_shared::v3::EncryptedCertificate;
use wxpay_testkit::clean_command;
use wxpay_testkit::merchants::{OTHER_PRIVATE_PEM, PLATFORM_CERTIFICATES};
use wxpay_worker::{broker, doctor};

use crate::builders::{self, MCH_ID};
use crate::helpers::{closed_port_url, config_file, declared_topology, TestEnv};
use crate::reconcile::Sim;

const BIN: &str = env!("CARGO_BIN_EXE_wxpay-worker");

/// Settings whose services all sit on closed loopback ports: the configuration checks run,
/// the service checks fail fast, nothing leaves the machine.
fn offline_settings(merchants: Vec<MerchantSettings>, public_url: Option<&str>) -> Settings {
    let mut settings = wxpay_testkit::default_settings();
    settings.gateway.public_url = public_url.map(str::to_owned);
    settings.rabbitmq.url = SecretString::from(closed_port_url("amqp"));
    settings.rabbitmq.connect_timeout_ms = 2_000;
    settings.redis.url = SecretString::from(closed_port_url("redis"));
    settings.database.url = SecretString::from(format!("{}/wxpay", closed_port_url("postgres")));
    settings.database.connect_timeout_ms = 2_000;
    settings.wechatpay = WechatpaySettings {
        api_base: closed_port_url("http"),
        request_timeout_ms: 2_000,
    };
    settings.merchants = merchants;
    settings
}

/// Runs `wxpay-worker --config <file> doctor [args]`, bounded so that a hang fails the test.
async fn doctor(config: &tempfile::NamedTempFile, args: &[&str]) -> (Output, Vec<String>) {
    let mut command = Command::from(clean_command(BIN));
    command
        .arg("--config")
        .arg(config.path())
        .arg("doctor")
        .args(args)
        .env("RUST_LOG", "off")
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("doctor finishes within 60 s")
        .expect("doctor runs");
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    (output, lines)
}

fn line<'a>(lines: &'a [String], start: &str) -> &'a str {
    lines
        .iter()
        .find(|line| line.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with {start:?} in\n{}", lines.join("\n")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_url_wechat_pay_would_not_call_fails_once_per_problem_without_probing() {
    let settings = offline_settings(
        vec![builders::merchant_settings()],
        Some("http://203.0.113.7:8080/notify?x=1"),
    );
    let config = config_file(&settings);
    let (output, lines) = doctor(&config, &[]).await;
    assert!(!output.status.success(), "{lines:#?}");
    let url_fails: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("FAIL gateway.public_url"))
        .collect();
    assert_eq!(url_fails.len(), 4, "{lines:#?}");
    assert!(line(&lines, "FAIL gateway.public_url scheme is http").contains("https"));
    assert!(line(&lines, "FAIL gateway.public_url has explicit port 8080").contains("443"));
    line(&lines, "FAIL gateway.public_url has a query string");
    line(
        &lines,
        "FAIL gateway.public_url host 203.0.113.7 is an IP address",
    );
    line(&lines, "ok gateway.public_url has no fragment");
    assert!(line(&lines, "FAIL route from outside").ends_with("skipped: fix the URL first"));
    // Every line is a check, and the services on closed ports are reported, not hung on.
    assert!(lines
        .iter()
        .all(|l| l.starts_with("ok ") || l.starts_with("FAIL ")));
    line(&lines, "FAIL RabbitMQ reachable");
    line(&lines, "FAIL PostgreSQL reachable");
    line(&lines, "FAIL Redis reachable");
    assert!(line(&lines, "FAIL clock against WeChat Pay").contains("unreachable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_length_apiv3_key_fails_without_being_printed() {
    let mut merchant = builders::merchant_settings();
    let short_key = "0123456789abcdef";
    merchant.api_v3_key = Some(SecretString::from(short_key));
    let config = config_file(&offline_settings(vec![merchant], None));
    let (output, lines) = doctor(&config, &[]).await;
    assert!(!output.status.success());
    line(
        &lines,
        &format!("FAIL merchant {MCH_ID} api_v3_key has 16 bytes, not 32"),
    );
    // The services would refuse this configuration: said once, naming the field.
    assert!(lines[0].starts_with("FAIL configuration") && lines[0].contains("api_v3_key"));
    line(&lines, &format!("ok merchant {MCH_ID} api_v2_key is set"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains(short_key) && !stdout.contains(builders::V2_KEY));
}

/// A self-signed RSA certificate made by the openssl CLI, valid for `days` from now (-1:
/// expired yesterday), with the given serial.
fn openssl_certificate(dir: &Path, serial: &str, days: i32) -> String {
    let key = dir.join(format!("{serial}.key"));
    let csr = dir.join(format!("{serial}.csr"));
    let cert = dir.join(format!("{serial}.pem"));
    let run = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        wxpay_testkit::assert_success(&output, format_args!("openssl {args:?}"));
    };
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    run(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=doctor-test",
        "-keyout",
        &path(&key),
        "-out",
        &path(&csr),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &path(&csr),
        "-signkey",
        &path(&key),
        "-days",
        &days.to_string(),
        "-set_serial",
        &format!("0x{serial}"),
        "-out",
        &path(&cert),
    ]);
    std::fs::read_to_string(cert).expect("certificate written")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_platform_certificate_fails_and_a_valid_one_passes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut merchant = builders::merchant_settings();
    for (serial, days) in [("0DEAD001", -1), ("0CAFE002", 30)] {
        merchant
            .platform_public_keys
            .insert(serial.into(), openssl_certificate(dir.path(), serial, days));
    }
    let config = config_file(&offline_settings(vec![merchant], None));
    let (output, lines) = doctor(&config, &[]).await;
    assert!(!output.status.success());
    let who = format!("merchant {MCH_ID} platform key");
    line(
        &lines,
        &format!("FAIL {who} 0DEAD001 is a certificate that expired on"),
    );
    line(
        &lines,
        &format!("ok {who} 0CAFE002 is a certificate valid until"),
    );
    line(
        &lines,
        &format!("ok {who} {} is a WeChat Pay public key", builders::SERIAL),
    );
    line(
        &lines,
        &format!("ok merchant {MCH_ID} platform keys cover 3 serial(s)"),
    );
    // Certificates load as keys: the configuration itself is valid.
    line(&lines, "ok configuration");
    assert!(line(&lines, "FAIL gateway.public_url is not set").contains("set it"));
    assert!(line(&lines, "FAIL route from outside").ends_with("set gateway.public_url first"));
}

#[test]
fn the_expected_route_answer_is_the_gateways_malformed_rejection() {
    assert_eq!(
        doctor::expected_route_answer(),
        answer::v2_fail(public_message(RejectReason::Malformed))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_deployment_passes_every_check_including_the_route() {
    let (env, sim) = tokio::join!(TestEnv::new(), Sim::start());
    let mut settings = env.settings();
    settings.merchants = vec![sim.merchant.clone()];
    settings.wechatpay.api_base = sim.url.clone();
    settings.gateway.listen = "127.0.0.1:0".into();
    // What `wxpay-worker run` declares at start-up (the gateway declares the main queue).
    let (connection, channel) = declared_topology(&settings).await;
    broker::close(&connection, &[&channel], "declared").await;
    let gateway = wxpay_gateway::Application::build(settings.clone())
        .await
        .expect("gateway builds");
    settings.gateway.public_url = Some(format!("http://127.0.0.1:{}", gateway.port()));
    let stop = gateway.shutdown_handle();
    let running = tokio::spawn(gateway.run_until_stopped());

    let config = config_file(&settings);
    let (output, lines) = doctor(&config, &["--allow-insecure-public-url"]).await;
    stop.shutdown();
    let _ = running.await;

    assert!(output.status.success(), "{lines:#?}");
    assert!(lines.iter().all(|l| l.starts_with("ok ")), "{lines:#?}");
    assert!(
        line(&lines, "ok route from outside: POST http://127.0.0.1:")
            .ends_with("/notify/v2/pay answered by this gateway")
    );
    line(&lines, "ok clock against WeChat Pay's Date header");
    line(&lines, "ok PostgreSQL schema is current");
    line(&lines, "ok Redis reachable");
    line(
        &lines,
        &format!(
            "ok RabbitMQ exchange {} is declared",
            settings.rabbitmq.events_exchange
        ),
    );
    line(
        &lines,
        &format!(
            "ok merchant {} merchant private key and serial",
            sim.merchant.mch_id
        ),
    );
    assert!(line(&lines, "ok gateway.public_url scheme is http").contains("allowed by"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let merchant = &sim.merchant;
    assert!(!stdout.contains(merchant.api_v2_key.expose_secret()));
    if let Some(key) = &merchant.api_v3_key {
        assert!(!stdout.contains(key.expose_secret()));
    }
}

/// A merchant that downloads its platform certificates: doctor counts those of the platform
/// keys stream that decrypt with its APIv3 key, and fails while there are none; a one-shot
/// command learns the same ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloaded_certificates_are_counted_in_the_stream_and_none_fails() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    let mut merchant = builders::merchant_settings();
    merchant.platform_public_keys.clear();
    merchant.download_platform_certificates = true;
    merchant.merchant_serial = Some("MERCHANT_SERIAL".into());
    merchant.merchant_private_key_pem = Some(OTHER_PRIVATE_PEM.to_owned().into());
    settings.merchants = vec![merchant.clone()];
    let config = config_file(&settings);
    let stream = settings.rabbitmq.platform_keys_stream();

    let (_, lines) = doctor(&config, &[]).await;
    assert!(line(
        &lines,
        &format!("FAIL RabbitMQ stream {stream} cannot be read")
    )
    .contains("start `wxpay-worker reconcile`"));

    // The reconciler's message, and a forged one (another key than the merchant's).
    let v3_key = merchant.api_v3_key.as_ref().expect("a v3 merchant");
    let [(genuine, _, serial), (forged, _, forged_serial)] = PLATFORM_CERTIFICATES;
    for (key, nonce, certificate) in [
        (v3_key.expose_secret().as_bytes(), "aaaaaaaaaaaa", genuine),
        (
            b"0123456789abcdef0123456789ABCDEX".as_slice(),
            "bbbbbbbbbbbb",
            forged,
        ),
    ] {
        let message = SharedCertificates {
            mch_id: MCH_ID.to_owned(),
            data: vec![EncryptedCertificate::encrypt(key, nonce, certificate).expect("encrypts")],
        };
        wxpay_testkit::amqp::publish_to_stream(&settings.rabbitmq, &message.to_body()).await;
    }
    let (_, lines) = doctor(&config, &[]).await;
    let counted = line(
        &lines,
        &format!(
            "ok merchant {MCH_ID} platform certificates in the stream {stream}: 1 valid ({serial})"
        ),
    );
    assert!(counted.contains("the latest until 2036-"), "{counted}");
    assert!(
        !lines.iter().any(|l| l.contains(forged_serial)),
        "{lines:#?}"
    );
    line(
        &lines,
        &format!("ok merchant {MCH_ID} platform keys: none in the file"),
    );

    // What `anomaly resolve` and the console read before they verify: the genuine one only.
    let merchants = MerchantsHandle::fixed(settings.merchants().expect("valid"));
    assert_eq!(
        platform_keys::learn_retained(&settings.rabbitmq, &merchants)
            .await
            .expect("the stream reads"),
        1
    );
    let current = merchants.current();
    let keys = &current.get(MCH_ID).expect("merchant").platform_keys;
    assert!(keys.get(serial).is_some() && keys.get(forged_serial).is_none());
}
