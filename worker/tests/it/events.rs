//! Outbox events are never confirmed into the void: published `mandatory` to an exchange
//! whose alternate exchange keeps what no subscriber takes, and each carries `order_seq`.

use std::time::Duration;

use diesel::sql_types::{BigInt, Nullable};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use wxpay_worker::outbox::{self, RelayError};
use wxpay_worker::{broker, db, Disposition};

use crate::builders::{transaction_of, v2_pay, v2_refund};
use crate::helpers::{declared_topology, eventually, TestEnv};

/// `order_seq` of the outbox events of `event_type`, oldest first.
async fn order_seqs(env: &TestEnv, event_type: &str) -> Vec<Option<i64>> {
    #[derive(QueryableByName)]
    struct Seq {
        #[diesel(sql_type = Nullable<BigInt>)]
        seq: Option<i64>,
    }
    let rows: Vec<Seq> = diesel::sql_query(format!(
        "SELECT (payload->>'order_seq')::bigint AS seq FROM outbox \
         WHERE event_type = '{event_type}' ORDER BY created_at"
    ))
    .load(&mut env.conn().await)
    .await
    .expect("outbox");
    rows.into_iter().map(|row| row.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_no_subscriber_takes_waits_in_the_unrouted_queue() {
    let env = TestEnv::new().await;
    env.insert_order("e-1", 100).await;
    let running = env.spawn_worker(env.settings());
    env.publish(&v2_pay("e-1", "4200e1", 100)).await;
    eventually(Duration::from_secs(30), "event relayed", || async {
        env.count("FROM outbox WHERE published_at IS NOT NULL")
            .await
            == 1
    })
    .await;
    running.stop().await;

    let rabbitmq = &env.settings.rabbitmq;
    let connection = broker::connect(rabbitmq).await.expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    let message = channel
        .basic_get(
            rabbitmq.unrouted_events().as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
        .expect("the order.paid event waits in <events_exchange>.unrouted");
    let event: serde_json::Value =
        serde_json::from_slice(&message.delivery.data).expect("JSON event");
    assert_eq!(event["type"], "order.paid");
    assert_eq!(event["data"]["order_seq"], 1);
    assert_eq!(event["data"]["out_trade_no"], "e-1");
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_of_an_order_carries_the_next_order_seq() {
    let (env, worker) = TestEnv::with_worker().await;
    env.insert_order("e-2", 1000).await;
    let tid = transaction_of("e-2");
    assert_eq!(
        worker.process_one(&v2_pay("e-2", &tid, 1000)).await,
        Disposition::Applied
    );
    assert!(matches!(
        worker.process_one(&v2_pay("e-2", "4200other", 1000)).await,
        Disposition::Anomaly { .. }
    ));
    for (refund, fee, status) in [
        ("er-1", 400, "SUCCESS"),
        ("er-2", 100, "REFUNDCLOSE"),
        ("er-3", 600, "SUCCESS"),
    ] {
        let id = format!("5030{refund}");
        assert_eq!(
            worker
                .process_one(&v2_refund("e-2", refund, &id, 1000, fee, status))
                .await,
            Disposition::Applied
        );
    }
    assert_eq!(order_seqs(&env, "order.paid").await, [Some(1)]);
    assert_eq!(order_seqs(&env, "anomaly.detected").await, [Some(2)]);
    assert_eq!(order_seqs(&env, "order.refunded").await, [Some(3), Some(5)]);
    assert_eq!(order_seqs(&env, "refund.updated").await, [Some(4)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_even_the_alternate_exchange_cannot_route_is_not_marked_published() {
    let (env, worker) = TestEnv::with_worker().await;
    env.insert_order("e-3", 100).await;
    worker.process_one(&v2_pay("e-3", "4200e3", 100)).await;

    let rabbitmq = &env.settings.rabbitmq;
    let (connection, channel) = declared_topology(&env.settings).await;
    channel
        .queue_delete(
            rabbitmq.unrouted_events().as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .expect("unrouted queue deleted");
    let pool = db::build_pool(
        &env.db_url(),
        1,
        Duration::from_secs(2),
        Duration::from_secs(2),
    )
    .expect("pool");
    let relayed = outbox::relay_batch(&pool, &channel, &rabbitmq.events_exchange).await;
    assert!(
        matches!(
            relayed,
            Err(RelayError::Broker(broker::BrokerError::Returned))
        ),
        "{relayed:?}"
    );
    assert_eq!(env.count("FROM outbox WHERE published_at IS NULL").await, 1);

    // The topology declared again (as the relay does on reconnect): published.
    broker::declare_topology(&channel, rabbitmq, &env.settings.worker)
        .await
        .expect("topology");
    let relayed = outbox::relay_batch(&pool, &channel, &rabbitmq.events_exchange)
        .await
        .expect("relayed");
    assert_eq!(relayed, 1);
    let _ = connection.close(200, "done".into()).await;
}
