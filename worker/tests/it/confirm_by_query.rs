//! Confirm-by-query (`merchants.confirm_by_query_min_fen`) through the real pipeline: the
//! worker consumes from RabbitMQ and writes PostgreSQL and Redis, `wxpay-sim serve` plays
//! WeChat Pay's order query (and counts the queries it receives, `GET /sim/queries`).

use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::{json, Value};
use wxpay_runtime::telemetry;
use wxpay_shared::message::NotifyMessage;
use wxpay_shared::state::{OrderState, TradeState};
use wxpay_worker::reconcile::query::Api;
use wxpay_worker::Worker;

use crate::builders::{self, APPID, MCH_ID};
use crate::helpers::{eventually, REDIS_URL};
use crate::reconcile::{self, metric, Setup};

const WAIT: Duration = Duration::from_secs(30);
/// The merchant's `confirm_by_query_min_fen` in these tests: 100 yuan.
const THRESHOLD_FEN: i64 = 10_000;

/// The reconciler tests' set-up (database, queues, `wxpay-sim serve`), its merchant having
/// payments of [`THRESHOLD_FEN`] or more confirmed, queried through `api`.
async fn setup(api: Api) -> Setup {
    let mut s = reconcile::setup(api).await;
    // Query answers are signed by the simulator's keys, v3 notifications by the fixtures'
    // (builders): the merchant verifies both, as during a platform key rotation.
    let fixtures = builders::merchant_settings();
    let merchant = &mut s.settings.merchants[0];
    merchant.api_v3_key = fixtures.api_v3_key;
    merchant
        .platform_public_keys
        .extend(fixtures.platform_public_keys);
    merchant.confirm_by_query_min_fen = Some(THRESHOLD_FEN);
    s
}

impl Setup {
    /// Stages an order paid at "WeChat Pay"; its transaction id.
    async fn paid_at_wechat_pay(&self, out_trade_no: &str, amount: i64) -> String {
        self.sim
            .order(out_trade_no, amount, TradeState::Success.as_str())
            .await
            .expect("a paid order has a transaction id")
    }

    /// WeChat Pay's payment notification: v3 for a merchant queried through API v3, v2
    /// (signed with the simulator merchant's key) otherwise.
    fn notification(
        &self,
        api: Api,
        out_trade_no: &str,
        transaction_id: &str,
        amount: i64,
    ) -> NotifyMessage {
        match api {
            Api::V3 => builders::v3_pay(out_trade_no, transaction_id, amount),
            Api::V2 => builders::v2_pay_with(
                out_trade_no,
                transaction_id,
                amount,
                APPID,
                "SUCCESS",
                self.sim.merchant.api_v2_key.expose_secret(),
            ),
        }
    }

    async fn wait_paid(&self, out_trade_no: &str) {
        self.wait_state(out_trade_no, OrderState::Paid.as_str())
            .await;
    }

    /// Order queries the simulator received about `out_trade_no`.
    async fn queries(&self, out_trade_no: &str) -> u64 {
        let counts: Value = reqwest::get(format!("{}/sim/queries", self.sim.url))
            .await
            .expect("simulator answers")
            .json()
            .await
            .expect("JSON counts");
        counts["orders"][out_trade_no].as_u64().unwrap_or(0)
    }

    /// `order.paid` events of `out_trade_no` that say the query confirmed the payment.
    async fn confirmed_events(&self, out_trade_no: &str) -> i64 {
        self.env
            .count(&format!(
                "FROM outbox WHERE event_type = 'order.paid' \
                 AND payload->>'out_trade_no' = '{out_trade_no}' \
                 AND payload->>'confirmed_by_query' = 'true'"
            ))
            .await
    }

    async fn anomaly_detail(&self, out_trade_no: &str) -> String {
        self.env
            .text_of(
                "one QUERY_MISMATCH anomaly",
                "SELECT anomaly_detail AS value FROM notifications \
                 WHERE out_trade_no = $1 AND anomaly_reason = 'QUERY_MISMATCH'",
                &[out_trade_no],
            )
            .await
    }
}

/// Messages whose fate a transaction committed (applied, duplicate, recorded, anomaly).
fn settled(worker: &Worker) -> u64 {
    let stats = worker.stats();
    ["applied", "duplicate", "recorded", "anomaly"]
        .into_iter()
        .map(|outcome| stats.get(outcome))
        .sum()
}

