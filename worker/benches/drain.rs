//! Drain benchmark (not a test): pre-fill a fresh queue with signed notifications (20 %
//! duplicates; v2 MD5 mostly, some v3) and their NOTPAY orders in a fresh database, start
//! the worker, and measure applied/s and lag until the queue is drained and every order is
//! PAID. Verifies the counts: exactly one PAID per order, duplicates never applied twice.
//!
//! Then, in the same run and on the same database (orders reset to NOTPAY), the baseline
//! this design must beat: an **inline handler**, what a callback endpoint without a queue
//! does per request: verify and decode, then one PostgreSQL transaction, as many at once
//! as the worker has connections. No broker, no Redis: its rate is the most such a handler
//! could answer with. Both print CPU seconds per 1,000 notifications of this process (the
//! worker or the handler; PostgreSQL's own CPU is not in it).
//!
//! `cargo bench -p wxpay-worker --bench drain` (DRAIN_N=10000 for a smaller run).

use std::time::{Duration, Instant};

use diesel::sql_types::Double;
use diesel::QueryableByName;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use wxpay_shared::message::NotifyMessage;
use wxpay_testkit::merchants::MERCHANT;
use wxpay_testkit::notifications::{resend, v2_pay, v3_pay};
use wxpay_testkit::{Background, TestEnv};
use wxpay_worker::apply::{self, Applying, Confirmation, Verdict};
use wxpay_worker::{db, decode, migrate, Worker};

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
    let mut settings = wxpay_testkit::default_settings();
    settings.worker.outbox_poll_ms = 100;
    settings.worker.prefetch = env_or("DRAIN_PREFETCH", settings.worker.prefetch);
    settings.worker.db_pool_size = env_or("DRAIN_POOL", settings.worker.db_pool_size);
    // A database, queues and key prefix of its own, dropped at the end.
    let env = TestEnv::new("bench", settings);
    let settings = env.settings();
    let db_url = env.db_url();
    println!("drain: {total} notifications ({unique} orders, {duplicates} duplicates), prefetch {}, pool {}",
        settings.worker.prefetch, settings.worker.db_pool_size);

    migrate::migrate(&db_url, Duration::from_secs(5)).await?;
    let mut conn = env.conn().await;
    for chunk in (0..unique).collect::<Vec<_>>().chunks(2_000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!(
                    "('{}', 'bench-{i}', '{}', {})",
                    MERCHANT.mch_id,
                    MERCHANT.appid,
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
                v3_pay(&out_trade_no, &transaction_id, amount(i))
            } else {
                v2_pay(&out_trade_no, &transaction_id, amount(i))
            }
        })
        .collect();
    for d in 0..duplicates {
        let original = &messages[(d * 7) % unique];
        let copy = resend(original);
        let at = (d * 13 + unique / 2) % messages.len();
        messages.insert(at.min(messages.len()), copy);
    }
    println!("prepared in {:.1?}", prepare.elapsed());

    let publish = Instant::now();
    env.publish_all(&messages).await;
    println!("published in {:.1?}", publish.elapsed());

    let worker = Worker::new(settings.clone())?;
    let runner = worker.clone();
    let cpu_before = process_cpu_secs();
    let started = Instant::now();
    let running = Background::spawn(|token| async move { runner.run(token).await });
    let deadline = Duration::from_secs(600);
    while (worker.stats().acked() as usize) < total {
        anyhow::ensure!(started.elapsed() < deadline, "not drained in {deadline:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let worker_cpu = process_cpu_secs() - cpu_before;
    running.stop().await;

    let stats = worker.stats();
    let applied = stats.get("applied");
    let paid = env.count("FROM orders WHERE state = 'PAID'").await;
    let notified = env.count("FROM notifications").await;
    let events = env
        .count("FROM outbox WHERE event_type = 'order.paid'")
        .await;
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
        paid, notified, events
    );

    let ok = paid as usize == unique
        && notified as usize == unique
        && events as usize == unique
        && applied as usize == unique
        && stats.get("duplicate") as usize == duplicates;

    anyhow::ensure!(
        ok,
        "counts do not match: exactly-once violated or work missing"
    );
    println!("counts verified: one PAID per order, duplicates never applied twice");
    let worker_rate = applied as f64 / elapsed.as_secs_f64();
    println!(
        "worker: {:.3} CPU-s per 1,000 notifications (this process)",
        worker_cpu * 1000.0 / total as f64
    );

    let (inline_rate, inline_cpu) = inline_handler(&settings, &messages).await?;
    println!(
        "inline handler (verify + one transaction per request, {} at once): {inline_rate:.0} applied/s, {:.3} CPU-s per 1,000",
        settings.worker.db_pool_size,
        inline_cpu * 1000.0 / total as f64
    );
    println!(
        "worker / inline handler: {:.2}× (goal ≥ 1.3×)",
        worker_rate / inline_rate
    );
    Ok(())
}

/// The baseline: `messages` handled the way a callback endpoint without a queue would,
/// verify and decode then one transaction each, `db_pool_size` at once, on the orders reset
/// to NOTPAY. Returns (applied per second, CPU seconds of this process).
async fn inline_handler(
    settings: &wxpay_runtime::config::Settings,
    messages: &[NotifyMessage],
) -> anyhow::Result<(f64, f64)> {
    let pool = db::build_pool(
        secrecy::ExposeSecret::expose_secret(&settings.database.url),
        settings.worker.db_pool_size,
        Duration::from_secs(5),
        Duration::from_secs(30),
    )?;
    pool.get()
        .await?
        .batch_execute(
            "UPDATE orders SET state = 'NOTPAY', transaction_id = NULL, paid_at = NULL, event_seq = 0; \
             DELETE FROM outbox; DELETE FROM notifications;",
        )
        .await?;
    let merchants = settings.merchants()?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let applied = std::sync::atomic::AtomicUsize::new(0);
    let handler = || async {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(message) = messages.get(i) else {
                return anyhow::Ok(());
            };
            let merchant = decode::merchant_of(message, &merchants)?;
            let decoded = decode::decode(message, &merchants)?;
            let applying = Applying {
                message,
                decoded: &decoded,
                dedupe_key: &decoded.dedupe_key(&message.body),
                confirmation: &Confirmation::NotRequired,
                sub_merchants: &merchant.sub_merchants,
                merchants: &merchants,
            };
            if apply::apply(&pool, &applying).await? == Verdict::Applied {
                applied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    };
    let cpu_before = process_cpu_secs();
    let started = Instant::now();
    futures::future::try_join_all((0..settings.worker.db_pool_size).map(|_| handler())).await?;
    let elapsed = started.elapsed();
    let cpu = process_cpu_secs() - cpu_before;
    let applied = applied.into_inner();
    anyhow::ensure!(
        applied == messages.len() - messages.len() / 5,
        "the inline handler applied {applied}"
    );
    Ok((applied as f64 / elapsed.as_secs_f64(), cpu))
}

/// User and system CPU seconds of this process so far (`/proc/self/stat`, clock ticks of
/// 1/100 s, as on every Linux this runs on).
fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces) start after its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat(5): 11 and 12 counted from 0 after the
    // `)` that ends field 2.
    let ticks = |n: usize| {
        fields
            .get(n)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
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
