//! A service provider's (服务商) notifications for its sub-merchants: verified with the
//! provider's keys at the routes of a direct merchant (v3 at `/notify/v3/{sp_mchid}`), and
//! every appid they name (`appid` / `sp_appid`, `sub_appid`) must be one of its `appids`.

use wxpay_shared::message::{NotifyKind, NotifyMessage};
use wxpay_testkit::merchants::{PROVIDER, SUB_A, SUB_B, SUB_NOT_SERVED};
use wxpay_testkit::notifications::{partner_v2_pay, partner_v3_pay};
use wxpay_testkit::vectors::{V2_PAY_SUB_B, V2_REFUND_SUB_B};

use crate::helpers::*;

async fn provider_app() -> TestApp {
    TestApp::spawn_with(AMQP_URL, |settings| {
        let provider = PROVIDER.provider_settings(&[SUB_A, SUB_B]);
        settings.merchants.push(provider);
    })
    .await
}

fn body(message: &NotifyMessage) -> String {
    String::from_utf8(message.body.clone()).expect("UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_providers_notifications_are_verified_with_its_keys_and_queued() {
    let app = provider_app().await;
    // Made outside this workspace (Python hashlib, OpenSSL): testkit/fixtures/partner.
    assert!(app.post_v2_pay(V2_PAY_SUB_B).await.is_v2_success());
    assert!(app.post_v2_refund(V2_REFUND_SUB_B).await.is_v2_success());
    let sub_a = (&PROVIDER, &SUB_A);
    let v2 = partner_v2_pay(sub_a, "g-1", "4200G1", 100);
    assert!(app.post_v2_pay(&body(&v2)).await.is_v2_success());
    let v3 = partner_v3_pay(sub_a, "g-2", "4200G2", 100);
    let headers: Vec<(String, String)> = v3
        .wechatpay
        .as_ref()
        .expect("signed")
        .pairs()
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let answer = app.post_v3(PROVIDER.mch_id, &body(&v3), &headers).await;
    assert_eq!(answer.status, 204, "{answer:?}");

    let messages = app.drain().await;
    let kinds: Vec<(Option<String>, Option<String>)> = messages
        .iter()
        .map(|m| (header(m, "x-wxpay-kind"), header(m, "x-wxpay-mch-id")))
        .collect();
    let provider = Some(PROVIDER.mch_id.to_owned());
    let expected = [
        NotifyKind::V2Pay,
        NotifyKind::V2Refund,
        NotifyKind::V2Pay,
        NotifyKind::V3,
    ]
    .map(|kind| (Some(kind.as_str().to_owned()), provider.clone()));
    assert_eq!(kinds, expected);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_appid_the_provider_does_not_list_is_refused() {
    let app = provider_app().await;
    let stranger = partner_v2_pay((&PROVIDER, &SUB_NOT_SERVED), "g-3", "4200G3", 100);
    app.post_v2_pay(&body(&stranger))
        .await
        .assert_v2_fail(200, "appid does not belong to the merchant");
    assert!(app.drain().await.is_empty(), "nothing queued");
    app.stop().await;
}
