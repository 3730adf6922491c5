//! Merchants reloaded from the configuration file while running: a new serial is added
//! whole, a file a start-up would refuse changes nothing, and snapshots taken before a
//! reload keep the keys they were taken with.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wxpay_runtime::config::ConfigError;
use wxpay_runtime::reload::{MerchantsHandle, ReloadError, Reloaded, Reloader, Trigger};

const MCH_ID: &str = "1900000109";
const V2_KEY: &str = "192006250b4c09247ec02edce69f6a2d";
const V3_KEY: &str = "Zyxwvutsrqponmlkjihgfedcba543210";
const OLD_SERIAL: &str = "PUB_KEY_ID_0119000001092025OLD";
const NEW_SERIAL: &str = "PUB_KEY_ID_0119000001092026NEW";
const OLD_PEM: &str = include_str!("fixtures/platform_public.pem");
const NEW_PEM: &str = include_str!("fixtures/new_platform_public.pem");

/// A configuration with one v3 merchant verifying with `keys` (serial, PEM).
fn config(listen: &str, keys: &[(&str, &str)]) -> String {
    let mut text = format!(
        r#"[gateway]
listen = "{listen}"

[[merchants]]
mch_id = "{MCH_ID}"
appids = ["wxd930ea5d5a258f4f"]
api_v2_key = "{V2_KEY}"
api_v3_key = "{V3_KEY}"
[merchants.platform_public_keys]
"#
    );
    for (serial, pem) in keys {
        text.push_str(&format!("\"{serial}\" = '''\n{pem}'''\n"));
    }
    text
}

/// The configuration before a rotation.
fn old_serial_only() -> String {
    config("0.0.0.0:8080", &[(OLD_SERIAL, OLD_PEM)])
}

/// The configuration during a rotation: both serials verify.
fn both_serials() -> String {
    config(
        "0.0.0.0:8080",
        &[(OLD_SERIAL, OLD_PEM), (NEW_SERIAL, NEW_PEM)],
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("config written");
}

fn load(dir: &tempfile::TempDir, text: &str) -> (PathBuf, MerchantsHandle) {
    let path = dir.path().join("wxpay.toml");
    write(&path, text);
    let (_, handle) =
        MerchantsHandle::load_with_env(&path, Vec::new()).expect("the first file loads");
    (path, handle)
}

fn serials(merchants: &wxpay_runtime::config::Merchants) -> Vec<String> {
    let merchant = merchants.get(MCH_ID).expect("the merchant");
    merchant
        .platform_keys
        .serials()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_new_serial_is_added_whole_and_earlier_snapshots_keep_their_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, handle) = load(&dir, &old_serial_only());
    let in_flight = handle.current();

    write(&path, &both_serials());
    let reloaded = handle.reload(Trigger::Sighup).expect("reloaded");
    assert_eq!(
        reloaded,
        Reloaded {
            merchants: 1,
            merchants_changed: vec![MCH_ID.to_owned()],
            serials_added: vec![format!("{MCH_ID}/{NEW_SERIAL}")],
            ..Reloaded::default()
        }
    );
    assert_eq!(serials(&handle.current()), [OLD_SERIAL, NEW_SERIAL]);
    assert_eq!(
        serials(&in_flight),
        [OLD_SERIAL],
        "a snapshot never changes"
    );

    // WeChat Pay stopped signing with the old one: removed the same way.
    write(&path, &config("0.0.0.0:8080", &[(NEW_SERIAL, NEW_PEM)]));
    let reloaded = handle.reload(Trigger::FileChanged).expect("reloaded");
    assert_eq!(reloaded.serials_removed, [format!("{MCH_ID}/{OLD_SERIAL}")]);
    assert!(reloaded.serials_added.is_empty());
    assert_eq!(serials(&handle.current()), [NEW_SERIAL]);
}

