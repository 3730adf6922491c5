//! The configuration file (TOML), every key overridable by `WXPAY__SECTION__KEY`, and
//! optionally a second file of `[[merchants]]` only.
//!
//! Resolution of the file: `--config PATH`, else `$WXPAY_CONFIG`, else `config/wxpay.toml`.
//! The merchants file: `--merchants PATH`, else `$WXPAY_MERCHANTS_FILE`, else none (the
//! merchants are in the configuration file). Its merchants join the configuration file's.
//! Secrets are [`SecretString`]: their `Debug` is redacted, so a logged configuration never
//! shows a key. [`Settings::merchants`] validates every merchant once at start-up and turns
//! the PEMs into keys; an error names the merchant and the field, never the secret.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use wxpay_shared::v3::keys::{load_private_key_pem, PlatformKeys, PrivateKey};
use wxpay_shared::v3::PlatformCertificate;

/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "WXPAY_CONFIG";
/// Where the configuration is read from when neither `--config` nor `WXPAY_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/wxpay.toml";
/// Environment variable naming a file of `[[merchants]]` tables only, read beside the
/// configuration file: in Kubernetes the Secret mounted as it is, so that an update of the
/// Secret reaches running processes ([`crate::reload`]).
pub const MERCHANTS_FILE_ENV: &str = "WXPAY_MERCHANTS_FILE";
/// Prefix of overriding environment variables: `WXPAY__RABBITMQ__URL` sets `rabbitmq.url`.
pub const ENV_PREFIX: &str = "WXPAY";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub gateway: GatewaySettings,
    #[serde(default)]
    pub worker: WorkerSettings,
    #[serde(default)]
    pub rabbitmq: RabbitmqSettings,
    #[serde(default)]
    pub redis: RedisSettings,
    #[serde(default)]
    pub database: DatabaseSettings,
    #[serde(default)]
    pub wechatpay: WechatpaySettings,
    #[serde(default)]
    pub reconciler: ReconcilerSettings,
    #[serde(default)]
    pub merchants: Vec<MerchantSettings>,
    #[serde(default)]
    pub console: ConsoleSettings,
}

/// `[gateway]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySettings {
    /// Serves the notify routes and /healthz /readyz /metrics.
    pub listen: String,
    /// Larger bodies are answered 413 before any parsing.
    pub body_limit_bytes: usize,
    /// No broker confirm by then: answer FAIL so WeChat Pay re-sends.
    pub publish_timeout_ms: u64,
    /// Long-lived confirm channels that publishes are spread over.
    pub publish_channels: usize,
    /// Upper bound on a graceful drain after SIGTERM.
    pub shutdown_timeout_ms: u64,
    /// HTTP worker threads (0: one per core).
    pub http_workers: usize,
    /// The public notify base URL WeChat Pay calls (e.g. `https://pay.example.com`); only
    /// `wxpay-worker doctor` reads it, to check its shape and the route from outside.
    pub public_url: Option<String>,
    /// Every notify request is answered within this, counted from its headers: body,
    /// verification and broker included. Past it: FAIL (WeChat Pay gives up at ~5 s).
    pub answer_deadline_ms: u64,
    /// A body not fully received by then is answered 408 (slow senders hold a connection).
    pub body_read_timeout_ms: u64,
    /// Headers not fully received by then: the connection is answered 408 and closed.
    pub header_read_timeout_ms: u64,
    /// Publishes awaiting their confirm at once; past it, FAIL at once (WeChat Pay re-sends).
    pub max_in_flight: usize,
    /// Notify requests per second per client address (0: no limit). Off by default.
    pub rate_limit_per_second: u32,
    /// Requests a client address may send at once above its rate (token bucket size).
    pub rate_limit_burst: u32,
    /// CIDR blocks allowed to send notifications (empty: everyone). Off by default.
    pub allow_sources: Vec<String>,
    /// CIDR blocks of the proxies in front of the gateway: only from them is
    /// `X-Forwarded-For` believed. Empty: the client is the TCP peer.
    pub trusted_proxies: Vec<String>,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            listen: "0.0.0.0:8080".into(),
            body_limit_bytes: 65_536,
            publish_timeout_ms: 2_000,
            publish_channels: 4,
            shutdown_timeout_ms: 10_000,
            http_workers: 0,
            public_url: None,
            answer_deadline_ms: 4_000,
            body_read_timeout_ms: 2_000,
            header_read_timeout_ms: 2_000,
            max_in_flight: 1_024,
            rate_limit_per_second: 0,
            rate_limit_burst: 20,
            allow_sources: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[worker]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Serves /healthz /readyz /metrics.
    pub metrics_listen: String,
    /// Unacknowledged deliveries the broker hands this worker; also bounds concurrency.
    pub prefetch: u16,
    /// Delays of the retry tiers; past the last one a message is parked.
    pub retry_delays_ms: Vec<u64>,
    /// Lifetime of a Redis claim taken before work (a crashed worker's claim expires).
    pub claim_ttl_ms: u64,
    /// Lifetime of a Redis `done` marker: longer than WeChat Pay's ~24 h of re-sends and
    /// the reconciler's horizon.
    pub done_ttl_secs: u64,
    /// PostgreSQL connections of the pool.
    pub db_pool_size: usize,
    /// How often the outbox relay looks for unpublished events.
    pub outbox_poll_ms: u64,
    /// Upper bound on a graceful drain after SIGTERM.
    pub shutdown_timeout_ms: u64,
    /// A notification for an order that does not exist yet is retried this long after its
    /// receipt (the business system's insert may be late), then parked as `unknown_order`.
    pub unknown_order_grace_secs: u64,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            metrics_listen: "0.0.0.0:9091".into(),
            prefetch: 200,
            retry_delays_ms: vec![1_000, 10_000, 60_000, 600_000],
            claim_ttl_ms: 30_000,
            done_ttl_secs: 72 * 3600,
            db_pool_size: 16,
            outbox_poll_ms: 200,
            shutdown_timeout_ms: 30_000,
            unknown_order_grace_secs: 600,
        }
    }
}

