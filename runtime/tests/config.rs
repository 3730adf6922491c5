//! Start-up validation of the configuration: a bad merchant fails with one clear message
//! naming the merchant and the field, never the secret.

use std::path::{Path, PathBuf};
use std::process::Command;

use wxpay_runtime::config::{Cidr, ConfigError, ConsoleRole, Merchant, Settings, SubMerchants};

const V2_KEY: &str = "192006250b4c09247ec02edce69f6a2d";
const V3_KEY: &str = "Zyxwvutsrqponmlkjihgfedcba543210";

/// A platform public key made by the openssl command line, not by our code.
fn openssl_public_key_pem(dir: &std::path::Path) -> String {
    let (private, public) = (dir.join("platform.pem"), dir.join("platform.pub.pem"));
    let openssl = |args: &[&str], out: &Path| {
        let status = Command::new("openssl")
            .args(args)
            .arg(out)
            .status()
            .expect("openssl must be installed for the tests");
        assert!(status.success(), "openssl {args:?}");
    };
    let rsa_2048 = "rsa_keygen_bits:2048";
    openssl(
        &["genpkey", "-algorithm", "RSA", "-pkeyopt", rsa_2048, "-out"],
        &private,
    );
    let private = private.to_str().expect("UTF-8 path");
    openssl(&["pkey", "-pubout", "-in", private, "-out"], &public);
    std::fs::read_to_string(public).expect("public key")
}

/// Merchant 10000100 with the API v2 key alone, in `appid`.
fn v2_only_merchant(appid: &str) -> String {
    format!(
        "[[merchants]]\nmch_id = \"10000100\"\nappids = [\"{appid}\"]\napi_v2_key = \"{V2_KEY}\"\n"
    )
}

fn merchant_toml(mch_id: &str, v2_key: &str, v3_key: &str, pem: &str, appids: &str) -> String {
    format!(
        r#"
[[merchants]]
mch_id = "{mch_id}"
appids = {appids}
api_v2_key = "{v2_key}"
api_v3_key = "{v3_key}"
[merchants.platform_public_keys]
"PUB_KEY_ID_0119000001092025" = """{pem}"""
"#
    )
}

fn write(dir: &tempfile::TempDir, body: &str) -> PathBuf {
    let path = dir.path().join("wxpay.toml");
    std::fs::write(&path, body).expect("write config");
    path
}

fn load(path: &Path) -> Result<Settings, ConfigError> {
    Settings::load_with_env(path, Vec::<(String, String)>::new())
}

#[test]
fn a_good_file_loads_with_defaults_and_parsed_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = openssl_public_key_pem(dir.path());
    let body = format!(
        "[gateway]\npublish_timeout_ms = 1500\n{}",
        merchant_toml(
            "1900000109",
            V2_KEY,
            V3_KEY,
            &pem,
            r#"["wxd930ea5d5a258f4f"]"#
        )
    );
    let settings = load(&write(&dir, &body)).expect("valid configuration");
    assert_eq!(settings.gateway.publish_timeout_ms, 1500);
    assert_eq!(settings.gateway.body_limit_bytes, 65_536);
    assert_eq!(settings.rabbitmq.queue, "wxpay.notify");
    assert_eq!(settings.rabbitmq.parked_queue(), "wxpay.notify.parked");
    assert_eq!(settings.rabbitmq.retry_queue(2), "wxpay.notify.retry.2");
    let merchants = settings.merchants().expect("merchants");
    let merchant = merchants.get("1900000109").expect("merchant");
    assert!(merchant.has_appid("wxd930ea5d5a258f4f"));
    assert!(merchant.uses_v3());
    assert!(merchant
        .platform_keys
        .get("PUB_KEY_ID_0119000001092025")
        .is_some());
}

#[test]
fn environment_overrides_any_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(&dir, "[rabbitmq]\nqueue = \"from.file\"\n");
    let env = vec![
        ("WXPAY__RABBITMQ__QUEUE".to_string(), "from.env".to_string()),
        (
            "WXPAY__GATEWAY__BODY_LIMIT_BYTES".to_string(),
            "1024".to_string(),
        ),
        ("UNRELATED".to_string(), "x".to_string()),
    ];
    let settings = Settings::load_with_env(&path, env).expect("loads");
    assert_eq!(settings.rabbitmq.queue, "from.env");
    assert_eq!(settings.gateway.body_limit_bytes, 1024);
}

