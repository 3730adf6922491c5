//! HTTP routes: the notify routes (v2, v3) share one pipeline (admit, read the raw body,
//! verify, publish with confirm, answer), and the health routes.
//!
//! Every notify request is answered within `gateway.answer_deadline_ms` of its headers:
//! the body read, then the publish, get what is left of it.

pub mod health;
pub mod v2;
pub mod v3;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures::StreamExt;
use tracing::warn;
use uuid::Uuid;
use wxpay_runtime::config::{GatewaySettings, Merchants};
use wxpay_runtime::reload::MerchantsHandle;
use wxpay_runtime::telemetry::{metric, step};
use wxpay_shared::message::is_valid_mch_id;

use crate::admission::{Admission, Refusal, Shed};
use crate::answer::{self, Format};
use crate::publish::Publisher;
use crate::verify::{Incoming, RejectReason, Rejection, Route, Verified};

/// What every handler needs; shared by all HTTP workers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Read once per request ([`MerchantsHandle::current`]): a reload meanwhile does not
    /// change the keys a request started with.
    pub merchants: MerchantsHandle,
    pub publisher: Publisher,
    pub admission: Arc<Admission>,
    pub limits: Limits,
}

/// The per-request bounds of `[gateway]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub body_limit: usize,
    pub body_read_timeout: Duration,
    pub answer_deadline: Duration,
}

impl Limits {
    pub fn from_settings(gateway: &GatewaySettings) -> Self {
        Limits {
            body_limit: gateway.body_limit_bytes,
            body_read_timeout: Duration::from_millis(gateway.body_read_timeout_ms),
            answer_deadline: Duration::from_millis(gateway.answer_deadline_ms),
        }
    }
}

/// Outcome label values of `wxpay_gateway_requests_total`.
pub mod outcome {
    pub const ACCEPTED: &str = "accepted";
    pub const REJECTED: &str = "rejected";
    pub const FAILED: &str = "failed";
    /// Answered FAIL at once without publishing (see `wxpay_gateway_shed_total`).
    pub const SHED: &str = "shed";
}

/// The `Content-Type` header: absent is `Ok(None)`; not visible ASCII is refused.
fn content_type(request: &HttpRequest) -> Result<Option<&str>, Rejection> {
    match request.headers().get(header::CONTENT_TYPE) {
        None => Ok(None),
        Some(value) => value.to_str().map(Some).map_err(|_| {
            Rejection::new(
                RejectReason::ContentType,
                "content type is not visible ASCII",
            )
        }),
    }
}

/// Refuses, before reading anything, a request this gateway will not take: from a source
/// that is not allowed or over its rate, compressed (no decompression anywhere: WeChat
/// Pay never compresses, and inflating is a memory bomb), or declaring an oversize body.
fn admit(request: &HttpRequest, state: &AppState) -> Result<(), Rejection> {
    let admission = &state.admission;
    if admission.checks_sources() {
        let forwarded: Vec<&str> = request
            .headers()
            .get_all(header::X_FORWARDED_FOR)
            .filter_map(|value| value.to_str().ok())
            .collect();
        let peer = request.peer_addr().map(|address| address.ip());
        admission
            .check_source(admission.client(peer, &forwarded))
            .map_err(|refusal| match refusal {
                Refusal::NotAllowed => Rejection::new(
                    RejectReason::SourceNotAllowed,
                    "not in gateway.allow_sources",
                ),
                Refusal::RateLimited => Rejection::new(
                    RejectReason::RateLimited,
                    "over gateway.rate_limit_per_second",
                ),
            })?;
    }
    for encoding in request.headers().get_all(header::CONTENT_ENCODING) {
        let identity = encoding
            .to_str()
            .is_ok_and(|value| value.trim().eq_ignore_ascii_case("identity"));
        if !identity {
            return Err(Rejection::new(
                RejectReason::ContentEncoding,
                "Content-Encoding other than identity",
            ));
        }
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > state.limits.body_limit as u64) {
        return Err(too_large());
    }
    Ok(())
}

fn too_large() -> Rejection {
    Rejection::new(
        RejectReason::TooLarge,
        "body larger than gateway.body_limit_bytes",
    )
}

