//! The Redis fast path of dedupe. PostgreSQL's unique `dedupe_key` is the authority; Redis
//! only saves work:
//!
//! - a `done` marker, checked first with one GET, written only **after** the PostgreSQL
//!   commit (a marker written before the work succeeds makes the next re-send skip a payment
//!   that was never applied: lost for good);
//! - a short claim (`SET NX PX` with a random token) taken before the work, so that two
//!   replicas given the same notification do not both do it; released by compare-and-delete
//!   (a Lua script) on failure, so a claim that expired and was re-taken by another worker is
//!   never deleted by the first.
//!
//! Redis being slow or down never blocks a delivery for long: every call is bounded by
//! `redis.response_timeout_ms`, errors are counted (`wxpay_worker_redis_errors_total`), and
//! for a second after an error Redis is skipped altogether; the worker carries on with
//! PostgreSQL alone (slower, still exactly once).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use rand::RngCore;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use secrecy::ExposeSecret;
use wxpay_runtime::config::{RedisSettings, WorkerSettings};
use wxpay_runtime::telemetry::{metric, step};

/// How long Redis is left alone after an error.
const BACKOFF_MS: i64 = 1_000;

/// The done check and the claim in one round trip: `done`, `claimed` or `held`.
const BEGIN_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 'done' end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'claimed' end
return 'held'";

/// Deletes the claim only if it still holds our token.
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// Writes the done marker, then releases our claim (compare-and-delete), in one round trip.
const FINISH_LUA: &str = r"
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
return 1";

/// Answer of [`RedisDedupe::begin`]: the done check, then the claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The done marker is there: a duplicate.
    Done,
    /// Not done; the claim is ours (or not, or Redis did not answer).
    Claim(Claim),
}

/// Answer of the `done` check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Done,
    NotDone,
    /// Redis did not answer: go on with PostgreSQL.
    Unavailable,
}

/// Answer of the claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Ours, with this token.
    Acquired(String),
    /// Someone else is working on it: fall through to PostgreSQL (the unique key serialises).
    HeldElsewhere,
    Unavailable,
}

impl Claim {
    pub fn token(&self) -> Option<&str> {
        match self {
            Claim::Acquired(token) => Some(token),
            _ => None,
        }
    }
}

/// The Redis side of dedupe.
pub struct RedisDedupe {
    connection: Arc<OnceLock<ConnectionManager>>,
    prefix: String,
    claim_ttl_ms: u64,
    done_ttl_secs: u64,
    timeout: Duration,
    skip_until_ms: AtomicI64,
    begin: Script,
    release: Script,
    finish: Script,
}

impl RedisDedupe {
    /// Starts connecting in the background: a Redis that is down at start-up must not keep
    /// the worker from starting (it works without Redis).
    pub fn new(redis: &RedisSettings, worker: &WorkerSettings) -> Self {
        let connection = Arc::new(OnceLock::new());
        let timeout = Duration::from_millis(redis.response_timeout_ms.max(1));
        let connect_timeout = Duration::from_millis(redis.connect_timeout_ms.max(1));
        match redis::Client::open(redis.url.expose_secret()) {
            Ok(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeout))
                    .set_connection_timeout(Some(connect_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                tokio::spawn(connect_loop(
                    Arc::downgrade(&connection),
                    client,
                    config,
                    connect_timeout,
                ));
            }
            Err(error) => {
                tracing::error!(step = step::STARTUP, %error, "invalid redis url: running with PostgreSQL dedupe only");
            }
        }
        RedisDedupe {
            connection,
            prefix: redis.key_prefix.clone(),
            claim_ttl_ms: worker.claim_ttl_ms.max(1),
            done_ttl_secs: worker.done_ttl_secs.max(1),
            timeout,
            skip_until_ms: AtomicI64::new(0),
            begin: Script::new(BEGIN_LUA),
            release: Script::new(RELEASE_LUA),
            finish: Script::new(FINISH_LUA),
        }
    }

    /// Whether a connection to Redis has been made (it may have broken since).
    pub fn is_connected(&self) -> bool {
        self.connection.get().is_some()
    }

    fn done_key(&self, key: &str) -> String {
        format!("{}done:{key}", self.prefix)
    }

    fn claim_key(&self, key: &str) -> String {
        format!("{}claim:{key}", self.prefix)
    }

    /// The connection, unless Redis is absent or recently failed.
    fn usable(&self) -> Option<ConnectionManager> {
        if chrono::Utc::now().timestamp_millis() < self.skip_until_ms.load(Ordering::Relaxed) {
            return None;
        }
        self.connection.get().cloned()
    }

    fn failed(&self, operation: &'static str, error: &dyn std::fmt::Display) {
        metrics::counter!(metric::WORKER_REDIS_ERRORS_TOTAL).increment(1);
        self.skip_until_ms.store(
            chrono::Utc::now().timestamp_millis() + BACKOFF_MS,
            Ordering::Relaxed,
        );
        tracing::warn!(step = step::DEDUPE, operation, %error, "redis unavailable: PostgreSQL alone decides");
    }

