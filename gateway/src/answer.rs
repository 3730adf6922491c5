//! The answers WeChat Pay reads, in each route's format: the last step of a notify request
//! (receive → verify → publish → answer; docs/ARCHITECTURE.md, "The data's path").
//!
//! - v2 (<https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_7>): HTTP 200 with the
//!   `return_code` XML; any FAIL makes WeChat Pay re-send. Oversize is 413 with the FAIL XML
//!   (still a failure to WeChat Pay, clearer to operators).
//! - v3 (<https://pay.weixin.qq.com/docs/merchant/apis/jsapi-payment/payment-notice.html>):
//!   204 without body on success; 4xx/5xx with `{"code":"FAIL","message":…}` on failure.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use wxpay_shared::answer as wire;

use crate::verify::{RejectReason, Rejection, Route};

/// The wire format of a route's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    V2,
    V3,
}

impl From<Route> for Format {
    fn from(route: Route) -> Self {
        match route {
            Route::V2Pay | Route::V2Refund => Format::V2,
            Route::V3 => Format::V3,
        }
    }
}

/// The message WeChat Pay reads for a rejection: fixed per reason, so an answer never
/// reveals configuration (configured serials, appids) to whoever sent the request.
pub fn public_message(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::ContentType => "unsupported content type",
        RejectReason::TooLarge => "body too large",
        RejectReason::Doctype => "DOCTYPE and entities are not allowed",
        RejectReason::Malformed => "malformed notification",
        RejectReason::UnknownMerchant => "unknown merchant",
        RejectReason::WrongAppid => "appid does not belong to the merchant",
        RejectReason::Signature => "invalid signature",
        RejectReason::ReqInfo => "req_info does not decrypt",
        RejectReason::UnknownSerial => "unknown Wechatpay-Serial",
        RejectReason::Timestamp => "timestamp out of range",
        RejectReason::Probe => "signature probe rejected",
        RejectReason::ContentEncoding => "content encoding not accepted, send identity",
        RejectReason::SlowBody => "body not received in time",
        RejectReason::SourceNotAllowed => "source not allowed",
        RejectReason::RateLimited => "too many requests",
    }
}

fn v2(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(wire::V2_CONTENT_TYPE)
        .body(body)
}

fn v3_fail(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(wire::V3_CONTENT_TYPE)
        .body(wire::v3_fail_body(message))
}

/// SUCCESS: the broker confirmed the message.
pub fn accepted(format: Format) -> HttpResponse {
    match format {
        Format::V2 => v2(StatusCode::OK, wire::V2_SUCCESS.to_owned()),
        Format::V3 => HttpResponse::build(
            StatusCode::from_u16(wire::V3_SUCCESS_STATUS).unwrap_or(StatusCode::NO_CONTENT),
        )
        .finish(),
    }
}

/// FAIL for a request that was refused and never enqueued.
pub fn rejected(format: Format, rejection: &Rejection) -> HttpResponse {
    let message = public_message(rejection.reason);
    match format {
        Format::V2 => v2(
            StatusCode::from_u16(rejection.reason.v2_status()).unwrap_or(StatusCode::OK),
            wire::v2_fail(message),
        ),
        Format::V3 => v3_fail(
            StatusCode::from_u16(rejection.reason.v3_status()).unwrap_or(StatusCode::BAD_REQUEST),
            message,
        ),
    }
}

/// FAIL for a verified request the broker did not confirm, or that was shed (overload,
/// blocked broker, deadline): WeChat Pay re-sends it.
pub fn failed(format: Format) -> HttpResponse {
    const MESSAGE: &str = "temporarily unavailable, please retry";
    match format {
        Format::V2 => v2(StatusCode::OK, wire::v2_fail(MESSAGE)),
        Format::V3 => v3_fail(StatusCode::SERVICE_UNAVAILABLE, MESSAGE),
    }
}
