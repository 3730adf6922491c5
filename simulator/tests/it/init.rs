//! `init`: files the services accept, idempotence, --force.

use std::process::Command;

use secrecy::ExposeSecret;
use wxpay_runtime::config::Settings;
use wxpay_simulator::init::{init, InitError, InitOptions, InitOutcome};
use wxpay_simulator::secrets::SimMerchant;

#[test]
fn init_writes_a_configuration_the_services_load() {
    let dir = tempfile::tempdir().unwrap();
    let options = InitOptions {
        dir: dir.path().join("config"),
        ..InitOptions::default()
    };
    let outcome = init(&options).unwrap();
    let InitOutcome::Written {
        platform_serial, ..
    } = outcome
    else {
        panic!("expected files written, got {outcome:?}");
    };
    assert!(platform_serial.starts_with("PUB_KEY_ID_01"));

    let settings =
        Settings::load_with_env(&options.dir.join("example.toml"), std::iter::empty()).unwrap();
    assert_eq!(
        settings.rabbitmq.url.expose_secret(),
        "amqp://guest:guest@127.0.0.1:5672/%2f"
    );
    assert_eq!(settings.redis.url.expose_secret(), "redis://127.0.0.1:6379");
    assert_eq!(
        settings.database.url.expose_secret(),
        "postgres://postgres@127.0.0.1:5432/wxpay"
    );
    assert_eq!(settings.wechatpay.api_base, "http://127.0.0.1:8090");
    let merchants = settings.merchants().unwrap();
    let m = merchants.get("1900000109").expect("the test merchant");
    assert!(m.uses_v3());
    assert!(m.has_appid("wxd930ea5d5a258f4f"));
    assert_eq!(m.api_v2_key.expose_secret().len(), 32);

    let sim = SimMerchant::load(&options.dir.join("simulator.toml")).unwrap();
    // The serial keeps its case through the config loader, and names the platform's key.
    assert_eq!(
        m.platform_keys.get(&platform_serial),
        Some(&sim.platform_public_key)
    );
    assert_eq!(sim.platform_serial, platform_serial);
    let signer = m
        .signer
        .as_ref()
        .expect("merchant signer for the reconciler");
    assert_eq!(signer.serial, sim.merchant_serial);
    assert_eq!(signer.private_key.public_key(), sim.merchant_public_key);
    assert_eq!(
        sim.api_v3_key,
        m.api_v3_key.as_ref().unwrap().expose_secret()
    );
    assert_ne!(sim.api_v2_key, sim.api_v3_key);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(options.dir.join("simulator.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "secrets readable by others: {mode:o}");
    }
}

#[test]
fn second_init_keeps_files_and_force_replaces_them() {
    let dir = tempfile::tempdir().unwrap();
    let options = InitOptions {
        dir: dir.path().to_path_buf(),
        ..InitOptions::default()
    };
    init(&options).unwrap();
    let before = std::fs::read(dir.path().join("example.toml")).unwrap();
    let sim_before = std::fs::read(dir.path().join("simulator.toml")).unwrap();
    assert!(matches!(init(&options).unwrap(), InitOutcome::Kept { .. }));
    assert_eq!(
        std::fs::read(dir.path().join("example.toml")).unwrap(),
        before
    );
    assert_eq!(
        std::fs::read(dir.path().join("simulator.toml")).unwrap(),
        sim_before
    );

    let forced = InitOptions {
        force: true,
        ..options.clone()
    };
    assert!(matches!(
        init(&forced).unwrap(),
        InitOutcome::Written { .. }
    ));
    assert_ne!(
        std::fs::read(dir.path().join("example.toml")).unwrap(),
        before
    );

    // Only one of the pair present: refuse rather than write mismatched keys.
    std::fs::remove_file(dir.path().join("simulator.toml")).unwrap();
    assert!(matches!(init(&options), Err(InitError::HalfPresent { .. })));
}

#[test]
fn kept_files_that_disagree_are_reported() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for d in [&a, &b] {
        init(&InitOptions {
            dir: d.path().to_path_buf(),
            ..InitOptions::default()
        })
        .unwrap();
    }
    std::fs::copy(
        b.path().join("simulator.toml"),
        a.path().join("simulator.toml"),
    )
    .unwrap();
    let err = init(&InitOptions {
        dir: a.path().to_path_buf(),
        ..InitOptions::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("different keys"), "{err}");
}

#[test]
fn cli_init_is_idempotent_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_wxpay-sim"))
            .args(["init", "--dir"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{first:?}");
    assert!(String::from_utf8_lossy(&first.stdout).contains("wrote"));
    let second = run();
    assert!(second.status.success(), "{second:?}");
    assert!(String::from_utf8_lossy(&second.stdout).contains("kept existing"));

    let bad = Command::new(env!("CARGO_BIN_EXE_wxpay-sim"))
        .args(["init", "--force", "--mch-id", "abc", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(err.lines().count(), 1, "one-line error: {err}");
    assert!(err.contains("--mch-id"), "{err}");
}
