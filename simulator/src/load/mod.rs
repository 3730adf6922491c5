//! `wxpay-sim load`: open-loop load with duplicates, forgeries and tampering, then an audit
//! of PostgreSQL.
//!
//! Open loop: send `i` is due at `start + i / rate` whatever happened to the previous ones,
//! and its latency is measured from that intended time, so a stalled gateway shows up as
//! latency instead of silently slowing the generator down (coordinated omission). In-flight
//! requests are bounded by a semaphore; waiting for a permit counts as latency too.
//!
//! Bodies are built ahead of the clock by a separate thread: RSA signing a v3 body costs a
//! few milliseconds, and done during the run it would take a core away from the services
//! being measured on a small machine. Up to [`BUILD_AHEAD_SECS`] of sends (at most
//! [`MAX_BUILT_AHEAD`] bodies) are built before the clock starts; longer runs keep building
//! during the run. Either way a v3 timestamp is at most a couple of minutes old when sent,
//! well inside the 5 minutes WeChat Pay's receivers allow.

pub mod cpu;
pub mod db;
pub mod plan;
pub mod report;
pub mod verify;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use wxpay_shared::state::TradeState;
use wxpay_shared::v2::SignType;

use crate::build::{self, BuildError, Notification, Payment, V2Signing, Variant};
use crate::notify::{send_once, url_for, DeliveryError};
use crate::orders::{OrderBookError, OrderBookFile, OrderRecord};
use crate::secrets::SimMerchant;
use plan::{Channel, Fate, Plan, PlannedSend, Ratios, SendKind, DUP_WINDOW};
use verify::{Answers, Observed};

/// How far ahead of the clock bodies are built.
pub const BUILD_AHEAD_SECS: u64 = 60;
/// Upper bound of bodies held built ahead (memory: a few KiB each).
pub const MAX_BUILT_AHEAD: u64 = 50_000;
/// A genuine notification the gateway refused is re-sent this many times (quickly: the point
/// is the audit, not WeChat's 24 h schedule).
pub const GENUINE_RESENDS: u32 = 3;

/// A load run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The gateway's base URL.
    pub target: String,
    /// Sends per second.
    pub rate: u32,
    pub duration: Duration,
    pub ratios: Ratios,
    /// `None`: no database (no NOTPAY orders inserted, no audit; gateway answers only).
    pub database_url: Option<String>,
    pub drain_timeout: Duration,
    /// In-flight requests at most.
    pub concurrency: usize,
    /// An answer slower than this is a failure (WeChat Pay waits about 5 s).
    pub answer_timeout: Duration,
    /// Record the genuine payments in the simulator's order book (for `serve`).
    pub record_order_book: bool,
    /// `--report DIR`: plots and summaries of the run.
    pub report: Option<report::ReportOptions>,
}

