//! JSON logs with a `step` field, and the Prometheus recorder.
//!
//! Every log line on the notification's path carries `step` (see [`step`]) and the request
//! id, so one notification can be followed through gateway and worker. Bodies hold personal
//! data and keys are secrets: log ids (mch_id, out_trade_no, request id), never those.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Values of the `step` log field, in the order the data flows.
pub mod step {
    wxpay_shared::names! {
        RECEIVE => "receive",
        VERIFY => "verify",
        PUBLISH => "publish",
        ANSWER => "answer",
        CONSUME => "consume",
        DECODE => "decode",
        DEDUPE => "dedupe",
        CONFIRM => "confirm",
        APPLY => "apply",
        OUTBOX => "outbox",
        RETRY => "retry",
        PARK => "park",
        RECONCILE => "reconcile",
        STARTUP => "startup",
        SHUTDOWN => "shutdown",
        /// Merchants reloaded (or a reload refused) while running.
        RELOAD => "reload",
    }
}

/// Metric names, one place for all services; each is described in docs/ARCHITECTURE.md, "Metrics".
pub mod metric {
    wxpay_shared::names! {
        GATEWAY_REQUESTS_TOTAL => "wxpay_gateway_requests_total",
        GATEWAY_REQUEST_DURATION_SECONDS => "wxpay_gateway_request_duration_seconds",
        GATEWAY_PUBLISH_DURATION_SECONDS => "wxpay_gateway_publish_duration_seconds",
        GATEWAY_BROKER_CONNECTED => "wxpay_gateway_broker_connected",
        GATEWAY_SHED_TOTAL => "wxpay_gateway_shed_total",
        WORKER_MESSAGES_TOTAL => "wxpay_worker_messages_total",
        WORKER_PROCESS_DURATION_SECONDS => "wxpay_worker_process_duration_seconds",
        WORKER_LAG_SECONDS => "wxpay_worker_lag_seconds",
        WORKER_DEDUPE_HITS_TOTAL => "wxpay_worker_dedupe_hits_total",
        WORKER_ANOMALIES_TOTAL => "wxpay_worker_anomalies_total",
        WORKER_RETRIES_TOTAL => "wxpay_worker_retries_total",
        WORKER_PARKED_TOTAL => "wxpay_worker_parked_total",
        WORKER_BROKER_CONNECTED => "wxpay_worker_broker_connected",
        WORKER_REDIS_ERRORS_TOTAL => "wxpay_worker_redis_errors_total",
        WORKER_CONFIRM_QUERIES_TOTAL => "wxpay_worker_confirm_queries_total",
        OUTBOX_PENDING => "wxpay_outbox_pending",
        OUTBOX_PUBLISHED_TOTAL => "wxpay_outbox_published_total",
        RECONCILER_CHECKED_TOTAL => "wxpay_reconciler_checked_total",
        RECONCILER_RECOVERED_TOTAL => "wxpay_reconciler_recovered_total",
        RECONCILER_ERRORS_TOTAL => "wxpay_reconciler_errors_total",
        RECONCILER_ROUND_DURATION_SECONDS => "wxpay_reconciler_round_duration_seconds",
        CONSOLE_LOGINS_TOTAL => "wxpay_console_logins_total",
        CONSOLE_ACTIONS_TOTAL => "wxpay_console_actions_total",
        CONFIG_RELOADS_TOTAL => "wxpay_config_reloads_total",
    }
}

/// Histogram buckets (seconds): sub-millisecond answers up to the 10-minute retry tier.
const BUCKETS_SECONDS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0, 300.0, 900.0,
];

/// Installs JSON logging for `service` (filter from `RUST_LOG`, default `info`) on stderr,
/// so that commands printing results (`dlq list`, `load --json`) keep stdout clean. A
/// second call (tests spawning several apps in one process) is a no-op.
pub fn init_logging(service: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let installed = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init()
        .is_ok();
    if installed {
        tracing::info!(step = step::STARTUP, service, "logging initialised");
    }
}

/// The process-wide Prometheus recorder, installed on first use; render it on `/metrics`.
///
/// Installed once per process: tests that spawn several apps share it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS_SECONDS)
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Histograms buffer samples until upkeep drains them: without a periodic
            // upkeep an unscraped process would grow without bound.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    upkeep.run_upkeep();
                });
            if let Err(error) = spawned {
                tracing::warn!(step = step::STARTUP, %error, "metrics upkeep thread not started");
            }
            // Fails only when another recorder was installed first; ours then stays
            // unused, and /metrics shows what ours has (nothing): visible, not silent.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    step = step::STARTUP,
                    "a metrics recorder was already installed"
                );
            }
            handle
        })
        .clone()
}
