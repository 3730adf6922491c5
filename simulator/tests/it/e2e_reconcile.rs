//! End to end, the notification that never came: `wxpay-worker reconcile --once` queries
//! `wxpay-sim serve` (WeChat Pay's query API) for unpaid orders, publishes what it learns to
//! the same queue, and the worker applies it; the late notification is then a duplicate.

use std::time::Duration;

use wxpay_shared::state::{OrderState, TradeState};

use crate::e2e_support::{count, insert_order, order, reconcile_at_once, wait_paid, Stack};

/// The transaction_id that `wxpay-sim order` printed.
fn transaction_id(stdout: &str) -> String {
    stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("transaction_id="))
        .unwrap_or_else(|| panic!("no transaction_id in: {stdout}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_recovers_a_lost_payment_once_and_closes_an_unpaid_order() {
    let mut s = Stack::prepare(reconcile_at_once).await;
    s.start_all().await;

    // WeChat Pay knows: one paid (its notification was lost), one closed, one not paid yet.
    let staged = [
        ("RECON-PAID", "1200", TradeState::Success.as_str()),
        ("RECON-CLOSED", "300", TradeState::Closed.as_str()),
        ("RECON-NOTPAY", "400", TradeState::NotPay.as_str()),
    ];
    let mut paid_transaction = String::new();
    let mut conn = s.conn().await;
    for (no, amount, state) in staged {
        let out = s
            .sim(&[
                "order",
                "--out-trade-no",
                no,
                "--amount",
                amount,
                "--state",
                state,
            ])
            .await;
        assert!(out.success, "wxpay-sim order failed\n{}", out.describe());
        if state == TradeState::Success.as_str() {
            paid_transaction = transaction_id(&out.stdout);
        }
        insert_order(&mut conn, &s, no, amount.parse().expect("fen")).await;
    }

    let round = s
        .worker_cmd(&["reconcile", "--once"], Duration::from_secs(60))
        .await;
    assert!(
        round.success,
        "reconcile --once failed\n{}\n{}",
        round.describe(),
        s.logs(40)
    );
    wait_paid(&mut conn, &s, "RECON-PAID").await;
    let paid = order(&mut conn, &s.mch_id, "RECON-PAID").await;
    assert_eq!(
        paid.transaction_id.as_deref(),
        Some(paid_transaction.as_str())
    );
    assert_eq!(
        order(&mut conn, &s.mch_id, "RECON-CLOSED").await.state,
        OrderState::Closed.as_str()
    );
    assert_eq!(
        order(&mut conn, &s.mch_id, "RECON-NOTPAY").await.state,
        OrderState::NotPay.as_str()
    );
    assert_eq!(
        count(
            &mut conn,
            "FROM notifications WHERE out_trade_no = 'RECON-PAID' AND kind = 'query.pay' AND outcome = 'APPLIED'"
        )
        .await,
        1
    );

    // The notification arrives late after all: a duplicate, nothing applied twice.
    let before = s.worker_done().await;
    let late = s.notify_v3_pay_once("RECON-PAID", "1200").await;
    assert!(
        late.success,
        "late notification refused\n{}",
        late.describe()
    );
    s.until_worker_done_beyond(before, "the worker finishing the late notification")
        .await;
    assert_eq!(
        count(
            &mut conn,
            "FROM notifications WHERE out_trade_no = 'RECON-PAID' AND outcome = 'APPLIED'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &mut conn,
            "FROM outbox WHERE event_type = 'order.paid' AND payload->>'out_trade_no' = 'RECON-PAID'"
        )
        .await,
        1
    );
    assert_eq!(
        order(&mut conn, &s.mch_id, "RECON-PAID").await.state,
        OrderState::Paid.as_str()
    );
}
