//! Anomalies are repairable: `anomaly list`, then `anomaly resolve --action reapply` (the
//! original notification through the normal apply path, its key released in the same
//! transaction) or `--action dismiss`, each recorded in `anomaly_resolutions`.

use wxpay_runtime::config::Merchants;
use wxpay_shared::state::OrderState;
use wxpay_worker::anomaly::{self, Action, AnomalyError, Effect as Resolved};
use wxpay_worker::apply::Verdict;
use wxpay_worker::{db, Disposition, Worker};

use crate::builders::{v2_pay, v3_pay};
use crate::cli::worker as worker_cli;
use crate::helpers::{assert_duplicate, config_file, TestEnv};

pub(crate) fn pool(env: &TestEnv) -> db::DbPool {
    db::build_pool(
        &env.db_url(),
        2,
        std::time::Duration::from_secs(2),
        std::time::Duration::from_secs(2),
    )
    .expect("pool")
}

async fn sql(env: &TestEnv, statement: &str) {
    env.sql(statement).await.expect("statement");
}

/// Resolves the open anomaly `id` by `reapply` (as `ops`, with `note`) and asserts that the
/// notification applied.
pub(crate) async fn reapply_applies(env: &TestEnv, merchants: &Merchants, id: i64, note: &str) {
    let resolution = anomaly::resolve(&pool(env), merchants, id, Action::Reapply, "ops", note)
        .await
        .expect("reapplied");
    assert!(
        matches!(
            resolution.effect,
            Resolved::Reapplied {
                verdict: Verdict::Applied,
                ..
            }
        ),
        "{resolution:?}"
    );
}

pub(crate) async fn only_open_anomaly(env: &TestEnv) -> anomaly::OpenAnomaly {
    let open = anomaly::list(&pool(env)).await.expect("list");
    assert_eq!(open.len(), 1, "{open:?}");
    open.into_iter().next().expect("one")
}

/// An order of 1000 fen paid `paid` fen through v3: its one open AMOUNT_MISMATCH anomaly,
/// with the environment, the worker and the configured merchants to resolve it.
async fn mismatched_payment(
    out_trade_no: &str,
    transaction_id: &str,
    paid: i64,
) -> (TestEnv, Worker, Merchants, anomaly::OpenAnomaly) {
    let (env, worker) = TestEnv::with_worker().await;
    let merchants = env.settings().merchants().expect("merchants");
    env.insert_order(out_trade_no, 1000).await;
    let payment = v3_pay(out_trade_no, transaction_id, paid);
    assert!(matches!(
        worker.process_one(&payment).await,
        Disposition::Anomaly { .. }
    ));
    let open = only_open_anomaly(&env).await;
    (env, worker, merchants, open)
}

