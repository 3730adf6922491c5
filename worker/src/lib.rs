//! # wxpay-worker — applies WeChat Pay notifications exactly once
//!
//! The data's path, one module each:
//! [`consume`] (RabbitMQ deliveries, manual acks, bounded concurrency) →
//! [`decode`] (re-verify, decrypt, one channel-agnostic event) →
//! [`dedupe`] (Redis fast path; PostgreSQL's unique key is the authority) →
//! [`confirm`] (the order query, for a merchant's large payments, outside any transaction) →
//! [`apply`] (one transaction: notification row, locked order, state change, outbox) →
//! [`outbox`] (relay of domain events) — with [`retry`] (delay tiers, parking, `dlq`),
//! [`db`], [`migrate`], [`schema_check`] and [`http`] (/healthz /readyz /metrics) around it,
//! and [`anomaly`] (anomalies listed and resolved by a person).
//!
//! [`Worker::process_one`] is the steppable core: the consumer maps its [`Disposition`] to
//! ack, retry-then-ack or park-then-ack.

pub mod anomaly;
pub mod apply;
pub mod broker;
pub mod confirm;
pub mod consume;
pub mod db;
pub mod decode;
pub mod dedupe;
pub mod doctor;
pub mod http;
pub mod migrate;
pub mod outbox;
pub mod reconcile;
pub mod retry;
pub mod schema_check;
pub mod telemetry;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wxpay_runtime::config::{ConfigError, Merchants, Settings};
use wxpay_runtime::reload::MerchantsHandle;
use wxpay_runtime::telemetry::{metric, step};
use wxpay_shared::message::NotifyMessage;

use crate::apply::{ApplyError, Confirmation, Verdict};
use crate::confirm::Confirmer;
use crate::db::{DbPool, PoolBuildError};
use crate::decode::Decoded;
use crate::dedupe::{Begin, Claim, RedisDedupe};

/// Which dedupe layer recognised a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupeLayer {
    Redis,
    Postgres,
}

impl DedupeLayer {
    pub fn as_str(self) -> &'static str {
        match self {
            DedupeLayer::Redis => "redis",
            DedupeLayer::Postgres => "postgres",
        }
    }
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Committed a state change.
    Applied,
    /// Already done: nothing written (or, for the same payment through another channel, a
    /// `NOOP` log row).
    Duplicate { layer: DedupeLayer },
    /// Committed a log row without state change.
    Recorded,
    /// Committed a `FORWARDED` log row and its `wechatpay.<event_type>` event.
    Forwarded,
    /// Committed an anomaly (row + event); the order is unchanged.
    Anomaly { reason: String },
    /// Nothing committed; try again later (retry tier).
    Retry { reason: String },
    /// Poison: never applied; parked with the reason.
    Park { reason: String },
}

impl Disposition {
    /// The `outcome` label of `wxpay_worker_messages_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Disposition::Applied => "applied",
            Disposition::Duplicate { .. } => "duplicate",
            Disposition::Recorded => "recorded",
            Disposition::Forwarded => "forwarded",
            Disposition::Anomaly { .. } => "anomaly",
            Disposition::Retry { .. } => "retried",
            Disposition::Park { .. } => "parked",
        }
    }

    /// Whether a PostgreSQL transaction committed the message's fate (the delivery may be
    /// acked and the Redis done marker written).
    pub fn is_final(&self) -> bool {
        !matches!(self, Disposition::Retry { .. } | Disposition::Park { .. })
    }
}

/// Counters of one worker instance (tests and the benchmark read them; Prometheus has the
/// process-wide ones).
#[derive(Debug, Default)]
pub struct Stats {
    pub applied: AtomicU64,
    pub duplicate: AtomicU64,
    pub recorded: AtomicU64,
    pub forwarded: AtomicU64,
    pub anomaly: AtomicU64,
    pub retried: AtomicU64,
    /// Parked at once (poison) or after the last retry tier.
    pub parked: AtomicU64,
    pub acked: AtomicU64,
}

