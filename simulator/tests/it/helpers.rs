//! Shared fixtures: a fresh test merchant per test, in its own temporary directory.

use std::path::PathBuf;

use tempfile::TempDir;
use wxpay_simulator::init::{init, InitOptions};
use wxpay_simulator::secrets::SimMerchant;

/// A merchant written by `init` into a temporary directory (removed on drop).
pub struct Fixture {
    pub dir: TempDir,
    pub merchant: SimMerchant,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = InitOptions {
            dir: dir.path().to_path_buf(),
            ..InitOptions::default()
        };
        init(&options).expect("init");
        let merchant = SimMerchant::load(&dir.path().join("simulator.toml")).expect("load secrets");
        Self { dir, merchant }
    }

    pub fn sim_config(&self) -> PathBuf {
        self.dir.path().join("simulator.toml")
    }
}
