//! The WeChat Pay query API, as the reconciler calls it (and the worker, to confirm a large
//! payment: [`crate::confirm`]): 查询订单 and 查询退款, through API v2 (signed XML) for
//! merchants without API v3 credentials, through API v3 (signed JSON) otherwise.
//!
//! - v2 查询订单 `POST /pay/orderquery`: <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_2>
//! - v2 查询退款 `POST /pay/refundquery`: <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_5>
//! - v2 signatures (both ways): <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=4_3>
//! - v3 `GET /v3/pay/transactions/out-trade-no/{out_trade_no}?mchid=`:
//!   <https://pay.weixin.qq.com/docs/merchant/apis/jsapi-payment/query-by-out-trade-no.html>
//! - v3 `GET /v3/refund/domestic/refunds/{out_refund_no}`:
//!   <https://pay.weixin.qq.com/docs/merchant/apis/jsapi-payment/query-by-out-refund-no.html>
//! - A service provider (服务商) asks about its sub-merchant's records with `sub_mch_id`
//!   (v2, <https://pay.weixin.qq.com/wiki/doc/api/jsapi_sl.php?chapter=9_2>,
//!   <https://pay.weixin.qq.com/wiki/doc/api/jsapi_sl.php?chapter=9_5>) or at the partner
//!   endpoints (v3 `GET /v3/pay/partner/transactions/out-trade-no/{out_trade_no}?sp_mchid=&sub_mchid=`,
//!   <https://pay.weixin.qq.com/docs/partner/apis/partner-jsapi-payment/query-by-out-trade-no.html>;
//!   `GET /v3/refund/domestic/refunds/{out_refund_no}?sub_mchid=`,
//!   <https://pay.weixin.qq.com/docs/partner/apis/partner-jsapi-payment/query-by-out-refund-no.html>),
//!   signed with the provider's credentials; the answer must name that sub-merchant.
//! - v3 request signing and response verification:
//!   <https://pay.weixin.qq.com/docs/merchant/development/interface-rules/signature-generation.html>,
//!   <https://pay.weixin.qq.com/docs/merchant/development/interface-rules/signature-verification.html>
//!
//! Every answer the reconciler acts on is verified here (v2 `sign`, v3 `Wechatpay-*`
//! headers) before anything is published or written: a forged or tampered answer must not
//! close an order or reach the queue. The worker verifies the published body again (the
//! queue is a trust boundary), so the body is kept byte for byte.

use std::time::Duration;

use rand::distributions::Alphanumeric;
use rand::Rng;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode};
use secrecy::ExposeSecret;
use wxpay_runtime::config::{Merchant, WechatpaySettings};
use wxpay_shared::v2::{self, SignType, XmlFields};
use wxpay_shared::v3::certificates::CERTIFICATES_PATH;
use wxpay_shared::v3::combine::{self, CombineTransaction};
use wxpay_shared::v3::{
    authorization_header, verify_download, verify_response, DownloadError, Downloaded,
    RefundResource, TimestampCheck, Transaction, WechatpayHeaders,
};

use super::rate::RateLimiter;

/// Attempts per query when WeChat Pay answers 5xx / 429 or the request fails in transit.
pub const MAX_ATTEMPTS: u32 = 3;
/// First back-off delay; doubled per attempt, with jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest pause between attempts (also caps a 429's `Retry-After`).
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Answers larger than this are not WeChat Pay's (the v2 parser's own limit is 256 KiB).
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// The request signature type of v2 queries. WeChat Pay answers signed the same way.
const V2_SIGN_TYPE: SignType = SignType::HmacSha256;
/// v2 `err_code`s meaning "WeChat Pay does not know this order / refund".
const V2_NOT_FOUND: [&str; 2] = ["ORDERNOTEXIST", "REFUNDNOTEXIST"];

/// Which API a merchant is queried through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    V2,
    V3,
}

impl Api {
    /// API v3 when the merchant can sign v3 requests (`merchant_private_key_pem` and
    /// `merchant_serial`) and verify v3 answers (platform keys, or downloaded platform
    /// certificates); API v2 otherwise (the API v2 key is always configured).
    pub fn for_merchant(merchant: &Merchant) -> Api {
        if merchant.signer.is_some()
            && (!merchant.platform_keys.is_empty() || merchant.download_platform_certificates)
        {
            Api::V3
        } else {
            Api::V2
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Api::V2 => "v2",
            Api::V3 => "v3",
        }
    }
}

/// What is queried: an order or a refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    Order,
    Refund,
}

/// The fields of a v2 query for one kind of record.
struct V2Fields {
    path: &'static str,
    /// The request's field naming the record.
    by: &'static str,
    /// The answer's field that must echo that number.
    echo: &'static str,
    /// The answer's field holding the state.
    state: &'static str,
}

impl Record {
    /// `order` / `refund`: the `what` of logs and of [`QueryError::Mismatch`].
    pub fn as_str(self) -> &'static str {
        match self {
            Record::Order => "order",
            Record::Refund => "refund",
        }
    }

    fn v2_fields(self) -> V2Fields {
        let (path, by, echo, state) = match self {
            Record::Order => (
                "/pay/orderquery",
                "out_trade_no",
                "out_trade_no",
                "trade_state",
            ),
            // Queried by out_refund_no, the answer lists that one refund as `_0`.
            Record::Refund => (
                "/pay/refundquery",
                "out_refund_no",
                "out_refund_no_0",
                "refund_status_0",
            ),
        };
        V2Fields {
            path,
            by,
            echo,
            state,
        }
    }
}