fn merchant_error(body: &str) -> (String, &'static str, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    match load(&write(&dir, body)) {
        Err(ConfigError::Merchant {
            mch_id,
            field,
            reason,
        }) => (mch_id, field, reason),
        other => panic!("expected a merchant error, got {other:?}"),
    }
}

#[test]
fn a_key_of_the_wrong_length_names_merchant_and_field_not_the_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = openssl_public_key_pem(dir.path());
    let secret = "short-secret-key";
    let (mch_id, field, reason) = merchant_error(&merchant_toml(
        "1900000109",
        secret,
        V3_KEY,
        &pem,
        r#"["wx1"]"#,
    ));
    assert_eq!((mch_id.as_str(), field), ("1900000109", "api_v2_key"));
    assert!(!reason.contains(secret));

    let (_, field, reason) = merchant_error(&merchant_toml(
        "1900000109",
        V2_KEY,
        "too-short-v3",
        &pem,
        r#"["wx1"]"#,
    ));
    assert_eq!(field, "api_v3_key");
    assert!(!reason.contains("too-short-v3"));
}

#[test]
fn an_unreadable_pem_fails_start_up() {
    let (mch_id, field, reason) = merchant_error(&merchant_toml(
        "1900000109",
        V2_KEY,
        V3_KEY,
        "-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----",
        r#"["wx1"]"#,
    ));
    assert_eq!(
        (mch_id.as_str(), field),
        ("1900000109", "platform_public_keys")
    );
    assert!(reason.contains("PUB_KEY_ID_0119000001092025"), "{reason}");
}

#[test]
fn a_merchant_without_appids_fails_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = openssl_public_key_pem(dir.path());
    let (_, field, _) = merchant_error(&merchant_toml("1900000109", V2_KEY, V3_KEY, &pem, "[]"));
    assert_eq!(field, "appids");
}

#[test]
fn two_merchants_with_one_mch_id_fail_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = openssl_public_key_pem(dir.path());
    let one = merchant_toml("1900000109", V2_KEY, V3_KEY, &pem, r#"["wx1"]"#);
    let (mch_id, field, reason) = merchant_error(&format!("{one}{one}"));
    assert_eq!((mch_id.as_str(), field), ("1900000109", "mch_id"));
    assert!(reason.contains("twice"));
}

#[test]
fn a_v2_only_merchant_needs_no_platform_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = load(&write(&dir, &v2_only_merchant("wx2421b1c4370ec43b"))).expect("valid");
    let merchants = settings.merchants().expect("merchants");
    assert!(!merchants.get("10000100").expect("merchant").uses_v3());
}

#[test]
fn unknown_keys_and_missing_files_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let error = load(&write(&dir, "[gateway]\nlisten_on = \"x\"\n")).expect_err("typo rejected");
    assert!(error.to_string().contains("listen_on"), "{error}");
    let missing = dir.path().join("nope.toml");
    let error = load(&missing).expect_err("missing file");
    assert!(error.to_string().contains("nope.toml"), "{error}");
}

#[test]
fn secrets_are_redacted_in_debug_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = load(&write(&dir, &v2_only_merchant("wx1"))).expect("valid");
    let shown = format!(
        "{settings:?} {:?}",
        settings.merchants().expect("merchants")
    );
    assert!(!shown.contains(V2_KEY));
    assert!(!shown.contains("guest:guest"));
}