/// `[rabbitmq]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitmqSettings {
    /// Holds the broker password: a secret.
    pub url: SecretString,
    /// The quorum queue; derived: `<queue>.retry.<tier>`, `<queue>.parked`.
    pub queue: String,
    /// Topic exchange of the outbox's domain events.
    pub events_exchange: String,
    pub connect_timeout_ms: u64,
}

impl Default for RabbitmqSettings {
    fn default() -> Self {
        RabbitmqSettings {
            url: SecretString::from("amqp://guest:guest@127.0.0.1:5672/%2f"),
            queue: "wxpay.notify".into(),
            events_exchange: "wxpay.events".into(),
            connect_timeout_ms: 5_000,
        }
    }
}

impl RabbitmqSettings {
    /// The parking (dead-letter) queue of poison and exhausted messages.
    pub fn parked_queue(&self) -> String {
        format!("{}.parked", self.queue)
    }

    /// The delay queue of retry tier `tier` (0-based).
    pub fn retry_queue(&self, tier: usize) -> String {
        format!("{}.retry.{tier}", self.queue)
    }

    /// The stream through which the reconciler shares the platform certificates it
    /// downloads with every gateway and worker (`runtime::platform_keys`).
    pub fn platform_keys_stream(&self) -> String {
        format!("{}.platform-keys", self.queue)
    }

    /// The alternate exchange of the events exchange and its queue (same name): events no
    /// subscriber's binding takes wait there.
    pub fn unrouted_events(&self) -> String {
        format!("{}.unrouted", self.events_exchange)
    }
}

/// `[redis]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// May hold a password: a secret.
    pub url: SecretString,
    /// Every key the worker writes starts with it.
    pub key_prefix: String,
    /// Redis is a fast path: past this the worker carries on with PostgreSQL alone.
    pub response_timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: SecretString::from("redis://127.0.0.1:6379"),
            key_prefix: "wxpay:".into(),
            response_timeout_ms: 200,
            connect_timeout_ms: 1_000,
        }
    }
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// May hold a password: a secret. The database is created by `wxpay-worker migrate`.
    pub url: SecretString,
    pub connect_timeout_ms: u64,
    /// Longest wait for a free pooled connection; past it the message goes to a retry tier
    /// instead of queueing behind a stuck pool.
    pub pool_wait_timeout_ms: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/wxpay"),
            connect_timeout_ms: 5_000,
            pool_wait_timeout_ms: 10_000,
        }
    }
}

/// `[wechatpay]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WechatpaySettings {
    /// WeChat Pay's API, or the simulator's URL in tests.
    pub api_base: String,
    pub request_timeout_ms: u64,
}

impl Default for WechatpaySettings {
    fn default() -> Self {
        WechatpaySettings {
            api_base: "https://api.mch.weixin.qq.com".into(),
            request_timeout_ms: 5_000,
        }
    }
}

