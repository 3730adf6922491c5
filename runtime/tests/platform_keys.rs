//! Platform certificates shared through the stream: decrypted by each process with the
//! merchant's APIv3 key, refused when forged, kept by a reload of the files; and the
//! configuration of a merchant that downloads them.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use wxpay_runtime::config::{ConfigError, Settings};
use wxpay_runtime::platform_keys::{receive, MessageRefused, Received, SharedCertificates};
use wxpay_runtime::reload::{LearnError, MerchantsHandle, Trigger};
use wxpay_shared::v3::EncryptedCertificate;

const MCH_ID: &str = "1900000109";
const OTHER_MCH_ID: &str = "1900000110";
const V2_KEY: &str = "192006250b4c09247ec02edce69f6a2d";
const V3_KEY: &str = "Zyxwvutsrqponmlkjihgfedcba543210";
const MERCHANT_KEY_PEM: &str = include_str!("../../testkit/fixtures/other_private.pem");
/// Made by `openssl req -x509` (testkit/fixtures/README.md).
const CERT_PEM: &str = include_str!("../../testkit/fixtures/platform_cert.pem");
const CERT_SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
const FILE_SERIAL: &str = "PUB_KEY_ID_0119000001092025OLD";
const FILE_PEM: &str = include_str!("fixtures/platform_public.pem");

/// Merchant `mch_id` downloading its certificates, with `file_keys` of its own.
fn downloading_merchant(mch_id: &str, file_keys: &[(&str, &str)], download: bool) -> String {
    let mut text = format!(
        r#"
[[merchants]]
mch_id = "{mch_id}"
appids = ["wxd930ea5d5a258f4f"]
api_v2_key = "{V2_KEY}"
api_v3_key = "{V3_KEY}"
merchant_serial = "MERCHANT_SERIAL"
merchant_private_key_pem = """{MERCHANT_KEY_PEM}"""
download_platform_certificates = {download}
[merchants.platform_public_keys]
"#
    );
    for (serial, pem) in file_keys {
        text.push_str(&format!("\"{serial}\" = '''\n{pem}'''\n"));
    }
    text
}

fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("wxpay.toml");
    std::fs::write(&path, text).expect("config written");
    path
}

fn load(path: &Path) -> Result<Settings, ConfigError> {
    Settings::load_with_env(path, Vec::<(String, String)>::new())
}

fn message(mch_id: &str, api_v3_key: &[u8], nonce: &str) -> Vec<u8> {
    SharedCertificates {
        mch_id: mch_id.to_owned(),
        data: vec![EncryptedCertificate::encrypt(api_v3_key, nonce, CERT_PEM).expect("encrypts")],
    }
    .to_body()
}

fn serials(handle: &MerchantsHandle, mch_id: &str) -> Vec<String> {
    let merchants = handle.current();
    let merchant = merchants.get(mch_id).expect("the merchant");
    merchant
        .platform_keys
        .serials()
        .map(str::to_owned)
        .collect()
}

