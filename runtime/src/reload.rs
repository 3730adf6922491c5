//! The merchants of a running service, reloaded without a restart.
//!
//! WeChat Pay rotates its signing key by adding one: for some days a new platform
//! certificate (or WeChat Pay public key, `PUB_KEY_ID_…`) signs some notifications under its
//! own `Wechatpay-Serial` while the old one signs the others, so both must verify
//! ([平台证书更新指引](https://pay.weixin.qq.com/wiki/doc/apiv3/wechatpay/wechatpay5_0.shtml)).
//! Adding that serial must not need every gateway, worker and reconciler restarted, so each
//! of them holds its merchants in a [`MerchantsHandle`] and runs a [`Reloader`]: on SIGHUP,
//! and when the content of the configuration file or of the merchants file changes (polled
//! every [`FILE_POLL_INTERVAL`]), both files and the `WXPAY__…` overrides the process started
//! with are read again and validated as a start-up would validate them. A configuration that a
//! start-up would refuse is refused with one log line naming the merchant and the field;
//! the keys in use stay. Otherwise the whole new set replaces the old one atomically.
//!
//! Each request, delivery or reconciler round takes [`MerchantsHandle::current`] once at
//! its start and keeps that snapshot to its end: in-flight work finishes with the keys it
//! started with, and never sees half of a reload.
//!
//! Only `[[merchants]]` reload. Other sections (listen addresses, URLs, limits) need a
//! restart; a reload that finds them changed names them in its log line
//! (`restart_needed_for`).
//!
//! The files are polled by content (a hash every few seconds) rather than watched with
//! inotify or by modification time: Kubernetes replaces a mounted Secret or ConfigMap by
//! swapping the `..data` symlink of its volume (no event on the file's own path), and a copy
//! that keeps the old modification time would be missed. Each poll opens the paths again,
//! so it reads through the new symlink; reading a few kilobytes every few seconds costs
//! nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use tracing::{info, warn};

use crate::config::{self, ConfigError, ConfigFiles, ConfigTexts, Merchants, Settings};
use crate::telemetry::{metric, step};

/// How often the reloader looks at the content of the configuration and merchants files.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Values of the `result` label of `wxpay_config_reloads_total`.
pub mod result {
    /// The new merchants are in use.
    pub const OK: &str = "ok";
    /// The new configuration failed validation (or could not be read): the old keys stay.
    pub const REFUSED: &str = "refused";
}

/// Describes `wxpay_config_reloads_total` and creates both series at zero (every process
/// that reloads calls it with its other metrics).
pub fn register_metrics() {
    metrics::describe_counter!(
        metric::CONFIG_RELOADS_TOTAL,
        "Merchant reloads (SIGHUP or a changed configuration or merchants file), by result (ok | refused)"
    );
    for label in [result::OK, result::REFUSED] {
        metrics::counter!(metric::CONFIG_RELOADS_TOTAL, "result" => label).increment(0);
    }
}

/// What started a reload (the `trigger` log field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Sighup,
    FileChanged,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Sighup => "SIGHUP",
            Trigger::FileChanged => "file changed",
        }
    }
}

/// Why a reload did not replace the merchants.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration is one a start-up would refuse (names merchant and field).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The handle was built from merchants in memory, not from files.
    #[error("these merchants were not loaded from a file: nothing to reload")]
    NoFile,
}

/// What a reload changed; ids only, never keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Merchants in use after the reload.
    pub merchants: usize,
    /// `mch_id`s new in this configuration, and those no longer configured.
    pub mch_ids: IdChanges,
    /// `mch_id`s kept whose entry changed in any way (keys, appids, serials).
    pub merchants_changed: Vec<String>,
    /// Platform key serials, as `mch_id/serial`, new in this configuration and no longer
    /// configured.
    pub serials: IdChanges,
    /// Sections other than `[[merchants]]` that differ from what the process started with:
    /// they apply only after a restart.
    pub restart_needed_for: Vec<String>,
}

/// The ids one configuration has and the other has not (merchants, key serials), sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdChanges {
    /// In the new configuration only.
    pub added: Vec<String>,
    /// In the old configuration only.
    pub removed: Vec<String>,
}

impl IdChanges {
    fn between(before: &BTreeSet<String>, after: &BTreeSet<String>) -> IdChanges {
        IdChanges {
            added: after.difference(before).cloned().collect(),
            removed: before.difference(after).cloned().collect(),
        }
    }
}

/// The merchants in use, swapped whole by a reload. Cheap to clone (shared).
#[derive(Clone)]
pub struct MerchantsHandle {
    shared: Arc<Shared>,
}

struct Shared {
    current: ArcSwap<Merchants>,
    /// `None` for merchants given in memory ([`MerchantsHandle::fixed`]). The lock also
    /// makes reloads (SIGHUP and file changes) one at a time.
    source: Option<Mutex<Source>>,
}

