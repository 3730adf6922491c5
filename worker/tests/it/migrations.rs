//! Migrations: idempotent, and safe when several replicas start at once.

use std::time::Duration;

use wxpay_worker::{migrate, schema_check};

use crate::helpers::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_twice_is_a_noop() {
    let env = TestEnv::with_migration(false).await;
    let url = env.db_url();
    assert!(
        migrate::migrate(&url, Duration::from_secs(5))
            .await
            .expect("first")
            > 0
    );
    assert_eq!(
        migrate::migrate(&url, Duration::from_secs(5))
            .await
            .expect("second"),
        0
    );
    assert_eq!(env.count("FROM orders").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_migrating_at_once_both_succeed() {
    let env = TestEnv::with_migration(false).await;
    let url = env.db_url();
    let (a, b) = tokio::join!(
        migrate::migrate(&url, Duration::from_secs(5)),
        migrate::migrate(&url, Duration::from_secs(5))
    );
    let (a, b) = (a.expect("first migrator"), b.expect("second migrator"));
    let embedded = schema_check::embedded_versions().expect("embedded").len();
    assert_eq!(
        a + b,
        embedded,
        "each migration ran exactly once ({a} + {b})"
    );
    assert_eq!(env.count("FROM outbox").await, 0);
}
