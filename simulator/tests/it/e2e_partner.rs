//! End to end for a service provider (服务商, `wxpay-sim init --partner`): its sub-merchants
//! 1900000201 (orders in its own sub_appid) and 1900000202 (orders in the provider's appid)
//! both use the same out_trade_no. `wxpay-sim notify --sub-mch-id` → `wxpay-gateway` →
//! RabbitMQ → `wxpay-worker` → PostgreSQL, and `wxpay-worker reconcile --once` against
//! `wxpay-sim serve`'s partner query endpoints, each payment and refund on the right order
//! exactly once.

use std::time::Duration;

use diesel_async::AsyncPgConnection;
use wxpay_shared::state::OrderState;
use wxpay_testkit::db::sub_merchant_order;

use crate::e2e_load::{load_args, load_verified_once};
use crate::e2e_support::{count, eventually, insert_sub_merchant_order, reconcile_at_once, Stack};

const SUB_A: &str = "1900000201";
const SUB_B: &str = "1900000202";

/// A provider's stack: `init --partner`, a reconciler that asks at once.
async fn partner_stack() -> Stack {
    Stack::prepare_with(&["--partner"], reconcile_at_once).await
}

/// `notify --sub-mch-id <sub> --kind <kind> --out-trade-no <no> --amount <amount> <extra>`,
/// one attempt, acknowledged.
async fn notify(s: &Stack, sub: &str, kind: &str, (no, amount): (&str, &str), extra: &[&str]) {
    let mut args = vec![
        "--sub-mch-id",
        sub,
        "--kind",
        kind,
        "--out-trade-no",
        no,
        "--amount",
        amount,
    ];
    args.extend_from_slice(extra);
    s.notify_acknowledged(&args).await;
}

/// The order of sub-merchant `sub`: state and refunded fen.
async fn state(conn: &mut AsyncPgConnection, s: &Stack, sub: &str, no: &str) -> (String, i64) {
    let order = sub_merchant_order(conn, (&s.mch_id, sub), no).await;
    (order.state, order.refunded_total)
}

