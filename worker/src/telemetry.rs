//! The worker's metrics, registered at start-up so that /metrics lists every name before
//! the first message (dashboards and alerts need the series to exist).

use std::sync::Once;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use wxpay_runtime::telemetry::metric;
use wxpay_shared::message::NotifyKind;

use crate::apply::reason;
use crate::confirm;

/// Claims found held by another worker (the work then falls through to PostgreSQL).
pub const CLAIM_CONTENDED_TOTAL: &str = "wxpay_worker_claim_contended_total";

const OUTCOMES: [&str; 7] = [
    "applied",
    "duplicate",
    "recorded",
    "forwarded",
    "anomaly",
    "retried",
    "parked",
];
const PARK_REASONS: [&str; 9] = [
    "undecodable",
    "unknown_merchant",
    "malformed",
    "bad_signature",
    "decrypt_failed",
    "no_v3_key",
    "retries_exhausted",
    "unknown_order",
    "query_failed",
];

/// Describes every metric and touches each with zero. Idempotent.
pub fn register_metrics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        describe_counter!(metric::WORKER_MESSAGES_TOTAL, "Messages processed, by kind and outcome");
        describe_histogram!(metric::WORKER_PROCESS_DURATION_SECONDS, Unit::Seconds, "Decode, dedupe and apply of one message");
        describe_histogram!(metric::WORKER_LAG_SECONDS, Unit::Seconds, "Now minus the gateway's receive time, at consume");
        describe_counter!(metric::WORKER_DEDUPE_HITS_TOTAL, "Duplicates recognised, by layer (redis | postgres)");
        describe_counter!(metric::WORKER_ANOMALIES_TOTAL, "Anomalies recorded, by reason");
        describe_counter!(metric::WORKER_RETRIES_TOTAL, "Messages sent to a retry tier");
        describe_counter!(metric::WORKER_PARKED_TOTAL, "Messages parked, by reason");
        describe_gauge!(metric::WORKER_BROKER_CONNECTED, "1 while the consumer holds a broker connection");
        describe_counter!(metric::WORKER_REDIS_ERRORS_TOTAL, "Redis calls that failed or timed out");
        describe_gauge!(metric::OUTBOX_PENDING, "Outbox events not yet published");
        describe_counter!(metric::OUTBOX_PUBLISHED_TOTAL, "Outbox events published with confirm");
        describe_counter!(CLAIM_CONTENDED_TOTAL, "Redis claims held by another worker");
        describe_counter!(metric::WORKER_CONFIRM_QUERIES_TOTAL, "Order queries confirming large payments, by result (confirmed | disagreed | failed)");

        for kind in NotifyKind::ALL {
            for outcome in OUTCOMES {
                metrics::counter!(metric::WORKER_MESSAGES_TOTAL, "kind" => kind.as_str(), "outcome" => outcome)
                    .increment(0);
            }
        }
        let _registered = metrics::histogram!(metric::WORKER_PROCESS_DURATION_SECONDS);
        let _registered = metrics::histogram!(metric::WORKER_LAG_SECONDS);
        for layer in ["redis", "postgres"] {
            metrics::counter!(metric::WORKER_DEDUPE_HITS_TOTAL, "layer" => layer).increment(0);
        }
        for anomaly in reason::ALL {
            metrics::counter!(metric::WORKER_ANOMALIES_TOTAL, "reason" => anomaly).increment(0);
        }
        metrics::counter!(metric::WORKER_RETRIES_TOTAL).increment(0);
        for park in PARK_REASONS {
            metrics::counter!(metric::WORKER_PARKED_TOTAL, "reason" => park).increment(0);
        }
        metrics::gauge!(metric::WORKER_BROKER_CONNECTED).set(0.0);
        metrics::counter!(metric::WORKER_REDIS_ERRORS_TOTAL).increment(0);
        metrics::gauge!(metric::OUTBOX_PENDING).set(0.0);
        metrics::counter!(metric::OUTBOX_PUBLISHED_TOTAL).increment(0);
        metrics::counter!(CLAIM_CONTENDED_TOTAL).increment(0);
        for result in confirm::result::ALL {
            metrics::counter!(metric::WORKER_CONFIRM_QUERIES_TOTAL, "result" => result)
                .increment(0);
        }
        wxpay_runtime::reload::register_metrics();
    });
}
