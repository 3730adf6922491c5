//! End to end, one notification at a time: `wxpay-sim notify` → `wxpay-gateway` → RabbitMQ →
//! `wxpay-worker` → PostgreSQL, every kind of notification WeChat Pay sends, duplicates and
//! re-sends, and the bad ones that must never be applied.

use std::time::Duration;

use wxpay_shared::state::OrderState;

use crate::e2e_support::{
    count, counter_sum, eventually, insert_order, order, scrape, worker_done, Output, Stack,
};

/// HMAC-SHA256 without `sign_type` in the body.
const HMAC_UNDECLARED: [&str; 3] = ["--sign-type", "HMAC-SHA256", "--omit-sign-type"];

/// `notify` arguments: `--kind <kind> --out-trade-no <no> --amount <amount>`, then `extra`.
fn args<'a>(kind: &'a str, no: &'a str, amount: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--kind", kind, "--out-trade-no", no, "--amount", amount];
    args.extend_from_slice(extra);
    args
}

/// Drives `wxpay-sim notify` against the stack's gateway and counts what was sent.
struct Driver<'a> {
    stack: &'a Stack,
    acknowledged: u32,
    rejected: u32,
}

impl Driver<'_> {
    async fn notify(&self, args: &[&str]) -> Output {
        self.stack.notify_once(args).await
    }

    /// A genuine notification: acknowledged at the first attempt.
    async fn genuine(&mut self, args: &[&str]) {
        self.stack.notify_acknowledged(args).await;
        self.acknowledged += 1;
    }

    /// A bad notification: refused by the gateway (the simulator exits non-zero).
    async fn refused(&mut self, args: &[&str]) {
        let out = self.notify(args).await;
        assert!(
            !out.success && out.stdout.contains("not acknowledged after 1 attempt(s)"),
            "bad notification {args:?} was not refused\n{}",
            out.describe()
        );
        self.rejected += 1;
    }
}

