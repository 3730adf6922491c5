//! Merchants reloaded from the configuration file while running: a new serial is added
//! whole, a file a start-up would refuse changes nothing, and snapshots taken before a
//! reload keep the keys they were taken with. Merchants from a second file (a Kubernetes
//! Secret mounted as it is): added to the configuration file's, and reloaded when the
//! kubelet swaps the volume's `..data` symlink.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wxpay_runtime::config::{ConfigError, ConfigFiles, Settings};
use wxpay_runtime::reload::{IdChanges, MerchantsHandle, ReloadError, Reloaded, Reloader, Trigger};

const MCH_ID: &str = "1900000109";
const OTHER_MCH_ID: &str = "1900000110";
const V2_KEY: &str = "192006250b4c09247ec02edce69f6a2d";
const V3_KEY: &str = "Zyxwvutsrqponmlkjihgfedcba543210";
const OLD_SERIAL: &str = "PUB_KEY_ID_0119000001092025OLD";
const NEW_SERIAL: &str = "PUB_KEY_ID_0119000001092026NEW";
const OLD_PEM: &str = include_str!("fixtures/platform_public.pem");
const NEW_PEM: &str = include_str!("fixtures/new_platform_public.pem");

/// A configuration without merchants.
fn gateway_section(listen: &str) -> String {
    format!("[gateway]\nlisten = \"{listen}\"\n")
}

/// A `[[merchants]]` table: a v3 merchant verifying with `keys` (serial, PEM).
fn merchant(mch_id: &str, keys: &[(&str, &str)]) -> String {
    let mut text = format!(
        r#"
[[merchants]]
mch_id = "{mch_id}"
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

/// A configuration with one v3 merchant verifying with `keys` (serial, PEM).
fn config(listen: &str, keys: &[(&str, &str)]) -> String {
    gateway_section(listen) + &merchant(MCH_ID, keys)
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
            serials: IdChanges {
                added: vec![format!("{MCH_ID}/{NEW_SERIAL}")],
                removed: Vec::new(),
            },
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
    assert_eq!(reloaded.serials.removed, [format!("{MCH_ID}/{OLD_SERIAL}")]);
    assert!(reloaded.serials.added.is_empty());
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
    assert!(!handle.files_changed());
}

#[test]
fn the_poll_sees_each_change_once_and_a_refused_file_is_not_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, handle) = load(&dir, &old_serial_only());
    assert!(!handle.files_changed(), "as loaded");
    write(&path, "[[merchants]]\nmch_id = \"1\"\n");
    assert!(handle.files_changed());
    handle.reload(Trigger::FileChanged).expect_err("refused");
    assert!(!handle.files_changed(), "a refused file is not read again");
    std::fs::remove_file(&path).expect("removed");
    assert!(handle.files_changed(), "a vanished file is a change too");
    handle.reload(Trigger::FileChanged).expect_err("refused");
    assert!(!handle.files_changed());
    assert_eq!(serials(&handle.current()), [OLD_SERIAL]);
}

/// A reloader polling every 50 ms.
fn poll_quickly(handle: &MerchantsHandle) -> Reloader {
    Reloader::spawn(handle.clone(), Some(Duration::from_millis(50))).expect("reloader")
}

/// Waits up to 10 s for the merchant's serials to become `expected`.
async fn wait_for_serials(handle: &MerchantsHandle, expected: &[&str]) {
    let started = Instant::now();
    while serials(&handle.current()) != expected {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the poll never reloaded: {:?}",
            serials(&handle.current())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reloader_picks_up_a_changed_file_by_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, handle) = load(&dir, &old_serial_only());
    let reloader = poll_quickly(&handle);
    write(&path, &both_serials());
    wait_for_serials(&handle, &[OLD_SERIAL, NEW_SERIAL]).await;
    drop(reloader);
    write(&path, &config("0.0.0.0:8080", &[(NEW_SERIAL, NEW_PEM)]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        serials(&handle.current()).len(),
        2,
        "a dropped reloader reloads nothing"
    );
}

// ------------------------------------------------------------------ the merchants file

/// The configuration file `config` and the merchants file `merchants` in `dir`.
fn two_files(dir: &tempfile::TempDir, config: &str, merchants: &str) -> ConfigFiles {
    let files = ConfigFiles {
        config: dir.path().join("wxpay.toml"),
        merchants: Some(dir.path().join("merchants.toml")),
    };
    write(&files.config, config);
    write(
        files.merchants.as_deref().expect("merchants file"),
        merchants,
    );
    files
}

/// The configuration file with its merchant under the old serial, and a merchants file with
/// `mch_id` under the new one.
fn merchant_in_each_file(dir: &tempfile::TempDir, mch_id: &str) -> ConfigFiles {
    let merchants = merchant(mch_id, &[(NEW_SERIAL, NEW_PEM)]);
    two_files(dir, &old_serial_only(), &merchants)
}

fn load_files(files: &ConfigFiles) -> Result<Settings, ConfigError> {
    Settings::load_with_env(files.clone(), Vec::new())
}

#[test]
fn a_merchants_file_adds_its_merchants_to_the_configuration_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = merchant_in_each_file(&dir, OTHER_MCH_ID);
    let merchants = load_files(&files)
        .expect("loads")
        .merchants()
        .expect("valid");
    let mut ids: Vec<&str> = merchants.iter().map(|m| m.mch_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, [MCH_ID, OTHER_MCH_ID]);

    // The Kubernetes shape: no merchant in the configuration file, all in the Secret's.
    write(&files.config, &gateway_section("0.0.0.0:8080"));
    let (settings, handle) =
        MerchantsHandle::load_with_env(files.clone(), Vec::new()).expect("loads");
    assert_eq!(settings.gateway.listen, "0.0.0.0:8080");
    let current = handle.current();
    assert_eq!(current.len(), 1);
    assert!(current.get(OTHER_MCH_ID).is_some_and(|m| m.uses_v3()));
}