/// Why the run could not be carried out (as opposed to: ran, and verification failed).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("--rate must be at least 1 per second")]
    Rate,
    #[error("--duration must be positive")]
    Duration,
    #[error("--concurrency must be at least 1")]
    Concurrency,
    #[error(transparent)]
    Ratio(#[from] plan::RatioError),
    #[error(transparent)]
    Target(#[from] DeliveryError),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    OrderBook(#[from] OrderBookError),
    #[error("building notifications: {0}")]
    Build(#[from] BuildError),
    #[error("the body builder stopped early")]
    BuilderStopped,
    #[error("latency histogram: {0}")]
    Histogram(String),
    #[error("the plan refers to order #{0}, which it does not hold")]
    Plan(usize),
    #[error(transparent)]
    Report(#[from] report::ReportError),
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// The result of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub prefix: String,
    /// HTTP requests made (re-sends included).
    pub sent: u64,
    /// Answers judged success.
    pub accepted: u64,
    /// Answers judged failure, and requests without an answer.
    pub rejected: u64,
    /// Of `rejected`: no HTTP answer at all (timeout, connection).
    pub transport_errors: u64,
    /// Rejections the plan asked for (forged and tampered sends).
    pub expected_rejections: u64,
    pub genuine_orders: usize,
    pub forged_orders: usize,
    pub tampered_orders: usize,
    pub duplicates: usize,
    pub throughput_per_s: f64,
    pub latency_ms: Latency,
    /// p50 and p99 of processed_at − received_at; `None` without database or rows.
    pub e2e_lag_ms: Option<(f64, f64)>,
    /// Whether PostgreSQL was audited.
    pub db_checked: bool,
    /// Genuine orders PAID when the drain ended.
    pub drained_paid: i64,
    pub verified: bool,
    pub problems: Vec<String>,
    /// CPU seconds per 1,000 sends of each local component from the clock's start to the
    /// end of the drain ([`cpu`]); empty where `/proc` is not there.
    pub cpu_s_per_1000: BTreeMap<String, f64>,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Report {
    /// The one JSON object of `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        let lag = match self.e2e_lag_ms {
            Some((p50, p99)) => json!({"p50": round3(p50), "p99": round3(p99)}),
            None => json!({"p50": null, "p99": null}),
        };
        json!({
            "sent": self.sent,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "throughput_per_s": round3(self.throughput_per_s),
            "latency_ms": {
                "p50": round3(self.latency_ms.p50),
                "p90": round3(self.latency_ms.p90),
                "p99": round3(self.latency_ms.p99),
                "p999": round3(self.latency_ms.p999),
                "max": round3(self.latency_ms.max),
            },
            "e2e_lag_ms": lag,
            "verified": self.verified,
            "problems": self.problems,
            "run_prefix": self.prefix,
            "orders": {
                "genuine": self.genuine_orders,
                "forged": self.forged_orders,
                "tampered": self.tampered_orders,
            },
            "duplicates": self.duplicates,
            "expected_rejections": self.expected_rejections,
            "transport_errors": self.transport_errors,
            "db_checked": self.db_checked,
            "cpu_s_per_1000": self.cpu_s_per_1000,
        })
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let l = &self.latency_ms;
        let lag = match self.e2e_lag_ms {
            Some((p50, p99)) => format!("p50 {p50:.1} ms, p99 {p99:.1} ms"),
            None => "n/a".to_owned(),
        };
        let mut out = format!(
            "run {prefix}*: {genuine} genuine, {forged} forged, {tampered} tampered orders; {dups} duplicates\n\
             sent {sent}, accepted {accepted}, rejected {rejected} (expected {expected}; {transport} without answer)\n\
             answer latency ms: p50 {p50:.2}  p90 {p90:.2}  p99 {p99:.2}  p99.9 {p999:.2}  max {max:.2}\n\
             throughput {tp:.1}/s; end-to-end lag {lag}\n",
            prefix = self.prefix,
            genuine = self.genuine_orders,
            forged = self.forged_orders,
            tampered = self.tampered_orders,
            dups = self.duplicates,
            sent = self.sent,
            accepted = self.accepted,
            rejected = self.rejected,
            expected = self.expected_rejections,
            transport = self.transport_errors,
            p50 = l.p50,
            p90 = l.p90,
            p99 = l.p99,
            p999 = l.p999,
            max = l.max,
            tp = self.throughput_per_s,
        );
        if !self.cpu_s_per_1000.is_empty() {
            let per_k: Vec<String> = self
                .cpu_s_per_1000
                .iter()
                .map(|(label, v)| format!("{label} {v:.3}"))
                .collect();
            out.push_str(&format!(
                "CPU seconds per 1,000 sends: {}\n",
                per_k.join(", ")
            ));
        }
        if !self.db_checked {
            out.push_str(
                "database audit skipped (--no-db): only the gateway's answers were checked\n",
            );
        }
        if self.verified {
            out.push_str("verification: OK\n");
        } else {
            out.push_str("verification: FAILED\n");
            for p in &self.problems {
                out.push_str("  - ");
                out.push_str(p);
                out.push('\n');
            }
        }
        out
    }
}

/// The run's prefix: `LOAD` + 8 hex digits of a fresh UUID + `-`.
pub fn new_prefix() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("LOAD{}-", &id[..8])
}

/// Builds the request of `send`. `recent` holds the first notification of recent genuine
/// orders so that `DuplicateSame` repeats it byte for byte.
fn build_send(
    m: &SimMerchant,
    plan: &Plan,
    send: PlannedSend,
    recent: &mut (HashMap<usize, Arc<Notification>>, VecDeque<usize>),
) -> Result<Arc<Notification>, LoadError> {
    let Some(order) = plan.orders.get(send.order) else {
        return Err(LoadError::Plan(send.order));
    };
    let payment = Payment {
        out_trade_no: order.out_trade_no.clone(),
        transaction_id: order.transaction_id.clone(),
        amount: order.amount,
        openid: "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".to_owned(),
        paid_at: Utc::now(),
    };
    let build = |channel: Channel, variant: Variant| -> Result<Notification, BuildError> {
        match channel {
            Channel::V2 => {
                let mut rng = rand::thread_rng();
                let signing = V2Signing {
                    sign_type: if rng.gen_bool(0.5) {
                        SignType::Md5
                    } else {
                        SignType::HmacSha256
                    },
                    omit_sign_type: rng.gen_bool(0.3),
                };
                build::v2_pay(m, &payment, signing, variant)
            }
            Channel::V3 => build::v3_pay(m, &payment, variant, Utc::now()),
        }
    };
    match send.kind {
        SendKind::First => {
            let variant = match order.fate {
                Fate::Genuine => Variant::Genuine,
                Fate::Forged => Variant::Forge,
                Fate::Tampered => Variant::TamperAmount,
            };
            let n = Arc::new(build(order.channel, variant)?);
            if order.fate == Fate::Genuine {
                let (map, queue) = recent;
                map.insert(send.order, n.clone());
                queue.push_back(send.order);
                while queue.len() > DUP_WINDOW {
                    if let Some(old) = queue.pop_front() {
                        map.remove(&old);
                    }
                }
            }
            Ok(n)
        }
        SendKind::DuplicateSame => match recent.0.get(&send.order) {
            Some(n) => Ok(n.clone()),
            None => Ok(Arc::new(build(order.channel, Variant::Genuine)?)),
        },
        SendKind::DuplicateOtherChannel => {
            Ok(Arc::new(build(order.channel.other(), Variant::Genuine)?))
        }
    }
}

/// Counters shared by the sending tasks.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    transport_errors: AtomicU64,
}