#[test]
fn a_file_a_start_up_would_refuse_changes_nothing_and_names_merchant_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, handle) = load(&dir, &old_serial_only());
    let broken_pem = NEW_PEM.replace("MIIB", "MIIX");
    write(
        &path,
        &config(
            "0.0.0.0:8080",
            &[(OLD_SERIAL, OLD_PEM), (NEW_SERIAL, &broken_pem)],
        ),
    );
    match handle.reload(Trigger::Sighup) {
        Err(ReloadError::Config(ConfigError::Merchant { mch_id, field, .. })) => {
            assert_eq!((mch_id.as_str(), field), (MCH_ID, "platform_public_keys"));
        }
        other => panic!("refused naming merchant and field, got {other:?}"),
    }
    assert_eq!(
        serials(&handle.current()),
        [OLD_SERIAL],
        "the old keys stay"
    );

    // A key of the wrong length: the message names the field, never the key.
    write(&path, &old_serial_only().replace(V3_KEY, "short-secret"));
    let error = handle.reload(Trigger::Sighup).expect_err("refused");
    let text = error.to_string();
    assert!(
        text.contains(MCH_ID) && text.contains("api_v3_key"),
        "{text}"
    );
    assert!(!text.contains("short-secret"), "never the secret: {text}");
    assert_eq!(serials(&handle.current()), [OLD_SERIAL]);
}

#[test]
fn a_toml_syntax_error_is_refused_without_quoting_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, handle) = load(&dir, &old_serial_only());
    // An unterminated string on the line of a key: the parser's message would quote it.
    let text = old_serial_only().replace(&format!("\"{V2_KEY}\""), &format!("\"{V2_KEY}"));
    write(&path, &text);
    let error = handle.reload(Trigger::Sighup).expect_err("refused");
    let message = error.to_string();
    assert!(matches!(
        error,
        ReloadError::Config(ConfigError::Load { .. })
    ));
    assert!(message.contains("line"), "says where: {message}");
    assert!(
        !message.contains(V2_KEY),
        "never the line's text: {message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");
    assert_eq!(serials(&handle.current()), [OLD_SERIAL]);
}

#[test]
fn other_sections_changed_are_named_as_needing_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, handle) = load(&dir, &old_serial_only());
    write(&path, &config("0.0.0.0:9999", &[(OLD_SERIAL, OLD_PEM)]));
    let reloaded = handle
        .reload(Trigger::Sighup)
        .expect("merchants still reload");
    assert_eq!(reloaded.restart_needed_for, ["gateway"]);
    assert!(reloaded.merchants_changed.is_empty(), "{reloaded:?}");

    // Back as it started: nothing left to restart for.
    write(&path, &old_serial_only());
    let reloaded = handle.reload(Trigger::Sighup).expect("reloaded");
    assert!(reloaded.restart_needed_for.is_empty(), "{reloaded:?}");
}

#[test]
fn the_environment_overrides_are_read_again_with_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wxpay.toml");
    write(&path, &old_serial_only());
    let env = vec![(
        "WXPAY__GATEWAY__LISTEN".to_owned(),
        "127.0.0.1:7000".to_owned(),
    )];
    let (settings, handle) = MerchantsHandle::load_with_env(&path, env).expect("loads");
    assert_eq!(settings.gateway.listen, "127.0.0.1:7000");
    write(&path, &both_serials());
    let reloaded = handle.reload(Trigger::Sighup).expect("reloaded");
    assert!(
        reloaded.restart_needed_for.is_empty(),
        "the override still wins over the file: {reloaded:?}"
    );
}

#[test]
fn merchants_given_in_memory_do_not_reload() {
    let handle = MerchantsHandle::fixed(Default::default());
    assert!(matches!(
        handle.reload(Trigger::Sighup),
        Err(ReloadError::NoFile)
    ));
    assert!(!handle.file_changed());
}

#[test]
fn the_poll_sees_each_change_once_and_a_refused_file_is_not_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, handle) = load(&dir, &old_serial_only());
    assert!(!handle.file_changed(), "as loaded");
    write(&path, "[[merchants]]\nmch_id = \"1\"\n");
    assert!(handle.file_changed());
    handle.reload(Trigger::FileChanged).expect_err("refused");
    assert!(!handle.file_changed(), "a refused file is not read again");
    std::fs::remove_file(&path).expect("removed");
    assert!(handle.file_changed(), "a vanished file is a change too");
    handle.reload(Trigger::FileChanged).expect_err("refused");
    assert!(!handle.file_changed());
    assert_eq!(serials(&handle.current()), [OLD_SERIAL]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reloader_picks_up_a_changed_file_by_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, handle) = load(&dir, &old_serial_only());
    let reloader =
        Reloader::spawn(handle.clone(), Some(Duration::from_millis(50))).expect("reloader");
    write(&path, &both_serials());
    let started = Instant::now();
    while serials(&handle.current()).len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the poll never reloaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(reloader);
    write(&path, &config("0.0.0.0:8080", &[(NEW_SERIAL, NEW_PEM)]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        serials(&handle.current()).len(),
        2,
        "a dropped reloader reloads nothing"
    );
}