#[test]
fn a_merchant_in_both_files_is_refused_as_configured_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = merchant_in_each_file(&dir, MCH_ID);
    match load_files(&files) {
        Err(ConfigError::Merchant { mch_id, field, .. }) => {
            assert_eq!((mch_id.as_str(), field), (MCH_ID, "mch_id"));
        }
        other => panic!("refused naming the merchant, got {other:?}"),
    }

    // The same file arriving while running: refused, the keys in use stay.
    write(
        files.merchants.as_deref().expect("merchants file"),
        &merchant(OTHER_MCH_ID, &[(NEW_SERIAL, NEW_PEM)]),
    );
    let (_, handle) = MerchantsHandle::load_with_env(files.clone(), Vec::new()).expect("loads");
    write(
        files.merchants.as_deref().expect("merchants file"),
        &merchant(MCH_ID, &[(NEW_SERIAL, NEW_PEM)]),
    );
    let error = handle.reload(Trigger::FileChanged).expect_err("refused");
    assert!(error.to_string().contains(MCH_ID), "{error}");
    assert_eq!(handle.current().len(), 2);
}

#[test]
fn a_missing_merchants_file_is_an_error_naming_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = ConfigFiles {
        config: dir.path().join("wxpay.toml"),
        merchants: Some(dir.path().join("secret").join("merchants.toml")),
    };
    write(&files.config, &gateway_section("0.0.0.0:8080"));
    let error = load_files(&files).expect_err("refused");
    match &error {
        ConfigError::Load { path, .. } => assert_eq!(Some(path), files.merchants.as_ref()),
        other => panic!("a load error naming the file, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains(&dir.path().join("secret").display().to_string())
            && message.contains("WXPAY_MERCHANTS_FILE"),
        "names the path and what named it: {message}"
    );
}

#[test]
fn a_merchants_file_holds_merchants_only_and_its_mistakes_name_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = two_files(
        &dir,
        &gateway_section("0.0.0.0:8080"),
        &(gateway_section("0.0.0.0:9999") + &merchant(MCH_ID, &[(OLD_SERIAL, OLD_PEM)])),
    );
    let message = load_files(&files).expect_err("refused").to_string();
    assert!(
        message.contains("merchants.toml") && message.contains("`gateway`"),
        "names the file and the section: {message}"
    );

    // A merchant without its API v2 key: the merchants file is the one named.
    let without_v2_key = merchant(MCH_ID, &[(OLD_SERIAL, OLD_PEM)])
        .replace(&format!("api_v2_key = \"{V2_KEY}\"\n"), "");
    write(
        files.merchants.as_deref().expect("merchants file"),
        &without_v2_key,
    );
    match load_files(&files) {
        Err(ConfigError::Load { path, reason }) => {
            assert_eq!(Some(&path), files.merchants.as_ref());
            assert!(reason.contains("api_v2_key"), "{reason}");
        }
        other => panic!("a load error naming the merchants file, got {other:?}"),
    }
}

/// A Secret volume as the kubelet writes it: `merchants.toml` is a symlink to
/// `..data/merchants.toml`, and `..data` a symlink to a folder of this version. An update
/// writes a new folder, points a new symlink at it and renames that over `..data` (one
/// atomic step), then removes the old folder; `merchants.toml` itself is never touched.
struct SecretVolume {
    dir: PathBuf,
    version: u32,
}

impl SecretVolume {
    fn create(dir: PathBuf, merchants: &str) -> SecretVolume {
        std::fs::create_dir(&dir).expect("volume");
        let mut volume = SecretVolume { dir, version: 0 };
        volume.update(merchants);
        std::os::unix::fs::symlink("..data/merchants.toml", volume.file()).expect("file link");
        volume
    }

    fn file(&self) -> PathBuf {
        self.dir.join("merchants.toml")
    }

    fn update(&mut self, merchants: &str) {
        let folder = |version: u32| {
            self.dir
                .join(format!("..2025_06_01_00_00_{version:02}.000000001"))
        };
        let (old, new) = (folder(self.version), folder(self.version + 1));
        std::fs::create_dir(&new).expect("new version");
        write(&new.join("merchants.toml"), merchants);
        let staged = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(new.file_name().expect("name"), &staged).expect("staged link");
        std::fs::rename(&staged, self.dir.join("..data")).expect("swapped");
        if self.version > 0 {
            std::fs::remove_dir_all(old).expect("old version removed");
        }
        self.version += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_volume_updated_by_swapping_its_data_symlink_is_reloaded_by_the_poll() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("wxpay.toml");
    write(&config, &gateway_section("0.0.0.0:8080"));
    let mut volume = SecretVolume::create(
        dir.path().join("merchants"),
        &merchant(MCH_ID, &[(OLD_SERIAL, OLD_PEM)]),
    );
    let files = ConfigFiles {
        config,
        merchants: Some(volume.file()),
    };
    let (_, handle) = MerchantsHandle::load_with_env(files, Vec::new()).expect("loads");
    let _reloader = poll_quickly(&handle);

    volume.update(&merchant(
        MCH_ID,
        &[(OLD_SERIAL, OLD_PEM), (NEW_SERIAL, NEW_PEM)],
    ));
    wait_for_serials(&handle, &[OLD_SERIAL, NEW_SERIAL]).await;
    // Again: the path is opened anew on each poll, whichever folder it leads to now.
    volume.update(&merchant(MCH_ID, &[(NEW_SERIAL, NEW_PEM)]));
    wait_for_serials(&handle, &[NEW_SERIAL]).await;
    assert!(!handle.files_changed(), "each version read once");
}