async fn large_payment_confirmed_by_the_query_is_paid_once(api: Api) {
    let s = setup(api).await;
    let transaction_id = s.paid_at_wechat_pay("big-1", 50_000).await;
    s.env.insert_order("big-1", 50_000).await;
    let notification = s.notification(api, "big-1", &transaction_id, 50_000);
    let running = s.env.spawn_worker(s.settings.clone());
    let worker = running.worker.clone();

    s.env.publish(&notification).await;
    s.wait_paid("big-1").await;
    assert_eq!(s.queries("big-1").await, 1, "asked WeChat Pay once");
    // WeChat Pay's re-send is a duplicate, and costs no second query.
    s.env.publish(&builders::resend(&notification)).await;
    eventually(WAIT, "the re-send settled", || async {
        settled(&worker) >= 2
    })
    .await;
    running.stop().await;

    assert_eq!(worker.stats().get("applied"), 1);
    assert_eq!(worker.stats().get("duplicate"), 1);
    assert_eq!(s.queries("big-1").await, 1);
    assert_eq!(
        s.env.order("big-1").await.transaction_id.as_deref(),
        Some(transaction_id.as_str())
    );
    assert_eq!(
        s.env
            .count("FROM notifications WHERE out_trade_no = 'big-1' AND outcome = 'APPLIED'")
            .await,
        1
    );
    assert_eq!(s.env.outbox_count("order.paid").await, 1);
    assert_eq!(s.confirmed_events("big-1").await, 1);
}

#[tokio::test]
async fn v3_large_payment_confirmed_by_the_query_is_paid_once() {
    large_payment_confirmed_by_the_query_is_paid_once(Api::V3).await;
}

#[tokio::test]
async fn v2_large_payment_confirmed_by_the_query_is_paid_once() {
    large_payment_confirmed_by_the_query_is_paid_once(Api::V2).await;
}

#[tokio::test]
async fn a_query_that_disagrees_is_a_query_mismatch_and_the_order_stays_unpaid() {
    let prometheus = telemetry::metrics_handle();
    let s = setup(Api::V3).await;
    // WeChat Pay knows another amount, an unpaid order, another transaction, no order.
    let amount_tid = s.paid_at_wechat_pay("amount-1", 20_000).await;
    let genuine_tid = s.paid_at_wechat_pay("other-1", 50_000).await;
    s.sim
        .order("unpaid-1", 50_000, TradeState::NotPay.as_str())
        .await;
    let notified = [
        ("amount-1", amount_tid.clone()),
        ("unpaid-1", "4200000000unpaid".to_owned()),
        ("other-1", "4200000000forged".to_owned()),
        ("unknown-1", "4200000000unknown".to_owned()),
    ];
    for (out_trade_no, transaction_id) in &notified {
        s.env.insert_order(out_trade_no, 50_000).await;
        s.env
            .publish(&s.notification(Api::V3, out_trade_no, transaction_id, 50_000))
            .await;
    }
    let running = s.env.spawn_worker(s.settings.clone());
    let worker = running.worker.clone();
    eventually(WAIT, "four anomalies", || async {
        worker.stats().get("anomaly") >= 4
    })
    .await;
    running.stop().await;

    for (out_trade_no, _) in &notified {
        assert_eq!(
            s.state(out_trade_no).await,
            OrderState::NotPay.as_str(),
            "{out_trade_no}"
        );
        assert_eq!(s.queries(out_trade_no).await, 1, "{out_trade_no}");
    }
    assert_eq!(worker.stats().get("applied"), 0);
    assert_eq!(s.env.anomalies("QUERY_MISMATCH").await, 4);
    assert_eq!(s.env.outbox_count("anomaly.detected").await, 4);
    assert_eq!(s.env.outbox_count("order.paid").await, 0);
    assert_eq!(
        s.anomaly_detail("amount-1").await,
        "order query: 20000 fen CNY, notified 50000 fen CNY"
    );
    assert_eq!(
        s.anomaly_detail("unpaid-1").await,
        "order query: trade_state NOTPAY, notified SUCCESS"
    );
    assert_eq!(
        s.anomaly_detail("other-1").await,
        format!("order query: transaction {genuine_tid}, notified 4200000000forged")
    );
    assert_eq!(
        s.anomaly_detail("unknown-1").await,
        "order query: WeChat Pay does not know the order"
    );
    let rendered = prometheus.render();
    assert!(
        metric(
            &rendered,
            "wxpay_worker_anomalies_total{reason=\"QUERY_MISMATCH\"}"
        ) >= 4.0,
        "{rendered}"
    );
    assert!(
        metric(
            &rendered,
            "wxpay_worker_confirm_queries_total{result=\"disagreed\"}"
        ) >= 4.0,
        "{rendered}"
    );
}