#[test]
fn shared_certificates_are_learned_kept_by_a_reload_and_forgeries_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = downloading_merchant(MCH_ID, &[], true)
        + &downloading_merchant(OTHER_MCH_ID, &[(FILE_SERIAL, FILE_PEM)], false);
    let path = write(&dir, &text);
    let (_, handle) = MerchantsHandle::load_with_env(&path, Vec::new()).expect("loads");
    assert!(serials(&handle, MCH_ID).is_empty(), "starts with no key");
    let before = handle.current();
    let now = SystemTime::now();

    // Forged: encrypted with another key than the merchant's APIv3 key, or the
    // certificate under another serial. Refused, nothing added.
    let forged = message(MCH_ID, b"0123456789abcdef0123456789ABCDEF", "aaaaaaaaaaaa");
    let refused = receive(&handle, &forged, now).expect("a message for this merchant");
    assert_eq!(
        refused,
        Received {
            added: vec![],
            refused: vec![(CERT_SERIAL.to_owned(), "decrypt")]
        }
    );
    let mut renamed: SharedCertificates =
        serde_json::from_slice(&message(MCH_ID, V3_KEY.as_bytes(), "bbbbbbbbbbbb")).unwrap();
    renamed.data[0].serial_no = "PUB_KEY_ID_0119000001092026NEW".into();
    let refused = receive(&handle, &renamed.to_body(), now).expect("a message");
    assert_eq!(refused.refused[0].1, "serial_mismatch");
    assert!(serials(&handle, MCH_ID).is_empty());

    // Not for a merchant that downloads here, or not a message at all.
    let other = message(OTHER_MCH_ID, V3_KEY.as_bytes(), "cccccccccccc");
    assert!(matches!(
        receive(&handle, &other, now),
        Err(MessageRefused::Merchant(LearnError::NotDownloading(_)))
    ));
    assert!(matches!(
        receive(&handle, b"{\"data\":1}", now),
        Err(MessageRefused::Malformed(_))
    ));

    // Genuine: added once; a snapshot taken before keeps its keys.
    let genuine = message(MCH_ID, V3_KEY.as_bytes(), "dddddddddddd");
    let received = receive(&handle, &genuine, now).expect("accepted");
    assert_eq!(received.added, [format!("{MCH_ID}/{CERT_SERIAL}")]);
    assert!(received.refused.is_empty());
    assert_eq!(serials(&handle, MCH_ID), [CERT_SERIAL]);
    assert!(before.get(MCH_ID).unwrap().platform_keys.is_empty());
    let again = receive(&handle, &genuine, now).expect("accepted");
    assert!(again.added.is_empty(), "a serial is added once");
    let merchants = handle.current();
    let (serial, not_after) = merchants
        .get(MCH_ID)
        .unwrap()
        .platform_keys
        .certificates()
        .next()
        .expect("its notAfter is known");
    assert_eq!(serial, CERT_SERIAL);
    assert!(not_after > now);

    // A reload of the file (a file key added) keeps the learned certificate.
    let text = downloading_merchant(MCH_ID, &[(FILE_SERIAL, FILE_PEM)], true)
        + &downloading_merchant(OTHER_MCH_ID, &[(FILE_SERIAL, FILE_PEM)], false);
    std::fs::write(&path, text).unwrap();
    let reloaded = handle.reload(Trigger::Sighup).expect("reloads");
    assert_eq!(reloaded.serials_added, [format!("{MCH_ID}/{FILE_SERIAL}")]);
    assert!(reloaded.serials_removed.is_empty(), "{reloaded:?}");
    assert_eq!(serials(&handle, MCH_ID), [CERT_SERIAL, FILE_SERIAL]);
}

#[test]
fn a_downloading_merchant_needs_its_v3_credentials_and_no_file_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = load(&write(&dir, &downloading_merchant(MCH_ID, &[], true))).expect("loads");
    let merchants = settings.merchants().expect("valid");
    let merchant = merchants.get(MCH_ID).unwrap();
    assert!(merchant.download_platform_certificates && merchant.uses_v3());
    assert_eq!(
        settings.reconciler.platform_certificates_refresh_secs,
        43_200
    );

    let without_serial = downloading_merchant(MCH_ID, &[], true)
        .replace("merchant_serial = \"MERCHANT_SERIAL\"\n", "");
    match load(&write(&dir, &without_serial)) {
        Err(ConfigError::Merchant { mch_id, field, .. }) => {
            assert_eq!((mch_id.as_str(), field), (MCH_ID, "merchant_serial"));
        }
        other => panic!("{other:?}"),
    }
    let without_v3_key = format!(
        "[[merchants]]\nmch_id = \"{MCH_ID}\"\nappids = [\"wx1\"]\napi_v2_key = \"{V2_KEY}\"\n\
         download_platform_certificates = true\n"
    );
    match load(&write(&dir, &without_v3_key)) {
        Err(ConfigError::Merchant { field, .. }) => assert_eq!(field, "api_v3_key"),
        other => panic!("{other:?}"),
    }
    // Not downloading: a v3 merchant needs a key of its own, as before.
    match load(&write(&dir, &downloading_merchant(MCH_ID, &[], false))) {
        Err(ConfigError::Merchant { field, .. }) => assert_eq!(field, "platform_public_keys"),
        other => panic!("{other:?}"),
    }
    for refresh in ["0", "604800"] {
        let text = format!("[reconciler]\nplatform_certificates_refresh_secs = {refresh}\n");
        match load(&write(&dir, &text)) {
            Err(ConfigError::Invalid { field, .. }) => {
                assert_eq!(field, "reconciler.platform_certificates_refresh_secs");
            }
            other => panic!("{refresh}: {other:?}"),
        }
    }
}