impl Stats {
    fn count(&self, outcome: &Disposition) {
        let counter = match outcome {
            Disposition::Applied => &self.applied,
            Disposition::Duplicate { .. } => &self.duplicate,
            Disposition::Recorded => &self.recorded,
            Disposition::Forwarded => &self.forwarded,
            Disposition::Anomaly { .. } => &self.anomaly,
            Disposition::Retry { .. } => &self.retried,
            Disposition::Park { .. } => &self.parked,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages whose fate is settled (acked after apply, retry scheduling or parking).
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    pub fn get(&self, outcome_label: &str) -> u64 {
        let counter = match outcome_label {
            "applied" => &self.applied,
            "duplicate" => &self.duplicate,
            "recorded" => &self.recorded,
            "forwarded" => &self.forwarded,
            "anomaly" => &self.anomaly,
            "retried" => &self.retried,
            "parked" => &self.parked,
            _ => return 0,
        };
        counter.load(Ordering::Relaxed)
    }
}

/// Fault injection for tests: simulate a crash between the commit and the ack.
#[derive(Debug, Default)]
pub struct Hooks {
    /// While positive, a committed delivery is not acked: its channel is closed instead (as
    /// if the process died), and the counter decremented.
    pub crash_after_commit: AtomicU32,
}

/// Why `wxpay-worker run` or `reconcile` cannot start: one type for both processes.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pool(#[from] PoolBuildError),
    #[error("query client: {0}")]
    QueryClient(#[from] reconcile::query::QueryError),
    #[error("cannot serve health and metrics on {listen}: {reason}")]
    Listen { listen: String, reason: String },
}

pub(crate) struct WorkerInner {
    pub settings: Settings,
    /// Read once per delivery: a reload meanwhile does not change the keys it started with.
    pub merchants: MerchantsHandle,
    pub pool: DbPool,
    pub dedupe: RedisDedupe,
    pub confirmer: Confirmer,
    pub stats: Stats,
    pub hooks: Hooks,
    pub broker_connected: AtomicBool,
    pub outbox_wakeup: Notify,
}

/// The worker: cheap to clone, shared by the consumer tasks.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<WorkerInner>,
}

/// The worker is ready when its consumer holds a broker connection.
impl http::Readiness for Worker {
    fn broker(&self) -> bool {
        self.broker_connected()
    }

    fn database(&self) -> &DbPool {
        self.pool()
    }
}

impl Worker {
    /// Builds the worker: merchants validated, database pool (lazy), Redis connecting in the
    /// background. Must be called within a Tokio runtime.
    pub fn new(settings: Settings) -> Result<Worker, StartError> {
        let merchants = MerchantsHandle::fixed(settings.merchants()?);
        Self::with_merchants(settings, merchants)
    }