#[tokio::test]
async fn query_api_down_takes_no_key_and_retries_until_it_is_back() {
    let prometheus = telemetry::metrics_handle();
    let s = setup(Api::V3).await;
    let transaction_id = s.paid_at_wechat_pay("down-1", 30_000).await;
    s.env.insert_order("down-1", 30_000).await;
    s.sim.faults(json!({"status": 503})).await;
    let running = s.env.spawn_worker(s.settings.clone());
    let worker = running.worker.clone();
    s.env
        .publish(&s.notification(Api::V3, "down-1", &transaction_id, 30_000))
        .await;
    eventually(WAIT, "two retries", || async {
        worker.stats().get("retried") >= 2
    })
    .await;

    // Not applied, and nothing taken: no notification row, no Redis done marker.
    assert_eq!(s.state("down-1").await, OrderState::NotPay.as_str());
    assert_eq!(s.env.count("FROM notifications").await, 0);
    let redis = redis::Client::open(REDIS_URL).expect("redis");
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let done_marker = format!(
        "{}done:pay:{MCH_ID}:{transaction_id}",
        s.settings.redis.key_prefix
    );
    let marked: bool = redis::cmd("EXISTS")
        .arg(&done_marker)
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert!(!marked, "no done marker while unconfirmed");
    assert!(s.queries("down-1").await >= 2, "asked on every attempt");

    s.sim.faults(json!({})).await;
    s.wait_paid("down-1").await;
    running.stop().await;
    assert_eq!(worker.stats().get("applied"), 1);
    assert_eq!(worker.stats().get("parked"), 0);
    assert_eq!(s.confirmed_events("down-1").await, 1);
    let rendered = prometheus.render();
    assert!(
        metric(
            &rendered,
            "wxpay_worker_confirm_queries_total{result=\"failed\"}"
        ) >= 2.0,
        "{rendered}"
    );
    assert!(
        metric(
            &rendered,
            "wxpay_worker_confirm_queries_total{result=\"confirmed\"}"
        ) >= 1.0,
        "{rendered}"
    );
}

/// Below the threshold, refunds and the reconciler's own answers are applied as before,
/// without a query; the threshold itself is "at or above".
#[tokio::test]
async fn below_the_threshold_refunds_and_reconciler_answers_are_not_queried() {
    let s = setup(Api::V3).await;
    let mut paid = Vec::new();
    for (out_trade_no, amount) in [("small-1", THRESHOLD_FEN - 1), ("edge-1", THRESHOLD_FEN)] {
        let transaction_id = s.paid_at_wechat_pay(out_trade_no, amount).await;
        s.env.insert_order(out_trade_no, amount).await;
        paid.push(s.notification(Api::V3, out_trade_no, &transaction_id, amount));
    }
    let running = s.env.spawn_worker(s.settings.clone());
    for notification in &paid {
        s.env.publish(notification).await;
    }
    s.wait_paid("small-1").await;
    s.wait_paid("edge-1").await;
    assert_eq!(s.queries("small-1").await, 0, "below the threshold");
    assert_eq!(s.queries("edge-1").await, 1, "at the threshold");
    assert_eq!(s.confirmed_events("small-1").await, 0);
    assert_eq!(s.confirmed_events("edge-1").await, 1);

    // A refund of the whole large payment: no query.
    s.env
        .publish(&builders::v3_refund(
            "edge-1",
            "R-edge-1",
            "5030000000edge",
            THRESHOLD_FEN,
            THRESHOLD_FEN,
            "SUCCESS",
        ))
        .await;
    s.wait_state("edge-1", OrderState::Refunded.as_str()).await;

    // A large payment never notified: the reconciler's query answer is applied as it is.
    s.paid_at_wechat_pay("lost-1", 60_000).await;
    s.env.insert_order("lost-1", 60_000).await;
    let report = s.round().await;
    assert_eq!(report.published, 1, "{report:?}");
    s.wait_paid("lost-1").await;
    running.stop().await;

    assert_eq!(s.queries("lost-1").await, 1, "the reconciler's query only");
    assert_eq!(s.queries("edge-1").await, 1, "the refund asked nothing");
    assert_eq!(s.queries("small-1").await, 0);
    assert_eq!(s.env.outbox_count("order.paid").await, 3);
}