async fn wait_state(s: &Stack, no: &str, state: &str, refunded_total: i64) {
    let mut conn = s.conn().await;
    eventually(
        Duration::from_secs(30),
        format!("order {no} in state {state} with {refunded_total} fen refunded"),
        async || {
            let o = order(&mut conn, &s.mch_id, no).await;
            o.state == state && o.refunded_total == refunded_total
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_reaches_its_state_once_and_bad_ones_never() {
    let s = Stack::start().await;
    let mut conn = s.conn().await;
    let orders: [(&str, i64); 8] = [
        ("E2E-V2MD5", 1000),
        ("E2E-V2HMAC", 1001),
        ("E2E-V3", 1002),
        ("E2E-RF-V2", 2000),
        ("E2E-RF-V3", 3000),
        ("E2E-BAD", 500),
        ("E2E-ANOMALY", 700),
        ("E2E-BAD-RF", 800),
    ];
    for (no, amount) in orders {
        insert_order(&mut conn, &s, no, amount).await;
    }
    let mut d = Driver {
        stack: &s,
        acknowledged: 0,
        rejected: 0,
    };

    // Payments, each kind: PAID.
    let payments: [(&str, &str, &str, &[&str]); 6] = [
        ("v2-pay", "E2E-V2MD5", "1000", &["--sign-type", "MD5"]),
        // HMAC-SHA256 without sign_type, as WeChat Pay sometimes sends it.
        ("v2-pay", "E2E-V2HMAC", "1001", &HMAC_UNDECLARED),
        ("v3-pay", "E2E-V3", "1002", &[]),
        ("v2-pay", "E2E-RF-V2", "2000", &[]),
        ("v3-pay", "E2E-RF-V3", "3000", &[]),
        ("v3-pay", "E2E-BAD-RF", "800", &[]),
    ];
    for (kind, no, amount, extra) in payments {
        d.genuine(&args(kind, no, amount, extra)).await;
    }
    for (no, _) in orders
        .iter()
        .filter(|(no, _)| !["E2E-BAD", "E2E-ANOMALY"].contains(no))
    {
        wait_state(&s, no, OrderState::Paid.as_str(), 0).await;
    }

    // Refunds: v2 (AES-256-ECB req_info) and v3, partial then the rest.
    let partial = [
        ("v2-refund", "E2E-RF-V2", "2000", "RF-V2-1", "500"),
        ("v3-refund", "E2E-RF-V3", "3000", "RF-V3-1", "1000"),
    ];
    let rest = [
        ("v2-refund", "E2E-RF-V2", "2000", "RF-V2-2", "1500"),
        ("v3-refund", "E2E-RF-V3", "3000", "RF-V3-2", "2000"),
    ];
    let after = [
        [
            ("E2E-RF-V2", OrderState::PartiallyRefunded, 500),
            ("E2E-RF-V3", OrderState::PartiallyRefunded, 1000),
        ],
        [
            ("E2E-RF-V2", OrderState::Refunded, 2000),
            ("E2E-RF-V3", OrderState::Refunded, 3000),
        ],
    ];
    for (refunds, after) in [partial, rest].into_iter().zip(after) {
        for (kind, no, amount, out_refund_no, fee) in refunds {
            let refund = ["--out-refund-no", out_refund_no, "--refund-fee", fee];
            d.genuine(&args(kind, no, amount, &refund)).await;
        }
        for (no, state, refunded) in after {
            wait_state(&s, no, state.as_str(), refunded).await;
        }
    }

    // Re-sends (v3: fresh timestamp, nonce and signature; v2: the same fields) and
    // duplicates through the other channel, some at the same time.
    let resends: [(&str, &str, &str, &[&str]); 6] = [
        ("v2-pay", "E2E-V2MD5", "1000", &[]),
        ("v3-pay", "E2E-V2MD5", "1000", &[]),
        ("v3-pay", "E2E-V3", "1002", &[]),
        ("v2-pay", "E2E-V3", "1002", &["--sign-type", "HMAC-SHA256"]),
        (
            "v2-refund",
            "E2E-RF-V2",
            "2000",
            &["--out-refund-no", "RF-V2-1", "--refund-fee", "500"],
        ),
        (
            "v3-refund",
            "E2E-RF-V3",
            "3000",
            &["--out-refund-no", "RF-V3-2", "--refund-fee", "2000"],
        ),
    ];
    for (kind, no, amount, extra) in resends {
        d.genuine(&args(kind, no, amount, extra)).await;
    }
    let burst = args("v2-pay", "E2E-V2HMAC", "1001", &HMAC_UNDECLARED);
    let outs = futures::future::join_all((0..4).map(|_| d.notify(&burst))).await;
    for out in outs {
        assert!(out.success, "burst re-send refused\n{}", out.describe());
    }
    d.acknowledged += 4;

    // Forged, tampered, probes and stale: refused by the gateway, never applied.
    let bad: [(&str, &[&str]); 7] = [
        ("v2-pay", &["--sign-type", "MD5", "--forge"]),
        (
            "v2-pay",
            &["--sign-type", "HMAC-SHA256", "--omit-sign-type", "--forge"],
        ),
        ("v2-pay", &["--tamper-amount"]),
        ("v3-pay", &["--forge"]),
        ("v3-pay", &["--tamper-amount"]),
        ("v3-pay", &["--probe"]),
        ("v3-pay", &["--stale"]),
    ];
    for (kind, flags) in bad {
        d.refused(&args(kind, "E2E-BAD", "500", flags)).await;
    }
    let bad_refunds = [
        ("v2-refund", "--forge"),
        ("v3-refund", "--forge"),
        ("v3-refund", "--tamper-amount"),
        ("v3-refund", "--stale"),
    ];
    for (kind, flag) in bad_refunds {
        let extra = [flag, "--out-refund-no", "RF-BAD"];
        d.refused(&args(kind, "E2E-BAD-RF", "800", &extra)).await;
    }

    // Genuine but for another amount than the order's: an anomaly, never PAID.
    d.genuine(&args("v2-pay", "E2E-ANOMALY", "701", &[])).await;

    // Every acknowledged message is done (applied, duplicate, recorded or anomaly).
    let expected = f64::from(d.acknowledged);
    let worker_url = s.worker_url();
    eventually(
        Duration::from_secs(30),
        format!("the worker finishing {expected} messages"),
        async || worker_done(&scrape(&worker_url).await) >= expected,
    )
    .await;
    let worker_metrics = scrape(&s.worker_url()).await;
    assert_eq!(
        worker_done(&worker_metrics),
        expected,
        "each acknowledged notification processed once"
    );
    assert_eq!(
        counter_sum(&worker_metrics, "wxpay_worker_parked_total", &[]),
        0.0,
        "nothing parked"
    );
    let gateway_metrics = scrape(&s.gateway_url()).await;
    assert_eq!(
        counter_sum(
            &gateway_metrics,
            "wxpay_gateway_requests_total",
            &[("outcome", "rejected")]
        ),
        f64::from(d.rejected),
        "every bad notification counted as rejected"
    );
    assert_eq!(
        counter_sum(
            &gateway_metrics,
            "wxpay_gateway_requests_total",
            &[("outcome", "accepted")]
        ),
        expected
    );

    // End states.
    let expect: [(&str, &str, i64); 8] = [
        ("E2E-V2MD5", OrderState::Paid.as_str(), 0),
        ("E2E-V2HMAC", OrderState::Paid.as_str(), 0),
        ("E2E-V3", OrderState::Paid.as_str(), 0),
        ("E2E-RF-V2", OrderState::Refunded.as_str(), 2000),
        ("E2E-RF-V3", OrderState::Refunded.as_str(), 3000),
        ("E2E-BAD", OrderState::NotPay.as_str(), 0),
        ("E2E-ANOMALY", OrderState::NotPay.as_str(), 0),
        ("E2E-BAD-RF", OrderState::Paid.as_str(), 0),
    ];
    for (no, state, refunded) in expect {
        let o = order(&mut conn, &s.mch_id, no).await;
        assert_eq!(
            (o.state.as_str(), o.refunded_total),
            (state, refunded),
            "{no}"
        );
        assert_eq!(
            o.transaction_id.is_some(),
            state != OrderState::NotPay.as_str(),
            "{no}"
        );
        let applied_pays = count(
            &mut conn,
            &format!(
                "FROM notifications WHERE out_trade_no = '{no}' AND out_refund_no IS NULL AND outcome = 'APPLIED'"
            ),
        )
        .await;
        let paid_events = count(
            &mut conn,
            &format!(
                "FROM outbox WHERE event_type = 'order.paid' AND payload->>'out_trade_no' = '{no}'"
            ),
        )
        .await;
        let once = i64::from(state != OrderState::NotPay.as_str());
        assert_eq!(applied_pays, once, "{no}: APPLIED payment rows");
        assert_eq!(paid_events, once, "{no}: order.paid events");
    }
    for refund in ["RF-V2-1", "RF-V2-2", "RF-V3-1", "RF-V3-2"] {
        let applied = count(
            &mut conn,
            &format!("FROM notifications WHERE out_refund_no = '{refund}' AND outcome = 'APPLIED'"),
        )
        .await;
        assert_eq!(applied, 1, "{refund}: APPLIED refund rows");
        let events = count(
            &mut conn,
            &format!("FROM outbox WHERE event_type = 'order.refunded' AND payload->>'out_refund_no' = '{refund}'"),
        )
        .await;
        assert_eq!(events, 1, "{refund}: order.refunded events");
        let rows = count(
            &mut conn,
            &format!("FROM refunds WHERE out_refund_no = '{refund}' AND status = 'SUCCESS'"),
        )
        .await;
        assert_eq!(rows, 1, "{refund}: refund row");
    }
    // The bad ones left no trace but the gateway's rejection.
    assert_eq!(
        count(
            &mut conn,
            "FROM notifications WHERE out_trade_no = 'E2E-BAD' OR out_refund_no = 'RF-BAD'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&mut conn, "FROM refunds WHERE out_refund_no = 'RF-BAD'").await,
        0
    );
    // The anomaly is recorded and announced.
    assert_eq!(
        count(
            &mut conn,
            "FROM notifications WHERE out_trade_no = 'E2E-ANOMALY' AND outcome = 'ANOMALY' AND anomaly_reason = 'AMOUNT_MISMATCH'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &mut conn,
            "FROM outbox WHERE event_type = 'anomaly.detected'"
        )
        .await,
        1
    );
    // The relay publishes every event.
    eventually(
        Duration::from_secs(20),
        "every outbox event published",
        async || count(&mut conn, "FROM outbox WHERE published_at IS NULL").await == 0,
    )
    .await;
}
