//! A service provider's sub-merchants in the console: two sub-merchants' orders with the same
//! out_trade_no are two stories, each with its own notifications and events.

use std::time::Duration;

use wxpay_shared::message::NotifyKind;
use wxpay_testkit::eventually;
use wxpay_testkit::merchants::{PROVIDER, SUB_A, SUB_B};
use wxpay_testkit::vectors::{self, SHARED_OUT_TRADE_NO, V2_PAY_SUB_B, V3_PAY_SUB_A};

use crate::support::{fetch, login, spawn_worker, App, VIEWER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sub_merchants_sharing_an_out_trade_no_are_two_stories() {
    let app = App::start().await;
    let mut settings = app.env.settings();
    settings
        .merchants
        .push(PROVIDER.provider_settings(&[SUB_A, SUB_B]));
    for (sub, amount) in [(&SUB_A, 2500), (&SUB_B, 1800)] {
        app.env
            .insert_sub_merchant_order((&PROVIDER, sub), SHARED_OUT_TRADE_NO, amount)
            .await;
    }
    let running = spawn_worker(settings);
    app.env.publish(&V3_PAY_SUB_A.message()).await;
    app.env
        .publish(&vectors::v2_message(NotifyKind::V2Pay, V2_PAY_SUB_B))
        .await;
    eventually(Duration::from_secs(20), "both orders paid", || async {
        let mut paid = 0;
        for sub in [&SUB_A, &SUB_B] {
            let order = app
                .env
                .sub_merchant_order((&PROVIDER, sub), SHARED_OUT_TRADE_NO)
                .await;
            paid += usize::from(order.state == "PAID");
        }
        paid == 2
    })
    .await;
    running.stop().await;

    let viewer = login(&app, VIEWER.0, VIEWER.1).await;
    let body = fetch(
        &app,
        &format!("/search?q={SHARED_OUT_TRADE_NO}"),
        &viewer.cookie,
    )
    .await;
    for sub in [&SUB_A, &SUB_B] {
        let heading = format!("sub-merchant {}", sub.sub_mch_id);
        assert!(body.contains(&heading), "{heading}: {body}");
    }
    // One notification and one event in each story, not both in both.
    assert_eq!(body.matches("APPLIED").count(), 2, "{body}");
    assert_eq!(body.matches("order.paid").count(), 2, "{body}");
    app.stop().await;
}