#[test]
fn cidr_blocks_match_their_addresses_only() {
    let ip = |text: &str| text.parse::<std::net::IpAddr>().expect("address");
    let block = Cidr::parse("10.0.0.0/8").expect("v4 block");
    assert!(block.contains(ip("10.255.0.1")));
    assert!(!block.contains(ip("11.0.0.1")));
    assert!(
        block.contains(ip("::ffff:10.1.2.3")),
        "IPv4-mapped counts as IPv4"
    );
    assert!(!block.contains(ip("::1")));
    let single = Cidr::parse("203.0.113.7").expect("one address");
    assert!(single.contains(ip("203.0.113.7")) && !single.contains(ip("203.0.113.8")));
    assert!(Cidr::parse("0.0.0.0/0")
        .expect("all")
        .contains(ip("198.51.100.1")));
    let v6 = Cidr::parse("2001:db8::/32").expect("v6 block");
    assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("2001:db9::1")));
    for bad in [
        "10.0.0.0/33",
        "2001:db8::/129",
        "10.0.0/8",
        "",
        "x/8",
        "10.0.0.0/-1",
    ] {
        assert_eq!(Cidr::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn gateway_cidr_lists_are_validated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        &dir,
        "[gateway]\ntrusted_proxies = [\"10.0.0.0/8\", \"not-a-block\"]\n",
    );
    match load(&path) {
        Err(ConfigError::Invalid { field, reason }) => {
            assert_eq!(field, "gateway.trusted_proxies");
            assert!(reason.contains("not-a-block"), "{reason}");
        }
        other => panic!("expected an invalid trusted_proxies, got {other:?}"),
    }
}

#[test]
fn the_console_section_loads_users_with_roles_and_refuses_inconsistent_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = "[console]\nlisten = \"0.0.0.0:9300\"\n\
                 [[console.users]]\nname = \"olivia\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA\"\nrole = \"operator\"\n\
                 [[console.users]]\nname = \"victor\"\nrole = \"viewer\"\n";
    let settings = load(&write(&dir, users)).expect("loads");
    assert_eq!(settings.console.listen, "0.0.0.0:9300");
    let roles: Vec<_> = settings
        .console
        .users
        .iter()
        .map(|u| (u.name.as_str(), u.role))
        .collect();
    assert_eq!(
        roles,
        [
            ("olivia", ConsoleRole::Operator),
            ("victor", ConsoleRole::Viewer)
        ]
    );
    assert!(
        !format!("{settings:?}").contains("argon2id"),
        "the hash is redacted"
    );
    assert_eq!(
        load(&write(&dir, "")).expect("defaults").console.listen,
        "127.0.0.1:9300"
    );

    let twice = "[[console.users]]\nname = \"a\"\nrole = \"viewer\"\n[[console.users]]\nname = \"a\"\nrole = \"operator\"\n";
    let error = load(&write(&dir, twice)).expect_err("duplicate user");
    assert!(
        error.to_string().contains("user a is configured twice"),
        "{error}"
    );
    let bad_role = "[[console.users]]\nname = \"a\"\nrole = \"admin\"\n";
    assert!(load(&write(&dir, bad_role)).is_err(), "unknown role");
    let header_alone = "[console]\nauth_header = \"X-Forwarded-User\"\n";
    let error = load(&write(&dir, header_alone)).expect_err("header without proxies");
    assert!(
        error.to_string().contains("console.trusted_proxies"),
        "{error}"
    );
}

/// Merchant 10000100 with the API v2 key alone, in `wx1`, and `extra` lines.
fn v2_merchant(extra: &str) -> String {
    format!(
        "[[merchants]]\nmch_id = \"10000100\"\nappids = [\"wx1\"]\napi_v2_key = \"{V2_KEY}\"\n{extra}"
    )
}

/// Merchant 10000100 as `body` (valid) configures it.
fn merchant_10000100(body: &str) -> std::sync::Arc<Merchant> {
    let dir = tempfile::tempdir().expect("tempdir");
    let merchants = load(&write(&dir, body)).expect("valid").merchants();
    merchants
        .expect("merchants")
        .get("10000100")
        .expect("merchant")
        .clone()
}