struct Shared {
    counters: Counters,
    histogram: Mutex<Histogram<u64>>,
    answers: Mutex<Answers>,
    /// Every answer with its due second, for `--report`.
    timeline: report::AnswerLog,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Runs the load; `progress` receives one line per second (for stderr).
pub async fn run(
    m: &SimMerchant,
    o: &LoadOptions,
    progress: impl Fn(&str) + Send + Sync + 'static,
) -> Result<Report, LoadError> {
    if o.rate == 0 {
        return Err(LoadError::Rate);
    }
    if o.duration.is_zero() {
        return Err(LoadError::Duration);
    }
    if o.concurrency == 0 {
        return Err(LoadError::Concurrency);
    }
    o.ratios.validate()?;
    let progress = Arc::new(progress);
    let prefix = new_prefix();
    let total = ((f64::from(o.rate) * o.duration.as_secs_f64()).round() as usize).max(1);
    let plan = Arc::new(Plan::new(&prefix, total, o.ratios, &mut rand::thread_rng()));
    // The URL is the same for every v2 pay send; v3 sends go to the merchant's route.
    let probe_url = |kind: build::Kind| {
        url_for(
            &o.target,
            &Notification {
                kind,
                variant: Variant::Genuine,
                route: kind.route(&m.mch_id),
                content_type: "",
                headers: Vec::new(),
                body: Vec::new(),
                out_trade_no: String::new(),
                out_refund_no: None,
            },
        )
    };
    let v2_url = probe_url(build::Kind::V2Pay)?;
    let v3_url = probe_url(build::Kind::V3Pay)?;

    let mut conn = match &o.database_url {
        Some(url) => {
            let mut conn = db::connect(url).await?;
            progress(&format!(
                "inserting {} NOTPAY orders {prefix}*",
                plan.orders.len()
            ));
            let merchant = (m.mch_id.as_str(), m.sub_mch_id());
            db::insert_orders(&mut conn, merchant, m.order_appid(), &plan.orders).await?;
            Some(conn)
        }
        None => None,
    };
    if o.record_order_book {
        let now = Utc::now();
        OrderBookFile::new(&m.orders_path).update(|book| {
            for order in plan.orders.iter().filter(|o| o.fate == Fate::Genuine) {
                book.upsert_order(OrderRecord {
                    out_trade_no: order.out_trade_no.clone(),
                    transaction_id: Some(order.transaction_id.clone()),
                    amount: order.amount,
                    state: TradeState::Success,
                    paid_at: Some(now),
                    openid: None,
                });
            }
        })?;
    }

    // Build ahead of the clock on a separate thread.
    let ahead = (u64::from(o.rate) * BUILD_AHEAD_SECS).clamp(64, MAX_BUILT_AHEAD) as usize;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Arc<Notification>, LoadError>>(ahead);
    {
        let m = m.clone();
        let plan = plan.clone();
        std::thread::spawn(move || {
            let mut recent = (HashMap::new(), VecDeque::new());
            for send in &plan.sends {
                let built = build_send(&m, &plan, *send, &mut recent);
                let failed = built.is_err();
                if tx.blocking_send(built).is_err() || failed {
                    return;
                }
            }
        });
    }
    let warm = ahead.min(total);
    progress(&format!(
        "building {warm} signed notifications before the clock starts"
    ));
    while rx.len() < warm && !rx.is_closed() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(o.concurrency)
        .build()
        .map_err(|e| DeliveryError::Target {
            url: o.target.clone(),
            reason: e.to_string(),
        })?;
    let shared = Arc::new(Shared {
        counters: Counters::default(),
        histogram: Mutex::new(
            Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .map_err(|e| LoadError::Histogram(e.to_string()))?,
        ),
        answers: Mutex::new(Answers::new(plan.orders.len())),
        timeline: report::AnswerLog::default(),
    });
    let semaphore = Arc::new(Semaphore::new(o.concurrency));
    let concurrency = u32::try_from(o.concurrency).unwrap_or(u32::MAX);

    let ticker = {
        let shared = shared.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            loop {
                every.tick().await;
                let c = &shared.counters;
                progress(&format!(
                    "sent {}/{total} accepted {} rejected {}",
                    c.sent.load(Ordering::Relaxed),
                    c.accepted.load(Ordering::Relaxed),
                    c.rejected.load(Ordering::Relaxed)
                ));
            }
        })
    };

    let interval = Duration::from_secs_f64(1.0 / f64::from(o.rate));
    let sampler = report::Sampler::start(o.report.as_ref().and_then(|r| r.queue.clone()));
    let start = Instant::now();
    let start_wall = Utc::now();
    for (i, send) in plan.sends.iter().enumerate() {
        let intended = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(intended).await;
        let notification = match rx.recv().await {
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                ticker.abort();
                return Err(e);
            }
            None => {
                ticker.abort();
                return Err(LoadError::BuilderStopped);
            }
        };
        let permit = match semaphore.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => break,
        };
        let url = if notification.kind.is_v2() {
            v2_url.clone()
        } else {
            v3_url.clone()
        };
        let must_accept = plan.must_accept(send);
        let order = send.order;
        let client = client.clone();
        let shared = shared.clone();
        let timeout = o.answer_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let c = &shared.counters;
            let mut acknowledged = false;
            for attempt in 0..=GENUINE_RESENDS {
                let began = if attempt == 0 {
                    intended
                } else {
                    Instant::now()
                };
                let (status, judgement) =
                    send_once(&client, url.clone(), &notification, timeout).await;
                let latency = began.elapsed();
                c.sent.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut h) = shared.histogram.lock() {
                    h.saturating_record(micros(latency));
                }
                shared.timeline.push(report::AnswerSample {
                    due_s: (intended - start).as_secs_f64(),
                    latency_ms: latency.as_secs_f64() * 1000.0,
                    accepted: judgement.success,
                });
                if judgement.success {
                    c.accepted.fetch_add(1, Ordering::Relaxed);
                    acknowledged = true;
                    break;
                }
                c.rejected.fetch_add(1, Ordering::Relaxed);
                if status.is_none() {
                    c.transport_errors.fetch_add(1, Ordering::Relaxed);
                }
                if !must_accept {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            if let Ok(mut a) = shared.answers.lock() {
                let slot = if must_accept {
                    a.genuine_acknowledged.get_mut(order)
                } else {
                    a.bad_acknowledged.get_mut(order)
                };
                if let Some(slot) = slot {
                    *slot |= acknowledged;
                }
            }
        });
    }
    // Every task holds a permit until it is done.
    let _all = semaphore.acquire_many(concurrency).await;
    let elapsed = start.elapsed();
    ticker.abort();

    let c = &shared.counters;
    let mut report = Report {
        prefix: prefix.clone(),
        sent: c.sent.load(Ordering::Relaxed),
        accepted: c.accepted.load(Ordering::Relaxed),
        rejected: c.rejected.load(Ordering::Relaxed),
        transport_errors: c.transport_errors.load(Ordering::Relaxed),
        expected_rejections: plan.sends.iter().filter(|s| !plan.must_accept(s)).count() as u64,
        genuine_orders: plan.count(Fate::Genuine),
        forged_orders: plan.count(Fate::Forged),
        tampered_orders: plan.count(Fate::Tampered),
        duplicates: plan.duplicates(),
        ..Report::default()
    };
    report.throughput_per_s = report.sent as f64 / elapsed.as_secs_f64().max(1e-9);
    if let Ok(h) = shared.histogram.lock() {
        let ms = |us: u64| us as f64 / 1000.0;
        report.latency_ms = Latency {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        };
    }
    let answers = shared
        .answers
        .lock()
        .map(|a| a.clone())
        .unwrap_or_else(|_| Answers::new(plan.orders.len()));

    let mut lags = Vec::new();
    let ticks = match conn.as_mut() {
        Some(conn) => {
            let genuine = i64::try_from(report.genuine_orders).unwrap_or(i64::MAX);
            report.drained_paid =
                drain(conn, m, &prefix, genuine, o.drain_timeout, &*progress).await?;
            // The pipeline's work for this run ends with the drain; the audit is ours.
            let (ticks, cpu_s) = sampler.finish().await;
            report.cpu_s_per_1000 = report::per_thousand(&cpu_s, report.sent);
            let observed = db::observe(conn, &m.mch_id, &prefix).await?;
            report.problems = verify::verify(&plan, &answers, &observed);
            lags = db::lags(conn, &m.mch_id, &prefix, start_wall).await?;
            report.e2e_lag_ms = lag_percentiles(lags.iter().map(|l| l.lag_ms).collect());
            report.db_checked = true;
            ticks
        }
        None => {
            let (ticks, cpu_s) = sampler.finish().await;
            report.cpu_s_per_1000 = report::per_thousand(&cpu_s, report.sent);
            // Without a database only the answers can be judged: feed the verifier an
            // observation that agrees with the plan, so only answer problems remain.
            report.problems = verify::verify(&plan, &answers, &Observed::expected(&plan));
            ticks
        }
    };
    report.verified = report.problems.is_empty();
    if let Some(options) = &o.report {
        let answers = shared.timeline.take();
        let written = report::write(
            &options.dir,
            &report::RunRecord {
                rate: o.rate,
                report: &report,
                answers: &answers,
                ticks: &ticks,
                lags: &lags,
            },
        )?;
        progress(&format!(
            "report: {} files in {}",
            written.len(),
            options.dir.display()
        ));
    }
    Ok(report)
}

