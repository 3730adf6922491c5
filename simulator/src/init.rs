//! `wxpay-sim init`: a test merchant, its keys, and the two files that use them.
//!
//! - `example.toml`: the configuration of gateway and worker (the `wxpay_runtime::config`
//!   format, every section with local defaults), with the merchant's API v2 / APIv3 keys, the
//!   platform PUBLIC key under a `PUB_KEY_ID_…` serial and the merchant's own API key pair;
//! - `simulator.toml`: the same merchant plus the platform PRIVATE key, so the simulator can
//!   sign as WeChat Pay.
//!
//! Idempotent: existing files are kept unless `--force`. At the end both files are loaded
//! back with the real loaders, so a file that init writes is one the services accept.

use std::path::{Path, PathBuf};

use chrono::Utc;
use rand::Rng;
use secrecy::ExposeSecret;
use wxpay_runtime::config::Settings;
use wxpay_shared::v3::keys::{load_private_key_pem, public_key_to_pem, KeyError, PrivateKey};

use crate::build::random_string;
use crate::secrets::{
    MerchantSecrets, PlatformSecrets, SimMerchant, SimSecretsFile, SubMerchant, DEFAULT_ORDERS_FILE,
};

/// File name of the services' configuration.
pub const EXAMPLE_FILE: &str = "example.toml";
/// File name of the simulator's secrets.
pub const SIM_FILE: &str = "simulator.toml";
/// The simulator's default `serve` address, written as `wechatpay.api_base`.
pub const DEFAULT_SERVE_URL: &str = "http://127.0.0.1:8090";

/// What to create.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub dir: PathBuf,
    pub force: bool,
    pub mch_id: String,
    pub appid: String,
    /// Written as `wechatpay.api_base`.
    pub api_base: String,
    /// RSA modulus size of both key pairs (2048 as WeChat Pay; tests may use less).
    pub key_bits: usize,
    /// A service provider (服务商) with two sub-merchants ([`PARTNER_SUB_MCH_IDS`]), the first
    /// with a `sub_appid` of its own, instead of a direct merchant.
    pub partner: bool,
}

/// The sub-merchants of `wxpay-sim init --partner`.
pub const PARTNER_SUB_MCH_IDS: [&str; 2] = ["1900000201", "1900000202"];

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("config"),
            force: false,
            mch_id: "1900000109".into(),
            appid: "wxd930ea5d5a258f4f".into(),
            api_base: DEFAULT_SERVE_URL.into(),
            key_bits: 2048,
            partner: false,
        }
    }
}

/// What init did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    Written {
        example: PathBuf,
        simulator: PathBuf,
        mch_id: String,
        platform_serial: String,
    },
    Kept {
        example: PathBuf,
        simulator: PathBuf,
    },
}

/// Why init failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{existing} exists but {missing} does not; they must hold the same keys: rerun with --force to write both")]
    HalfPresent { existing: PathBuf, missing: PathBuf },
    #[error("invalid option: {0}")]
    Option(String),
    #[error("RSA key generation failed: {0}")]
    Generate(String),
    #[error("a generated key does not load: {0}")]
    Key(#[from] KeyError),
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("the written configuration does not load back: {0}")]
    Validate(String),
}

/// Runs init.
pub fn init(options: &InitOptions) -> Result<InitOutcome, InitError> {
    let example = options.dir.join(EXAMPLE_FILE);
    let simulator = options.dir.join(SIM_FILE);
    if !options.force {
        match (example.exists(), simulator.exists()) {
            (true, true) => {
                validate(&example, &simulator)?;
                return Ok(InitOutcome::Kept { example, simulator });
            }
            (true, false) => {
                return Err(InitError::HalfPresent {
                    existing: example,
                    missing: simulator,
                })
            }
            (false, true) => {
                return Err(InitError::HalfPresent {
                    existing: simulator,
                    missing: example,
                })
            }
            (false, false) => {}
        }
    }
    check_options(options)?;
    let secrets = new_merchant(options)?;
    let example_text = example_toml(&secrets, options);
    let sim_text = secrets
        .to_toml()
        .map_err(|e| InitError::Validate(e.to_string()))?;
    let sim_text = format!(
        "# wxpay-sim secrets: the test merchant {} and WeChat Pay's platform PRIVATE key.\n\
         # Written by `wxpay-sim init`. Test keys only: never use them in production.\n\n{sim_text}",
        secrets.merchant.mch_id
    );
    std::fs::create_dir_all(&options.dir).map_err(|e| InitError::Write {
        path: options.dir.clone(),
        reason: e.to_string(),
    })?;
    write_file(&simulator, &sim_text, true)?;
    write_file(&example, &example_text, false)?;
    validate(&example, &simulator)?;
    Ok(InitOutcome::Written {
        example,
        simulator,
        mch_id: secrets.merchant.mch_id,
        platform_serial: secrets.platform.serial,
    })
}

