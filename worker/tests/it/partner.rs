//! Service providers (服务商): a provider's notifications for its sub-merchants, applied to
//! the sub-merchant's order with every rule of a direct merchant's. The payments and refunds
//! of `SHARED-1` at two sub-merchants are the test kit's outside vectors (Python, OpenSSL:
//! `wxpay_testkit::vectors`), not our signer's.

use wxpay_runtime::config::MerchantSettings;
use wxpay_shared::message::{NotifyKind, NotifyMessage};
use wxpay_shared::state::OrderState;
use wxpay_testkit::merchants::{SubMerchant, PROVIDER, SUB_A, SUB_B, SUB_NOT_SERVED};
use wxpay_testkit::notifications::{
    partner_v2_pay, partner_v2_refund, partner_v3_pay, partner_v3_refund, resend, v2_pay_fields,
    v2_signed_message, Refund,
};
use wxpay_testkit::vectors::{
    self, SHARED_OUT_TRADE_NO, V2_PAY_SUB_B, V2_PAY_SUB_B_TRANSACTION, V2_REFUND_SUB_B,
    V3_PAY_NOT_SERVED, V3_PAY_SUB_A, V3_PAY_SUB_A_TRANSACTION, V3_REFUND_SUB_A,
};
use wxpay_worker::{Disposition, Worker};

use crate::anomalies::{only_open_anomaly, reapply_applies};
use crate::builders::{APPID, MCH_ID, V2_KEY};
use crate::helpers::{anomaly, assert_duplicate, TestEnv};

/// A worker whose merchants are the direct test merchant and `provider` (a service provider).
async fn with_provider(provider: MerchantSettings) -> (TestEnv, Worker) {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.merchants.push(provider);
    let worker = Worker::new(settings).expect("worker");
    (env, worker)
}

/// [`with_provider`] serving [`SUB_A`] and [`SUB_B`].
async fn with_two_sub_merchants() -> (TestEnv, Worker) {
    with_provider(PROVIDER.provider_settings(&[SUB_A, SUB_B])).await
}

async fn state_of(env: &TestEnv, sub: &SubMerchant, out_trade_no: &str) -> (String, i64) {
    let order = env.sub_merchant_order((&PROVIDER, sub), out_trade_no).await;
    (order.state, order.refunded_total)
}

/// Each message applies, and WeChat Pay's re-send of it is a duplicate.
async fn applied_once(worker: &Worker, messages: [NotifyMessage; 2]) {
    for message in &messages {
        assert_eq!(worker.process_one(message).await, Disposition::Applied);
    }
    for message in &messages {
        assert_duplicate(&worker.process_one(&resend(message)).await);
    }
}

/// `SHARED-1` of both sub-merchants (2500 and 1800 fen) and of the direct merchant.
async fn insert_shared_orders(env: &TestEnv) {
    env.insert_sub_merchant_order((&PROVIDER, &SUB_A), SHARED_OUT_TRADE_NO, 2500)
        .await;
    env.insert_sub_merchant_order((&PROVIDER, &SUB_B), SHARED_OUT_TRADE_NO, 1800)
        .await;
    env.insert_order(SHARED_OUT_TRADE_NO, 1800).await;
}

