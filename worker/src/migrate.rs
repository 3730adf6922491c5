//! Schema migrations, embedded in the binary.
//!
//! diesel is built without libpq here, so migrations run through
//! [`AsyncConnectionWrapper`] (a blocking `diesel::Connection` over the async one) inside
//! `spawn_blocking`. They run under a session advisory lock taken on the migrating
//! connection, so several replicas starting at once migrate one after the other (the later
//! ones find nothing pending).

use std::time::Duration;

use diesel::sql_types::{BigInt, Text};
use diesel::{ConnectionError, QueryableByName};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::db::with_connect_timeout;

/// The migrations of `worker/migrations`.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Advisory lock key of the migration ("wxpaymig" as ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x7778_7061_796d_6967;

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] ConnectionError),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("invalid database url: {0}")]
    Url(&'static str),
    #[error("migration failed: {0}")]
    Migration(String),
}

/// Creates the database named in `url` if it does not exist, connecting to the `postgres`
/// database of the same server. Two callers racing both succeed.
pub async fn ensure_database(url: &str, connect_timeout: Duration) -> Result<bool, MigrateError> {
    let (admin_url, name) = split_database(url)?;
    let mut conn =
        AsyncPgConnection::establish(&with_connect_timeout(&admin_url, connect_timeout)).await?;
    #[derive(QueryableByName)]
    struct Found {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let found: Found =
        diesel::sql_query("SELECT count(*) AS n FROM pg_database WHERE datname = $1")
            .bind::<Text, _>(&name)
            .get_result(&mut conn)
            .await?;
    if found.n > 0 {
        return Ok(false);
    }
    let statement = format!("CREATE DATABASE {}", quote_identifier(&name));
    match conn.batch_execute(&statement).await {
        Ok(()) => {
            tracing::info!(step = "migrate", database = %name, "database created");
            Ok(true)
        }
        // Created meanwhile by another replica: duplicate_database (42P04) or the unique
        // index of pg_database.
        Err(diesel::result::Error::DatabaseError(kind, info))
            if matches!(kind, diesel::result::DatabaseErrorKind::UniqueViolation)
                || info.message().contains("already exists") =>
        {
            Ok(false)
        }
        Err(error) => Err(error.into()),
    }
}

/// Runs the pending migrations under the migration advisory lock; returns how many ran.
pub async fn run_migrations(url: &str, connect_timeout: Duration) -> Result<usize, MigrateError> {
    let mut conn =
        AsyncPgConnection::establish(&with_connect_timeout(url, connect_timeout)).await?;
    // Session-level lock on this very connection, held across the migration. Polled with
    // the non-blocking form: a session blocked in pg_advisory_lock holds a snapshot, and
    // CREATE INDEX CONCURRENTLY of the migration holding the lock waits for every snapshot
    // to end (a deadlock).
    #[derive(QueryableByName)]
    struct Locked {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        locked: bool,
    }
    loop {
        let lock: Locked = diesel::sql_query(format!(
            "SELECT pg_try_advisory_lock({MIGRATION_LOCK_KEY}) AS locked"
        ))
        .get_result(&mut conn)
        .await?;
        if lock.locked {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let joined = tokio::task::spawn_blocking(move || -> Result<usize, MigrateError> {
        let mut wrapper: AsyncConnectionWrapper<AsyncPgConnection> =
            AsyncConnectionWrapper::from(conn);
        let ran = wrapper
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.len())
            .map_err(|error| MigrateError::Migration(error.to_string()));
        let unlocked = diesel::connection::SimpleConnection::batch_execute(
            &mut wrapper,
            &format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"),
        );
        let ran = ran?;
        unlocked?;
        Ok(ran)
    })
    .await
    .map_err(|error| MigrateError::Migration(format!("migration task failed: {error}")))?;
    let ran = joined?;
    tracing::info!(step = "migrate", ran, "schema up to date");
    Ok(ran)
}

/// `migrate` subcommand: create the database if missing, then migrate.
pub async fn migrate(url: &str, connect_timeout: Duration) -> Result<usize, MigrateError> {
    ensure_database(url, connect_timeout).await?;
    run_migrations(url, connect_timeout).await
}

/// Splits `postgres://…/name?params` into the URL of the `postgres` database of the same
/// server (params kept) and `name`.
fn split_database(url: &str) -> Result<(String, String), MigrateError> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base
        .find("://")
        .ok_or(MigrateError::Url("missing scheme"))?
        + 3;
    let slash = base[authority_start..]
        .find('/')
        .map(|i| i + authority_start)
        .ok_or(MigrateError::Url("missing database name"))?;
    let name = &base[slash + 1..];
    if name.is_empty() {
        return Err(MigrateError::Url("missing database name"));
    }
    let name = percent_decode(name);
    let mut admin = format!("{}/postgres", &base[..slash]);
    if let Some(query) = query {
        admin.push('?');
        admin.push_str(query);
    }
    Ok((admin, name))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(byte) = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `"name"` with embedded quotes doubled.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_database_from_url() {
        let (admin, name) =
            split_database("postgres://postgres@127.0.0.1:5432/wxpay?connect_timeout=5")
                .expect("valid");
        assert_eq!(
            admin,
            "postgres://postgres@127.0.0.1:5432/postgres?connect_timeout=5"
        );
        assert_eq!(name, "wxpay");
        assert!(split_database("postgres://postgres@127.0.0.1:5432").is_err());
        assert!(split_database("nonsense").is_err());
        assert_eq!(
            split_database("postgres://h/a%2Db").expect("valid").1,
            "a-b"
        );
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_identifier("wx\"pay"), "\"wx\"\"pay\"");
    }
}