/// A verified answer about one order or refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `trade_state` (orders) or the refund status (v2 `refund_status_0`, v3 `status`) as
    /// WeChat Pay wrote it.
    pub state: String,
    /// The raw body, byte for byte (what the worker re-verifies).
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    /// The v3 answer's signature headers; `None` for v2 (the signature is inside the XML).
    pub wechatpay: Option<WechatpayHeaders>,
}

/// The result of a query that WeChat Pay answered properly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Answer(Answer),
    /// WeChat Pay does not know it (v2 `ORDERNOTEXIST` / `REFUNDNOTEXIST`, v3 404).
    NotFound,
}

/// Why a query gave no usable answer. Nothing is changed on any of them; the next round
/// asks again.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("request failed: {0}")]
    Transport(String),
    #[error("WeChat Pay answered HTTP {0}")]
    Status(u16),
    #[error("answer signature does not verify: {0}")]
    Signature(String),
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// v2 `return_code` / `result_code` FAIL other than "not found" (e.g. `SYSTEMERROR`).
    #[error("query refused: {0}")]
    Refused(String),
    /// A verified answer about another merchant, order or refund than asked.
    #[error("answer is about another {0}")]
    Mismatch(&'static str),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl QueryError {
    /// The `reason` label of `wxpay_reconciler_errors_total`.
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::Transport(_) => "http",
            QueryError::Status(_) => "status",
            QueryError::Signature(_) => "bad_signature",
            QueryError::Malformed(_) => "malformed",
            QueryError::Refused(_) => "refused",
            QueryError::Mismatch(_) => "mismatch",
            QueryError::Client(_) => "client",
        }
    }

    /// Whether the API itself looks unavailable (as opposed to an answer we reject).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, QueryError::Transport(_) | QueryError::Status(_))
    }
}