/// [`insert_shared_orders`], then SUB_A's paid by the v3 vector and SUB_B's by the v2 one,
/// each once.
async fn shared_orders_paid_by_the_vectors() -> (TestEnv, Worker) {
    let (env, worker) = with_two_sub_merchants().await;
    insert_shared_orders(&env).await;
    let v3 = V3_PAY_SUB_A.message();
    let v2 = vectors::v2_message(NotifyKind::V2Pay, V2_PAY_SUB_B);
    applied_once(&worker, [v3, v2]).await;
    (env, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_out_trade_no_paid_at_two_sub_merchants_ends_on_each_order_once() {
    let (env, worker) = shared_orders_paid_by_the_vectors().await;
    // The same payments through the other channel (our own builders): duplicates too.
    let sub_a = (&PROVIDER, &SUB_A);
    let through_v2 = partner_v2_pay(sub_a, SHARED_OUT_TRADE_NO, V3_PAY_SUB_A_TRANSACTION, 2500);
    assert_duplicate(&worker.process_one(&through_v2).await);

    for (sub, transaction) in [
        (&SUB_A, V3_PAY_SUB_A_TRANSACTION),
        (&SUB_B, V2_PAY_SUB_B_TRANSACTION),
    ] {
        let order = env
            .sub_merchant_order((&PROVIDER, sub), SHARED_OUT_TRADE_NO)
            .await;
        assert_eq!(order.state, OrderState::Paid.as_str(), "{}", sub.sub_mch_id);
        assert_eq!(order.transaction_id.as_deref(), Some(transaction));
        let paid = format!(
            "FROM outbox WHERE event_type = 'order.paid' AND mch_id = '{}' \
             AND payload->>'sub_mch_id' = '{}' AND payload->>'out_trade_no' = '{SHARED_OUT_TRADE_NO}'",
            PROVIDER.mch_id, sub.sub_mch_id
        );
        assert_eq!(env.count(&paid).await, 1, "{}", sub.sub_mch_id);
        let applied = format!(
            "FROM notifications WHERE outcome = 'APPLIED' AND sub_mch_id = '{}'",
            sub.sub_mch_id
        );
        assert_eq!(env.count(&applied).await, 1, "{}", sub.sub_mch_id);
    }
    // The direct merchant's order of the same number is untouched.
    assert_eq!(
        env.order(SHARED_OUT_TRADE_NO).await.state,
        OrderState::NotPay.as_str()
    );
    assert_eq!(env.outbox_count("order.paid").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_refunds_move_the_money_of_their_sub_merchants_order_once() {
    let (env, worker) = shared_orders_paid_by_the_vectors().await;

    // Both refunds are SHARED-R1: one of each sub-merchant's order.
    let v3 = V3_REFUND_SUB_A.message();
    let v2 = vectors::v2_message(NotifyKind::V2Refund, V2_REFUND_SUB_B);
    applied_once(&worker, [v3, v2]).await;
    assert_eq!(
        state_of(&env, &SUB_A, SHARED_OUT_TRADE_NO).await,
        (OrderState::PartiallyRefunded.as_str().to_owned(), 1000)
    );
    assert_eq!(
        state_of(&env, &SUB_B, SHARED_OUT_TRADE_NO).await,
        (OrderState::Refunded.as_str().to_owned(), 1800)
    );
    assert_eq!(
        env.count("FROM refunds WHERE out_refund_no = 'SHARED-R1' AND status = 'SUCCESS'")
            .await,
        2
    );
    assert_eq!(
        env.count("FROM outbox WHERE event_type = 'order.refunded' AND payload ? 'sub_mch_id'")
            .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_merchant_the_provider_does_not_serve_is_never_applied() {
    let (env, worker) = with_two_sub_merchants().await;
    // Even with an order of that number for it: the configuration says who is served.
    env.insert_sub_merchant_order((&PROVIDER, &SUB_NOT_SERVED), SHARED_OUT_TRADE_NO, 2500)
        .await;
    let stranger = V3_PAY_NOT_SERVED.message();
    assert_eq!(
        worker.process_one(&stranger).await,
        anomaly("SUB_MCH_ID_MISMATCH")
    );
    assert_duplicate(&worker.process_one(&resend(&stranger)).await);
    let refund = Refund::new(SHARED_OUT_TRADE_NO, "NS-R1", "5039", 2500, 100);
    let of = (&PROVIDER, &SUB_NOT_SERVED);
    assert_eq!(
        worker
            .process_one(&partner_v2_refund(of, &refund, "SUCCESS"))
            .await,
        anomaly("SUB_MCH_ID_MISMATCH")
    );
    assert_eq!(
        state_of(&env, &SUB_NOT_SERVED, SHARED_OUT_TRADE_NO).await,
        (OrderState::NotPay.as_str().to_owned(), 0)
    );
    assert_eq!(env.anomalies("SUB_MCH_ID_MISMATCH").await, 2);
    assert_eq!(
        env.count("FROM outbox WHERE event_type = 'anomaly.detected' AND payload->>'sub_mch_id' = '1900000299'")
            .await,
        2
    );

    // A direct merchant serves no sub-merchant: its own signed body naming one is refused too.
    env.insert_order("d-1", 100).await;
    let mut fields = v2_pay_fields(MCH_ID, APPID, "d-1", 100);
    fields.insert("sub_mch_id", SUB_A.sub_mch_id);
    let naming_a_sub = v2_signed_message(NotifyKind::V2Pay, fields, V2_KEY);
    assert_eq!(
        worker.process_one(&naming_a_sub).await,
        anomaly("SUB_MCH_ID_MISMATCH")
    );
    assert_eq!(env.order("d-1").await.state, OrderState::NotPay.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_payments_keep_the_appid_amount_and_state_rules() {
    let (env, worker) = with_two_sub_merchants().await;
    let sub_a = (&PROVIDER, &SUB_A);
    env.insert_sub_merchant_order(sub_a, "p-1", 500).await;
    // SUB_A's orders carry its sub_appid: paid in the provider's appid, it is not this order.
    let mut in_sp_appid = SUB_A;
    in_sp_appid.sub_appid = "";
    let wrong_appid = partner_v3_pay((&PROVIDER, &in_sp_appid), "p-1", "4200P1", 500);
    assert_eq!(
        worker.process_one(&wrong_appid).await,
        anomaly("APPID_MISMATCH")
    );
    assert_eq!(
        worker
            .process_one(&partner_v2_pay(sub_a, "p-1", "4200P2", 499))
            .await,
        anomaly("AMOUNT_MISMATCH")
    );
    assert_eq!(
        worker
            .process_one(&partner_v3_pay(sub_a, "p-1", "4200P3", 500))
            .await,
        Disposition::Applied
    );
    assert_eq!(
        worker
            .process_one(&partner_v2_pay(sub_a, "p-1", "4200P4", 500))
            .await,
        anomaly("DUPLICATE_PAYMENT")
    );
    let refund = Refund::new("p-1", "p-1-r", "5041", 500, 200);
    assert_eq!(
        worker
            .process_one(&partner_v3_refund(sub_a, &refund, "SUCCESS"))
            .await,
        Disposition::Applied
    );
    assert_eq!(
        state_of(&env, &SUB_A, "p-1").await,
        (OrderState::PartiallyRefunded.as_str().to_owned(), 200)
    );
    // No order for SUB_B's p-1: retried, as for a direct merchant, never filed under SUB_A.
    let unknown = partner_v2_pay((&PROVIDER, &SUB_B), "p-1", "4200P5", 500);
    assert!(
        matches!(
            worker.process_one(&unknown).await,
            Disposition::Retry { .. }
        ),
        "an unknown order is retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_of_any_sub_merchant_lets_its_orders_decide() {
    let mut any = PROVIDER.provider_settings(&[SUB_A]);
    any.sub_mch_ids = vec!["*".into()];
    let (env, worker) = with_provider(any).await;
    // Served, and no order yet: retried like any unknown order, no key taken.
    let payment = V3_PAY_NOT_SERVED.message();
    assert!(matches!(
        worker.process_one(&payment).await,
        Disposition::Retry { .. }
    ));
    env.insert_sub_merchant_order((&PROVIDER, &SUB_NOT_SERVED), SHARED_OUT_TRADE_NO, 2500)
        .await;
    assert_eq!(
        worker.process_one(&resend(&payment)).await,
        Disposition::Applied
    );
    assert_eq!(
        state_of(&env, &SUB_NOT_SERVED, SHARED_OUT_TRADE_NO).await,
        (OrderState::Paid.as_str().to_owned(), 0)
    );
}

/// The provider signs a new sub-merchant on after its first payment was refused: added to
/// `sub_mch_ids`, the anomaly is reapplied once through the normal path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_merchant_signed_on_later_is_reapplied_once() {
    let (env, worker) = with_two_sub_merchants().await;
    let of = (&PROVIDER, &SUB_NOT_SERVED);
    env.insert_sub_merchant_order(of, SHARED_OUT_TRADE_NO, 2500)
        .await;
    let payment = V3_PAY_NOT_SERVED.message();
    assert_eq!(
        worker.process_one(&payment).await,
        anomaly("SUB_MCH_ID_MISMATCH")
    );
    let open = only_open_anomaly(&env).await;

    let mut settings = env.settings();
    let signed_on = PROVIDER.provider_settings(&[SUB_A, SUB_B, SUB_NOT_SERVED]);
    settings.merchants.push(signed_on);
    let merchants = settings.merchants().expect("merchants");
    let note = "sub-merchant signed on";
    reapply_applies(&env, &merchants, open.id, note).await;
    assert_eq!(
        state_of(&env, &SUB_NOT_SERVED, SHARED_OUT_TRADE_NO).await,
        (OrderState::Paid.as_str().to_owned(), 0)
    );
    assert_duplicate(&worker.process_one(&resend(&payment)).await);
}