/// Where a reload reads from, and what it compares with. Holds the `WXPAY__…` overrides,
/// which may carry secrets: no `Debug`.
struct Source {
    files: ConfigFiles,
    overrides: Vec<(String, String)>,
    /// The other sections as the process started with them.
    started_with: BTreeMap<String, ::config::Value>,
    /// The raw `[[merchants]]` entries of the set in use, by `mch_id`.
    entries: BTreeMap<String, ::config::Value>,
    /// The fingerprint of the files as last read (used or refused): the poll reloads only
    /// when it differs, so a refused file is not refused again every few seconds.
    last_read: u64,
}

impl Source {
    /// The files as log fields: the configuration file, and the merchants file if any.
    fn paths(&self) -> (String, Option<String>) {
        let merchants = self.files.merchants.as_ref();
        (
            self.files.config.display().to_string(),
            merchants.map(|path| path.display().to_string()),
        )
    }
}

/// One read of the configuration, validated.
struct Read {
    settings: Settings,
    merchants: Merchants,
    sections: BTreeMap<String, ::config::Value>,
    entries: BTreeMap<String, ::config::Value>,
}

impl std::fmt::Debug for MerchantsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MerchantsHandle")
            .field("merchants", &self.current().len())
            .field("reloads", &self.shared.source.is_some())
            .finish()
    }
}

impl MerchantsHandle {
    /// Merchants given in memory, never reloaded (in-process tests, one-shot commands).
    pub fn fixed(merchants: Merchants) -> MerchantsHandle {
        MerchantsHandle {
            shared: Arc::new(Shared {
                current: ArcSwap::from_pointee(merchants),
                source: None,
            }),
        }
    }

    /// Loads the configuration as [`Settings::load`] does, with its merchants in a handle
    /// that reloads from the same files and the same `WXPAY__…` overrides.
    pub fn load(files: impl Into<ConfigFiles>) -> Result<(Settings, MerchantsHandle), ConfigError> {
        Self::load_with_env(files, std::env::vars())
    }

    /// As [`MerchantsHandle::load`], with the environment given (tests).
    pub fn load_with_env(
        files: impl Into<ConfigFiles>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Settings, MerchantsHandle), ConfigError> {
        let files = files.into();
        let overrides = config::overrides(env);
        let texts = config::read_files(&files)?;
        let read = read(&files, &texts, &overrides)?;
        let handle = MerchantsHandle {
            shared: Arc::new(Shared {
                current: ArcSwap::from_pointee(read.merchants),
                source: Some(Mutex::new(Source {
                    files,
                    overrides,
                    started_with: read.sections,
                    entries: read.entries,
                    last_read: fingerprint(&Ok(texts)),
                })),
            }),
        };
        Ok((read.settings, handle))
    }

    /// The merchants in use now. Take it once per request, delivery or round and keep it:
    /// a reload meanwhile does not change what that work verifies with.
    pub fn current(&self) -> Arc<Merchants> {
        self.shared.current.load_full()
    }

    /// Reads the configuration's files again and, when a start-up would accept them, puts
    /// their merchants in use. Logs one line either way (`merchants reloaded`, or the refusal
    /// naming merchant and field) and counts it in `wxpay_config_reloads_total`. Blocking
    /// (file read, key parsing): from async code, call it on a blocking thread.
    pub fn reload(&self, trigger: Trigger) -> Result<Reloaded, ReloadError> {
        let mut source = self.source()?;
        let (path, merchants_path) = source.paths();
        let texts = config::read_files(&source.files);
        source.last_read = fingerprint(&texts);
        let read = texts.and_then(|texts| read(&source.files, &texts, &source.overrides));
        match read {
            Ok(read) => {
                let before = self.current();
                let reloaded =
                    Reloaded::between(&before, &source.entries, &read, &source.started_with);
                self.shared.current.store(Arc::new(read.merchants));
                source.entries = read.entries;
                metrics::counter!(metric::CONFIG_RELOADS_TOTAL, "result" => result::OK)
                    .increment(1);
                let restart_needed_for = Some(reloaded.restart_needed_for.join(","))
                    .filter(|sections| !sections.is_empty());
                info!(
                    step = step::RELOAD,
                    trigger = trigger.as_str(),
                    path,
                    merchants_path,
                    merchants = reloaded.merchants,
                    merchants_added = %reloaded.mch_ids.added.join(","),
                    merchants_removed = %reloaded.mch_ids.removed.join(","),
                    merchants_changed = %reloaded.merchants_changed.join(","),
                    serials_added = %reloaded.serials.added.join(","),
                    serials_removed = %reloaded.serials.removed.join(","),
                    restart_needed_for,
                    "merchants reloaded"
                );
                Ok(reloaded)
            }
            Err(error) => {
                metrics::counter!(metric::CONFIG_RELOADS_TOTAL, "result" => result::REFUSED)
                    .increment(1);
                let (mch_id, field) = match &error {
                    ConfigError::Merchant { mch_id, field, .. } => {
                        (Some(mch_id.as_str()), Some(*field))
                    }
                    ConfigError::Invalid { field, .. } => (None, Some(*field)),
                    ConfigError::Load { .. } => (None, None),
                };
                warn!(
                    step = step::RELOAD,
                    trigger = trigger.as_str(),
                    path,
                    merchants_path,
                    mch_id,
                    field,
                    %error,
                    merchants = self.current().len(),
                    "merchants reload refused: the keys in use stay"
                );
                Err(error.into())
            }
        }
    }

