//! HTTP routes: the notify routes (v2, v3) share one pipeline (read the raw body, verify,
//! publish with confirm, answer), and the health routes.

pub mod health;
pub mod v2;
pub mod v3;

use std::sync::Arc;
use std::time::Instant;

use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};
use tracing::{info, warn};
use uuid::Uuid;
use wxpay_runtime::config::Merchants;
use wxpay_runtime::telemetry::{metric, step};

use crate::error::{self, Format};
use crate::publish::Publisher;
use crate::verify::{Incoming, RejectReason, Rejection, Route, Verified};

/// What every handler needs; shared by all HTTP workers.
#[derive(Debug, Clone)]
pub struct AppState {
    pub merchants: Arc<Merchants>,
    pub publisher: Publisher,
}

/// Outcome label values of `wxpay_gateway_requests_total`.
pub mod outcome {
    pub const ACCEPTED: &str = "accepted";
    pub const REJECTED: &str = "rejected";
    pub const FAILED: &str = "failed";
}

/// The `Content-Type` header: absent is `Ok(None)`; not visible ASCII is refused.
fn content_type(request: &HttpRequest) -> Result<Option<&str>, Rejection> {
    match request.headers().get(actix_web::http::header::CONTENT_TYPE) {
        None => Ok(None),
        Some(value) => value.to_str().map(Some).map_err(|_| {
            Rejection::new(
                RejectReason::ContentType,
                "content type is not visible ASCII",
            )
        }),
    }
}

/// The body as read by the `Bytes` extractor under `web::PayloadConfig`'s limit: an
/// overflow (declared or streamed) is a 413 in the route's format.
fn body(body: Result<Bytes, actix_web::Error>) -> Result<Bytes, Rejection> {
    body.map_err(|error| {
        if error.as_response_error().status_code() == actix_web::http::StatusCode::PAYLOAD_TOO_LARGE
        {
            Rejection::new(
                RejectReason::TooLarge,
                "body larger than gateway.body_limit_bytes",
            )
        } else {
            Rejection::new(
                RejectReason::Malformed,
                format!("body not readable: {error}"),
            )
        }
    })
}

fn millis(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

/// The pipeline of every notify route. `verify` turns the raw request into a verified
/// message; nothing unverified reaches the queue, and SUCCESS follows the broker's confirm.
pub async fn handle(
    route: Route,
    request: &HttpRequest,
    raw: Result<Bytes, actix_web::Error>,
    state: &AppState,
    verify: impl FnOnce(&Incoming<'_>, &Merchants) -> Result<Verified, Rejection>,
) -> HttpResponse {
    let started = Instant::now();
    let request_id = Uuid::now_v7();
    let format = Format::from(route);
    let verified = body(raw).and_then(|bytes| {
        let incoming = Incoming { request_id, body: &bytes, content_type: content_type(request)? };
        tracing::debug!(step = step::RECEIVE, %request_id, route = route.as_str(), bytes = bytes.len(), "notification received");
        verify(&incoming, &state.merchants)
    });
    let (response, outcome_label, reason) = match verified {
        Err(rejection) => {
            warn!(
                step = step::VERIFY,
                %request_id,
                route = route.as_str(),
                mch_id = rejection.mch_id.as_deref().unwrap_or(""),
                reason = rejection.reason.code(),
                detail = %rejection.detail,
                latency_ms = millis(started),
                "notification rejected"
            );
            (
                error::rejected(format, &rejection),
                outcome::REJECTED,
                Some(rejection.reason.code()),
            )
        }
        Ok(verified) => {
            let message = &verified.message;
            let publish_started = Instant::now();
            match state.publisher.publish(message).await {
                Ok(()) => {
                    info!(
                        step = step::ANSWER,
                        %request_id,
                        route = route.as_str(),
                        kind = message.kind.as_str(),
                        mch_id = %message.mch_id,
                        out_trade_no = verified.out_trade_no.as_deref().unwrap_or(""),
                        publish_ms = millis(publish_started),
                        latency_ms = millis(started),
                        "notification accepted"
                    );
                    (error::accepted(format), outcome::ACCEPTED, None)
                }
                Err(publish_error) => {
                    warn!(
                        step = step::PUBLISH,
                        %request_id,
                        route = route.as_str(),
                        kind = message.kind.as_str(),
                        mch_id = %message.mch_id,
                        out_trade_no = verified.out_trade_no.as_deref().unwrap_or(""),
                        reason = publish_error.code(),
                        error = %publish_error,
                        latency_ms = millis(started),
                        "publish not confirmed: answering FAIL so WeChat Pay re-sends"
                    );
                    (
                        error::failed(format, &publish_error),
                        outcome::FAILED,
                        Some(publish_error.code()),
                    )
                }
            }
        }
    };
    match reason {
        None => metrics::counter!(metric::GATEWAY_REQUESTS_TOTAL, "route" => route.as_str(), "outcome" => outcome_label).increment(1),
        Some(reason) => metrics::counter!(metric::GATEWAY_REQUESTS_TOTAL, "route" => route.as_str(), "outcome" => outcome_label, "reason" => reason).increment(1),
    }
    metrics::histogram!(metric::GATEWAY_REQUEST_DURATION_SECONDS, "route" => route.as_str())
        .record(started.elapsed().as_secs_f64());
    response
}