/// Reads the raw body, at most `limit` bytes and until `until`: a slow sender is cut (408)
/// rather than holding a connection and a worker. Dropping the stream between chunks
/// leaves nothing half-done.
async fn read_body(
    mut payload: web::Payload,
    limit: usize,
    until: tokio::time::Instant,
) -> Result<Bytes, Rejection> {
    let mut body = BytesMut::new();
    loop {
        match tokio::time::timeout_at(until, payload.next()).await {
            Err(_) => {
                return Err(Rejection::new(
                    RejectReason::SlowBody,
                    "body not received within gateway.body_read_timeout_ms",
                ))
            }
            Ok(None) => return Ok(body.freeze()),
            Ok(Some(Err(error))) => {
                return Err(Rejection::new(
                    RejectReason::Malformed,
                    format!("body not readable: {error}"),
                ))
            }
            Ok(Some(Ok(chunk))) => {
                if body.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
}

fn millis(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

/// Longest untrusted text put in a log line.
pub const MAX_LOGGED: usize = 200;

/// An untrusted value as it may appear in a log line: at most [`MAX_LOGGED`] characters,
/// control characters replaced, so a sender can neither flood nor forge log lines.
pub fn log_safe(value: &str) -> String {
    let mut shown: String = value
        .chars()
        .take(MAX_LOGGED)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if value.chars().nth(MAX_LOGGED).is_some() {
        shown.push('…');
    }
    shown
}

/// A merchant id for the log: as is when it looks like one (1–32 ASCII digits), else
/// `invalid`, never the sender's text.
pub fn log_mch_id(mch_id: &str) -> &str {
    if is_valid_mch_id(mch_id) {
        mch_id
    } else {
        "invalid"
    }
}

fn count(route: Route, outcome_label: &'static str, reason: Option<&'static str>) {
    match reason {
        None => metrics::counter!(metric::GATEWAY_REQUESTS_TOTAL, "route" => route.as_str(), "outcome" => outcome_label).increment(1),
        Some(reason) => metrics::counter!(metric::GATEWAY_REQUESTS_TOTAL, "route" => route.as_str(), "outcome" => outcome_label, "reason" => reason).increment(1),
    }
}

/// Logs a publish's outcome at `$level`: the fields that name the notification (the same
/// whether the broker confirmed it or not), then the outcome's own fields and message.
macro_rules! published {
    ($level:ident, $step:expr, $request_id:expr, $route:expr, $verified:expr; $($outcome:tt)+) => {
        tracing::$level!(
            step = $step,
            request_id = %$request_id,
            route = $route.as_str(),
            kind = $verified.message.kind.as_str(),
            mch_id = %$verified.message.mch_id,
            out_trade_no = %log_safe($verified.out_trade_no.as_deref().unwrap_or("")),
            $($outcome)+
        )
    };
}

/// The pipeline of every notify route. `verify` turns the raw request into a verified
/// message; nothing unverified reaches the queue, and SUCCESS follows the broker's confirm.
pub async fn handle(
    route: Route,
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    verify: impl FnOnce(&Incoming<'_>, &Merchants) -> Result<Verified, Rejection>,
) -> HttpResponse {
    let started = Instant::now();
    let deadline = started + state.limits.answer_deadline;
    let request_id = Uuid::now_v7();
    let format = Format::from(route);
    let (response, outcome_label, reason) = match pipeline(
        route, request, payload, state, verify, request_id, deadline,
    )
    .await
    {
        Handling::Rejected(rejection) => {
            warn!(
                step = step::VERIFY,
                %request_id,
                route = route.as_str(),
                mch_id = rejection.mch_id.as_deref().map(log_mch_id).unwrap_or(""),
                reason = rejection.reason.code(),
                detail = %log_safe(&rejection.detail),
                latency_ms = millis(started),
                "notification rejected"
            );
            (
                answer::rejected(format, &rejection),
                outcome::REJECTED,
                Some(rejection.reason.code()),
            )
        }
        Handling::Shed(shed) => {
            warn!(step = step::PUBLISH, %request_id, route = route.as_str(), reason = shed.code(), latency_ms = millis(started), "shed: answering FAIL at once so WeChat Pay re-sends later");
            metrics::counter!(metric::GATEWAY_SHED_TOTAL, "reason" => shed.code()).increment(1);
            (answer::failed(format), outcome::SHED, Some(shed.code()))
        }
        Handling::Published(verified, publish_started, result) => match result {
            Ok(()) => {
                published!(info, step::ANSWER, request_id, route, verified;
                    publish_ms = millis(publish_started),
                    latency_ms = millis(started),
                    "notification accepted"
                );
                (answer::accepted(format), outcome::ACCEPTED, None)
            }
            Err(publish_error) => {
                published!(warn, step::PUBLISH, request_id, route, verified;
                    reason = publish_error.code(),
                    error = %publish_error,
                    latency_ms = millis(started),
                    "publish not confirmed: answering FAIL so WeChat Pay re-sends"
                );
                (
                    answer::failed(format),
                    outcome::FAILED,
                    Some(publish_error.code()),
                )
            }
        },
    };
    count(route, outcome_label, reason);
    metrics::histogram!(metric::GATEWAY_REQUEST_DURATION_SECONDS, "route" => route.as_str())
        .record(started.elapsed().as_secs_f64());
    response
}

/// How the pipeline ended for one request, before it is answered (the `outcome` label of
/// `wxpay_gateway_requests_total` is derived from it).
enum Handling {
    Rejected(Rejection),
    Shed(Shed),
    Published(
        Box<Verified>,
        Instant,
        Result<(), crate::publish::PublishError>,
    ),
}

async fn pipeline(
    route: Route,
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    verify: impl FnOnce(&Incoming<'_>, &Merchants) -> Result<Verified, Rejection>,
    request_id: Uuid,
    deadline: Instant,
) -> Handling {
    let merchants = state.merchants.current();
    if let Err(rejection) = admit(request, state) {
        return Handling::Rejected(rejection);
    }
    // A blocked broker would only let the publish wait for its timeout: shed before even
    // reading the body.
    if state.publisher.is_blocked() {
        return Handling::Shed(Shed::BrokerBlocked);
    }
    let body_until = (Instant::now() + state.limits.body_read_timeout).min(deadline);
    let bytes = match read_body(payload, state.limits.body_limit, body_until.into()).await {
        Ok(bytes) => bytes,
        Err(rejection) => return Handling::Rejected(rejection),
    };
    let verified = content_type(request).and_then(|content_type| {
        let incoming = Incoming { request_id, body: &bytes, content_type };
        tracing::debug!(step = step::RECEIVE, %request_id, route = route.as_str(), bytes = bytes.len(), "notification received");
        verify(&incoming, &merchants)
    });
    let verified = match verified {
        Ok(verified) => verified,
        Err(rejection) => return Handling::Rejected(rejection),
    };
    let _slot = match state.admission.publish_slot() {
        Ok(slot) => slot,
        Err(shed) => return Handling::Shed(shed),
    };
    if state.publisher.is_blocked() {
        return Handling::Shed(Shed::BrokerBlocked);
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Handling::Shed(Shed::Deadline);
    }
    // The publish gets what is left of the deadline. A confirm that arrives after it is
    // answered FAIL all the same (the publisher keeps watching it): WeChat Pay re-sends and
    // the worker dedupes, so a late ack costs one duplicate delivery, never a loss.
    let publish_started = Instant::now();
    let result = state
        .publisher
        .publish_within(&verified.message, left)
        .await;
    Handling::Published(Box::new(verified), publish_started, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_values_are_capped_and_cleaned_for_logs() {
        assert_eq!(log_mch_id("1900000109"), "1900000109");
        for bad in ["", "19000x0109", &"1".repeat(33), &"9".repeat(64 * 1024)] {
            assert_eq!(log_mch_id(bad), "invalid");
        }
        let flood = "a".repeat(64 * 1024);
        assert_eq!(log_safe(&flood).chars().count(), MAX_LOGGED + 1);
        assert_eq!(log_safe("line\nforged\u{1b}[31m"), "line?forged?[31m");
        assert_eq!(log_safe("短い"), "短い");
    }
}
