//! Turns an HTTP request (raw body + a few headers) into a verified [`NotifyMessage`], or a
//! [`Rejection`] that says why not.
//!
//! Every protocol rule comes from `wxpay-shared`; this module only decides the order of the
//! checks and which answer each failure gets. Nothing here touches the network, so each
//! rule is unit-tested without a broker.
//!
//! - v2 pay (<https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_7>): the XML is
//!   signed; no valid signature, no entry, whatever `return_code` says.
//! - v2 refund (<https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_16&index=10>):
//!   unsigned; `req_info` is authenticated by decrypting under the merchant's key.
//! - v3 (<https://pay.weixin.qq.com/docs/merchant/development/interface-rules/signature-verification.html>):
//!   RSA signature over `timestamp\nnonce\nbody\n` with the key named by the serial,
//!   timestamp within 5 minutes, `WECHATPAY/SIGNTEST/` probes fail.

use secrecy::ExposeSecret;
use uuid::Uuid;
use wxpay_runtime::config::{Merchant, Merchants};
use wxpay_shared::message::{NotifyKind, NotifyMessage};
use wxpay_shared::v2::{self, PayNotification, RefundEnvelope, RefundInfo, XmlError, XmlFields};
use wxpay_shared::v3::{
    verify_notification, NotificationEnvelope, TimestampCheck, VerifyError, WechatpayHeaders,
};

/// The three notify routes; the label `route` of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /notify/v2/pay`
    V2Pay,
    /// `POST /notify/v2/refund`
    V2Refund,
    /// `POST /notify/v3/{mch_id}`
    V3,
}

impl Route {
    /// Every route, to pre-register metric labels.
    pub const ALL: [Route; 3] = [Route::V2Pay, Route::V2Refund, Route::V3];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::V2Pay => "v2_pay",
            Route::V2Refund => "v2_refund",
            Route::V3 => "v3",
        }
    }

    /// The queue message kind of what this route accepts.
    pub fn kind(self) -> NotifyKind {
        match self {
            Route::V2Pay => NotifyKind::V2Pay,
            Route::V2Refund => NotifyKind::V2Refund,
            Route::V3 => NotifyKind::V3,
        }
    }
}

/// Why a request is refused. [`RejectReason::code`] is the metric label and log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// A content type other than XML / JSON / none.
    ContentType,
    /// Larger than `gateway.body_limit_bytes`.
    TooLarge,
    /// A DOCTYPE / ENTITY declaration (XXE attempt).
    Doctype,
    /// Not parseable, or a required field missing or invalid.
    Malformed,
    /// No configured merchant with this `mch_id`.
    UnknownMerchant,
    /// The `appid` is not one of the merchant's.
    WrongAppid,
    /// v2: missing or wrong signature; v3: missing signature headers or wrong signature.
    Signature,
    /// v2 refund: `req_info` does not decrypt under the merchant's key, or is not a `<root>`.
    ReqInfo,
    /// v3: `Wechatpay-Serial` names no configured platform key.
    UnknownSerial,
    /// v3: timestamp malformed or more than 5 minutes from now.
    Timestamp,
    /// v3: a `WECHATPAY/SIGNTEST/` probe.
    Probe,
    /// A `Content-Encoding` other than `identity`: WeChat Pay never compresses, and
    /// inflating a stranger's body is a memory bomb. Refused unread.
    ContentEncoding,
    /// The body did not arrive within `gateway.body_read_timeout_ms` (or the deadline).
    SlowBody,
    /// The client address is not in `gateway.allow_sources`.
    SourceNotAllowed,
    /// The client address is over `gateway.rate_limit_per_second`.
    RateLimited,
}

impl RejectReason {
    /// Every reason, to pre-register metric labels.
    pub const ALL: [RejectReason; 15] = [
        RejectReason::ContentType,
        RejectReason::TooLarge,
        RejectReason::Doctype,
        RejectReason::Malformed,
        RejectReason::UnknownMerchant,
        RejectReason::WrongAppid,
        RejectReason::Signature,
        RejectReason::ReqInfo,
        RejectReason::UnknownSerial,
        RejectReason::Timestamp,
        RejectReason::Probe,
        RejectReason::ContentEncoding,
        RejectReason::SlowBody,
        RejectReason::SourceNotAllowed,
        RejectReason::RateLimited,
    ];