    /// As [`Worker::new`], verifying with `merchants` (`wxpay-worker run` reloads them on
    /// SIGHUP and when the configuration file changes).
    pub fn with_merchants(
        settings: Settings,
        merchants: MerchantsHandle,
    ) -> Result<Worker, StartError> {
        telemetry::register_metrics();
        let pool = db::build_pool(
            secrecy::ExposeSecret::expose_secret(&settings.database.url),
            settings.worker.db_pool_size,
            Duration::from_millis(settings.database.connect_timeout_ms),
            Duration::from_millis(settings.database.pool_wait_timeout_ms),
        )?;
        let dedupe = RedisDedupe::new(&settings.redis, &settings.worker);
        let confirmer = Confirmer::new(&settings)?;
        Ok(Worker {
            inner: Arc::new(WorkerInner {
                settings,
                merchants,
                pool,
                dedupe,
                confirmer,
                stats: Stats::default(),
                hooks: Hooks::default(),
                broker_connected: AtomicBool::new(false),
                outbox_wakeup: Notify::new(),
            }),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn pool(&self) -> &DbPool {
        &self.inner.pool
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    pub fn hooks(&self) -> &Hooks {
        &self.inner.hooks
    }

    /// Whether the consumer holds a live broker connection.
    pub fn broker_connected(&self) -> bool {
        self.inner.broker_connected.load(Ordering::Relaxed)
    }

    /// Whether Redis is connected (the worker works without it).
    pub fn redis_connected(&self) -> bool {
        self.inner.dedupe.is_connected()
    }

    /// Consumes until `shutdown`, then finishes and acks in-flight work; relays the outbox
    /// meanwhile.
    pub async fn run(&self, shutdown: CancellationToken) {
        let relay = tokio::spawn(outbox::run(self.inner.clone(), shutdown.clone()));
        consume::run(self.clone(), shutdown).await;
        if let Err(error) = relay.await {
            tracing::error!(step = step::SHUTDOWN, %error, "outbox relay task failed");
        }
    }

    /// Decodes, dedupes and applies one message. Never panics on input; the caller maps
    /// the outcome to ack / retry / park.
    pub async fn process_one(&self, message: &NotifyMessage) -> Disposition {
        let started = Instant::now();
        let outcome = self.process(message).await;
        let kind = message.kind.as_str();
        self.inner.stats.count(&outcome);
        metrics::counter!(metric::WORKER_MESSAGES_TOTAL, "kind" => kind, "outcome" => outcome.label())
            .increment(1);
        metrics::histogram!(metric::WORKER_PROCESS_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    async fn process(&self, message: &NotifyMessage) -> Disposition {
        let inner = &self.inner;
        let request_id = message.message_id;
        let kind = message.kind.as_str();
        let mch_id = message.mch_id.as_str();
        // One snapshot for the whole delivery: it is verified and, when its merchant wants
        // it, confirmed with the settings it began with, whatever a reload does meanwhile.
        let merchants = inner.merchants.current();
        let decoded = decode::merchant_of(message, &merchants)
            .and_then(|merchant| Ok((merchant, decode::decode(message, &merchants)?)));
        let (merchant, decoded) = match decoded {
            Ok(decoded) => decoded,
            Err(error) => {
                tracing::warn!(step = step::DECODE, %request_id, mch_id, kind, reason = error.code(), %error, "poison message");
                return Disposition::Park {
                    reason: format!("{}: {error}", error.code()),
                };
            }
        };
        let out_trade_no = decoded.out_trade_no();
        let key = decoded.dedupe_key(&message.body);

        // The reconciler's answers skip the done marker: after a PostgreSQL restore, markers
        // would hide real payments for done_ttl_secs; PostgreSQL's unique key decides.
        let begin = if message.kind.is_query() {
            Begin::Claim(inner.dedupe.claim(&key).await)
        } else {
            inner.dedupe.begin(&key).await
        };
        let claim = match begin {
            Begin::Done => {
                metrics::counter!(metric::WORKER_DEDUPE_HITS_TOTAL, "layer" => "redis")
                    .increment(1);
                tracing::debug!(step = step::DEDUPE, %request_id, mch_id, kind, out_trade_no, layer = "redis", "duplicate");
                return Disposition::Duplicate {
                    layer: DedupeLayer::Redis,
                };
            }
            Begin::Claim(claim) => claim,
        };
        if claim == Claim::HeldElsewhere {
            // PostgreSQL is the authority: its unique key serialises the two attempts.
            metrics::counter!(telemetry::CLAIM_CONTENDED_TOTAL).increment(1);
        }

        // Asked before the transaction (never across one); a failure takes no key.
        let confirmation = match self.confirm(message, &merchants, &decoded).await {
            Ok(confirmation) => confirmation,
            Err(error) => {
                if let Some(token) = claim.token() {
                    inner.dedupe.release(&key, token).await;
                }
                tracing::warn!(step = step::CONFIRM, %request_id, mch_id, kind, out_trade_no, reason = error.code(), %error, "order query gave no answer: not applied, will retry");
                return Disposition::Retry {
                    reason: format!("{}: {error}", error.code()),
                };
            }
        };

        let applying = apply::Applying {
            message,
            decoded: &decoded,
            dedupe_key: &key,
            confirmation: &confirmation,
            sub_merchants: &merchant.sub_merchants,
        };
        let result = apply::apply(&inner.pool, &applying).await;
        let outcome = match result {
            Ok(verdict) => {
                inner.dedupe.finish(&key, claim.token()).await;
                self.log_verdict(&verdict, message, &decoded);
                match verdict {
                    Verdict::Applied => {
                        inner.outbox_wakeup.notify_one();
                        Disposition::Applied
                    }
                    Verdict::Noop | Verdict::Recorded => Disposition::Recorded,
                    Verdict::Forwarded => {
                        inner.outbox_wakeup.notify_one();
                        Disposition::Forwarded
                    }
                    Verdict::Anomaly { reason, .. } => {
                        inner.outbox_wakeup.notify_one();
                        metrics::counter!(metric::WORKER_ANOMALIES_TOTAL, "reason" => reason)
                            .increment(1);
                        Disposition::Anomaly {
                            reason: reason.to_owned(),
                        }
                    }
                    Verdict::Duplicate => {
                        metrics::counter!(metric::WORKER_DEDUPE_HITS_TOTAL, "layer" => "postgres")
                            .increment(1);
                        Disposition::Duplicate {
                            layer: DedupeLayer::Postgres,
                        }
                    }
                }
            }
            Err(error) => {
                if let Some(token) = claim.token() {
                    inner.dedupe.release(&key, token).await;
                }
                if matches!(error, ApplyError::UnknownOrder(_))
                    && self.past_unknown_order_grace(message)
                {
                    tracing::warn!(step = step::APPLY, %request_id, mch_id, kind, out_trade_no, reason = error.code(), "order still unknown after the grace period: parking");
                    return Disposition::Park {
                        reason: retry_reason(&error),
                    };
                }
                tracing::warn!(step = step::APPLY, %request_id, mch_id, kind, out_trade_no, reason = error.code(), %error, "not applied, will retry");
                Disposition::Retry {
                    reason: retry_reason(&error),
                }
            }
        };
        outcome
    }

    /// The order query's word on `decoded` when its merchant wants large payments confirmed
    /// ([`confirm`]); logged here, where the request id is known.
    async fn confirm(
        &self,
        message: &NotifyMessage,
        merchants: &Merchants,
        decoded: &Decoded,
    ) -> Result<Confirmation, confirm::ConfirmError> {
        // decode found the merchant in this snapshot; were it missing, the payment would be
        // retried (and parked by decode), never applied unconfirmed.
        let merchant = merchants
            .get(&message.mch_id)
            .ok_or_else(|| confirm::ConfirmError::UnknownMerchant(message.mch_id.clone()))?;
        let confirmation = self
            .inner
            .confirmer
            .confirm(merchant, message.kind, decoded)
            .await?;
        let (request_id, mch_id, out_trade_no) = (
            message.message_id,
            message.mch_id.as_str(),
            decoded.out_trade_no(),
        );
        match &confirmation {
            Confirmation::NotRequired => {}
            Confirmation::Confirmed => {
                tracing::info!(step = step::CONFIRM, %request_id, mch_id, out_trade_no, "payment confirmed by the order query");
            }
            Confirmation::Disagrees { detail } => {
                tracing::warn!(step = step::CONFIRM, %request_id, mch_id, out_trade_no, detail = detail.as_str(), "the order query disagrees with the payment");
            }
        }
        Ok(confirmation)
    }

    /// Whether `worker.unknown_order_grace_secs` passed since the gateway received `message`.
    fn past_unknown_order_grace(&self, message: &NotifyMessage) -> bool {
        let grace_ms = self
            .inner
            .settings
            .worker
            .unknown_order_grace_secs
            .saturating_mul(1000);
        let age_ms = chrono::Utc::now()
            .timestamp_millis()
            .saturating_sub(message.received_at_ms);
        u64::try_from(age_ms).is_ok_and(|age| age >= grace_ms)
    }

    fn log_verdict(&self, verdict: &Verdict, message: &NotifyMessage, decoded: &Decoded) {
        let request_id = message.message_id;
        let kind = message.kind.as_str();
        let mch_id = message.mch_id.as_str();
        let out_trade_no = decoded.out_trade_no();
        // A service provider's sub-merchant (empty for a direct merchant): two of them may
        // share an out_trade_no.
        let sub_mch_id = decoded.sub_mch_id();
        match verdict {
            Verdict::Anomaly { reason, detail } => {
                tracing::warn!(step = step::APPLY, %request_id, mch_id, sub_mch_id, kind, out_trade_no, reason, detail = detail.as_str(), "anomaly recorded");
            }
            Verdict::Forwarded => {
                if let Decoded::Forward(forward) = decoded {
                    let event_type = forward.event_type.as_str();
                    let notification_id = forward.notification_id.as_str();
                    tracing::info!(step = step::APPLY, %request_id, mch_id, sub_mch_id, kind, event_type, notification_id, "forwarded");
                }
            }
            other => {
                tracing::info!(step = step::APPLY, %request_id, mch_id, sub_mch_id, kind, out_trade_no, verdict = ?other, "applied");
            }
        }
    }
}

fn retry_reason(error: &ApplyError) -> String {
    format!("{}: {error}", error.code())
}