/// Waits until every genuine order is PAID and the notification log stopped growing (the
/// duplicates are processed too), or the timeout. Returns the PAID count at the end.
async fn drain(
    conn: &mut diesel_async::AsyncPgConnection,
    m: &SimMerchant,
    prefix: &str,
    genuine: i64,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<i64, LoadError> {
    let started = Instant::now();
    let mut last_rows = -1;
    let mut stable = 0;
    loop {
        let (paid, rows) = db::progress(conn, &m.mch_id, prefix).await?;
        if rows == last_rows {
            stable += 1;
        } else {
            stable = 0;
            last_rows = rows;
        }
        if paid >= genuine && stable >= 2 {
            return Ok(paid);
        }
        if started.elapsed() >= timeout {
            progress(&format!(
                "drain timeout after {} s: {paid}/{genuine} genuine orders PAID",
                timeout.as_secs()
            ));
            return Ok(paid);
        }
        progress(&format!(
            "draining: {paid}/{genuine} genuine orders PAID, {rows} notifications logged"
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// p50 and p99 (nearest rank) of the lags; `None` when empty.
pub fn lag_percentiles(mut lags: Vec<f64>) -> Option<(f64, f64)> {
    lags.retain(|x| x.is_finite());
    if lags.is_empty() {
        return None;
    }
    lags.sort_by(f64::total_cmp);
    let rank = |q: f64| {
        let i = ((q * lags.len() as f64).ceil() as usize).clamp(1, lags.len()) - 1;
        lags[i]
    };
    Some((rank(0.5), rank(0.99)))
}

/// Parses a duration: `500ms`, `30s`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn lag_percentiles_use_nearest_rank() {
        assert_eq!(lag_percentiles(vec![]), None);
        let lags: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(lag_percentiles(lags), Some((50.0, 99.0)));
        assert_eq!(lag_percentiles(vec![7.0]), Some((7.0, 7.0)));
    }

    #[test]
    fn prefix_is_unique_and_short() {
        let a = new_prefix();
        assert_eq!(a.len(), 13);
        assert!(a.starts_with("LOAD") && a.ends_with('-'));
        assert_ne!(a, new_prefix());
    }

    #[test]
    fn json_report_has_the_contract_keys() {
        let r = Report {
            sent: 10,
            accepted: 9,
            rejected: 1,
            e2e_lag_ms: Some((1.0, 2.0)),
            verified: true,
            ..Report::default()
        };
        let v = r.to_json();
        for key in [
            "sent",
            "accepted",
            "rejected",
            "throughput_per_s",
            "latency_ms",
            "e2e_lag_ms",
            "verified",
            "problems",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        for key in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_ms"].get(key).is_some(), "{key}");
        }
        assert_eq!(v["e2e_lag_ms"]["p99"], 2.0);
        assert!(r.summary().contains("verification: OK"));
    }
}