/// Whether a status is worth another attempt: WeChat Pay's `SYSTEM_ERROR` (5xx) and
/// `FREQUENCY_LIMITED` (429).
fn retryable_status(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// One HTTP exchange, body read.
struct Raw {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Raw {
    fn content_type(&self) -> Option<String> {
        self.headers
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    }
}

/// Whose order a query asks about: the appid it was placed in (the order's `appid`) and the
/// service provider's sub-merchant (empty for a direct merchant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderOf<'a> {
    pub appid: &'a str,
    pub sub_mch_id: &'a str,
}

impl<'a> OrderOf<'a> {
    /// A direct merchant's order in `appid`.
    pub fn direct(appid: &'a str) -> OrderOf<'a> {
        OrderOf {
            appid,
            sub_mch_id: "",
        }
    }
}

/// A v2 answer must be about the sub-merchant asked about (none for a direct merchant).
fn v2_same_sub_merchant(fields: &XmlFields, of: OrderOf<'_>) -> Result<(), QueryError> {
    if fields.get("sub_mch_id").unwrap_or_default() == of.sub_mch_id {
        Ok(())
    } else {
        Err(QueryError::Mismatch("merchant"))
    }
}

/// The HTTP client of the query API: timeouts from `wechatpay.request_timeout_ms`,
/// retries with exponential back-off on 5xx, 429 and transport errors, every attempt
/// paced by the merchant's [`RateLimiter`].
#[derive(Debug, Clone)]
pub struct QueryClient {
    http: reqwest::Client,
    api_base: String,
}

impl QueryClient {
    pub fn new(settings: &WechatpaySettings) -> Result<QueryClient, QueryError> {
        let timeout = Duration::from_millis(settings.request_timeout_ms.max(1));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // WeChat Pay rejects v3 requests without a User-Agent.
            .user_agent(concat!(
                "wxpay-notify-reconciler/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|error| QueryError::Client(error.to_string()))?;
        Ok(QueryClient {
            http,
            api_base: settings.api_base.trim_end_matches('/').to_owned(),
        })
    }

    /// 查询订单 by `out_trade_no` or 查询退款 by `out_refund_no` (`number`), of the order
    /// `of`.
    pub async fn query(
        &self,
        record: Record,
        merchant: &Merchant,
        of: OrderOf<'_>,
        number: &str,
        limiter: &RateLimiter,
    ) -> Result<Found, QueryError> {
        let asked = Asked {
            merchant,
            of,
            number,
        };
        match Api::for_merchant(merchant) {
            Api::V2 => self.query_v2(record, asked, limiter).await,
            Api::V3 => {
                let path = match record {
                    Record::Order => v3_order_path(asked),
                    Record::Refund => v3_refund_path(asked),
                };
                self.v3_query(&path, merchant, limiter, |body| match record {
                    Record::Order => v3_order_state(asked, body),
                    Record::Refund => v3_refund_state(asked, body),
                })
                .await
            }
        }
    }

    /// 合单查询订单 (combine payments, API v3 only):
    /// `GET /v3/combine-transactions/out-trade-no/{combine_out_trade_no}`, the same for a
    /// service provider (<https://pay.weixin.qq.com/doc/v3/merchant/4012557006>,
    /// <https://pay.weixin.qq.com/doc/v3/partner/4015973142>). The verified answer about that
    /// combine payment of `merchant`; its `state` is the sub orders' `trade_state`s, in order,
    /// joined by commas (for the logs: [`CombineTransaction::parse`] of the body says more).
    pub async fn query_combine(
        &self,
        merchant: &Merchant,
        combine_out_trade_no: &str,
        limiter: &RateLimiter,
    ) -> Result<Found, QueryError> {
        if Api::for_merchant(merchant) != Api::V3 {
            return Err(lacks(
                merchant,
                "API v3 credentials, which the combine query needs",
            ));
        }
        let path = combine::query_path(&encode_component(combine_out_trade_no));
        self.v3_query(&path, merchant, limiter, |body| {
            let answer = CombineTransaction::parse(body).map_err(malformed)?;
            if answer.combine_mchid != merchant.mch_id {
                return Err(QueryError::Mismatch("merchant"));
            }
            if answer.combine_out_trade_no != combine_out_trade_no {
                return Err(QueryError::Mismatch("order"));
            }
            let states: Vec<&str> = answer
                .sub_orders
                .iter()
                .map(|sub| sub.trade_state.as_str())
                .collect();
            Ok(states.join(","))
        })
        .await
    }

    /// A v3 query at `path`: not found (404), or the answer verified, with the state
    /// `state_of` reads from its body once it is known to be about what was asked.
    async fn v3_query(
        &self,
        path: &str,
        merchant: &Merchant,
        limiter: &RateLimiter,
        state_of: impl FnOnce(&[u8]) -> Result<String, QueryError>,
    ) -> Result<Found, QueryError> {
        let raw = self.get_v3(path, merchant, limiter).await?;
        if raw.status == StatusCode::NOT_FOUND {
            return Ok(Found::NotFound);
        }
        let headers = v3_verified(&raw, merchant)?;
        let state = state_of(&raw.body)?;
        Ok(Found::Answer(v3_found(raw, state, headers)))
    }

    /// `GET /v3/certificates` (<https://pay.weixin.qq.com/doc/v3/merchant/4012551764>): the
    /// merchant's platform certificates, decrypted with its APIv3 key and checked, the
    /// answer verified with its platform keys or, for a serial it does not know yet, with
    /// a certificate of the answer (`wxpay_shared::v3::verify_download`).
    pub async fn download_certificates(
        &self,
        merchant: &Merchant,
        limiter: &RateLimiter,
    ) -> Result<Downloaded, QueryError> {
        let Some(api_v3_key) = &merchant.api_v3_key else {
            return Err(lacks(merchant, "APIv3 key"));
        };
        let raw = self.get_v3(CERTIFICATES_PATH, merchant, limiter).await?;
        if raw.status != StatusCode::OK {
            return Err(QueryError::Status(raw.status.as_u16()));
        }
        verify_download(
            &wechatpay_headers(&raw)?,
            &raw.body,
            &merchant.platform_keys,
            api_v3_key.expose_secret().as_bytes(),
            TimestampCheck::now(),
            std::time::SystemTime::now(),
        )
        .map_err(|error| match error {
            DownloadError::Malformed(reason) => QueryError::Malformed(reason),
            DownloadError::Signature(error) => QueryError::Signature(error.code().to_owned()),
        })
    }

    /// A v2 query for the one `record` asked about (`appid` and `mch_id` beside it; a
    /// service provider's `appid` is its own, the first of its `appids`, with `sub_mch_id`
    /// and the order's `sub_appid`): the verified answer, checked to be about that record of
    /// that sub-merchant, with its state.
    async fn query_v2(
        &self,
        record: Record,
        Asked {
            merchant,
            of,
            number,
        }: Asked<'_>,
        limiter: &RateLimiter,
    ) -> Result<Found, QueryError> {
        let fields = record.v2_fields();
        let mut request = XmlFields::new();
        request.insert("mch_id", merchant.mch_id.as_str());
        match (of.sub_mch_id, merchant.appids.first()) {
            ("", _) | (_, None) => request.insert("appid", of.appid),
            (sub_mch_id, Some(sp_appid)) => {
                request.insert("appid", sp_appid.as_str());
                request.insert("sub_mch_id", sub_mch_id);
                if of.appid != sp_appid {
                    request.insert("sub_appid", of.appid);
                }
            }
        }
        request.insert(fields.by, number);
        let raw = self
            .post_v2(fields.path, merchant, request, limiter)
            .await?;
        let Some(answer) = v2_answer(&raw, merchant)? else {
            return Ok(Found::NotFound);
        };
        if answer.get(fields.echo) != Some(number) {
            return Err(QueryError::Mismatch(record.as_str()));
        }
        v2_same_sub_merchant(&answer, of)?;
        let state = v2_required(&answer, fields.state)?;
        Ok(Found::Answer(v2_found(raw, state)))
    }

    /// A signed v2 request: `nonce_str`, `sign_type`, `sign` added to `fields`.
    async fn post_v2(
        &self,
        path: &str,
        merchant: &Merchant,
        mut fields: XmlFields,
        limiter: &RateLimiter,
    ) -> Result<Raw, QueryError> {
        fields.insert("nonce_str", nonce());
        fields.insert("sign_type", V2_SIGN_TYPE.as_str());
        let sign = v2::sign(&fields, merchant.api_v2_key.expose_secret(), V2_SIGN_TYPE);
        fields.insert("sign", sign);
        let body = fields.to_xml();
        let url = format!("{}{path}", self.api_base);
        let raw = self
            .send(limiter, || {
                self.http
                    .post(&url)
                    .header(CONTENT_TYPE, "text/xml; charset=utf-8")
                    .body(body.clone())
            })
            .await?;
        if raw.status != StatusCode::OK {
            return Err(QueryError::Status(raw.status.as_u16()));
        }
        Ok(raw)
    }

    /// A v3 GET signed with the merchant's API key; each attempt signs afresh (the
    /// `Authorization` carries a timestamp and a nonce). Answers 200 and 404 are returned;
    /// anything else is an error.
    async fn get_v3(
        &self,
        canonical_url: &str,
        merchant: &Merchant,
        limiter: &RateLimiter,
    ) -> Result<Raw, QueryError> {
        let signer = merchant
            .signer
            .as_ref()
            .ok_or_else(|| lacks(merchant, "v3 signer"))?;
        let url = format!("{}{canonical_url}", self.api_base);
        let raw = self
            .send(limiter, || {
                let authorization = authorization_header(
                    &merchant.mch_id,
                    &signer.serial,
                    &signer.private_key,
                    "GET",
                    canonical_url,
                    chrono::Utc::now().timestamp(),
                    &nonce(),
                    b"",
                );
                self.http
                    .get(&url)
                    .header(ACCEPT, "application/json")
                    .header(AUTHORIZATION, authorization)
            })
            .await?;
        match raw.status {
            StatusCode::OK | StatusCode::NOT_FOUND => Ok(raw),
            other => Err(QueryError::Status(other.as_u16())),
        }
    }

    /// Sends with retries: transport errors, 5xx and 429 are tried again up to
    /// [`MAX_ATTEMPTS`] times with exponential back-off (a 429's `Retry-After` is honoured
    /// up to [`BACKOFF_CAP`]). The last failure is returned as an error; other statuses are
    /// returned for the caller to judge.
    async fn send(
        &self,
        limiter: &RateLimiter,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Raw, QueryError> {
        let mut attempt = 1;
        loop {
            limiter.acquire().await;
            let (error, retry_after) = match exchange(build()).await {
                Ok(raw) if !retryable_status(raw.status) => return Ok(raw),
                Ok(raw) => (
                    QueryError::Status(raw.status.as_u16()),
                    retry_after(&raw.headers),
                ),
                Err(error) => (error, None),
            };
            if attempt >= MAX_ATTEMPTS {
                return Err(error);
            }
            let delay = retry_after
                .unwrap_or_else(|| backoff(attempt))
                .min(BACKOFF_CAP);
            tracing::debug!(
                step = wxpay_runtime::telemetry::step::RECONCILE,
                attempt,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                reason = error.code(),
                "query failed, trying again"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

/// A merchant configured without `what`: the client cannot make this call.
fn lacks(merchant: &Merchant, what: &str) -> QueryError {
    QueryError::Client(format!("merchant {} has no {what}", merchant.mch_id))
}

/// One request; the body is read up to [`MAX_ANSWER_BYTES`].
async fn exchange(request: RequestBuilder) -> Result<Raw, QueryError> {
    let transport = |error: reqwest::Error| QueryError::Transport(transport_text(error));
    let mut response = request.send().await.map_err(transport)?;
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(QueryError::Malformed(format!(
                "answer larger than {MAX_ANSWER_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Raw {
        status,
        headers,
        body,
    })
}

/// A short description of a transport error, without the URL's query (ids only, but
/// keep logs lean).
fn transport_text(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else if error.is_body() || error.is_decode() {
        "body"
    } else {
        "request"
    };
    let mut text = format!("{kind}: {}", error.without_url());
    text.truncate(200);
    text
}

/// `Retry-After` in seconds (WeChat Pay does not send HTTP dates).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// `BACKOFF_BASE * 2^(attempt-1)`, plus up to 50 % jitter so that retries of several
/// merchants do not synchronise.
fn backoff(attempt: u32) -> Duration {
    let exponential = BACKOFF_BASE.saturating_mul(1 << attempt.saturating_sub(1).min(8));
    let jitter_ms = rand::thread_rng().gen_range(0..=exponential.as_millis() / 2);
    exponential + Duration::from_millis(u64::try_from(jitter_ms).unwrap_or(0))
}

/// A 32-character random `nonce_str` / v3 nonce.
fn nonce() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Percent-encodes a path segment or query value: everything but RFC 3986's unreserved
/// characters. The same encoded string is sent and signed (the signature covers the URL
/// as sent).
fn encode_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Checks a v2 answer: `return_code` SUCCESS (else it is unsigned: refused), then the
/// signature with the API v2 key, then `result_code` (a signed FAIL is "not found" or
/// refused), then that it is about this merchant. `None` means not found.
fn v2_answer(raw: &Raw, merchant: &Merchant) -> Result<Option<XmlFields>, QueryError> {
    let fields =
        XmlFields::parse(&raw.body).map_err(|error| QueryError::Malformed(error.to_string()))?;
    let return_code = fields.get("return_code").unwrap_or_default();
    if return_code != v2::SUCCESS {
        let message: String = fields
            .get("return_msg")
            .unwrap_or_default()
            .chars()
            .take(64)
            .collect();
        return Err(QueryError::Refused(format!(
            "return_code {return_code:?} {message}"
        )));
    }
    v2::verify(&fields, merchant.api_v2_key.expose_secret())
        .map_err(|error| QueryError::Signature(error.to_string()))?;
    let result_code = fields.get("result_code").unwrap_or_default();
    if result_code != v2::SUCCESS {
        let err_code = fields.get("err_code").unwrap_or_default();
        if V2_NOT_FOUND.contains(&err_code) {
            return Ok(None);
        }
        let err_code: String = err_code.chars().take(32).collect();
        return Err(QueryError::Refused(format!("err_code {err_code:?}")));
    }
    if fields.get("mch_id") != Some(merchant.mch_id.as_str()) {
        return Err(QueryError::Mismatch("merchant"));
    }
    Ok(Some(fields))
}

fn v2_required(fields: &XmlFields, name: &'static str) -> Result<String, QueryError> {
    fields
        .require(name)
        .map(str::to_owned)
        .map_err(|error| QueryError::Malformed(error.to_string()))
}

fn v2_found(raw: Raw, state: String) -> Answer {
    Answer {
        state,
        content_type: raw.content_type().or_else(|| Some("text/xml".to_owned())),
        body: raw.body,
        wechatpay: None,
    }
}

/// One record asked about: of `merchant`, of the order `of`, numbered `number`
/// (`out_trade_no` or `out_refund_no`).
#[derive(Clone, Copy)]
struct Asked<'a> {
    merchant: &'a Merchant,
    of: OrderOf<'a>,
    number: &'a str,
}

fn v3_order_path(asked: Asked<'_>) -> String {
    let number = encode_component(asked.number);
    let mch_id = encode_component(&asked.merchant.mch_id);
    match asked.of.sub_mch_id {
        "" => format!("/v3/pay/transactions/out-trade-no/{number}?mchid={mch_id}"),
        sub_mch_id => format!(
            "/v3/pay/partner/transactions/out-trade-no/{number}?sp_mchid={mch_id}&sub_mchid={}",
            encode_component(sub_mch_id)
        ),
    }
}

fn v3_refund_path(asked: Asked<'_>) -> String {
    let mut path = format!(
        "/v3/refund/domestic/refunds/{}",
        encode_component(asked.number)
    );
    if !asked.of.sub_mch_id.is_empty() {
        path.push_str(&format!(
            "?sub_mchid={}",
            encode_component(asked.of.sub_mch_id)
        ));
    }
    path
}

fn malformed(error: impl std::fmt::Display) -> QueryError {
    QueryError::Malformed(error.to_string())
}

/// The `trade_state` of a v3 order answer, once it is known to be about the order asked.
fn v3_order_state(asked: Asked<'_>, body: &[u8]) -> Result<String, QueryError> {
    let transaction = Transaction::parse(body).map_err(malformed)?;
    if transaction.merchant() != asked.merchant.mch_id
        || transaction.sub_merchant() != asked.of.sub_mch_id
    {
        return Err(QueryError::Mismatch("merchant"));
    }
    if transaction.out_trade_no != asked.number {
        return Err(QueryError::Mismatch("order"));
    }
    Ok(transaction.trade_state)
}

/// The `status` of a v3 refund answer, once it is known to be about the refund asked.
fn v3_refund_state(asked: Asked<'_>, body: &[u8]) -> Result<String, QueryError> {
    let refund = RefundResource::parse(body).map_err(malformed)?;
    // The refund query's answer has no `mchid` (nor, for a provider, perhaps a
    // `sub_mchid`); when present they must be the ones asked about.
    let named = refund.merchant();
    let named_sub = refund.sub_mchid.as_str();
    if (!named.is_empty() && named != asked.merchant.mch_id)
        || (!named_sub.is_empty() && named_sub != asked.of.sub_mch_id)
    {
        return Err(QueryError::Mismatch("merchant"));
    }
    if refund.out_refund_no != asked.number {
        return Err(QueryError::Mismatch("refund"));
    }
    Ok(refund.refund_status)
}

/// Verifies a v3 answer's `Wechatpay-*` signature (timestamp freshness enforced: this is a
/// live answer, not a retried message) with the merchant's platform keys.
fn v3_verified(raw: &Raw, merchant: &Merchant) -> Result<WechatpayHeaders, QueryError> {
    let headers = wechatpay_headers(raw)?;
    verify_response(
        &headers,
        &raw.body,
        &merchant.platform_keys,
        TimestampCheck::now(),
    )
    .map_err(|error| QueryError::Signature(error.code().to_owned()))?;
    Ok(headers)
}

/// The `Wechatpay-*` headers of a v3 answer.
fn wechatpay_headers(raw: &Raw) -> Result<WechatpayHeaders, QueryError> {
    WechatpayHeaders::from_lookup(|name| {
        raw.headers.get(name).and_then(|value| value.to_str().ok())
    })
    .map_err(|error| QueryError::Signature(error.to_string()))
}

fn v3_found(raw: Raw, state: String, headers: WechatpayHeaders) -> Answer {
    Answer {
        state,
        content_type: raw
            .content_type()
            .or_else(|| Some("application/json".to_owned())),
        body: raw.body,
        wechatpay: Some(headers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use secrecy::SecretString;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use wxpay_runtime::config::{MerchantSigner, SubMerchants};
    use wxpay_shared::state::TradeState;
    use wxpay_shared::v3::{load_private_key_pem, sign_notification, PlatformKeys, PrivateKey};

    const MCH_ID: &str = "1900000109";
    const KEY: &str = "192006250b4c09247ec02edce69f6a2d";
    const SERIAL: &str = "PUB_KEY_ID_TEST";

    fn v2_merchant() -> Merchant {
        Merchant {
            sub_merchants: SubMerchants::Direct,
            mch_id: MCH_ID.into(),
            appids: vec!["wxd930ea5d5a258f4f".into()],
            api_v2_key: SecretString::from(KEY),
            api_v3_key: None,
            platform_keys: PlatformKeys::new(),
            signer: None,
            confirm_by_query_min_fen: None,
            download_platform_certificates: false,
        }
    }

    /// Fixture keys made with `openssl genpkey` (2048 bits, the least ring accepts).
    fn fixture_key(pem: &str) -> PrivateKey {
        load_private_key_pem(pem).expect("fixture key loads")
    }

    fn platform_key() -> PrivateKey {
        fixture_key(include_str!(
            "../../../testkit/fixtures/platform_private.pem"
        ))
    }

    /// Not the platform's: the merchant's own key, and the impostor's.
    fn other_key() -> PrivateKey {
        fixture_key(include_str!("../../../testkit/fixtures/other_private.pem"))
    }

    /// A v3 merchant and the platform private key that signs its answers.
    fn v3_merchant() -> (Merchant, PrivateKey) {
        let platform = platform_key();
        let mut keys = PlatformKeys::new();
        keys.insert(SERIAL, platform.public_key());
        let merchant = Merchant {
            api_v3_key: Some(SecretString::from("0123456789abcdef0123456789ABCDEF")),
            platform_keys: keys,
            signer: Some(MerchantSigner {
                serial: "MERCHANT_SERIAL".into(),
                private_key: other_key(),
            }),
            ..v2_merchant()
        };
        (merchant, platform)
    }

    fn signed_v2(pairs: &[(&str, &str)], key: &str) -> Vec<u8> {
        let mut fields: XmlFields = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let sign = v2::sign(&fields, key, SignType::HmacSha256);
        fields.insert("sign", sign);
        fields.to_xml().into_bytes()
    }

    fn order_answer(out_trade_no: &str, trade_state: &str) -> Vec<(&'static str, String)> {
        vec![
            ("return_code", "SUCCESS".into()),
            ("result_code", "SUCCESS".into()),
            ("mch_id", MCH_ID.into()),
            ("appid", "wxd930ea5d5a258f4f".into()),
            ("out_trade_no", out_trade_no.into()),
            ("trade_state", trade_state.into()),
            ("nonce_str", "abc".into()),
            ("sign_type", "HMAC-SHA256".into()),
        ]
    }

    fn raw(status: u16, headers: &[(&'static str, String)], body: Vec<u8>) -> Raw {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, value.parse().expect("header value"));
        }
        Raw {
            status: StatusCode::from_u16(status).expect("status"),
            headers: map,
            body,
        }
    }

    fn v2_raw(pairs: &[(&str, String)], key: &str) -> Raw {
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        raw(200, &[], signed_v2(&borrowed, key))
    }

    #[test]
    fn v2_answers_are_verified_and_classified() {
        let merchant = v2_merchant();
        let good = v2_raw(&order_answer("o1", "SUCCESS"), KEY);
        let fields = v2_answer(&good, &merchant)
            .expect("verifies")
            .expect("found");
        assert_eq!(fields.get("trade_state"), Some("SUCCESS"));

        let forged = v2_raw(
            &order_answer("o1", "SUCCESS"),
            "00000000000000000000000000000000",
        );
        assert!(matches!(
            v2_answer(&forged, &merchant),
            Err(QueryError::Signature(_))
        ));

        let unpaid = TradeState::NotPay.as_str();
        let mut tampered = v2_raw(&order_answer("o1", unpaid), KEY);
        let text = String::from_utf8(tampered.body)
            .expect("utf-8")
            .replace(unpaid, TradeState::Success.as_str());
        tampered.body = text.into_bytes();
        assert!(matches!(
            v2_answer(&tampered, &merchant),
            Err(QueryError::Signature(_))
        ));

        let unsigned_fail = raw(
            200,
            &[],
            b"<xml><return_code>FAIL</return_code><return_msg>sign error</return_msg></xml>"
                .to_vec(),
        );
        assert!(matches!(
            v2_answer(&unsigned_fail, &merchant),
            Err(QueryError::Refused(_))
        ));

        let mut not_found = order_answer("o1", "");
        not_found.retain(|(k, _)| *k != "trade_state");
        not_found[1].1 = "FAIL".into();
        not_found.push(("err_code", "ORDERNOTEXIST".into()));
        assert!(v2_answer(&v2_raw(&not_found, KEY), &merchant)
            .expect("verifies")
            .is_none());

        let system_error: Vec<_> = not_found
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    if *k == "err_code" {
                        "SYSTEMERROR".to_owned()
                    } else {
                        v.clone()
                    },
                )
            })
            .collect();
        assert!(matches!(
            v2_answer(&v2_raw(&system_error, KEY), &merchant),
            Err(QueryError::Refused(_))
        ));

        let mut other_merchant = order_answer("o1", "SUCCESS");
        other_merchant[2].1 = "1900000999".into();
        assert!(matches!(
            v2_answer(&v2_raw(&other_merchant, KEY), &merchant),
            Err(QueryError::Mismatch("merchant"))
        ));

        let garbage = raw(200, &[], b"<html>gateway timeout</html>".to_vec());
        assert!(matches!(
            v2_answer(&garbage, &merchant),
            Err(QueryError::Malformed(_))
        ));
    }

    fn v3_headers(key: &PrivateKey, ts: i64, body: &[u8]) -> Vec<(&'static str, String)> {
        let ts = ts.to_string();
        vec![
            ("Wechatpay-Timestamp", ts.clone()),
            ("Wechatpay-Nonce", "n0nce".into()),
            (
                "Wechatpay-Signature",
                sign_notification(key, &ts, "n0nce", body),
            ),
            ("Wechatpay-Serial", SERIAL.into()),
        ]
    }

    #[test]
    fn v3_answers_are_verified() {
        let (merchant, platform) = v3_merchant();
        let body =
            br#"{"mchid":"1900000109","out_trade_no":"o1","trade_state":"SUCCESS"}"#.to_vec();
        let now = chrono::Utc::now().timestamp();
        let good = raw(200, &v3_headers(&platform, now, &body), body.clone());
        let headers = v3_verified(&good, &merchant).expect("verifies");
        assert_eq!(headers.serial, SERIAL);

        let impostor = other_key();
        let forged = raw(200, &v3_headers(&impostor, now, &body), body.clone());
        assert!(matches!(
            v3_verified(&forged, &merchant),
            Err(QueryError::Signature(_))
        ));

        let mut tampered = raw(200, &v3_headers(&platform, now, &body), body.clone());
        tampered.body = body
            .iter()
            .map(|b| if *b == b'o' { b'0' } else { *b })
            .collect();
        assert!(matches!(
            v3_verified(&tampered, &merchant),
            Err(QueryError::Signature(_))
        ));

        let stale = raw(
            200,
            &v3_headers(&platform, now - 3_600, &body),
            body.clone(),
        );
        assert!(matches!(
            v3_verified(&stale, &merchant),
            Err(QueryError::Signature(_))
        ));

        let unsigned = raw(200, &[], body);
        assert!(matches!(
            v3_verified(&unsigned, &merchant),
            Err(QueryError::Signature(_))
        ));
    }

    /// A canned HTTP answer: status, headers, body.
    type Canned = (u16, Vec<(&'static str, String)>, Vec<u8>);

    /// A one-request-per-connection HTTP responder: answers `responses` in order (the last
    /// one repeated); `None` never answers. Returns its base URL and the request count.
    async fn responder(responses: Vec<Option<Canned>>) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let response = responses[n.min(responses.len() - 1)].clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    let _ = stream.read(&mut buffer).await;
                    let Some((status, headers, body)) = response else {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    };
                    let mut head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                        body.len()
                    );
                    for (name, value) in headers {
                        head.push_str(&format!("{name}: {value}\r\n"));
                    }
                    head.push_str("\r\n");
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(&body).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        (url, hits)
    }

    /// The answer of a query that must have found its record.
    fn answered(found: Result<Found, QueryError>) -> Answer {
        match found.expect("answered") {
            Found::Answer(answer) => answer,
            Found::NotFound => panic!("expected an answer"),
        }
    }

    /// Asks about the order `o1` of appid `wx`, the one the canned answers here are about,
    /// of a responder giving `responses` with a client timing out after `timeout_ms`: the
    /// result and the requests it took.
    async fn query_o1(
        responses: Vec<Option<Canned>>,
        merchant: &Merchant,
        timeout_ms: u64,
    ) -> (Result<Found, QueryError>, usize) {
        let (url, hits) = responder(responses).await;
        let limiter = RateLimiter::per_second(1_000);
        let of = OrderOf::direct("wx");
        let result = client(&url, timeout_ms)
            .query(Record::Order, merchant, of, "o1", &limiter)
            .await;
        (result, hits.load(Ordering::SeqCst))
    }

    fn client(url: &str, timeout_ms: u64) -> QueryClient {
        QueryClient::new(&WechatpaySettings {
            api_base: url.to_owned(),
            request_timeout_ms: timeout_ms,
        })
        .expect("client")
    }

    fn v2_order_body(out_trade_no: &str, trade_state: &str) -> Vec<u8> {
        let pairs = order_answer(out_trade_no, trade_state);
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        signed_v2(&borrowed, KEY)
    }

    #[tokio::test]
    async fn retries_5xx_then_succeeds() {
        let error = Some((500, vec![], b"{}".to_vec()));
        let ok = Some((
            200,
            vec![("Content-Type", "text/plain".to_owned())],
            v2_order_body("o1", "SUCCESS"),
        ));
        let (url, hits) = responder(vec![error.clone(), error, ok]).await;
        let limiter = RateLimiter::per_second(1_000);
        let of = OrderOf::direct("wxd930ea5d5a258f4f");
        let found = client(&url, 2_000)
            .query(Record::Order, &v2_merchant(), of, "o1", &limiter)
            .await;
        let answer = answered(found);
        assert_eq!(answer.state, TradeState::Success.as_str());
        assert_eq!(answer.wechatpay, None);
        assert_eq!(answer.body, v2_order_body("o1", "SUCCESS"));
        assert_eq!(answer.content_type.as_deref(), Some("text/plain"));
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_and_does_not_retry_4xx() {
        let retry_at_once = vec![("Retry-After", "0".to_owned())];
        let (result, hits) = query_o1(
            vec![Some((429, retry_at_once, vec![]))],
            &v2_merchant(),
            2_000,
        )
        .await;
        assert!(matches!(result, Err(QueryError::Status(429))), "{result:?}");
        assert_eq!(hits, MAX_ATTEMPTS as usize);

        let (merchant, _) = v3_merchant();
        let sign_error = br#"{"code":"SIGN_ERROR"}"#.to_vec();
        let (result, hits) =
            query_o1(vec![Some((401, vec![], sign_error))], &merchant, 2_000).await;
        assert!(matches!(result, Err(QueryError::Status(401))), "{result:?}");
        assert_eq!(hits, 1);

        let not_exist = br#"{"code":"ORDER_NOT_EXIST"}"#.to_vec();
        let (result, _) = query_o1(vec![Some((404, vec![], not_exist))], &merchant, 2_000).await;
        assert!(matches!(result, Ok(Found::NotFound)), "{result:?}");
    }

    #[tokio::test]
    async fn times_out_and_reports_transport_errors() {
        let (result, hits) = query_o1(vec![None], &v2_merchant(), 150).await;
        assert!(
            matches!(&result, Err(QueryError::Transport(text)) if text.starts_with("timeout")),
            "{result:?}"
        );
        assert_eq!(hits, MAX_ATTEMPTS as usize);
    }

    /// The v2 merchant's order query about `o1` of `of`, answered by `answer`.
    async fn v2_order_query(answer: Option<Canned>, of: OrderOf<'_>) -> Result<Found, QueryError> {
        let (url, _) = responder(vec![answer]).await;
        let limiter = RateLimiter::per_second(1_000);
        client(&url, 2_000)
            .query(Record::Order, &v2_merchant(), of, "o1", &limiter)
            .await
    }

    #[tokio::test]
    async fn v2_answer_about_another_order_is_rejected() {
        let ok = Some((200, vec![], v2_order_body("someone-else", "SUCCESS")));
        let result = v2_order_query(ok, OrderOf::direct("wx")).await;
        assert!(
            matches!(result, Err(QueryError::Mismatch("order"))),
            "{result:?}"
        );
    }

    /// A provider's v2 order query names its sub-merchant; the answer must be about that one.
    #[tokio::test]
    async fn v2_partner_answer_must_be_about_the_sub_merchant_asked_about() {
        let answer = |sub_mch_id: Option<&str>| {
            let mut pairs = order_answer("o1", "SUCCESS");
            pairs.extend(sub_mch_id.map(|sub| ("sub_mch_id", sub.to_owned())));
            let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            Some((200, vec![], signed_v2(&borrowed, KEY)))
        };
        let asked = OrderOf {
            appid: "wx3333333333333333",
            sub_mch_id: "1900000201",
        };
        for (named, ok) in [
            (Some("1900000201"), true),
            (Some("1900000202"), false),
            (None, false),
        ] {
            let result = v2_order_query(answer(named), asked).await;
            assert_eq!(
                matches!(result, Ok(Found::Answer(_))),
                ok,
                "{named:?}: {result:?}"
            );
        }
        // And a direct merchant's answer naming a sub-merchant is not about its order.
        let result = v2_order_query(answer(Some("1900000201")), OrderOf::direct("wx")).await;
        assert!(
            matches!(result, Err(QueryError::Mismatch("merchant"))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn v3_answer_is_kept_byte_for_byte_with_its_headers() {
        let (merchant, platform) = v3_merchant();
        let body =
            br#"{"appid":"wx","mchid":"1900000109","out_trade_no":"o1","trade_state":"NOTPAY"}"#
                .to_vec();
        let headers = v3_headers(&platform, chrono::Utc::now().timestamp(), &body);
        let answer = vec![Some((200, headers.clone(), body.clone()))];
        let answer = answered(query_o1(answer, &merchant, 2_000).await.0);
        assert_eq!(answer.state, TradeState::NotPay.as_str());
        assert_eq!(answer.body, body);
        let wechatpay = answer.wechatpay.expect("v3 headers kept");
        assert_eq!(wechatpay.signature, headers[2].1);
    }

    /// The combine query answers about the combine payment asked, of the merchant asking;
    /// API v2 has no combine query.
    #[tokio::test]
    async fn combine_answers_are_verified_and_about_the_combine_payment_asked() {
        let (merchant, platform) = v3_merchant();
        let answer = |combine_mchid: &str, number: &str| {
            let body = serde_json::json!({
                "combine_appid": "wx", "combine_mchid": combine_mchid,
                "combine_out_trade_no": number,
                "sub_orders": [
                    {"mchid": MCH_ID, "out_trade_no": "a", "trade_state": "SUCCESS",
                     "transaction_id": "4200a", "amount": {"total_amount": 1, "currency": "CNY"}},
                    {"mchid": MCH_ID, "out_trade_no": "b", "trade_state": "NOTPAY"}
                ]
            })
            .to_string()
            .into_bytes();
            let headers = v3_headers(&platform, chrono::Utc::now().timestamp(), &body);
            Some((200, headers, body))
        };
        let ask = async |merchant: &Merchant, canned| {
            let (url, _) = responder(vec![canned]).await;
            let limiter = RateLimiter::per_second(1_000);
            client(&url, 2_000)
                .query_combine(merchant, "c1", &limiter)
                .await
        };
        let found = answered(ask(&merchant, answer(MCH_ID, "c1")).await);
        assert_eq!(found.state, "SUCCESS,NOTPAY");
        assert!(found.wechatpay.is_some());
        let other_merchant = ask(&merchant, answer("1900000999", "c1")).await;
        assert!(
            matches!(other_merchant, Err(QueryError::Mismatch("merchant"))),
            "{other_merchant:?}"
        );
        let other_number = ask(&merchant, answer(MCH_ID, "c2")).await;
        assert!(
            matches!(other_number, Err(QueryError::Mismatch("order"))),
            "{other_number:?}"
        );
        let v2 = ask(&v2_merchant(), answer(MCH_ID, "c1")).await;
        assert!(matches!(v2, Err(QueryError::Client(_))), "{v2:?}");
    }

    #[test]
    fn encodes_path_components() {
        assert_eq!(
            encode_component("1217752501201407033233368018"),
            "1217752501201407033233368018"
        );
        assert_eq!(encode_component("a_b-c.d~e"), "a_b-c.d~e");
        assert_eq!(encode_component("a|b*c@d/e?f"), "a%7Cb%2Ac%40d%2Fe%3Ff");
        assert_eq!(encode_component("单"), "%E5%8D%95");
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        for attempt in 1..=20 {
            let delay = backoff(attempt);
            let base = BACKOFF_BASE.saturating_mul(1 << (attempt - 1).min(8));
            assert!(
                delay >= base && delay <= base + base / 2,
                "{attempt}: {delay:?}"
            );
        }
        assert!(backoff(1) < Duration::from_millis(301));
    }

    #[test]
    fn retries_only_unavailability() {
        assert!(retryable_status(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(retryable_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(retryable_status(StatusCode::TOO_MANY_REQUESTS));
        assert!(!retryable_status(StatusCode::UNAUTHORIZED));
        assert!(!retryable_status(StatusCode::NOT_FOUND));
        assert!(!retryable_status(StatusCode::OK));
    }

    #[test]
    fn nonces_are_random_alphanumerics() {
        let (a, b) = (nonce(), nonce());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