/// `[reconciler]`: the active order query for notifications that never came.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcilerSettings {
    /// Pause between rounds.
    pub interval_secs: u64,
    /// Orders younger than this are left to the notification.
    pub min_age_secs: u64,
    /// Orders older than this are no longer queried.
    pub horizon_secs: u64,
    /// Orders and refunds looked at per round.
    pub batch_size: i64,
    /// Queries per second per merchant.
    pub rate_per_merchant: u32,
    /// Move a `NOTPAY` order to `CLOSED` when WeChat Pay says CLOSED / PAYERROR / REVOKED.
    pub close_unpaid: bool,
    /// Serves /healthz /readyz /metrics of `wxpay-worker reconcile`.
    pub metrics_listen: String,
    /// How often the platform certificates of the merchants with
    /// `download_platform_certificates` are downloaded again (WeChat Pay's SDKs: Go every
    /// 24 h, Java every 60 min). Under the platform keys stream's retention
    /// ([`PLATFORM_KEYS_MAX_AGE_SECS`]), so that the stream always holds a recent copy.
    pub platform_certificates_refresh_secs: u64,
}

/// How long the platform keys stream (`<queue>.platform-keys`) keeps a message: 7 days,
/// many refresh periods, so a process started any time finds the current certificates.
pub const PLATFORM_KEYS_MAX_AGE_SECS: u64 = 7 * 24 * 3600;

impl Default for ReconcilerSettings {
    fn default() -> Self {
        ReconcilerSettings {
            interval_secs: 60,
            min_age_secs: 120,
            horizon_secs: 48 * 3600,
            batch_size: 200,
            rate_per_merchant: 10,
            close_unpaid: true,
            metrics_listen: "0.0.0.0:9092".into(),
            platform_certificates_refresh_secs: 12 * 3600,
        }
    }
}

/// `[console]`: the operations console (`wxpay-console`), its users and how it trusts a proxy.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Serves the pages and /healthz /readyz /metrics. Loopback by default: the console
    /// can replay messages, so it is exposed on purpose (the deployment sets `0.0.0.0:9300`
    /// behind a ClusterIP Service), never by accident.
    pub listen: String,
    /// PostgreSQL connections of the console's pool (reads, and the audit insert).
    pub db_pool_size: usize,
    /// Idle sessions end after this; every session ends when the process restarts.
    pub session_ttl_secs: u64,
    /// Failed logins per user name and client address within `login_window_secs`; past it
    /// the login form answers 429 until the window has passed.
    pub login_max_failures: u32,
    pub login_window_secs: u64,
    /// Set `Secure` on the session cookie always. Without it, `Secure` is set when a
    /// trusted proxy says `X-Forwarded-Proto: https`.
    pub secure_cookies: bool,
    /// A header an authenticating proxy sets to the user's name (e.g. `X-Forwarded-User`),
    /// honoured only from `trusted_proxies`; the name must be one of `users`, whose role
    /// applies. Unset: form login only.
    pub auth_header: Option<String>,
    /// CIDRs of the proxies whose `auth_header` and `X-Forwarded-Proto` are believed.
    pub trusted_proxies: Vec<String>,
    /// `[[console.users]]`.
    pub users: Vec<ConsoleUser>,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            listen: "127.0.0.1:9300".into(),
            db_pool_size: 4,
            session_ttl_secs: 8 * 3600,
            login_max_failures: 5,
            login_window_secs: 300,
            secure_cookies: false,
            auth_header: None,
            trusted_proxies: Vec::new(),
            users: Vec::new(),
        }
    }
}

/// One `[[console.users]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleUser {
    pub name: String,
    /// An argon2id PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`). Absent: the user
    /// can only come through the trusted `auth_header`. Redacted in `Debug`.
    #[serde(default)]
    pub password_hash: Option<SecretString>,
    pub role: ConsoleRole,
}

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleRole {
    /// Reads every page.
    Viewer,
    /// Also replays parked messages and resolves anomalies.
    Operator,
}

impl ConsoleRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleRole::Viewer => "viewer",
            ConsoleRole::Operator => "operator",
        }
    }
}

impl ConsoleSettings {
    /// What needs no cryptography: names, duplicates, limits. `wxpay-console` parses the
    /// PHC strings and CIDRs at start-up too.
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        if self.db_pool_size == 0 {
            return invalid("console.db_pool_size", "must be positive".into());
        }
        if self.session_ttl_secs == 0 {
            return invalid("console.session_ttl_secs", "must be positive".into());
        }
        if self.login_window_secs == 0 {
            return invalid("console.login_window_secs", "must be positive".into());
        }
        if self.login_max_failures == 0 {
            return invalid("console.login_max_failures", "must be positive".into());
        }
        if self.auth_header.as_deref().is_some_and(str::is_empty) {
            return invalid("console.auth_header", "must not be empty when set".into());
        }
        if self.auth_header.is_some() && self.trusted_proxies.is_empty() {
            return invalid(
                "console.trusted_proxies",
                "auth_header needs the proxies it is believed from".into(),
            );
        }
        let mut names = std::collections::HashSet::new();
        for user in &self.users {
            if user.name.is_empty() || user.name.chars().any(char::is_control) {
                return invalid(
                    "console.users",
                    "a user name is empty or unprintable".into(),
                );
            }
            if !names.insert(user.name.as_str()) {
                return invalid(
                    "console.users",
                    format!("user {} is configured twice", user.name),
                );
            }
        }
        Ok(())
    }
}