/// Waits until SUB_A's and SUB_B's `SHARED` are in these (state, refunded fen).
async fn until_shared_orders_are(s: &Stack, expected: [(&str, i64); 2]) {
    let mut conn = s.conn().await;
    eventually(
        Duration::from_secs(30),
        &format!("SHARED orders {expected:?}"),
        async || {
            let mut found = Vec::new();
            for sub in [SUB_A, SUB_B] {
                found.push(state(&mut conn, s, sub, "SHARED").await);
            }
            found == expected.map(|(state, fen)| (state.to_owned(), fen))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sub_merchants_sharing_an_out_trade_no_are_paid_and_refunded_on_their_own_orders() {
    let mut s = partner_stack().await;
    s.start_gateway().await;
    s.start_worker().await;
    let mut conn = s.conn().await;
    // SUB_A's orders carry its own sub_appid (init's second appid), SUB_B's the provider's.
    let (sp_appid, sub_a_appid) = (s.appids[0].clone(), s.appids[1].clone());
    insert_sub_merchant_order(&mut conn, (&s, SUB_A, &sub_a_appid), "SHARED", 1200).await;
    insert_sub_merchant_order(&mut conn, (&s, SUB_B, &sp_appid), "SHARED", 800).await;

    notify(&s, SUB_A, "v3-pay", ("SHARED", "1200"), &[]).await;
    notify(&s, SUB_B, "v2-pay", ("SHARED", "800"), &[]).await;
    // WeChat Pay's re-sends: the same transactions (the sub-merchants' books), duplicates.
    notify(&s, SUB_A, "v2-pay", ("SHARED", "1200"), &[]).await;
    notify(&s, SUB_B, "v3-pay", ("SHARED", "800"), &[]).await;
    let paid = OrderState::Paid.as_str();
    until_shared_orders_are(&s, [(paid, 0), (paid, 0)]).await;

    // Both refunds are R-SHARED: 300 of SUB_A's through v2, all of SUB_B's through v3.
    let refund = ["--out-refund-no", "R-SHARED", "--refund-fee"];
    let mut partial = refund.to_vec();
    partial.push("300");
    notify(&s, SUB_A, "v2-refund", ("SHARED", "1200"), &partial).await;
    let mut full = refund.to_vec();
    full.push("800");
    notify(&s, SUB_B, "v3-refund", ("SHARED", "800"), &full).await;
    let refunded = OrderState::Refunded.as_str();
    until_shared_orders_are(
        &s,
        [
            (OrderState::PartiallyRefunded.as_str(), 300),
            (refunded, 800),
        ],
    )
    .await;
    for sub in [SUB_A, SUB_B] {
        let applied = format!(
            "FROM outbox WHERE event_type IN ('order.paid', 'order.refunded') \
             AND payload->>'sub_mch_id' = '{sub}'"
        );
        assert_eq!(
            count(&mut conn, &applied).await,
            2,
            "{sub}: one payment, one refund"
        );
    }
    assert_eq!(
        count(&mut conn, "FROM notifications WHERE outcome = 'ANOMALY'").await,
        0
    );
}

/// One `wxpay-worker reconcile --once` round, successful.
async fn reconcile_once(s: &Stack) {
    let round = s
        .worker_cmd(&["reconcile", "--once"], Duration::from_secs(60))
        .await;
    assert!(round.success, "{}\n{}", round.describe(), s.logs(40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_asks_the_partner_endpoints_and_books_the_right_sub_merchant() {
    let mut s = partner_stack().await;
    s.start_all().await;
    let mut conn = s.conn().await;
    let sp_appid = s.appids[0].clone();
    // WeChat Pay knows SUB_B's RECON paid (its notification was lost); SUB_A's is unpaid.
    for (sub, appid) in [(SUB_A, s.appids[1].clone()), (SUB_B, sp_appid.clone())] {
        insert_sub_merchant_order(&mut conn, (&s, sub, &appid), "RECON", 500).await;
    }
    // And a SUB_A order WeChat Pay knows as paid, in SUB_A's own book.
    for (sub, no, amount) in [(SUB_B, "RECON", "500"), (SUB_A, "RECON-A", "700")] {
        let args = [
            "order",
            "--sub-mch-id",
            sub,
            "--out-trade-no",
            no,
            "--amount",
            amount,
        ];
        let staged = s.sim(&args).await;
        assert!(staged.success, "{}", staged.describe());
    }
    let sub_a_appid = s.appids[1].clone();
    insert_sub_merchant_order(&mut conn, (&s, SUB_A, &sub_a_appid), "RECON-A", 700).await;

    reconcile_once(&s).await;
    let paid = OrderState::Paid.as_str().to_owned();
    eventually(
        Duration::from_secs(30),
        "the lost payments booked",
        async || {
            state(&mut conn, &s, SUB_B, "RECON").await.0 == paid
                && state(&mut conn, &s, SUB_A, "RECON-A").await.0 == paid
        },
    )
    .await;
    assert_eq!(
        state(&mut conn, &s, SUB_A, "RECON").await.0,
        OrderState::NotPay.as_str()
    );
    assert_eq!(
        count(
            &mut conn,
            "FROM notifications WHERE kind = 'query.pay' AND outcome = 'APPLIED'"
        )
        .await,
        2
    );

    // A refund of SUB_B's RECON that WeChat Pay finished but whose notification never came
    // (sent to a closed port): still PROCESSING here. WeChat Pay's v3 refund answer names no
    // sub_mchid; the reconciler's x-wxpay-sub-mch-id files it under SUB_B.
    let lost = s
        .sim(&[
            "notify",
            "--target",
            "http://127.0.0.1:1",
            "--max-attempts",
            "1",
            "--sub-mch-id",
            SUB_B,
            "--kind",
            "v3-refund",
            "--out-trade-no",
            "RECON",
            "--amount",
            "500",
            "--refund-fee",
            "200",
            "--out-refund-no",
            "RECON-R",
        ])
        .await;
    assert!(
        !lost.success,
        "the refund notification must be lost: {}",
        lost.describe()
    );
    s.env
        .sql(&format!(
            "INSERT INTO refunds (mch_id, sub_mch_id, out_refund_no, out_trade_no, refund_fee, status) \
             VALUES ('{}', '{SUB_B}', 'RECON-R', 'RECON', 200, 'PROCESSING')",
            s.mch_id
        ))
        .await
        .expect("refund row");
    reconcile_once(&s).await;
    let partially = OrderState::PartiallyRefunded.as_str().to_owned();
    eventually(
        Duration::from_secs(30),
        "the lost refund booked",
        async || state(&mut conn, &s, SUB_B, "RECON").await == (partially.clone(), 200),
    )
    .await;
    assert_eq!(
        count(
            &mut conn,
            &format!(
                "FROM notifications WHERE kind = 'query.refund' AND outcome = 'APPLIED' \
                 AND sub_mch_id = '{SUB_B}'"
            )
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_for_a_sub_merchant_is_verified_on_its_own_orders() {
    let s = Stack::start_with(&["--partner"]).await;
    let mut args = load_args(&s.gateway_url(), "50", "3s");
    args.extend(["--sub-mch-id".to_owned(), SUB_A.to_owned()]);
    let (prefix, genuine) = load_verified_once(&s, &args).await;
    // Every order of the run is SUB_A's, placed in its sub_appid, and paid as such.
    let mut conn = s.conn().await;
    let elsewhere = format!(
        "FROM orders WHERE out_trade_no LIKE '{prefix}%' AND (sub_mch_id <> '{SUB_A}' OR appid <> '{}')",
        s.appids[1]
    );
    assert_eq!(count(&mut conn, &elsewhere).await, 0);
    let paid = format!(
        "FROM outbox WHERE event_type = 'order.paid' AND payload->>'sub_mch_id' = '{SUB_A}'"
    );
    assert_eq!(count(&mut conn, &paid).await, genuine);
}
