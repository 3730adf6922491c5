//! End to end, platform certificates fetched and shared: `wxpay-sim serve` plays WeChat Pay
//! with two platform certificates (made by `openssl req -x509`, testkit/fixtures); the
//! merchant downloads them (`download_platform_certificates`) and has no platform key in
//! its file. `wxpay-worker reconcile` downloads them and shares them through the platform
//! keys stream; the gateway, started with no key for the merchant, then accepts a
//! notification signed with the newer certificate's key, and the worker applies it. A
//! forged stream message (a certificate that does not decrypt under the APIv3 key) is
//! refused with one log line. Each process exports the expiry of what it holds. A gateway
//! started later learns the certificates the stream retains.

use std::time::Duration;

use wxpay_runtime::platform_keys::SharedCertificates;
use wxpay_shared::v3::EncryptedCertificate;
use wxpay_testkit::merchants::PLATFORM_CERTIFICATES;

use crate::e2e_support::{eventually, insert_order, scrape, wait_paid, Stack};

const OLDER_SERIAL: &str = PLATFORM_CERTIFICATES[0].2;
const NEWER_SERIAL: &str = PLATFORM_CERTIFICATES[1].2;

/// The stack's merchant downloading its certificates, with no platform key in the file;
/// the simulator serving both certificates (the newer one, listed last, signs).
async fn stack() -> Stack {
    let s = Stack::prepare(|config| {
        let merchants = config
            .get_mut("merchants")
            .and_then(toml::Value::as_array_mut)
            .expect("merchants");
        let merchant = merchants[0].as_table_mut().expect("a merchant table");
        merchant.insert("download_platform_certificates".into(), true.into());
        merchant.insert(
            "platform_public_keys".into(),
            toml::Value::Table(toml::Table::new()),
        );
    })
    .await;
    let text = std::fs::read_to_string(&s.sim_config).expect("simulator.toml");
    let mut secrets: toml::Table = text.parse().expect("TOML");
    let certificates = PLATFORM_CERTIFICATES
        .into_iter()
        .map(|(certificate, key, _)| {
            toml::Value::Table(toml::Table::from_iter([
                ("certificate_pem".to_owned(), certificate.into()),
                ("private_key_pem".to_owned(), key.into()),
            ]))
        })
        .collect();
    secrets["platform"]
        .as_table_mut()
        .expect("[platform]")
        .insert("certificates".into(), toml::Value::Array(certificates));
    std::fs::write(&s.sim_config, toml::to_string(&secrets).expect("TOML")).expect("written");
    s
}

/// The seconds to expiry a service exports for the merchant's certificate `serial`.
async fn expiry(base: &str, mch_id: &str, serial: &str) -> Option<f64> {
    let series =
        format!("wxpay_platform_key_expiry_seconds{{mch_id=\"{mch_id}\",serial=\"{serial}\"}}");
    wxpay_testkit::metrics::series(&scrape(base).await, &series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloaded_certificates_reach_a_gateway_without_keys_and_forgeries_do_not() {
    let mut s = stack().await;
    s.start_all().await;
    let mut conn = s.conn().await;
    insert_order(&mut conn, &s, "CERT-1", 100).await;
    assert!(
        !s.notify_v3_pay_once("CERT-1", "100").await.success,
        "no key yet: the gateway must refuse\n{}",
        s.logs(40)
    );

    s.start_reconciler().await;
    // Nine years and more (the fixtures are valid ten years), counting down.
    let nine_years = 9.0 * 365.0 * 86_400.0;
    for base in [s.reconciler_url(), s.gateway_url(), s.worker_url()] {
        eventually(
            Duration::from_secs(60),
            "the newer certificate's expiry exported",
            async || {
                expiry(&base, &s.mch_id, NEWER_SERIAL)
                    .await
                    .is_some_and(|seconds| seconds > nine_years)
            },
        )
        .await;
        assert!(expiry(&base, &s.mch_id, OLDER_SERIAL).await.is_some());
    }
    let downloads = scrape(&s.reconciler_url()).await;
    assert!(
        wxpay_testkit::metrics::series(
            &downloads,
            "wxpay_reconciler_certificate_downloads_total{result=\"ok\"}"
        )
        .is_some_and(|ok| ok >= 1.0),
        "{downloads}"
    );

    assert!(
        s.notify_v3_pay_once("CERT-1", "100").await.success,
        "signed with the downloaded certificate's key: accepted\n{}",
        s.logs(40)
    );
    wait_paid(&mut conn, &s, "CERT-1").await;

    // A forged message in the stream: a certificate encrypted under another key than the
    // merchant's APIv3 key. Every reader refuses it with one line.
    let forged = SharedCertificates {
        mch_id: s.mch_id.clone(),
        data: vec![EncryptedCertificate::encrypt(
            b"0123456789abcdef0123456789ABCDEF",
            "f0f0f0f0f0f0",
            wxpay_testkit::merchants::FORGER_CERT_PEM,
        )
        .expect("encrypts")],
    };
    wxpay_testkit::amqp::publish_to_stream(&s.env.settings.rabbitmq, &forged.to_body()).await;
    eventually(
        Duration::from_secs(30),
        "the gateway and the worker refuse the forged certificate",
        async || {
            let logs = s.logs(400);
            logs.matches("platform certificate refused").count() >= 3
                && logs.contains(FORGED_SERIAL)
        },
    )
    .await;
    assert!(expiry(&s.gateway_url(), &s.mch_id, FORGED_SERIAL)
        .await
        .is_none());

    // A gateway started now learns what the stream retains (read from its first message,
    // before the gateway serves): its first notification verifies.
    if let Some(mut gateway) = s.children.gateway.take() {
        gateway.kill();
    }
    s.start_gateway().await;
    insert_order(&mut conn, &s, "CERT-2", 100).await;
    assert!(
        s.notify_v3_pay_once("CERT-2", "100").await.success,
        "a restarted gateway knows the downloaded certificates at once\n{}",
        s.logs(40)
    );
    wait_paid(&mut conn, &s, "CERT-2").await;
}

const FORGED_SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F9F8D0";