fn check_options(o: &InitOptions) -> Result<(), InitError> {
    if o.mch_id.is_empty() || !o.mch_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InitError::Option("--mch-id must be digits".into()));
    }
    if o.appid.is_empty() || !o.appid.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(InitError::Option("--appid must be alphanumeric".into()));
    }
    if o.partner && PARTNER_SUB_MCH_IDS.contains(&o.mch_id.as_str()) {
        return Err(InitError::Option(format!(
            "--mch-id of a service provider must not be one of its sub-merchants {PARTNER_SUB_MCH_IDS:?}"
        )));
    }
    // ring, which signs and verifies in the services, takes 2048 to 4096 bits.
    if !(2048..=4096).contains(&o.key_bits) {
        return Err(InitError::Option("--key-bits must be 2048 ..= 4096".into()));
    }
    Ok(())
}

/// A fresh RSA key and its PKCS#8 PEM (`PRIVATE KEY`, like WeChat Pay's
/// `apiclient_key.pem`). ring cannot generate RSA keys, so the `rsa` crate does, here only:
/// the key is then loaded back through the services' own loader.
fn generate_key(bits: usize) -> Result<(PrivateKey, String), InitError> {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let generate = |e: &dyn std::fmt::Display| InitError::Generate(e.to_string());
    let pem = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), bits)
        .map_err(|e| generate(&e))?
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| generate(&e))?;
    Ok((load_private_key_pem(&pem)?, pem.to_string()))
}

