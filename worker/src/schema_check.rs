//! The start-up check of `run` and `reconcile`: the migrations applied in the database must be
//! exactly those embedded in this binary.
//!
//! They never migrate themselves: migrating is `wxpay-worker migrate`, a step of its own with
//! a DDL role (the runtime role has DML rights only), so a slow migration or lock wait never
//! outlives a startup probe, and a schema the code does not match is refused with one line
//! instead of failing later on every message.

use std::collections::BTreeSet;
use std::time::Duration;

use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::sql_types::{Bool, Text};
use diesel::{ConnectionError, QueryableByName};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::db::with_connect_timeout;
use crate::migrate::MIGRATIONS;

/// Why the schema does not fit this binary (each message names the way out).
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the database is not migrated: run `wxpay-worker migrate` first")]
    Unmigrated,
    #[error(
        "the database schema is older than this wxpay-worker (pending migrations: {}): run `wxpay-worker migrate` of this release first",
        .0.join(", ")
    )]
    Older(Vec<String>),
    #[error(
        "the database schema is newer than this wxpay-worker (migrations it does not know: {}): deploy the release whose `wxpay-worker migrate` ran, not an older one",
        .0.join(", ")
    )]
    Newer(Vec<String>),
    #[error("cannot check the schema version (is `wxpay-worker migrate` done?): {0}")]
    Connect(ConnectionError),
    #[error("cannot check the schema version: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("cannot list the embedded migrations: {0}")]
    Embedded(String),
}

/// The versions of the migrations embedded in this binary.
pub fn embedded_versions() -> Result<BTreeSet<String>, SchemaError> {
    let migrations = MigrationSource::<Pg>::migrations(&MIGRATIONS)
        .map_err(|error| SchemaError::Embedded(error.to_string()))?;
    Ok(migrations
        .iter()
        .map(|migration| migration.name().version().to_string())
        .collect())
}

/// Compares applied with embedded versions. Unknown versions win over pending ones: running
/// this binary's `migrate` would not make such a schema fit.
pub fn compare(embedded: &BTreeSet<String>, applied: &BTreeSet<String>) -> Result<(), SchemaError> {
    if applied.is_empty() {
        return Err(SchemaError::Unmigrated);
    }
    let unknown: Vec<String> = applied.difference(embedded).cloned().collect();
    if !unknown.is_empty() {
        return Err(SchemaError::Newer(unknown));
    }
    let pending: Vec<String> = embedded.difference(applied).cloned().collect();
    if !pending.is_empty() {
        return Err(SchemaError::Older(pending));
    }
    Ok(())
}

/// PostgreSQL's `database "…" does not exist` (not a missing role).
fn is_missing_database(message: &str) -> bool {
    message.contains("database \"") && message.contains("does not exist")
}

/// Connects once and checks that the schema is exactly this binary's.
pub async fn check(url: &str, connect_timeout: Duration) -> Result<(), SchemaError> {
    let embedded = embedded_versions()?;
    let mut conn =
        match AsyncPgConnection::establish(&with_connect_timeout(url, connect_timeout)).await {
            Ok(conn) => conn,
            // SQLSTATE 3D000 (`migrate` creates the database, so this is "not migrated").
            // Matched on the text: diesel-async reports it as different variants across
            // versions.
            Err(error) if is_missing_database(&error.to_string()) => {
                return Err(SchemaError::Unmigrated)
            }
            Err(error) => return Err(SchemaError::Connect(error)),
        };
    #[derive(QueryableByName)]
    struct Present {
        #[diesel(sql_type = Bool)]
        present: bool,
    }
    let table: Present = diesel::sql_query(
        "SELECT to_regclass('__diesel_schema_migrations') IS NOT NULL AS present",
    )
    .get_result(&mut conn)
    .await?;
    if !table.present {
        return Err(SchemaError::Unmigrated);
    }
    #[derive(QueryableByName)]
    struct Version {
        #[diesel(sql_type = Text)]
        version: String,
    }
    let applied: Vec<Version> = diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
        .load(&mut conn)
        .await?;
    compare(
        &embedded,
        &applied.into_iter().map(|row| row.version).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(versions: &[&str]) -> BTreeSet<String> {
        versions.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn schema_must_match_exactly() {
        let embedded = set(&["1", "2"]);
        assert!(compare(&embedded, &set(&["1", "2"])).is_ok());
        assert!(matches!(
            compare(&embedded, &set(&[])),
            Err(SchemaError::Unmigrated)
        ));
        assert!(matches!(
            compare(&embedded, &set(&["1"])),
            Err(SchemaError::Older(pending)) if pending == ["2"]
        ));
        assert!(matches!(
            compare(&embedded, &set(&["1", "2", "3"])),
            Err(SchemaError::Newer(unknown)) if unknown == ["3"]
        ));
        // Both at once: this binary's `migrate` would not help.
        assert!(matches!(
            compare(&embedded, &set(&["1", "3"])),
            Err(SchemaError::Newer(_))
        ));
    }

    #[test]
    fn every_refusal_names_the_migrate_command() {
        for error in [
            SchemaError::Unmigrated,
            SchemaError::Older(vec!["2".into()]),
            SchemaError::Newer(vec!["3".into()]),
        ] {
            let text = error.to_string();
            assert!(text.contains("`wxpay-worker migrate`"), "{text}");
            assert!(!text.contains('\n'), "one line: {text}");
        }
    }

    #[test]
    fn a_missing_database_is_not_a_missing_role() {
        assert!(is_missing_database("database \"wxpay_x\" does not exist"));
        assert!(!is_missing_database("role \"wxpay\" does not exist"));
    }

    #[test]
    fn the_binary_embeds_its_migrations() {
        assert!(!embedded_versions().expect("embedded").is_empty());
    }
}
