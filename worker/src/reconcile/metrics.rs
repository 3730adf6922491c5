//! The reconciler's metrics (docs/ARCHITECTURE.md, "Metrics"), registered at start-up so
//! that /metrics lists every name and label before the first round (the alert rules
//! `WxpayNotifyReconcilerStalled` and `…LostCallbacksRecovered` need the series to exist).

use std::sync::Once;

use metrics::{describe_counter, describe_histogram, Unit};
use wxpay_runtime::telemetry::metric;

/// Rounds skipped because another replica held the round lock (not one of the shared
/// metric names: only this module counts it).
pub const ROUNDS_SKIPPED_TOTAL: &str = "wxpay_reconciler_rounds_skipped_total";

/// `kind` labels of `wxpay_reconciler_recovered_total`.
pub const KINDS: [&str; 2] = ["pay", "refund"];

/// `reason` labels of `wxpay_reconciler_errors_total`.
pub mod reason {
    wxpay_shared::names! {
        /// Transport failure or timeout after the retries.
        HTTP => "http",
        /// WeChat Pay answered an error status (5xx / 429 after the retries, other 4xx).
        STATUS => "status",
        /// The answer's signature did not verify.
        BAD_SIGNATURE => "bad_signature",
        /// The answer could not be read.
        MALFORMED => "malformed",
        /// v2 `return_code` / `result_code` FAIL (other than "not found").
        REFUSED => "refused",
        /// A verified answer about another merchant, order or refund.
        MISMATCH => "mismatch",
        /// A refund we hold as PROCESSING that WeChat Pay does not know.
        NOT_FOUND => "not_found",
        /// A state word we do not know.
        UNKNOWN_STATE => "unknown_state",
        /// The HTTP client could not be used (e.g. a v3 merchant without a signer).
        CLIENT => "client",
        /// The broker refused, returned or did not confirm a publish, or is unreachable.
        BROKER => "broker",
        /// PostgreSQL failed.
        DATABASE => "database",
    }
}

/// Describes every metric and touches each label with zero. Idempotent.
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        describe_counter!(
            metric::RECONCILER_CHECKED_TOTAL,
            "Orders and refunds queried at WeChat Pay"
        );
        describe_counter!(
            metric::RECONCILER_RECOVERED_TOTAL,
            "Payments/refunds found only by the query (each one a lost notification), by kind"
        );
        describe_counter!(
            metric::RECONCILER_ERRORS_TOTAL,
            "Queries or round steps that failed, by reason"
        );
        describe_histogram!(
            metric::RECONCILER_ROUND_DURATION_SECONDS,
            Unit::Seconds,
            "Duration of one finished reconciliation round"
        );
        metrics::counter!(metric::RECONCILER_CHECKED_TOTAL).increment(0);
        for kind in KINDS {
            metrics::counter!(metric::RECONCILER_RECOVERED_TOTAL, "kind" => kind).increment(0);
        }
        for label in reason::ALL {
            metrics::counter!(metric::RECONCILER_ERRORS_TOTAL, "reason" => label).increment(0);
        }
        describe_counter!(
            ROUNDS_SKIPPED_TOTAL,
            "Rounds skipped because another reconciler held the round lock"
        );
        metrics::counter!(ROUNDS_SKIPPED_TOTAL).increment(0);
        let _ = metrics::histogram!(metric::RECONCILER_ROUND_DURATION_SECONDS);
        wxpay_runtime::reload::register_metrics();
    });
}

pub(crate) fn error(reason: &'static str) {
    metrics::counter!(metric::RECONCILER_ERRORS_TOTAL, "reason" => reason).increment(1);
}

pub(crate) fn round_skipped() {
    metrics::counter!(ROUNDS_SKIPPED_TOTAL).increment(1);
}

pub(crate) fn checked() {
    metrics::counter!(metric::RECONCILER_CHECKED_TOTAL).increment(1);
}

pub(crate) fn recovered(kind: &'static str) {
    metrics::counter!(metric::RECONCILER_RECOVERED_TOTAL, "kind" => kind).increment(1);
}
