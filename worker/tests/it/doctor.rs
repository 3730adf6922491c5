//! `wxpay-worker doctor`, the binary: a public URL WeChat Pay would never call, a wrong-length
//! APIv3 key and an expired platform certificate each fail with their own line; a healthy
//! deployment (simulator as WeChat Pay's API, a gateway on loopback, real services) passes
//! every check, the route from outside included. No traffic leaves loopback: a public URL
//! that breaks the rules is never probed.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::process::Command;
use wxpay_gateway::answer::public_message;
use wxpay_gateway::verify::RejectReason;
use wxpay_runtime::config::{MerchantSettings, Settings, WechatpaySettings};
use wxpay_shared::answer;
use wxpay_testkit::clean_command;
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