/// One `[[merchants]]` entry as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerchantSettings {
    pub mch_id: String,
    /// Every appid its notifications may carry: a service provider lists its `sp_appid` and
    /// its sub-merchants' `sub_appid`s.
    pub appids: Vec<String>,
    /// The sub-merchants a service provider (服务商) serves, by `sub_mch_id`: absent or
    /// empty for a direct merchant; `["*"]` for any (the orders table decides).
    #[serde(default)]
    pub sub_mch_ids: Vec<String>,
    /// API v2 key (32 ASCII chars): v2 signatures and refund `req_info`. Needed by v3
    /// merchants too: hand-made refunds are notified in v2 format.
    pub api_v2_key: SecretString,
    /// APIv3 key (32 bytes): decrypts v3 resources.
    #[serde(default)]
    pub api_v3_key: Option<SecretString>,
    /// Serial (`PUB_KEY_ID_…` or certificate serial) → PEM; several side by side for rotation.
    #[serde(default)]
    pub platform_public_keys: BTreeMap<String, String>,
    /// Signs the reconciler's v3 API calls.
    #[serde(default)]
    pub merchant_private_key_pem: Option<SecretString>,
    #[serde(default)]
    pub merchant_serial: Option<String>,
    /// A successful payment of at least this many fen is applied only once WeChat Pay's
    /// order query confirms it (state, amount, transaction). Absent: never queried.
    #[serde(default, deserialize_with = "whole_fen")]
    pub confirm_by_query_min_fen: Option<i64>,
    /// The reconciler downloads this merchant's platform certificates from
    /// `GET /v3/certificates` and shares them with every gateway and worker (needs
    /// `api_v3_key`, `merchant_private_key_pem` and `merchant_serial`); the merchant may
    /// then have no `platform_public_keys` of its own.
    #[serde(default)]
    pub download_platform_certificates: bool,
}

/// An amount in fen as written in the file: an integer. A decimal (`1000.5`, perhaps meant
/// as yuan) is refused instead of rounded, as the `config` crate would round it.
fn whole_fen<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    struct Integer;
    impl serde::de::Visitor<'_> for Integer {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer number of fen")
        }
        fn visit_i64<E: serde::de::Error>(self, fen: i64) -> Result<i64, E> {
            Ok(fen)
        }
        fn visit_u64<E: serde::de::Error>(self, fen: u64) -> Result<i64, E> {
            i64::try_from(fen)
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(fen), &self))
        }
    }
    struct Fen(i64);
    impl<'de> Deserialize<'de> for Fen {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Fen, D::Error> {
            deserializer.deserialize_any(Integer).map(Fen)
        }
    }
    Ok(Option::<Fen>::deserialize(deserializer)?.map(|Fen(fen)| fen))
}

/// Which sub-merchants a merchant serves ([`MerchantSettings::sub_mch_ids`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubMerchants {
    /// A direct merchant: its notifications name no sub-merchant.
    Direct,
    /// A service provider for these sub-merchants only.
    Listed(Vec<String>),
    /// A service provider for any sub-merchant (`"*"`): its orders decide.
    Any,
}

/// The value of `sub_mch_ids` that serves any sub-merchant.
pub const ANY_SUB_MCH_ID: &str = "*";

impl SubMerchants {
    /// Whether a notification naming `sub_mch_id` (empty: none) may be applied for this
    /// merchant: a direct merchant's names none, a provider's names one it serves.
    pub fn serves(&self, sub_mch_id: &str) -> bool {
        match self {
            SubMerchants::Direct => sub_mch_id.is_empty(),
            SubMerchants::Listed(ids) => ids.iter().any(|id| id == sub_mch_id),
            SubMerchants::Any => !sub_mch_id.is_empty(),
        }
    }
}

/// A merchant ready for use: keys checked and parsed once.
#[derive(Clone)]
pub struct Merchant {
    pub mch_id: String,
    pub appids: Vec<String>,
    /// A service provider's sub-merchants; [`SubMerchants::Direct`] for a direct merchant.
    pub sub_merchants: SubMerchants,
    pub api_v2_key: SecretString,
    pub api_v3_key: Option<SecretString>,
    pub platform_keys: PlatformKeys,
    /// Present when the merchant can call API v3 (reconciler).
    pub signer: Option<MerchantSigner>,
    /// Payments of at least this many fen (positive) wait for the order query's
    /// confirmation before they are applied; `None`: off.
    pub confirm_by_query_min_fen: Option<i64>,
    /// Platform certificates downloaded by the reconciler and shared through the platform
    /// keys stream are added to `platform_keys`.
    pub download_platform_certificates: bool,
}