    /// Stable short code: metric label `reason` and log field.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::ContentType => "content_type",
            RejectReason::TooLarge => "too_large",
            RejectReason::Doctype => "doctype",
            RejectReason::Malformed => "malformed",
            RejectReason::UnknownMerchant => "unknown_merchant",
            RejectReason::WrongAppid => "wrong_appid",
            RejectReason::Signature => "signature",
            RejectReason::ReqInfo => "req_info",
            RejectReason::UnknownSerial => "unknown_serial",
            RejectReason::Timestamp => "timestamp",
            RejectReason::Probe => "probe",
            RejectReason::ContentEncoding => "content_encoding",
            RejectReason::SlowBody => "slow_body",
            RejectReason::SourceNotAllowed => "source_not_allowed",
            RejectReason::RateLimited => "rate_limited",
        }
    }

    /// The HTTP status of a v3 answer (v2 answers 200 with FAIL XML, except oversize: 413).
    pub fn v3_status(self) -> u16 {
        match self {
            RejectReason::TooLarge => 413,
            RejectReason::ContentType | RejectReason::ContentEncoding => 415,
            RejectReason::SlowBody => 408,
            RejectReason::SourceNotAllowed => 403,
            RejectReason::RateLimited => 429,
            RejectReason::UnknownMerchant => 404,
            RejectReason::Doctype | RejectReason::Malformed | RejectReason::WrongAppid => 400,
            RejectReason::Signature
            | RejectReason::ReqInfo
            | RejectReason::UnknownSerial
            | RejectReason::Timestamp
            | RejectReason::Probe => 401,
        }
    }

    /// The HTTP status of a v2 answer: 200 with FAIL XML, as WeChat Pay expects, except
    /// where the request itself was not acceptable as HTTP (size, encoding, pace, source):
    /// still FAIL to WeChat Pay, clearer to operators and proxies.
    pub fn v2_status(self) -> u16 {
        match self {
            RejectReason::TooLarge
            | RejectReason::ContentEncoding
            | RejectReason::SlowBody
            | RejectReason::SourceNotAllowed
            | RejectReason::RateLimited => self.v3_status(),
            _ => 200,
        }
    }
}

/// A refused request: the reason (for metrics and the answer) and a detail for the log
/// line and the answer's message. The detail never holds a key, a signature or the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
    /// The merchant, when it was read before the rejection (for the log line).
    pub mch_id: Option<String>,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
            mch_id: None,
        }
    }

    fn for_merchant(mut self, mch_id: &str) -> Self {
        self.mch_id = Some(mch_id.to_owned());
        self
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.code(), self.detail)
    }
}

/// A notification that passed verification, ready to publish.
#[derive(Debug, Clone)]
pub struct Verified {
    pub message: NotifyMessage,
    /// The merchant's order number when visible without the worker's decryption (log field).
    pub out_trade_no: Option<String>,
}

/// What the routes hand to the verifier: the raw body and the headers that matter.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The request id (UUIDv7), which becomes the message id.
    pub request_id: Uuid,
    pub body: &'a [u8],
    pub content_type: Option<&'a str>,
}

/// Content types WeChat Pay uses (XML for v2, JSON for v3); a missing one is tolerated
/// because some proxies strip it. Parameters (`; charset=utf-8`) are ignored.
pub fn check_content_type(content_type: Option<&str>) -> Result<(), Rejection> {
    let Some(value) = content_type else {
        return Ok(());
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    const ACCEPTED: [&str; 3] = ["application/xml", "text/xml", "application/json"];
    if essence.is_empty() || ACCEPTED.iter().any(|ok| essence.eq_ignore_ascii_case(ok)) {
        Ok(())
    } else {
        let shown: String = essence.chars().take(64).collect();
        Err(Rejection::new(
            RejectReason::ContentType,
            format!("unsupported content type {shown:?}"),
        ))
    }
}

fn xml_rejection(error: XmlError) -> Rejection {
    match error {
        XmlError::Doctype => Rejection::new(RejectReason::Doctype, error.to_string()),
        XmlError::TooLarge { .. } => Rejection::new(RejectReason::TooLarge, error.to_string()),
        other => Rejection::new(RejectReason::Malformed, other.to_string()),
    }
}

fn message(
    incoming: &Incoming<'_>,
    route: Route,
    mch_id: &str,
    wechatpay: Option<WechatpayHeaders>,
) -> Result<NotifyMessage, Rejection> {
    let mut message = NotifyMessage::new(
        route.kind(),
        mch_id,
        incoming.body.to_vec(),
        incoming.content_type.map(str::to_owned),
        wechatpay,
    );
    message.message_id = incoming.request_id;
    // Nothing from the request reaches the broker unchecked (the content type is already
    // mapped onto a fixed set by NotifyMessage::new).
    message.validate().map_err(|error| {
        Rejection::new(RejectReason::Malformed, error.to_string()).for_merchant(mch_id)
    })?;
    Ok(message)
}

/// The configured merchant `mch_id`.
fn configured<'m>(merchants: &'m Merchants, mch_id: &str) -> Result<&'m Merchant, Rejection> {
    merchants
        .get(mch_id)
        .map(|merchant| &**merchant)
        .ok_or_else(|| {
            Rejection::new(RejectReason::UnknownMerchant, "unknown merchant").for_merchant(mch_id)
        })
}

