//! One round at a time across reconciler replicas: a PostgreSQL session advisory lock.
//!
//! `replicas: 1` with `strategy: Recreate` is not a guarantee (a `kubectl scale`, a second
//! Deployment, a `reconcile --once` by hand, a node partition leaving the old pod running):
//! a round only runs while its replica holds this lock, and another replica skips it.
//! The lock lives on a connection taken out of the pool for the round; dropping the guard
//! closes that connection, so the server releases the lock even if the round is cut short.

use diesel::sql_types::Bool;
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::store::StoreError;
use crate::db::{pool_error_text, DbConn, DbPool};

/// Advisory lock key of a reconciliation round ("wxpayrec" as ASCII). Advisory locks are
/// per database, so each environment's database has its own.
pub const ROUND_LOCK_KEY: i64 = 0x7778_7061_7972_6563;

/// Held for one round: the session that owns the lock.
pub struct RoundLock {
    _session: AsyncPgConnection,
}

/// Takes the round lock if no other session holds it (`None`: another replica runs a round).
pub async fn try_acquire(pool: &DbPool) -> Result<Option<RoundLock>, StoreError> {
    let pooled = pool
        .get()
        .await
        .map_err(|error| StoreError::Pool(pool_error_text(&error)))?;
    // Out of the pool: a session holding the lock must never be handed to other work.
    let mut session = DbConn::take(pooled);
    #[derive(QueryableByName)]
    struct Taken {
        #[diesel(sql_type = Bool)]
        taken: bool,
    }
    let taken: Taken = diesel::sql_query(format!(
        "SELECT pg_try_advisory_lock({ROUND_LOCK_KEY}) AS taken"
    ))
    .get_result(&mut session)
    .await?;
    Ok(taken.taken.then_some(RoundLock { _session: session }))
}