impl Merchant {
    /// Whether `appid` is one of this merchant's.
    pub fn has_appid(&self, appid: &str) -> bool {
        self.appids.iter().any(|own| own == appid)
    }

    /// Whether this merchant receives v3 notifications (and is queried through API v3).
    pub fn uses_v3(&self) -> bool {
        self.api_v3_key.is_some()
            && (!self.platform_keys.is_empty() || self.download_platform_certificates)
    }
}

impl std::fmt::Debug for Merchant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Merchant")
            .field("mch_id", &self.mch_id)
            .field("appids", &self.appids)
            .field("sub_merchants", &self.sub_merchants)
            .field("platform_keys", &self.platform_keys)
            .field("v3", &self.api_v3_key.is_some())
            .finish_non_exhaustive()
    }
}

/// The merchant's own API certificate key and its serial.
#[derive(Clone)]
pub struct MerchantSigner {
    pub serial: String,
    pub private_key: PrivateKey,
}

/// The configured merchants by `mch_id`.
#[derive(Debug, Clone, Default)]
pub struct Merchants(HashMap<String, Arc<Merchant>>);

impl Merchants {
    /// A copy where `mch_id` also has `certificates` among its platform keys (a serial it
    /// has already keeps its key). The other merchants are shared, not copied.
    pub(crate) fn with_certificates(
        &self,
        mch_id: &str,
        certificates: &[PlatformCertificate],
    ) -> Merchants {
        let mut merchants = self.0.clone();
        if let Some(merchant) = merchants.get_mut(mch_id) {
            let mut updated = Merchant::clone(merchant);
            for certificate in certificates {
                if updated.platform_keys.get(&certificate.serial).is_none() {
                    updated.platform_keys.insert_certificate(
                        certificate.serial.clone(),
                        certificate.key.clone(),
                        certificate.not_after,
                    );
                }
            }
            *merchant = Arc::new(updated);
        }
        Merchants(merchants)
    }

    pub fn get(&self, mch_id: &str) -> Option<&Arc<Merchant>> {
        self.0.get(mch_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Merchant>> {
        self.0.values()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why the configuration cannot be used. Never carries a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("merchant {mch_id}: {field}: {reason}")]
    Merchant {
        mch_id: String,
        field: &'static str,
        reason: String,
    },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn load_error(path: &Path, reason: String) -> ConfigError {
    ConfigError::Load {
        path: path.to_path_buf(),
        reason: without_quoted_source(&reason),
    }
}

/// A TOML syntax error quotes the offending line (`5 | api_v3_key = "…`), which may hold a
/// key: only the position and the message are kept.
fn without_quoted_source(reason: &str) -> String {
    reason
        .lines()
        .filter(|line| {
            !line
                .trim_start()
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start()
                .starts_with('|')
        })
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `--config` and `--merchants` options every binary takes (flattened into its command
/// line; global, so they may follow a subcommand).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigFileArgs {
    /// Configuration file (else $WXPAY_CONFIG, else config/wxpay.toml).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// A file of `[[merchants]]` tables only, added to the configuration file's (else
    /// $WXPAY_MERCHANTS_FILE, else none).
    #[arg(long, global = true, value_name = "PATH")]
    pub merchants: Option<PathBuf>,
}

impl ConfigFileArgs {
    /// The files these options, the environment and the default name.
    pub fn files(&self) -> ConfigFiles {
        ConfigFiles::resolve(self.config.as_deref(), self.merchants.as_deref())
    }
}

/// The files a configuration is read from. Converts from a path: that configuration file
/// alone, with its merchants in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFiles {
    /// Every section, and `[[merchants]]` unless they are in `merchants`.
    pub config: PathBuf,
    /// `[[merchants]]` tables and nothing else, added to the configuration file's.
    pub merchants: Option<PathBuf>,
}

impl ConfigFiles {
    /// `--config`, else `$WXPAY_CONFIG`, else the default; `--merchants`, else
    /// `$WXPAY_MERCHANTS_FILE` (when not empty), else none.
    pub fn resolve(config: Option<&Path>, merchants: Option<&Path>) -> ConfigFiles {
        ConfigFiles {
            config: resolve_path(config),
            merchants: merchants.map(Path::to_path_buf).or_else(|| {
                std::env::var_os(MERCHANTS_FILE_ENV)
                    .filter(|path| !path.is_empty())
                    .map(PathBuf::from)
            }),
        }
    }
}

impl<P: AsRef<Path> + ?Sized> From<&P> for ConfigFiles {
    fn from(config: &P) -> ConfigFiles {
        ConfigFiles {
            config: config.as_ref().to_path_buf(),
            merchants: None,
        }
    }
}

impl std::fmt::Display for ConfigFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.config.display())?;
        match &self.merchants {
            Some(merchants) => write!(f, " with merchants {}", merchants.display()),
            None => Ok(()),
        }
    }
}

