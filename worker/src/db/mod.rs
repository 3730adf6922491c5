//! PostgreSQL access: the diesel schema, the rows, and the connection pool.
//!
//! The pool is diesel-async over deadpool. Every pooled connection is set up with a
//! `lock_timeout` and a `statement_timeout`: a transaction is never wrapped in a
//! `tokio::time::timeout` (cancelling it mid-commit would leave its fate unknown), the
//! server bounds it instead, and a timed-out statement is a transient error (retry tier).

pub mod models;
pub mod queries;
pub mod schema;

use std::time::Duration;

use deadpool::Runtime;
use diesel::ConnectionError;
use diesel_async::pooled_connection::deadpool::{Object, Pool, PoolError};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures::FutureExt;

/// The worker's connection pool.
pub type DbPool = Pool<AsyncPgConnection>;
/// A connection checked out of [`DbPool`].
pub type DbConn = Object<AsyncPgConnection>;

/// Server-side bounds of every pooled session: a lock wait past 5 s (SQLSTATE 55P03) and a
/// statement past 30 s fail, and are retried later through the retry tiers.
const SESSION_SETUP: &str = "SET lock_timeout = '5s'; SET statement_timeout = '30s'; \
     SET idle_in_transaction_session_timeout = '60s'";

/// Why the pool cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolBuildError {
    #[error("database pool: {0}")]
    Build(String),
}

/// Adds `connect_timeout` (whole seconds, at least 1) to a PostgreSQL URL that has none, so
/// that a black-holed server fails a connection attempt instead of hanging it.
pub fn with_connect_timeout(url: &str, timeout: Duration) -> String {
    if url.contains("connect_timeout=") {
        return url.to_owned();
    }
    let secs = timeout.as_millis().div_ceil(1000).max(1);
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}connect_timeout={secs}")
}

/// Establishes one connection with the session bounds set.
pub async fn establish(url: &str) -> Result<AsyncPgConnection, ConnectionError> {
    let mut conn = AsyncPgConnection::establish(url).await?;
    conn.batch_execute(SESSION_SETUP)
        .await
        .map_err(ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// Builds the pool; connections are opened lazily, so a database that is down at start-up
/// only delays work (deliveries go to the retry tiers), it does not stop the worker.
/// A checkout waits at most `wait_timeout` for a free connection (then
/// `PoolError::Timeout`), so a pool held by stuck transactions cannot stall callers forever;
/// opening a connection is bounded by `connect_timeout` as a whole (the URL's
/// `connect_timeout` covers only the TCP connect: a server that accepts and never answers
/// would hang the startup handshake), and recycling one by `wait_timeout`.
pub fn build_pool(
    url: &str,
    size: usize,
    connect_timeout: Duration,
    wait_timeout: Duration,
) -> Result<DbPool, PoolBuildError> {
    let url = with_connect_timeout(url, connect_timeout);
    let mut config = ManagerConfig::default();
    // A broken connection is detected on use (and dropped by the pool); checking every
    // checkout with a query would add a round trip to each message.
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(|url| establish(url).boxed());
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
    Pool::builder(manager)
        .max_size(size.max(1))
        .wait_timeout(Some(wait_timeout))
        .create_timeout(Some(connect_timeout))
        .recycle_timeout(Some(wait_timeout))
        // deadpool needs a runtime to enforce its timeouts.
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|error| PoolBuildError::Build(error.to_string()))
}

/// A short, secret-free description of a pool error, for logs and retry reasons.
pub fn pool_error_text(error: &PoolError) -> String {
    match error {
        PoolError::Backend(inner) => format!("database unavailable: {inner}"),
        other => format!("database pool: {other}"),
    }
}