    /// Runs one bounded Redis call.
    async fn call<T>(
        &self,
        operation: &'static str,
        run: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        // Bounded twice: the connection's response timeout, and this one, which also
        // covers waiting for a reconnection.
        match tokio::time::timeout(self.timeout + Duration::from_millis(50), run).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.failed(operation, &error);
                None
            }
            Err(_) => {
                self.failed(operation, &"timed out");
                None
            }
        }
    }

    /// One GET of the done marker.
    pub async fn is_done(&self, key: &str) -> Probe {
        let Some(mut conn) = self.usable() else {
            return Probe::Unavailable;
        };
        let done_key = self.done_key(key);
        let found: Option<Option<String>> = self
            .call("get_done", async move {
                redis::cmd("GET")
                    .arg(&done_key)
                    .query_async(&mut conn)
                    .await
            })
            .await;
        match found {
            Some(Some(_)) => Probe::Done,
            Some(None) => Probe::NotDone,
            None => Probe::Unavailable,
        }
    }

    /// One `SET claim token NX PX ttl`.
    pub async fn claim(&self, key: &str) -> Claim {
        let Some(mut conn) = self.usable() else {
            return Claim::Unavailable;
        };
        let token = new_token();
        let claim_key = self.claim_key(key);
        let ttl = self.claim_ttl_ms;
        let value = token.clone();
        let set: Option<Option<String>> = self
            .call("claim", async move {
                redis::cmd("SET")
                    .arg(&claim_key)
                    .arg(&value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut conn)
                    .await
            })
            .await;
        match set {
            Some(Some(_)) => Claim::Acquired(token),
            Some(None) => Claim::HeldElsewhere,
            None => Claim::Unavailable,
        }
    }

    /// The done check and, when not done, the claim, in one round trip (a Lua script).
    pub async fn begin(&self, key: &str) -> Begin {
        let Some(mut conn) = self.usable() else {
            return Begin::Claim(Claim::Unavailable);
        };
        let token = new_token();
        let done_key = self.done_key(key);
        let claim_key = self.claim_key(key);
        let ttl = self.claim_ttl_ms;
        let script = &self.begin;
        let value = token.clone();
        let answer: Option<String> = self
            .call("begin", async move {
                script
                    .key(&done_key)
                    .key(&claim_key)
                    .arg(&value)
                    .arg(ttl)
                    .invoke_async(&mut conn)
                    .await
            })
            .await;
        match answer.as_deref() {
            Some("done") => Begin::Done,
            Some("claimed") => Begin::Claim(Claim::Acquired(token)),
            Some(_) => Begin::Claim(Claim::HeldElsewhere),
            None => Begin::Claim(Claim::Unavailable),
        }
    }

    /// Releases our claim after a failure, so a retry elsewhere need not wait for its TTL.
    pub async fn release(&self, key: &str, token: &str) {
        let Some(mut conn) = self.usable() else {
            return;
        };
        let claim_key = self.claim_key(key);
        let script = &self.release;
        let _: Option<i64> = self
            .call("release", async move {
                script
                    .key(&claim_key)
                    .arg(token)
                    .invoke_async(&mut conn)
                    .await
            })
            .await;
    }

    /// After the commit: writes the done marker and releases our claim.
    pub async fn finish(&self, key: &str, token: Option<&str>) {
        let Some(mut conn) = self.usable() else {
            return;
        };
        let done_key = self.done_key(key);
        let claim_key = self.claim_key(key);
        let ttl = self.done_ttl_secs;
        let script = &self.finish;
        let _: Option<i64> = self
            .call("finish", async move {
                script
                    .key(&done_key)
                    .key(&claim_key)
                    .arg(ttl)
                    .arg(token.unwrap_or_default())
                    .invoke_async(&mut conn)
                    .await
            })
            .await;
    }
}

/// A random claim token: only its holder may release the claim.
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Connects until it succeeds, or until the dedupe is dropped.
async fn connect_loop(
    slot: Weak<OnceLock<ConnectionManager>>,
    client: redis::Client,
    config: ConnectionManagerConfig,
    connect_timeout: Duration,
) {
    let mut delay = Duration::from_millis(500);
    loop {
        let attempt = tokio::time::timeout(
            connect_timeout * 3,
            ConnectionManager::new_with_config(client.clone(), config.clone()),
        )
        .await;
        let Some(slot) = slot.upgrade() else {
            return;
        };
        match attempt {
            Ok(Ok(manager)) => {
                let _ = slot.set(manager);
                tracing::info!(step = step::STARTUP, "redis connected");
                return;
            }
            Ok(Err(error)) => {
                metrics::counter!(metric::WORKER_REDIS_ERRORS_TOTAL).increment(1);
                tracing::warn!(step = step::STARTUP, %error, "redis not reachable: PostgreSQL dedupe only for now");
            }
            Err(_) => {
                metrics::counter!(metric::WORKER_REDIS_ERRORS_TOTAL).increment(1);
                tracing::warn!(
                    step = step::STARTUP,
                    "redis connection timed out: PostgreSQL dedupe only for now"
                );
            }
        }
        drop(slot);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
