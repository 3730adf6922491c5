//! End to end for the notifications that are neither a payment nor a refund (merchant
//! transfer, profit sharing, pay score, a kind not yet documented): `wxpay-sim notify` (and
//! the test kit's vectors made by Python, queued as the gateway queues them) →
//! `wxpay-gateway` → RabbitMQ → `wxpay-worker` (its relay) → the events exchange, each one
//! event `wechatpay.<event_type>` carrying the decrypted resource, exactly once per bill or
//! order whatever WeChat Pay re-sends, valid under docs/events' schemas; nothing parked.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use wxpay_simulator::build::Variant;
use wxpay_simulator::build_kinds::{OtherKind, OtherNotice};
use wxpay_simulator::notify::{self, DeliveryOptions};
use wxpay_simulator::secrets::SimMerchant;
use wxpay_testkit::event_schemas::assert_valid_event;
use wxpay_testkit::merchants::{MERCHANT, PLATFORM_PUBLIC_PEM};
use wxpay_testkit::vectors::{TRANSFER_AMOUNT_FEN, TRANSFER_OUT_BILL_NO, V3_KINDS};

use crate::e2e_support::{eventually, EventsTap, Stack};

/// The stack's merchant (made by `wxpay-sim init`, mch_id 1900000109 like the test kit's
/// [`MERCHANT`]) takes [`MERCHANT`]'s APIv3 key, in the services' configuration and in the
/// simulator's secrets, and also verifies with [`MERCHANT`]'s platform key: both the
/// simulator's notifications and the Python vectors verify and decrypt.
fn adopt_the_test_kit_merchant_keys(config: &mut toml::Table) {
    let merchant = config["merchants"]
        .as_array_mut()
        .and_then(|merchants| merchants.first_mut())
        .and_then(toml::Value::as_table_mut)
        .expect("one merchant");
    assert_eq!(merchant["mch_id"].as_str(), Some(MERCHANT.mch_id));
    merchant.insert("api_v3_key".into(), MERCHANT.api_v3_key.into());
    let keys = merchant["platform_public_keys"]
        .as_table_mut()
        .expect("platform_public_keys");
    keys.insert(MERCHANT.platform_serial.into(), PLATFORM_PUBLIC_PEM.into());
}

fn adopt_the_test_kit_api_v3_key(sim_config: &std::path::Path) {
    let text = std::fs::read_to_string(sim_config).expect("simulator.toml");
    let mut secrets: toml::Table = text.parse().expect("TOML");
    secrets["merchant"]
        .as_table_mut()
        .expect("[merchant]")
        .insert("api_v3_key".into(), MERCHANT.api_v3_key.into());
    std::fs::write(sim_config, toml::to_string(&secrets).expect("TOML")).expect("written");
}

