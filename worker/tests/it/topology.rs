//! The broker topology: retry tiers and the parking queue are quorum queues (replicated),
//! and a queue or exchange left by an older release with other arguments is refused with
//! the step that fixes it.

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use wxpay_runtime::amqp::durable_exchange_options;
use wxpay_worker::broker::{self, BrokerError};

use crate::helpers::TestEnv;

/// `arguments` with `x-queue-type` set to classic.
fn classic(mut arguments: FieldTable) -> FieldTable {
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("classic".as_bytes())),
    );
    arguments
}

/// Declares `queue` as a durable classic queue with `arguments` otherwise, on a channel of
/// its own; the broker's answer as text.
async fn declare_classic(
    connection: &Connection,
    queue: &str,
    arguments: FieldTable,
) -> Result<(), String> {
    let channel = connection.create_channel().await.expect("channel");
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel.queue_declare(queue.into(), durable, classic(arguments));
    declared
        .await
        .map(|_| ())
        .map_err(|error| error.to_string())
}

async fn topology_channel(env: &TestEnv) -> (Connection, Channel) {
    let connection = broker::connect(&env.settings.rabbitmq)
        .await
        .expect("broker");
    let channel = broker::confirm_channel(&connection).await.expect("channel");
    (connection, channel)
}

/// The refusal of `declare_topology`, as text: it must be an `Inequivalent`.
async fn refusal(env: &TestEnv, channel: &Channel) -> String {
    let refused =
        broker::declare_topology(channel, &env.settings.rabbitmq, &env.settings.worker).await;
    let Err(error @ BrokerError::Inequivalent { .. }) = refused else {
        panic!("{refused:?}");
    };
    error.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_tiers_and_parking_are_quorum_queues() {
    let env = TestEnv::new().await;
    let (connection, channel) = topology_channel(&env).await;
    broker::declare_topology(&channel, &env.settings.rabbitmq, &env.settings.worker)
        .await
        .expect("topology");
    // Declared again with the same arguments: accepted (every process declares them).
    broker::declare_topology(&channel, &env.settings.rabbitmq, &env.settings.worker)
        .await
        .expect("topology is idempotent");
    let rabbitmq = &env.settings.rabbitmq;
    // The same arguments but the type: refused on the type alone.
    let mut queues: Vec<(String, FieldTable)> = env
        .settings
        .worker
        .retry_delays_ms
        .iter()
        .enumerate()
        .map(|(tier, delay)| {
            (
                rabbitmq.retry_queue(tier),
                broker::retry_tier_arguments(rabbitmq, *delay),
            )
        })
        .collect();
    queues.push((rabbitmq.parked_queue(), FieldTable::default()));
    queues.push((rabbitmq.unrouted_events(), FieldTable::default()));
    for (queue, arguments) in queues {
        let refused = declare_classic(&connection, &queue, arguments)
            .await
            .expect_err("a quorum queue refuses a classic declaration");
        assert!(refused.contains("x-queue-type"), "{queue}: {refused}");
    }
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_tier_of_an_older_release_is_refused_with_the_fix() {
    let env = TestEnv::new().await;
    let (connection, channel) = topology_channel(&env).await;
    let tier = env.settings.rabbitmq.retry_queue(1);
    declare_classic(&connection, &tier, FieldTable::default())
        .await
        .expect("classic tier");
    let text = refusal(&env, &channel).await;
    assert!(
        text.contains(&format!("rabbitmqctl delete_queue {tier}")) && text.contains("empty"),
        "{text}"
    );
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_exchange_without_alternate_exchange_is_refused_with_the_fix() {
    let env = TestEnv::new().await;
    let (connection, channel) = topology_channel(&env).await;
    let exchange = &env.settings.rabbitmq.events_exchange;
    let old = connection.create_channel().await.expect("channel");
    old.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        durable_exchange_options(),
        FieldTable::default(),
    )
    .await
    .expect("exchange of an older release");
    let text = refusal(&env, &channel).await;
    assert!(
        text.contains("alternate-exchange") && text.contains("rabbitmq.events_exchange"),
        "{text}"
    );
    let _ = connection.close(200, "done".into()).await;
}
