//! `wxpay-sim load --report DIR`: the run as pictures and a summary.
//!
//! While the load runs, a sampler reads, once a second, the CPU time of every local
//! component ([`super::cpu`]) and the depth of the notification queue (a passive declare);
//! every answer is kept with the second it was due. After the drain, PostgreSQL gives each
//! notification's end-to-end lag. [`write()`] turns them into PNG plots (answer latency,
//! throughput, queue depth, lag, CPU) and `summary.txt` / `summary.json` with CPU seconds
//! per 1,000 notifications for each component.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use plotters::prelude::*;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::cpu::{self, CpuReading};
use super::Report;

/// Where and how to write the report.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub dir: PathBuf,
    /// The broker and queue whose depth is plotted; `None`: no queue plot.
    pub queue: Option<QueueProbe>,
}

/// The notification queue, read with a passive declare.
#[derive(Debug, Clone)]
pub struct QueueProbe {
    pub amqp_url: String,
    pub queue: String,
}

/// Why the report could not be written (the run itself is judged apart).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// `action` is what was being done: writing a file, plotting a chart.
    #[error("{action} {path}: {reason}")]
    File {
        action: &'static str,
        path: String,
        reason: String,
    },
    #[error(
        "no TrueType font for the plots' text: install fonts-dejavu-core or set WXPAY_SIM_FONT to a .ttf file"
    )]
    NoFont,
}

/// One answer: due this many seconds after the clock started, took `latency_ms`.
#[derive(Debug, Clone, Copy)]
pub struct AnswerSample {
    pub due_s: f64,
    pub latency_ms: f64,
    pub accepted: bool,
}

/// One sampler tick.
#[derive(Debug, Clone)]
pub struct Tick {
    pub at_s: f64,
    /// CPU seconds per component since the clock started.
    pub cpu_s: BTreeMap<&'static str, f64>,
    pub queue_depth: Option<u32>,
}

/// One processed notification: received this many seconds after the clock started, then
/// processed `lag_ms` later.
#[derive(Debug, Clone, Copy)]
pub struct LagSample {
    pub received_s: f64,
    pub lag_ms: f64,
}

/// Samples CPU and queue depth once a second until stopped.
pub struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<Vec<Tick>>,
    first: CpuReading,
}

impl Sampler {
    /// Starts sampling now (the clock's start).
    pub fn start(queue: Option<QueueProbe>) -> Sampler {
        let first = CpuReading::now();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(sample(first.clone(), queue, stopped));
        Sampler { stop, task, first }
    }

    /// Stops; returns the ticks and the CPU seconds each component used since the start.
    pub async fn finish(self) -> (Vec<Tick>, BTreeMap<&'static str, f64>) {
        let total = CpuReading::now().since(&self.first);
        let _ = self.stop.send(());
        let ticks = self.task.await.unwrap_or_default();
        (ticks, total)
    }
}