    /// Whether the content of either file differs from its last read (the poll's question).
    pub fn files_changed(&self) -> bool {
        self.source()
            .is_ok_and(|source| fingerprint(&config::read_files(&source.files)) != source.last_read)
    }

    fn source(&self) -> Result<MutexGuard<'_, Source>, ReloadError> {
        let source = self.shared.source.as_ref().ok_or(ReloadError::NoFile)?;
        // A panic while holding it left nothing half-written that matters: the swap is the
        // last step of a reload.
        Ok(source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

/// Reads, overrides and validates as a start-up does; keeps the raw values to compare.
fn read(
    files: &ConfigFiles,
    texts: &ConfigTexts,
    overrides: &[(String, String)],
) -> Result<Read, ConfigError> {
    let built = config::sources(files, texts, overrides.to_vec())?;
    let mut sections: BTreeMap<String, ::config::Value> = built
        .cache
        .clone()
        .into_table()
        .map(|table| table.into_iter().collect())
        .unwrap_or_default();
    let entries = sections
        .remove("merchants")
        .and_then(|merchants| merchants.into_array().ok())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|entry| {
            let mch_id = entry
                .clone()
                .into_table()
                .ok()?
                .remove("mch_id")?
                .into_string()
                .ok()?;
            Some((mch_id, entry))
        })
        .collect();
    let settings = Settings::from_sources(files, built)?;
    settings.validate()?;
    let merchants = settings.merchants()?;
    Ok(Read {
        settings,
        merchants,
        sections,
        entries,
    })
}

/// A fingerprint of the files' content, or of why they could not be read.
fn fingerprint(texts: &Result<ConfigTexts, ConfigError>) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match texts {
        Ok(texts) => texts.hash(&mut hasher),
        Err(error) => error.to_string().hash(&mut hasher),
    }
    hasher.finish()
}

impl Reloaded {
    fn between(
        before: &Merchants,
        entries_before: &BTreeMap<String, ::config::Value>,
        after: &Read,
        started_with: &BTreeMap<String, ::config::Value>,
    ) -> Reloaded {
        let serials = |merchants: &Merchants| -> BTreeSet<String> {
            merchants
                .iter()
                .flat_map(|merchant| {
                    let mch_id = &merchant.mch_id;
                    merchant
                        .platform_keys
                        .serials()
                        .map(move |serial| format!("{mch_id}/{serial}"))
                })
                .collect()
        };
        let ids = |merchants: &Merchants| -> BTreeSet<String> {
            merchants
                .iter()
                .map(|merchant| merchant.mch_id.clone())
                .collect()
        };
        let (ids_before, ids_after) = (ids(before), ids(&after.merchants));
        let sections: BTreeSet<&String> =
            started_with.keys().chain(after.sections.keys()).collect();
        Reloaded {
            merchants: after.merchants.len(),
            mch_ids: IdChanges::between(&ids_before, &ids_after),
            merchants_changed: ids_before
                .intersection(&ids_after)
                .filter(|mch_id| entries_before.get(*mch_id) != after.entries.get(*mch_id))
                .cloned()
                .collect(),
            serials: IdChanges::between(&serials(before), &serials(&after.merchants)),
            restart_needed_for: sections
                .into_iter()
                .filter(|section| started_with.get(*section) != after.sections.get(*section))
                .cloned()
                .collect(),
        }
    }
}

/// Reloads its handle on SIGHUP and, when polling, when either file changes; stops when
/// dropped.
pub struct Reloader {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reloader {
    /// Installs the SIGHUP handler at once (without one, SIGHUP would end the process) and
    /// starts reloading `handle` on it, and every `poll` when the content of either file
    /// changed (`None`: SIGHUP only). Must be called within a Tokio runtime.
    pub fn spawn(handle: MerchantsHandle, poll: Option<Duration>) -> std::io::Result<Reloader> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = signal(SignalKind::hangup())?;
        let (path, merchants_path) = handle
            .source()
            .map(|source| source.paths())
            .unwrap_or_default();
        info!(
            step = step::STARTUP,
            path,
            merchants_path,
            poll_secs = poll.map(|every| every.as_secs()),
            "merchants reload on SIGHUP and when the configuration or merchants file changes"
        );
        let task = tokio::spawn(async move {
            let mut ticks = poll.map(|every| {
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks
            });
            loop {
                let trigger = tokio::select! {
                    Some(()) = hangup.recv() => Trigger::Sighup,
                    _ = tick(&mut ticks) => Trigger::FileChanged,
                };
                let handle = handle.clone();
                // File read and key parsing block: off the async workers.
                let _ = tokio::task::spawn_blocking(move || {
                    if trigger == Trigger::Sighup || handle.files_changed() {
                        let _ = handle.reload(trigger);
                    }
                })
                .await;
            }
        });
        Ok(Reloader { task })
    }
}

async fn tick(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}