/// The files' text, read once: a reload fingerprints the same text it parses.
#[derive(Hash)]
pub(crate) struct ConfigTexts {
    config: String,
    merchants: Option<String>,
}

pub(crate) fn read_files(files: &ConfigFiles) -> Result<ConfigTexts, ConfigError> {
    Ok(ConfigTexts {
        config: read_file(&files.config, "pass --config or set WXPAY_CONFIG")?,
        merchants: files
            .merchants
            .as_deref()
            .map(|path| read_file(path, "named by --merchants or WXPAY_MERCHANTS_FILE"))
            .transpose()?,
    })
}

fn read_file(path: &Path, named_by: &str) -> Result<String, ConfigError> {
    if !path.is_file() {
        return Err(load_error(path, format!("no such file ({named_by})")));
    }
    std::fs::read_to_string(path).map_err(|error| load_error(path, error.to_string()))
}

/// The `WXPAY__…` variables of `env`: the only ones that override the file.
pub(crate) fn overrides(env: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    let prefix = format!("{ENV_PREFIX}__");
    env.into_iter()
        .filter(|(key, _)| key.starts_with(&prefix))
        .collect()
}

/// The configuration file's text with the `overrides` on top, and the merchants file's
/// `[[merchants]]` after the configuration file's; not yet deserialised.
pub(crate) fn sources(
    files: &ConfigFiles,
    texts: &ConfigTexts,
    overrides: Vec<(String, String)>,
) -> Result<config::Config, ConfigError> {
    let mut built = config::Config::builder()
        .add_source(config::File::from_str(
            &texts.config,
            config::FileFormat::Toml,
        ))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides.into_iter().collect())),
        )
        .build()
        .map_err(|error| load_error(&files.config, error.to_string()))?;
    if let (Some(path), Some(text)) = (&files.merchants, &texts.merchants) {
        let added = merchants_file_entries(path, text)?;
        let mut table = top_level(&files.config, built.cache)?;
        let mut entries = take_merchants(&files.config, &mut table)?;
        entries.extend(added);
        table.insert(
            "merchants".to_owned(),
            config::Value::new(None, config::ValueKind::Array(entries)),
        );
        built.cache = config::Value::new(None, config::ValueKind::Table(table));
    }
    Ok(built)
}

/// The `[[merchants]]` entries of a merchants file, each of the shape a merchant has (so
/// that a mistake is reported against this file, not the configuration file). Anything
/// else in it is refused: the other sections belong in the configuration file.
fn merchants_file_entries(path: &Path, text: &str) -> Result<Vec<config::Value>, ConfigError> {
    let built = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .map_err(|error| load_error(path, error.to_string()))?;
    let mut table = top_level(path, built.cache)?;
    let entries = take_merchants(path, &mut table)?;
    if let Some(other) = table.keys().next() {
        return Err(load_error(
            path,
            format!(
                "a merchants file holds [[merchants]] tables only; `{other}` belongs in the \
                 configuration file"
            ),
        ));
    }
    for (index, entry) in entries.iter().enumerate() {
        entry
            .clone()
            .try_deserialize::<MerchantSettings>()
            .map_err(|error| load_error(path, format!("[[merchants]] #{}: {error}", index + 1)))?;
    }
    Ok(entries)
}

fn top_level(
    path: &Path,
    cache: config::Value,
) -> Result<config::Map<String, config::Value>, ConfigError> {
    cache
        .into_table()
        .map_err(|error| load_error(path, error.to_string()))
}

/// The `[[merchants]]` entries of a file's top level, taken out of it.
fn take_merchants(
    path: &Path,
    table: &mut config::Map<String, config::Value>,
) -> Result<Vec<config::Value>, ConfigError> {
    match table.remove("merchants") {
        Some(merchants) => merchants
            .into_array()
            .map_err(|_| load_error(path, "`merchants` must be [[merchants]] tables".into())),
        None => Ok(Vec::new()),
    }
}

/// The configuration file to read: `--config`, else `$WXPAY_CONFIG`, else the default.
pub fn resolve_path(cli: Option<&Path>) -> PathBuf {
    match cli {
        Some(path) => path.to_path_buf(),
        None => std::env::var_os(CONFIG_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH)),
    }
}

