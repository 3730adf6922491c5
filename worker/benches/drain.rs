//! Drain benchmark (not a test): pre-fill a fresh queue with signed notifications (20 %
//! duplicates; v2 MD5 mostly, some v3) and their NOTPAY orders in a fresh database, start
//! the worker, and measure applied/s and lag until the queue is drained and every order is
//! PAID. Verifies the counts: exactly one PAID per order, duplicates never applied twice.
//!
//! `cargo bench -p wxpay-worker --bench drain` (DRAIN_N=10000 for a smaller run).

#[path = "../tests/it/builders.rs"]
mod builders;

use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Double};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use lapin::options::BasicPublishOptions;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use wxpay_runtime::amqp::AmqpMessage;
use wxpay_runtime::config::{
    DatabaseSettings, RabbitmqSettings, RedisSettings, Settings, WorkerSettings,
};
use wxpay_shared::message::NotifyMessage;
use wxpay_worker::{broker, migrate, Worker};

const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432";

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Lag {
    #[diesel(sql_type = Double)]
    ms: f64,
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    let total: usize = std::env::var("DRAIN_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000);
    let duplicates = total / 5;
    let unique = total - duplicates;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let db_name = format!("wxpay_bench_{id}");
    let settings = Settings {
        gateway: Default::default(),
        worker: WorkerSettings {
            metrics_listen: "127.0.0.1:0".into(),
            outbox_poll_ms: 100,
            prefetch: env_or("DRAIN_PREFETCH", WorkerSettings::default().prefetch),
            db_pool_size: env_or("DRAIN_POOL", WorkerSettings::default().db_pool_size),
            ..WorkerSettings::default()
        },
        rabbitmq: RabbitmqSettings {
            queue: format!("wxpay.bench.{id}"),
            events_exchange: format!("wxpay.events.bench.{id}"),
            ..RabbitmqSettings::default()
        },
        redis: RedisSettings {
            key_prefix: format!("wxpay:bench:{id}:"),
            ..RedisSettings::default()
        },
        database: DatabaseSettings {
            url: SecretString::from(format!("{PG_BASE}/{db_name}")),
            ..DatabaseSettings::default()
        },
        wechatpay: Default::default(),
        reconciler: Default::default(),
        merchants: vec![builders::merchant_settings()],
        console: Default::default(),
    };
    let db_url = settings.database.url.expose_secret().to_owned();
    println!("drain: {total} notifications ({unique} orders, {duplicates} duplicates), prefetch {}, pool {}",
        settings.worker.prefetch, settings.worker.db_pool_size);

    migrate::migrate(&db_url, Duration::from_secs(5)).await?;
    let mut conn = AsyncPgConnection::establish(&db_url).await?;
    for chunk in (0..unique).collect::<Vec<_>>().chunks(2_000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!(
                    "('{}', 'bench-{i}', '{}', {})",
                    builders::MCH_ID,
                    builders::APPID,
                    amount(*i)
                )
            })
            .collect();
        conn.batch_execute(&format!(
            "INSERT INTO orders (mch_id, out_trade_no, appid, amount_total) VALUES {}",
            values.join(",")
        ))
        .await?;
    }

    // Every 10th order is notified through v3; duplicates are re-sends of earlier ones.
    let prepare = Instant::now();
    let mut messages: Vec<NotifyMessage> = (0..unique)
        .map(|i| {
            let (out_trade_no, transaction_id) = (format!("bench-{i}"), format!("4200{i:010}"));
            if i % 10 == 0 {
                builders::v3_pay(&out_trade_no, &transaction_id, amount(i))
            } else {
                builders::v2_pay(&out_trade_no, &transaction_id, amount(i))
            }
        })
        .collect();
    for d in 0..duplicates {
        let original = &messages[(d * 7) % unique];
        let copy = builders::resend(original);
        let at = (d * 13 + unique / 2) % messages.len();
        messages.insert(at.min(messages.len()), copy);
    }
    println!("prepared in {:.1?}", prepare.elapsed());

    let publish = Instant::now();
    let connection = broker::connect(&settings.rabbitmq).await?;
    let channel = broker::confirm_channel(&connection).await?;
    broker::declare_topology(&channel, &settings.rabbitmq, &settings.worker).await?;
    for chunk in messages.chunks(2_000) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for message in chunk {
            confirms.push(
                channel
                    .basic_publish(
                        "".into(),
                        settings.rabbitmq.queue.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &message.body,
                        message.properties(),
                    )
                    .await?,
            );
        }
        for confirm in confirms {
            broker::check_confirmation(confirm.await?)?;
        }
    }
    println!("published in {:.1?}", publish.elapsed());

    let worker = Worker::new(settings.clone())?;
    let shutdown = CancellationToken::new();
    let runner = worker.clone();
    let token = shutdown.clone();
    let started = Instant::now();
    let handle = tokio::spawn(async move { runner.run(token).await });
    let deadline = Duration::from_secs(600);
    while (worker.stats().acked() as usize) < total {
        anyhow::ensure!(started.elapsed() < deadline, "not drained in {deadline:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    handle.await?;

    let stats = worker.stats();
    let applied = stats.get("applied");
    let paid: Count = diesel::sql_query("SELECT count(*) AS n FROM orders WHERE state = 'PAID'")
        .get_result(&mut conn)
        .await?;
    let notified: Count = diesel::sql_query("SELECT count(*) AS n FROM notifications")
        .get_result(&mut conn)
        .await?;
    let events: Count =
        diesel::sql_query("SELECT count(*) AS n FROM outbox WHERE event_type = 'order.paid'")
            .get_result(&mut conn)
            .await?;
    let lags: Vec<Lag> = diesel::sql_query(
        "SELECT (extract(epoch FROM processed_at - received_at) * 1000)::float8 AS ms FROM notifications",
    )
    .load(&mut conn)
    .await?;
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
    for lag in &lags {
        histogram.record(lag.ms.max(0.0) as u64)?;
    }

    println!(
        "drained {total} in {elapsed:.2?}: {:.0} applied/s, {:.0} messages/s",
        applied as f64 / elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!("outcomes: applied {applied}, duplicate {} (redis+postgres), anomaly {}, retried {}, parked {}",
        stats.get("duplicate"), stats.get("anomaly"), stats.get("retried"), stats.get("parked"));
    println!(
        "lag (received → committed, includes the pre-fill wait) p50 {} ms, p99 {} ms, max {} ms",
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.max()
    );
    println!(
        "orders PAID {} / {unique}, notification rows {}, order.paid events {}",
        paid.n, notified.n, events.n
    );

    let ok = paid.n as usize == unique
        && notified.n as usize == unique
        && events.n as usize == unique
        && applied as usize == unique
        && stats.get("duplicate") as usize == duplicates;

    // Clean up.
    drop(conn);
    broker::delete_topology(&connection, &settings.rabbitmq, &settings.worker).await;
    let _ = connection.close(200, "done".into()).await;
    let mut admin = AsyncPgConnection::establish(&format!("{PG_BASE}/postgres")).await?;
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
        ))
        .await?;

    anyhow::ensure!(
        ok,
        "counts do not match: exactly-once violated or work missing"
    );
    println!("counts verified: one PAID per order, duplicates never applied twice");
    Ok(())
}

/// A tuning knob from the environment (for experiments), else the default.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A varied amount in fen.
fn amount(i: usize) -> i64 {
    100 + (i as i64 % 997) * 3
}