async fn sample(
    first: CpuReading,
    queue: Option<QueueProbe>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<Tick> {
    let started = Instant::now();
    let mut depth = match queue {
        Some(probe) => QueueDepth::connect(probe).await,
        None => None,
    };
    let mut ticks = Vec::new();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The first tick is immediate: nothing to read yet.
    every.tick().await;
    loop {
        tokio::select! {
            _ = &mut stop => return ticks,
            _ = every.tick() => {}
        }
        let cpu_s = CpuReading::now().since(&first);
        let queue_depth = match depth.as_mut() {
            Some(d) => d.read().await,
            None => None,
        };
        if queue_depth.is_none() {
            depth = None;
        }
        ticks.push(Tick {
            at_s: started.elapsed().as_secs_f64(),
            cpu_s,
            queue_depth,
        });
    }
}

/// A channel kept open for passive declares.
struct QueueDepth {
    _connection: lapin::Connection,
    channel: lapin::Channel,
    queue: String,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

impl QueueDepth {
    async fn connect(probe: QueueProbe) -> Option<QueueDepth> {
        let connect = lapin::Connection::connect(&probe.amqp_url, Default::default());
        let connection = match tokio::time::timeout(PROBE_TIMEOUT * 5, connect).await {
            Ok(Ok(c)) => c,
            _ => {
                tracing::warn!("load report: cannot reach the broker; no queue depth plot");
                return None;
            }
        };
        let channel = tokio::time::timeout(PROBE_TIMEOUT, connection.create_channel())
            .await
            .ok()?
            .ok()?;
        Some(QueueDepth {
            _connection: connection,
            channel,
            queue: probe.queue,
        })
    }

    /// Ready plus unacknowledged messages are not told apart by a passive declare: it
    /// counts the ready ones, which is the backlog the workers have not taken yet.
    async fn read(&mut self) -> Option<u32> {
        let declare = self.channel.queue_declare(
            self.queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        );
        match tokio::time::timeout(PROBE_TIMEOUT, declare).await {
            Ok(Ok(queue)) => Some(queue.message_count()),
            _ => None,
        }
    }
}

/// Shared by the sending tasks while the run lasts.
#[derive(Default)]
pub struct AnswerLog(Mutex<Vec<AnswerSample>>);

impl AnswerLog {
    pub fn push(&self, sample: AnswerSample) {
        if let Ok(mut v) = self.0.lock() {
            v.push(sample);
        }
    }

    pub fn take(&self) -> Vec<AnswerSample> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// CPU seconds per 1,000 notifications of each component, rounded to 3 places.
pub fn per_thousand(cpu_s: &BTreeMap<&'static str, f64>, sent: u64) -> BTreeMap<String, f64> {
    let sent = sent.max(1) as f64;
    let mut out: BTreeMap<String, f64> = cpu_s
        .iter()
        .map(|(label, s)| (label.to_string(), round3(s * 1000.0 / sent)))
        .collect();
    let services: f64 = cpu::COMPONENTS
        .iter()
        .filter_map(|(label, _)| cpu_s.get(label))
        .sum();
    out.insert(
        "services total".to_owned(),
        round3(services * 1000.0 / sent),
    );
    out
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Everything the report is made of.
pub struct RunRecord<'a> {
    pub rate: u32,
    pub report: &'a Report,
    pub answers: &'a [AnswerSample],
    pub ticks: &'a [Tick],
    pub lags: &'a [LagSample],
}

/// Writes the plots and the summaries into `dir`; returns the files written.
pub fn write(dir: &Path, run: &RunRecord<'_>) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(dir).map_err(write_error(dir))?;
    register_font()?;
    let mut written = Vec::new();
    let seconds = run
        .answers
        .iter()
        .map(|a| a.due_s)
        .chain(run.ticks.iter().map(|t| t.at_s))
        .fold(1.0f64, f64::max)
        .ceil();

    // Answer latency per second of due time.
    let by_second = group_by_second(run.answers.iter().map(|a| (a.due_s, a.latency_ms)));
    let mut latency = Vec::new();
    for (name, q) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
        latency.push(Series::new(
            name,
            by_second
                .iter()
                .map(|(s, v)| (*s, quantile(v, q)))
                .collect(),
        ));
    }
    written.push(chart(
        dir,
        "latency.png",
        &format!(
            "Answer latency at {}/s (from each send's due time)",
            run.rate
        ),
        "ms",
        seconds,
        &latency,
    )?);

    // Throughput: answers due per second, accepted per second, processed per second.
    let sent = group_by_second(run.answers.iter().map(|a| (a.due_s, 1.0)));
    let accepted = group_by_second(
        run.answers
            .iter()
            .filter(|a| a.accepted)
            .map(|a| (a.due_s, 1.0)),
    );
    let processed = group_by_second(
        run.lags
            .iter()
            .map(|l| (l.received_s + l.lag_ms / 1000.0, 1.0)),
    );
    let count = |g: &[(f64, Vec<f64>)]| g.iter().map(|(s, v)| (*s, v.len() as f64)).collect();
    written.push(chart(
        dir,
        "throughput.png",
        "Throughput (per second)",
        "notifications/s",
        seconds,
        &[
            Series::new("sent", count(&sent)),
            Series::new("accepted", count(&accepted)),
            Series::new("processed by the worker", count(&processed)),
        ],
    )?);

    // Queue depth.
    let depth: Vec<(f64, f64)> = run
        .ticks
        .iter()
        .filter_map(|t| t.queue_depth.map(|d| (t.at_s, f64::from(d))))
        .collect();
    if !depth.is_empty() {
        written.push(chart(
            dir,
            "queue.png",
            "Notification queue depth (ready messages)",
            "messages",
            seconds,
            &[Series::new("depth", depth)],
        )?);
    }

    // End-to-end lag by receive time.
    if !run.lags.is_empty() {
        let lags = group_by_second(run.lags.iter().map(|l| (l.received_s, l.lag_ms)));
        let series: Vec<Series> = [("p50", 0.5), ("p99", 0.99)]
            .into_iter()
            .map(|(name, q)| {
                Series::new(
                    name,
                    lags.iter().map(|(s, v)| (*s, quantile(v, q))).collect(),
                )
            })
            .collect();
        written.push(chart(
            dir,
            "lag.png",
            "End-to-end lag (received by the gateway -> committed by the worker)",
            "ms",
            seconds,
            &series,
        )?);
    }

    // CPU cores used per component (the derivative of the cumulative readings).
    let mut cpu_series = Vec::new();
    for label in cpu::COMPONENTS
        .iter()
        .map(|(label, _)| *label)
        .chain([cpu::LOAD_GENERATOR])
    {
        let mut points = Vec::new();
        let mut last = (0.0, 0.0);
        for tick in run.ticks {
            let Some(&used) = tick.cpu_s.get(label) else {
                continue;
            };
            let dt = tick.at_s - last.0;
            if dt > 0.0 {
                points.push((tick.at_s, (used - last.1) / dt));
            }
            last = (tick.at_s, used);
        }
        if !points.is_empty() {
            cpu_series.push(Series::new(label, points));
        }
    }
    if !cpu_series.is_empty() {
        written.push(chart(
            dir,
            "cpu.png",
            "CPU per component (cores)",
            "cores",
            seconds,
            &cpu_series,
        )?);
    }

    let summary = summary_json(run);
    let json_path = dir.join("summary.json");
    std::fs::write(&json_path, format!("{summary:#}\n")).map_err(write_error(&json_path))?;
    written.push(json_path);
    let text_path = dir.join("summary.txt");
    std::fs::write(&text_path, summary_text(run)).map_err(write_error(&text_path))?;
    written.push(text_path);
    Ok(written)
}

fn summary_json(run: &RunRecord<'_>) -> serde_json::Value {
    let mut v = run.report.to_json();
    v["offered_per_s"] = json!(run.rate);
    v
}

fn summary_text(run: &RunRecord<'_>) -> String {
    format!("offered {}/s\n{}", run.rate, run.report.summary())
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |e| ReportError::File {
        action: "writing",
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Values grouped by whole second, in order.
fn group_by_second(values: impl Iterator<Item = (f64, f64)>) -> Vec<(f64, Vec<f64>)> {
    let mut groups: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for (at, v) in values {
        if at.is_finite() && at >= 0.0 && v.is_finite() {
            groups.entry(at as u64).or_default().push(v);
        }
    }
    groups
        .into_iter()
        .map(|(s, v)| (s as f64 + 0.5, v))
        .collect()
}

/// Nearest-rank quantile; `q = 1.0` is the maximum.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(rank).copied().unwrap_or(0.0)
}

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

impl Series {
    fn new(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.to_owned(),
            points,
        }
    }
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
];

/// One line chart over the run's seconds.
fn chart(
    dir: &Path,
    file: &str,
    title: &str,
    y_desc: &str,
    seconds: f64,
    series: &[Series],
) -> Result<PathBuf, ReportError> {
    let path = dir.join(file);
    let plot_error = |e: &dyn std::fmt::Display| ReportError::File {
        action: "plotting",
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.1;
    {
        let root = BitMapBackend::new(&path, (1100, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..seconds, 0f64..y_max)
            .map_err(|e| plot_error(&e))?;
        chart
            .configure_mesh()
            .x_desc("seconds since the clock started")
            .y_desc(y_desc)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| plot_error(&e))?;
        for (i, s) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| plot_error(&e))?
                .label(s.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| plot_error(&e))?;
        root.present().map_err(|e| plot_error(&e))?;
    }
    Ok(path)
}

/// Fonts tried for the plots' text, after `WXPAY_SIM_FONT`.
const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// plotters draws text with ab_glyph from a font it is given (no fontconfig): the first
/// readable font, loaded once for the process.
fn register_font() -> Result<(), ReportError> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        let from_env = std::env::var("WXPAY_SIM_FONT").ok();
        let candidates: Vec<&str> = from_env
            .iter()
            .map(String::as_str)
            .chain(FONT_PATHS)
            .collect();
        candidates
            .into_iter()
            .filter_map(|p| std::fs::read(p).ok())
            .any(|bytes| {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
    });
    if ok {
        Ok(())
    } else {
        Err(ReportError::NoFont)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn seconds_group_at_their_middle() {
        let g = group_by_second([(0.2, 1.0), (0.9, 2.0), (1.1, 3.0), (f64::NAN, 4.0)].into_iter());
        assert_eq!(g, vec![(0.5, vec![1.0, 2.0]), (1.5, vec![3.0])]);
    }

    #[test]
    fn cpu_per_thousand_adds_the_services_not_the_generator() {
        let cpu: BTreeMap<&'static str, f64> = [
            ("gateway", 1.0),
            ("worker", 2.0),
            (cpu::LOAD_GENERATOR, 5.0),
        ]
        .into();
        let per_k = per_thousand(&cpu, 10_000);
        assert_eq!(per_k["gateway"], 0.1);
        assert_eq!(per_k["worker"], 0.2);
        assert_eq!(per_k[cpu::LOAD_GENERATOR], 0.5);
        assert_eq!(per_k["services total"], 0.3);
    }
}