impl Settings {
    /// Reads the files and the process environment's `WXPAY__…` overrides, and validates.
    pub fn load(files: impl Into<ConfigFiles>) -> Result<Settings, ConfigError> {
        Self::load_with_env(files, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given (tests).
    pub fn load_with_env(
        files: impl Into<ConfigFiles>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let settings = Self::read_with_env(files, env)?;
        settings.validate()?;
        Ok(settings)
    }

    /// As [`Settings::load_with_env`] without [`Settings::validate`]: `doctor` reports each
    /// problem of a configuration the services would refuse, instead of stopping at the first.
    pub fn read_with_env(
        files: impl Into<ConfigFiles>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let files = files.into();
        let texts = read_files(&files)?;
        Self::from_sources(&files, sources(&files, &texts, overrides(env))?)
    }

    /// The settings of [`sources`] (the reload compares those sources' raw values too).
    pub(crate) fn from_sources(
        files: &ConfigFiles,
        built: config::Config,
    ) -> Result<Settings, ConfigError> {
        built
            .try_deserialize()
            .map_err(|error| load_error(&files.config, error.to_string()))
    }

    /// Checks what can be checked without a network: limits, and every merchant's keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.into(),
            })
        };
        if self.gateway.body_limit_bytes == 0 {
            return invalid("gateway.body_limit_bytes", "must be positive");
        }
        if self.gateway.publish_timeout_ms == 0 {
            return invalid("gateway.publish_timeout_ms", "must be positive");
        }
        if self.gateway.publish_channels == 0 {
            return invalid("gateway.publish_channels", "must be positive");
        }
        for (field, value) in [
            (
                "gateway.answer_deadline_ms",
                self.gateway.answer_deadline_ms,
            ),
            (
                "gateway.body_read_timeout_ms",
                self.gateway.body_read_timeout_ms,
            ),
            (
                "gateway.header_read_timeout_ms",
                self.gateway.header_read_timeout_ms,
            ),
        ] {
            if value == 0 {
                return invalid(field, "must be positive");
            }
        }
        if self.gateway.max_in_flight == 0 {
            return invalid("gateway.max_in_flight", "must be positive");
        }
        if self.gateway.rate_limit_per_second > 0 && self.gateway.rate_limit_burst == 0 {
            return invalid(
                "gateway.rate_limit_burst",
                "must be positive with a rate limit",
            );
        }
        for (field, blocks) in [
            ("gateway.allow_sources", &self.gateway.allow_sources),
            ("gateway.trusted_proxies", &self.gateway.trusted_proxies),
        ] {
            if let Some(bad) = blocks.iter().find(|block| Cidr::parse(block).is_none()) {
                return Err(ConfigError::Invalid {
                    field,
                    reason: format!("{bad:?} is not an IP address or CIDR block"),
                });
            }
        }
        if self.worker.prefetch == 0 {
            return invalid("worker.prefetch", "must be positive");
        }
        if self.worker.retry_delays_ms.is_empty() || self.worker.retry_delays_ms.contains(&0) {
            return invalid(
                "worker.retry_delays_ms",
                "needs at least one positive delay",
            );
        }
        if self.rabbitmq.queue.is_empty() {
            return invalid("rabbitmq.queue", "must not be empty");
        }
        let refresh = self.reconciler.platform_certificates_refresh_secs;
        if refresh == 0 || refresh >= PLATFORM_KEYS_MAX_AGE_SECS {
            return Err(ConfigError::Invalid {
                field: "reconciler.platform_certificates_refresh_secs",
                reason: format!(
                    "must be positive and under the platform keys stream's retention \
                     ({PLATFORM_KEYS_MAX_AGE_SECS} s)"
                ),
            });
        }
        self.console.validate()?;
        self.merchants().map(|_| ())
    }

    /// The merchants, validated, with their keys parsed.
    pub fn merchants(&self) -> Result<Merchants, ConfigError> {
        let mut merchants = HashMap::with_capacity(self.merchants.len());
        for entry in &self.merchants {
            let merchant = entry.validate()?;
            if merchants
                .insert(merchant.mch_id.clone(), Arc::new(merchant))
                .is_some()
            {
                return Err(ConfigError::Merchant {
                    mch_id: entry.mch_id.clone(),
                    field: "mch_id",
                    reason: "configured twice".into(),
                });
            }
        }
        Ok(Merchants(merchants))
    }
}

/// Whether `id` has the shape of a WeChat Pay merchant id (digits).
fn is_mch_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())
}