/// From outside: an AMOUNT_MISMATCH order corrected by hand and
/// `wxpay-worker anomaly resolve --action reapply` ends PAID once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrected_order_and_reapply_through_the_cli_ends_paid_once() {
    let (env, worker) = TestEnv::with_worker().await;
    env.insert_order("a-1", 1000).await;
    let payment = v2_pay("a-1", "4200a1", 990);
    assert!(matches!(
        worker.process_one(&payment).await,
        Disposition::Anomaly { .. }
    ));
    let config = config_file(&env.settings);

    let listed = worker_cli(&config, &["anomaly", "list"])
        .output()
        .expect("runs");
    assert!(listed.status.success(), "{listed:?}");
    let stdout = String::from_utf8_lossy(&listed.stdout);
    let line = stdout
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("one anomaly line: {stdout}"));
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(
        &fields[1..4],
        &[crate::builders::MCH_ID, "a-1", "AMOUNT_MISMATCH"],
        "{line}"
    );
    let id = fields[0];

    // A person corrects the order, then reapplies.
    sql(
        &env,
        "UPDATE orders SET amount_total = 990 WHERE out_trade_no = 'a-1'",
    )
    .await;
    let resolved = worker_cli(
        &config,
        &[
            "anomaly",
            "resolve",
            "--id",
            id,
            "--action",
            "reapply",
            "--note",
            "amount corrected with the shop",
            "--actor",
            "alice",
        ],
    )
    .output()
    .expect("runs");
    assert!(resolved.status.success(), "{resolved:?}");
    assert!(
        String::from_utf8_lossy(&resolved.stdout).contains("APPLIED"),
        "{resolved:?}"
    );
    assert_eq!(env.order("a-1").await.state, OrderState::Paid.as_str());
    assert_eq!(env.outbox_count("order.paid").await, 1);
    assert_eq!(
        env.count(&format!(
            "FROM anomaly_resolutions WHERE anomaly_id = {id} AND action = 'reapply' \
             AND actor = 'alice' AND note = 'amount corrected with the shop' AND result = 'APPLIED' \
             AND new_notification_id IS NOT NULL"
        ))
        .await,
        1
    );

    // WeChat Pay's re-send is a duplicate now, and a second resolution is refused.
    let again = worker.process_one(&crate::builders::resend(&payment)).await;
    assert_duplicate(&again);
    assert_eq!(env.outbox_count("order.paid").await, 1);
    let twice = worker_cli(
        &config,
        &[
            "anomaly", "resolve", "--id", id, "--action", "dismiss", "--note", "again",
        ],
    )
    .output()
    .expect("runs");
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("resolved already"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reapply_of_a_still_wrong_order_records_a_new_anomaly_and_says_so() {
    let (env, worker, merchants, first) = mismatched_payment("a-2", "4200a2", 1).await;

    let resolution = anomaly::resolve(
        &pool(&env),
        &merchants,
        first.id,
        Action::Reapply,
        "bob",
        "tried",
    )
    .await
    .expect("resolved");
    let Resolved::Reapplied {
        verdict: Verdict::Anomaly { reason, .. },
        notification_id: Some(new_id),
    } = &resolution.effect
    else {
        panic!("{resolution:?}");
    };
    assert_eq!(*reason, "AMOUNT_MISMATCH");
    assert!(resolution.to_string().contains("still disagrees"));
    let second = only_open_anomaly(&env).await;
    assert_eq!(second.id, *new_id);
    assert_ne!(second.id, first.id);
    assert_eq!(env.order("a-2").await.state, OrderState::NotPay.as_str());
    assert_eq!(env.anomalies("AMOUNT_MISMATCH").await, 2);

    // Dismissed: closed, the key stays taken.
    let dismissed = anomaly::resolve(
        &pool(&env),
        &merchants,
        second.id,
        Action::Dismiss,
        "bob",
        "refunded by hand",
    )
    .await
    .expect("dismissed");
    assert_eq!(dismissed.effect, Resolved::Dismissed);
    assert!(anomaly::list(&pool(&env)).await.expect("list").is_empty());
    assert_duplicate(&worker.process_one(&v3_pay("a-2", "4200a2", 1)).await);
    assert_eq!(env.count("FROM anomaly_resolutions").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reapply_changes_nothing() {
    let (env, _worker, merchants, open) = mismatched_payment("a-3", "4200a3", 5).await;
    let pool = pool(&env);

    let empty = anomaly::resolve(&pool, &merchants, open.id, Action::Reapply, "c", " ").await;
    assert!(matches!(empty, Err(AnomalyError::EmptyNote)), "{empty:?}");

    // The order is gone: the apply path refuses, the anomaly stays open with its key.
    sql(&env, "DELETE FROM orders WHERE out_trade_no = 'a-3'").await;
    let refused = anomaly::resolve(&pool, &merchants, open.id, Action::Reapply, "c", "x").await;
    assert!(
        matches!(refused, Err(AnomalyError::NotApplied { .. })),
        "{refused:?}"
    );

    // Stored headers that no longer verify: re-verification refuses.
    env.insert_order("a-3", 5).await;
    sql(
        &env,
        "UPDATE notifications SET wechatpay_headers = \
         jsonb_set(wechatpay_headers, '{Wechatpay-Nonce}', '\"tampered\"')",
    )
    .await;
    let forged = anomaly::resolve(&pool, &merchants, open.id, Action::Reapply, "c", "x").await;
    assert!(
        matches!(forged, Err(AnomalyError::Undecodable { .. })),
        "{forged:?}"
    );
    assert_eq!(only_open_anomaly(&env).await.id, open.id);
    assert_eq!(env.count("FROM anomaly_resolutions").await, 0);
    assert_eq!(env.order("a-3").await.state, OrderState::NotPay.as_str());

    // A row written before the headers were stored: the AEAD resource alone decides.
    sql(&env, "UPDATE notifications SET wechatpay_headers = NULL").await;
    reapply_applies(&env, &merchants, open.id, "x").await;
    assert_eq!(env.order("a-3").await.state, OrderState::Paid.as_str());
    assert_eq!(
        env.count("FROM notifications WHERE dedupe_key LIKE '%#released:%'")
            .await,
        1
    );
}