/// The merchant's number an event is about: what `data.resource` names it by.
fn business_no(event: &Value) -> String {
    let resource = &event["data"]["resource"];
    ["out_bill_no", "out_order_no", "future_no"]
        .iter()
        .find_map(|field| resource[*field].as_str())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_kinds_reach_the_events_exchange_once_each_with_their_resource() {
    let mut s = Stack::prepare(adopt_the_test_kit_merchant_keys).await;
    adopt_the_test_kit_api_v3_key(&s.sim_config);
    s.start_gateway().await;
    s.start_worker().await;
    let mut tap = EventsTap::bind(&s, "wechatpay.#").await;

    // A transfer bill the simulator signs, delivered twice as it is (WeChat Pay re-sends
    // the same notification), then notified again under another notification id.
    let merchant = SimMerchant::load(&s.sim_config).expect("simulator secrets");
    let bill = OtherNotice::new(OtherKind::Transfer, "E2E-BILL-1", 2500, chrono::Utc::now());
    let finished = bill
        .notification(&merchant, Variant::Genuine, chrono::Utc::now())
        .expect("built");
    let once = DeliveryOptions {
        max_attempts: 1,
        ..DeliveryOptions::default()
    };
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let delivery = notify::deliver(&client, &s.gateway_url(), &finished, &once, |_| {})
            .await
            .expect("delivered");
        assert!(delivery.acknowledged, "{}", s.logs(30));
    }
    let notified = [
        ("v3-transfer", "--out-bill-no", "E2E-BILL-1", "2500"),
        ("v3-profitsharing", "--out-order-no", "E2E-PS-1", "300"),
        ("v3-payscore", "--out-order-no", "E2E-PAYSCORE-1", "4000"),
    ];
    for (kind, out_no_option, out_no, amount) in notified {
        let args = ["--kind", kind, out_no_option, out_no, "--amount", amount];
        s.notify_acknowledged(&args).await;
    }
    // The Python vectors (their timestamps are long past the gateway's 5 minutes: queued as
    // the gateway queues them; the worker verifies again): a bill and its re-send under
    // another id, two profit sharings, a pay score confirmation, a future kind.
    let vectors: Vec<_> = V3_KINDS.iter().map(|v| v.message_of(&MERCHANT)).collect();
    s.env.publish_all(&vectors).await;

    let expected: BTreeMap<(String, String), usize> = [
        ("MCHTRANSFER.BILL.FINISHED", "E2E-BILL-1"),
        ("MCHTRANSFER.BILL.FINISHED", TRANSFER_OUT_BILL_NO),
        ("PROFITSHARING.SUCCESS", "E2E-PS-1"),
        ("PROFITSHARING.SUCCESS", "KINDS-PS-1"),
        ("TRANSACTION.SUCCESS", "KINDS-PS-2"),
        ("PAYSCORE.USER_CONFIRM", "E2E-PAYSCORE-1"),
        ("PAYSCORE.USER_CONFIRM", "KINDS-PAYSCORE-1"),
        ("FUTURE.SOMETHING", "KINDS-FUTURE-1"),
    ]
    .into_iter()
    .map(|(event_type, no)| ((format!("wechatpay.{event_type}"), no.to_owned()), 1))
    .collect();
    let caught = |events: &[Value]| {
        let mut counts = BTreeMap::new();
        for event in events {
            let key = (
                event["type"].as_str().unwrap_or_default().to_owned(),
                business_no(event),
            );
            *counts.entry(key).or_insert(0) += 1;
        }
        counts
    };
    eventually(Duration::from_secs(60), "every kind's event", async || {
        let events = tap.collect().await;
        expected.keys().all(|key| caught(events).contains_key(key))
    })
    .await;
    // Settled: nothing queued, nothing left to relay; then whatever came late is counted too.
    eventually(
        Duration::from_secs(30),
        "queue and outbox drained",
        async || {
            s.env.queue_depth().await == 0
                && s.count("FROM outbox WHERE published_at IS NULL").await == 0
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = tap.collect().await.to_vec();
    tap.close().await;
    assert_eq!(caught(&events), expected, "{events:#?}\n{}", s.logs(30));

    for event in &events {
        let routing_key = event["type"].as_str().expect("type");
        assert_valid_event(routing_key, event);
        let data = &event["data"];
        assert_eq!(
            routing_key.strip_prefix("wechatpay."),
            data["event_type"].as_str()
        );
        assert_eq!(event["mch_id"], s.mch_id.as_str());
        assert!(data["resource"].is_object(), "{event}");
    }
    let bill_of = |no: &str| {
        events
            .iter()
            .find(|e| business_no(e) == no)
            .map(|e| e["data"].clone())
            .expect("the bill's event")
    };
    let simulated = bill_of("E2E-BILL-1");
    assert_eq!(simulated["original_type"], "mch_payment");
    assert_eq!(simulated["resource"]["transfer_amount"], 2500);
    assert_eq!(simulated["resource"]["state"], "SUCCESS");
    let outside = bill_of(TRANSFER_OUT_BILL_NO);
    assert_eq!(outside["resource"]["transfer_amount"], TRANSFER_AMOUNT_FEN);
    assert_eq!(outside["resource"]["state"], "SUCCESS");
    let as_transaction = bill_of("KINDS-PS-2");
    assert_eq!(as_transaction["original_type"], "profitsharing");

    let parked = s.env.settings.rabbitmq.parked_queue();
    assert_eq!(
        wxpay_testkit::amqp::queue_depth(&parked).await,
        0,
        "{}",
        s.logs(30)
    );
}