impl MerchantSettings {
    /// `sub_mch_ids` read: none (direct), `["*"]` (any), or distinct merchant ids.
    fn sub_merchants(&self) -> Result<SubMerchants, String> {
        let ids = &self.sub_mch_ids;
        if ids.is_empty() {
            return Ok(SubMerchants::Direct);
        }
        if ids.iter().any(|id| id == ANY_SUB_MCH_ID) {
            return match ids.len() {
                1 => Ok(SubMerchants::Any),
                _ => Err(format!("\"{ANY_SUB_MCH_ID}\" must be the only value")),
            };
        }
        if let Some(bad) = ids.iter().find(|id| !is_mch_id(id) || **id == self.mch_id) {
            return Err(format!(
                "{bad:?} is not a sub-merchant id (digits, not the provider's own)"
            ));
        }
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != ids.len() {
            return Err("lists a sub-merchant twice".into());
        }
        Ok(SubMerchants::Listed(ids.clone()))
    }

    fn validate(&self) -> Result<Merchant, ConfigError> {
        let error = |field, reason: String| ConfigError::Merchant {
            mch_id: self.mch_id.clone(),
            field,
            reason,
        };
        if !is_mch_id(&self.mch_id) {
            return Err(error(
                "mch_id",
                "must be the digits of a WeChat Pay merchant id".into(),
            ));
        }
        if self.appids.is_empty() || self.appids.iter().any(String::is_empty) {
            return Err(error("appids", "needs at least one non-empty appid".into()));
        }
        let sub_merchants = self
            .sub_merchants()
            .map_err(|reason| error("sub_mch_ids", reason))?;
        // https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=4_3 : the key is 32 characters.
        let v2_key = self.api_v2_key.expose_secret();
        if v2_key.len() != 32 || !v2_key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(error(
                "api_v2_key",
                format!(
                    "must be 32 printable ASCII characters (got {})",
                    v2_key.len()
                ),
            ));
        }
        if let Some(v3_key) = &self.api_v3_key {
            let length = v3_key.expose_secret().len();
            if length != 32 {
                return Err(error(
                    "api_v3_key",
                    format!("must be 32 bytes (got {length})"),
                ));
            }
        }
        let mut platform_keys = PlatformKeys::new();
        for (serial, pem) in &self.platform_public_keys {
            platform_keys.insert_pem(serial, pem).map_err(|reason| {
                error("platform_public_keys", format!("serial {serial}: {reason}"))
            })?;
        }
        if self.download_platform_certificates {
            // https://pay.weixin.qq.com/doc/v3/merchant/4012551764 : the download is a
            // signed v3 call, and its certificates are encrypted with the APIv3 key.
            for (field, present) in [
                ("api_v3_key", self.api_v3_key.is_some()),
                (
                    "merchant_private_key_pem",
                    self.merchant_private_key_pem.is_some(),
                ),
                ("merchant_serial", self.merchant_serial.is_some()),
            ] {
                if !present {
                    return Err(error(
                        field,
                        "needed with download_platform_certificates".into(),
                    ));
                }
            }
        } else if self.api_v3_key.is_some() && platform_keys.is_empty() {
            return Err(error(
                "platform_public_keys",
                "an APIv3 merchant needs at least one platform public key to verify notifications \
                 (or download_platform_certificates = true)"
                    .into(),
            ));
        }
        let signer = match (&self.merchant_private_key_pem, &self.merchant_serial) {
            (Some(pem), Some(serial)) => Some(MerchantSigner {
                serial: serial.clone(),
                private_key: load_private_key_pem(pem.expose_secret())
                    .map_err(|reason| error("merchant_private_key_pem", reason.to_string()))?,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(error(
                    "merchant_serial",
                    "needed with merchant_private_key_pem".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(error(
                    "merchant_private_key_pem",
                    "needed with merchant_serial".into(),
                ))
            }
        };
        if let Some(min_fen) = self.confirm_by_query_min_fen.filter(|fen| *fen <= 0) {
            return Err(error(
                "confirm_by_query_min_fen",
                format!("must be a positive amount in fen (got {min_fen}); leave it out to turn the query off"),
            ));
        }
        Ok(Merchant {
            mch_id: self.mch_id.clone(),
            appids: self.appids.clone(),
            sub_merchants,
            api_v2_key: self.api_v2_key.clone(),
            api_v3_key: self.api_v3_key.clone(),
            platform_keys,
            signer,
            confirm_by_query_min_fen: self.confirm_by_query_min_fen,
            download_platform_certificates: self.download_platform_certificates,
        })
    }
}

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`, or a single address), for the gateway's
/// source allowlist and trusted proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `address[/prefix]`; `None` when malformed or the prefix is too long.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let network: std::net::IpAddr = address.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix.parse().ok().filter(|p| *p <= max)?,
        };
        Some(Cidr { network, prefix })
    }

    /// Whether `address` is inside (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, address: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
            IpAddr::V6(v6) => u128::from(v6),
        };
        if address.is_ipv4() != self.network.is_ipv4() {
            return false;
        }
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0);
        bits(address) & mask == bits(self.network) & mask
    }
}