#[test]
fn confirm_by_query_is_off_by_default_and_takes_a_positive_amount_in_fen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let threshold = |body: String| merchant_10000100(&body).confirm_by_query_min_fen;
    assert_eq!(threshold(v2_merchant("")), None, "off unless configured");
    assert_eq!(
        threshold(v2_merchant("confirm_by_query_min_fen = 100000\n")),
        Some(100_000)
    );
    assert_eq!(
        threshold(v2_merchant("confirm_by_query_min_fen = 1\n")),
        Some(1)
    );
    for refused in ["0", "-500"] {
        let (mch_id, field, reason) = merchant_error(&v2_merchant(&format!(
            "confirm_by_query_min_fen = {refused}\n"
        )));
        assert_eq!(
            (mch_id.as_str(), field),
            ("10000100", "confirm_by_query_min_fen")
        );
        assert!(reason.contains("positive"), "{reason}");
    }
    // Fen are integers: a fraction (yuan written as a decimal) is refused at load.
    let error = load(&write(
        &dir,
        &v2_merchant("confirm_by_query_min_fen = 1000.5\n"),
    ))
    .expect_err("a fraction of a fen");
    assert!(
        error.to_string().contains("confirm_by_query_min_fen"),
        "{error}"
    );
}

/// Merchant 1900000109 with every v3 piece but a platform key, downloading its platform
/// certificates or not.
fn downloading_merchant(download: bool) -> String {
    let key = include_str!("../../testkit/fixtures/other_private.pem");
    format!(
        "[[merchants]]\nmch_id = \"1900000109\"\nappids = [\"wx1\"]\napi_v2_key = \"{V2_KEY}\"\n\
         api_v3_key = \"{V3_KEY}\"\nmerchant_serial = \"MERCHANT_SERIAL\"\n\
         merchant_private_key_pem = \"\"\"{key}\"\"\"\ndownload_platform_certificates = {download}\n"
    )
}

#[test]
fn a_downloading_merchant_needs_its_v3_credentials_and_no_file_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = load(&write(&dir, &downloading_merchant(true))).expect("loads");
    let merchants = settings.merchants().expect("valid");
    let merchant = merchants.get("1900000109").unwrap();
    assert!(merchant.download_platform_certificates && merchant.uses_v3());
    assert_eq!(
        settings.reconciler.platform_certificates_refresh_secs,
        43_200
    );

    let without_serial =
        downloading_merchant(true).replace("merchant_serial = \"MERCHANT_SERIAL\"\n", "");
    match load(&write(&dir, &without_serial)) {
        Err(ConfigError::Merchant { mch_id, field, .. }) => {
            assert_eq!((mch_id.as_str(), field), ("1900000109", "merchant_serial"));
        }
        other => panic!("{other:?}"),
    }
    let without_v3_key = v2_only_merchant("wx1") + "download_platform_certificates = true\n";
    match load(&write(&dir, &without_v3_key)) {
        Err(ConfigError::Merchant { field, .. }) => assert_eq!(field, "api_v3_key"),
        other => panic!("{other:?}"),
    }
    // Not downloading: a v3 merchant needs a key of its own, as before.
    match load(&write(&dir, &downloading_merchant(false))) {
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

#[test]
fn sub_mch_ids_make_a_service_provider_and_are_validated() {
    let provider = v2_merchant;
    let sub_merchants = |body: String| merchant_10000100(&body).sub_merchants.clone();
    let direct = sub_merchants(provider(""));
    assert_eq!(direct, SubMerchants::Direct, "absent: a direct merchant");
    assert!(direct.serves("") && !direct.serves("1900000201"));
    assert_eq!(
        sub_merchants(provider("sub_mch_ids = []\n")),
        SubMerchants::Direct
    );
    let listed = sub_merchants(provider("sub_mch_ids = [\"1900000201\", \"1900000202\"]\n"));
    assert!(listed.serves("1900000202"));
    assert!(!listed.serves("1900000299") && !listed.serves(""));
    let any = sub_merchants(provider("sub_mch_ids = [\"*\"]\n"));
    assert_eq!(any, SubMerchants::Any);
    assert!(any.serves("1900000299") && !any.serves(""));

    for refused in [
        "[\"*\", \"1900000201\"]",
        "[\"19000002x1\"]",
        "[\"\"]",
        "[\"10000100\"]",
        "[\"1900000201\", \"1900000201\"]",
    ] {
        let (mch_id, field, _) = merchant_error(&provider(&format!("sub_mch_ids = {refused}\n")));
        assert_eq!(
            (mch_id.as_str(), field),
            ("10000100", "sub_mch_ids"),
            "{refused}"
        );
    }
}