/// A fresh merchant: random keys and serials.
fn new_merchant(o: &InitOptions) -> Result<SimSecretsFile, InitError> {
    let (platform, platform_pem) = generate_key(o.key_bits)?;
    let (merchant, merchant_pem) = generate_key(o.key_bits)?;
    let mut rng = rand::thread_rng();
    // Shaped like WeChat Pay's: PUB_KEY_ID_ + 01 + mch_id + date + digits.
    let platform_serial = format!(
        "PUB_KEY_ID_01{}{}{:08}",
        o.mch_id,
        Utc::now().format("%Y%m%d"),
        rng.gen_range(0..100_000_000u32)
    );
    // A merchant API certificate serial: 40 uppercase hex digits.
    let merchant_serial = hex::encode_upper(rng.gen::<[u8; 20]>());
    Ok(SimSecretsFile {
        merchant: MerchantSecrets {
            mch_id: o.mch_id.clone(),
            appid: o.appid.clone(),
            api_v2_key: random_string(32),
            api_v3_key: random_string(32),
            merchant_serial,
            merchant_public_key_pem: public_key_to_pem(&merchant.public_key()),
            merchant_private_key_pem: merchant_pem,
            sub_merchants: if o.partner {
                let own_appid = format!("wx{}", hex::encode(rng.gen::<[u8; 8]>()));
                let [first, second] = PARTNER_SUB_MCH_IDS;
                vec![
                    SubMerchant {
                        sub_mch_id: first.to_owned(),
                        sub_appid: own_appid,
                    },
                    SubMerchant {
                        sub_mch_id: second.to_owned(),
                        sub_appid: String::new(),
                    },
                ]
            } else {
                Vec::new()
            },
        },
        platform: PlatformSecrets {
            serial: platform_serial,
            private_key_pem: platform_pem,
            public_key_pem: public_key_to_pem(&platform.public_key()),
            certificates: Vec::new(),
        },
        orders_file: DEFAULT_ORDERS_FILE.to_owned(),
    })
}

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The services' configuration: every section of `Settings` with local defaults.
pub fn example_toml(s: &SimSecretsFile, o: &InitOptions) -> String {
    let m = &s.merchant;
    format!(
        r#"# wxpay-notify configuration for local runs and tests, written by `wxpay-sim init`.
# Every key can be overridden by environment as WXPAY__SECTION__KEY (e.g. WXPAY__RABBITMQ__URL).
# The merchant below is the simulator's TEST merchant: its keys are not secret, never use them
# in production.

[gateway]
listen = "0.0.0.0:8080"            # also serves /healthz /readyz /metrics
body_limit_bytes = 65536
publish_timeout_ms = 2000          # no confirm by then -> answer FAIL, WeChat re-sends
publish_channels = 4
shutdown_timeout_ms = 10000
http_workers = 0                   # 0 = one per core
answer_deadline_ms = 4000          # every notify request answered by then (body, verify, broker), else FAIL
body_read_timeout_ms = 2000        # body not received by then -> 408 (slow senders)
header_read_timeout_ms = 2000      # headers not received by then -> 408, connection closed
max_in_flight = 1024               # publishes awaiting a confirm; past it FAIL at once (WeChat re-sends)
rate_limit_per_second = 0          # per client address; 0 = off (see "Behind an ingress")
rate_limit_burst = 20
allow_sources = []                 # CIDR allowlist of senders; empty = everyone (off)
trusted_proxies = []               # CIDR of proxies whose X-Forwarded-For is believed

[worker]
metrics_listen = "0.0.0.0:9091"
prefetch = 200
retry_delays_ms = [1000, 10000, 60000, 600000]
claim_ttl_ms = 30000
done_ttl_secs = 259200
db_pool_size = 16
outbox_poll_ms = 200
shutdown_timeout_ms = 30000

[rabbitmq]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
queue = "wxpay.notify"             # quorum queue; derived: wxpay.notify.retry.<tier>, wxpay.notify.parked
events_exchange = "wxpay.events"   # topic exchange for domain events from the outbox
connect_timeout_ms = 5000

[redis]
url = "redis://127.0.0.1:6379"
key_prefix = "wxpay:"
response_timeout_ms = 200
connect_timeout_ms = 1000

[database]
url = "postgres://postgres@127.0.0.1:5432/wxpay"   # created by `wxpay-worker migrate` if missing
connect_timeout_ms = 5000

[wechatpay]
api_base = {api_base}   # `wxpay-sim serve` (https://api.mch.weixin.qq.com in production)
request_timeout_ms = 5000

[reconciler]
interval_secs = 60
min_age_secs = 120
horizon_secs = 172800
batch_size = 200
rate_per_merchant = 10
close_unpaid = true
metrics_listen = "0.0.0.0:9092"

[[merchants]]
mch_id = {mch_id}
appids = [{appids}]{sub_mch_ids}
api_v2_key = {v2}
api_v3_key = {v3}
merchant_serial = {merchant_serial}
merchant_private_key_pem = {merchant_pem}
# confirm_by_query_min_fen = 100000   # optional: payments of at least this many fen wait for the order query

[merchants.platform_public_keys]   # serial -> PEM (PUBLIC KEY or CERTIFICATE), several for rotation
{serial} = {platform_pem}
"#,
        api_base = q(&o.api_base),
        mch_id = q(&m.mch_id),
        appids = std::iter::once(m.appid.as_str())
            .chain(m.sub_merchants.iter().map(|sub| sub.sub_appid.as_str()))
            .filter(|appid| !appid.is_empty())
            .map(q)
            .collect::<Vec<_>>()
            .join(", "),
        sub_mch_ids = match m.sub_merchants.as_slice() {
            [] => String::new(),
            subs => format!(
                "\nsub_mch_ids = [{}]   # a service provider: its sub-merchants",
                subs.iter()
                    .map(|sub| q(&sub.sub_mch_id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        v2 = q(&m.api_v2_key),
        v3 = q(&m.api_v3_key),
        merchant_serial = q(&m.merchant_serial),
        merchant_pem = q(&m.merchant_private_key_pem),
        serial = q(&s.platform.serial),
        platform_pem = q(&s.platform.public_key_pem),
    )
}

fn write_file(path: &Path, text: &str, private: bool) -> Result<(), InitError> {
    let err = |e: std::io::Error| InitError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).map_err(err)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Loads both files back with the real loaders and checks they describe the same merchant.
/// The process environment is not applied (a stray `WXPAY__…` must not hide a bad file).
pub fn validate(example: &Path, simulator: &Path) -> Result<(), InitError> {
    let v = |reason: String| InitError::Validate(reason);
    let settings =
        Settings::load_with_env(example, std::iter::empty()).map_err(|e| v(e.to_string()))?;
    let merchants = settings.merchants().map_err(|e| v(e.to_string()))?;
    let sim = SimMerchant::load(simulator).map_err(|e| v(e.to_string()))?;
    let m = merchants.get(&sim.mch_id).ok_or_else(|| {
        v(format!(
            "merchant {} of {} is not in {}",
            sim.mch_id,
            simulator.display(),
            example.display()
        ))
    })?;
    let same = m.has_appid(&sim.appid)
        && m.api_v2_key.expose_secret() == sim.api_v2_key
        && m.api_v3_key.as_ref().map(|k| k.expose_secret()) == Some(sim.api_v3_key.as_str())
        && m.platform_keys.get(&sim.platform_serial) == Some(&sim.platform_public_key)
        && m.signer.as_ref().is_some_and(|s| {
            s.serial == sim.merchant_serial && s.private_key == sim.merchant_private_key
        })
        && sim.sub_merchants.iter().all(|sub| {
            m.sub_merchants.serves(&sub.sub_mch_id)
                && (sub.sub_appid.is_empty() || m.has_appid(&sub.sub_appid))
        });
    if !same {
        return Err(v(format!(
            "{} and {} describe different keys for merchant {}: rerun `wxpay-sim init --force`",
            example.display(),
            simulator.display(),
            sim.mch_id
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wxpay_shared::v3::{load_public_key_pem, sign_sha256_rsa, verify_sha256_rsa};

    #[test]
    fn generated_keys_sign_and_verify_through_their_pems() {
        let (key, pem) = generate_key(2048).expect("2048-bit key");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(load_private_key_pem(&pem), Ok(key.clone()));
        let public = load_public_key_pem(&public_key_to_pem(&key.public_key())).expect("loads");
        let signature = sign_sha256_rsa(&key, b"message");
        assert_eq!(verify_sha256_rsa(&public, b"message", &signature), Ok(()));
    }

    #[test]
    fn keys_ring_cannot_use_are_refused() {
        // The rsa crate makes a 1024-bit key; the services' loader must refuse it.
        assert!(matches!(
            generate_key(1024),
            Err(InitError::Key(KeyError::Invalid { .. }))
        ));
        assert!(matches!(generate_key(0), Err(InitError::Generate(_))));
    }
}