/// A v2 `appid` must be one of the merchant's when present (it is absent, empty, only
/// alongside a `return_code` FAIL); so must a service provider's `sub_appid`
/// (<https://pay.weixin.qq.com/wiki/doc/api/jsapi_sl.php?chapter=9_7>).
fn check_appids(
    merchant: &Merchant,
    mch_id: &str,
    appid: &str,
    sub_appid: Option<&str>,
) -> Result<(), Rejection> {
    match [Some(appid), sub_appid]
        .into_iter()
        .flatten()
        .find(|id| !id.is_empty() && !merchant.has_appid(id))
    {
        None => Ok(()),
        Some(unknown) => Err(Rejection::new(
            RejectReason::WrongAppid,
            format!("appid {unknown} is not configured for this merchant"),
        )
        .for_merchant(mch_id)),
    }
}

/// v2 支付结果通知: parse, find the merchant by `mch_id`, verify the signature (method from
/// `sign_type`, or the sign's length when absent), check the `appid`.
///
/// A signed `result_code=FAIL` passes: the worker records it.
pub fn verify_v2_pay(
    incoming: &Incoming<'_>,
    merchants: &Merchants,
) -> Result<Verified, Rejection> {
    let fields = v2_fields(incoming)?;
    let mch_id = match fields.get("mch_id") {
        Some(id) if !id.is_empty() => id,
        _ => {
            return Err(Rejection::new(
                RejectReason::Malformed,
                "missing field mch_id",
            ))
        }
    };
    let merchant = configured(merchants, mch_id)?;
    v2::verify(&fields, merchant.api_v2_key.expose_secret()).map_err(|error| {
        Rejection::new(RejectReason::Signature, error.to_string()).for_merchant(mch_id)
    })?;
    let notification = PayNotification::from_fields(&fields)
        .map_err(|error| xml_rejection(error).for_merchant(mch_id))?;
    // appid is required when return_code is SUCCESS (checked by from_fields); when present
    // it must be one of the merchant's, and so must a service provider's sub_appid.
    check_appids(
        merchant,
        mch_id,
        &notification.appid,
        notification.sub_appid.as_deref(),
    )?;
    verified_v2(incoming, Route::V2Pay, mch_id, notification.out_trade_no)
}

/// v2 退款结果通知: find the merchant by `mch_id`, check the `appid`, decrypt `req_info`
/// (a wrong key or garbage is rejected) and check the `<root>` is a refund.
pub fn verify_v2_refund(
    incoming: &Incoming<'_>,
    merchants: &Merchants,
) -> Result<Verified, Rejection> {
    let fields = v2_fields(incoming)?;
    let envelope = RefundEnvelope::from_fields(&fields).map_err(xml_rejection)?;
    if envelope.mch_id.is_empty() || envelope.req_info.is_empty() {
        // return_code FAIL without details: nothing authenticates it, nothing to do.
        return Err(Rejection::new(
            RejectReason::Malformed,
            format!(
                "return_code {} without mch_id/req_info",
                envelope.return_code
            ),
        ));
    }
    let mch_id = envelope.mch_id.as_str();
    let merchant = configured(merchants, mch_id)?;
    check_appids(
        merchant,
        mch_id,
        &envelope.appid,
        envelope.sub_appid.as_deref(),
    )?;
    let root = v2::decrypt_req_info(&envelope.req_info, merchant.api_v2_key.expose_secret())
        .map_err(|error| {
            Rejection::new(RejectReason::ReqInfo, error.to_string()).for_merchant(mch_id)
        })?;
    let info = RefundInfo::from_fields(&root).map_err(|error| {
        Rejection::new(RejectReason::ReqInfo, format!("req_info: {error}")).for_merchant(mch_id)
    })?;
    verified_v2(incoming, Route::V2Refund, mch_id, info.out_trade_no)
}

/// The fields of a v2 body (both v2 notifications are XML, sent as a type that can be XML).
fn v2_fields(incoming: &Incoming<'_>) -> Result<XmlFields, Rejection> {
    check_content_type(incoming.content_type)?;
    XmlFields::parse(incoming.body).map_err(xml_rejection)
}

/// A v2 notification that passed: no `Wechatpay-*` headers, and the order number (logged)
/// only when the notification carries one.
fn verified_v2(
    incoming: &Incoming<'_>,
    route: Route,
    mch_id: &str,
    out_trade_no: String,
) -> Result<Verified, Rejection> {
    Ok(Verified {
        message: message(incoming, route, mch_id, None)?,
        out_trade_no: Some(out_trade_no).filter(|no| !no.is_empty()),
    })
}

/// v3 notification for the merchant of the path: signature headers, serial, timestamp
/// (against `now_unix`), RSA signature over the exact body bytes, then the envelope JSON.
///
/// `header` looks a request header up by name (case-insensitively).
pub fn verify_v3<'h>(
    incoming: &Incoming<'_>,
    mch_id: &str,
    header: impl Fn(&str) -> Option<&'h str>,
    merchants: &Merchants,
    now_unix: i64,
) -> Result<Verified, Rejection> {
    check_content_type(incoming.content_type)?;
    let merchant = configured(merchants, mch_id)?;
    let headers = WechatpayHeaders::from_lookup(header).map_err(|error| {
        let reason = match error {
            wxpay_shared::v3::HeaderError::BadTimestamp => RejectReason::Timestamp,
            wxpay_shared::v3::HeaderError::Missing(_) => RejectReason::Signature,
        };
        Rejection::new(reason, error.to_string()).for_merchant(mch_id)
    })?;
    verify_notification(
        &headers,
        incoming.body,
        &merchant.platform_keys,
        TimestampCheck::Enforce { now_unix },
    )
    .map_err(|error| {
        let reason = match &error {
            VerifyError::Probe => RejectReason::Probe,
            VerifyError::UnknownSerial(_) => RejectReason::UnknownSerial,
            VerifyError::StaleTimestamp { .. } | VerifyError::BadTimestamp => RejectReason::Timestamp,
            VerifyError::UnsupportedSignatureType(_)
            | VerifyError::BadSignatureEncoding
            | VerifyError::SignatureMismatch => RejectReason::Signature,
        };
        let detail = match &error {
            VerifyError::UnknownSerial(serial) => {
                let configured: Vec<&str> = merchant.platform_keys.serials().collect();
                format!(
                    "unknown Wechatpay-Serial {serial:?}: add its public key under \
                     [merchants.platform_public_keys] of merchant {mch_id} (configured: {configured:?})"
                )
            }
            other => other.to_string(),
        };
        Rejection::new(reason, detail).for_merchant(mch_id)
    })?;
    // Decrypting the resource is the worker's job; a body that is not even an envelope is
    // refused here so it never reaches the queue.
    NotificationEnvelope::parse(incoming.body).map_err(|error| {
        Rejection::new(
            RejectReason::Malformed,
            format!("notification envelope: {error}"),
        )
        .for_merchant(mch_id)
    })?;
    Ok(Verified {
        message: message(incoming, Route::V3, mch_id, Some(headers))?,
        out_trade_no: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        for ok in [
            None,
            Some("application/xml"),
            Some("text/xml; charset=UTF-8"),
            Some("Application/JSON"),
        ] {
            assert_eq!(check_content_type(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            assert_eq!(
                check_content_type(Some(bad)).map_err(|r| r.reason),
                Err(RejectReason::ContentType),
                "{bad}"
            );
        }
    }

    #[test]
    fn v3_statuses() {
        assert_eq!(RejectReason::UnknownSerial.v3_status(), 401);
        assert_eq!(RejectReason::Timestamp.v3_status(), 401);
        assert_eq!(RejectReason::Probe.v3_status(), 401);
        assert_eq!(RejectReason::Malformed.v3_status(), 400);
        assert_eq!(RejectReason::UnknownMerchant.v3_status(), 404);
        assert_eq!(RejectReason::TooLarge.v3_status(), 413);
    }

    #[test]
    fn garbage_is_rejected_not_panicking() {
        let merchants = Merchants::default();
        let incoming = Incoming {
            request_id: Uuid::now_v7(),
            body: b"\xff\x00<xml",
            content_type: None,
        };
        let bodies: [(&[u8], _); 3] = [
            (incoming.body, RejectReason::Malformed),
            (
                b"<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><xml><a>&e;</a></xml>",
                RejectReason::Doctype,
            ),
            (
                b"<xml><mch_id>1</mch_id><sign>AB</sign></xml>",
                RejectReason::UnknownMerchant,
            ),
        ];
        for (body, reason) in bodies {
            let pay = Incoming { body, ..incoming };
            assert_eq!(
                verify_v2_pay(&pay, &merchants)
                    .map(|_| ())
                    .map_err(|r| r.reason),
                Err(reason),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(verify_v2_refund(&incoming, &merchants).is_err());
        assert_eq!(
            verify_v3(&incoming, "1", |_| None, &merchants, 0)
                .map(|_| ())
                .map_err(|r| r.reason),
            Err(RejectReason::UnknownMerchant)
        );
    }
}
