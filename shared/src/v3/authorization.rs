//! The `Authorization` header of v3 API calls (the reconciler's order and refund queries),
//! and its verification (the simulator plays WeChat Pay's side).
//!
//! Rules: <https://pay.weixin.qq.com/docs/merchant/development/interface-rules/signature-generation.html>
//! - signed message: `METHOD\nURL\ntimestamp\nnonce\nbody\n`, where URL is the absolute path
//!   with its query string (`/v3/pay/transactions/out-trade-no/1217752501201407033233368018?mchid=1230000109`)
//!   and body is empty for GET;
//! - header: `WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",signature="…",timestamp="…",serial_no="…"`,
//!   where `serial_no` is the serial of the merchant's API certificate.

use super::error::VerifyError;
use super::headers::{is_timestamp, WechatpayHeaders};
use super::keys::{sign_sha256_rsa, verify_sha256_rsa, PlatformKeys, PrivateKey, PublicKey};
use super::verify::TimestampCheck;

/// The authentication schema of the `Authorization` header.
pub const AUTH_SCHEMA: &str = "WECHATPAY2-SHA256-RSA2048";

/// The parameters of an `Authorization` header, values as written (unescaped quotes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationParams {
    /// Merchant id.
    pub mchid: String,
    /// Random string of the request.
    pub nonce_str: String,
    /// Base64 RSA signature of [`request_message`].
    pub signature: String,
    /// Unix seconds, as written.
    pub timestamp: String,
    /// Serial of the merchant API certificate whose key signed.
    pub serial_no: String,
}

/// Why an `Authorization` header cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizationError {
    /// The header does not start with `WECHATPAY2-SHA256-RSA2048 `.
    #[error("authorization schema is not WECHATPAY2-SHA256-RSA2048")]
    Schema,
    /// The parameter list is not comma-separated `key="value"` pairs.
    #[error("malformed authorization parameters")]
    Malformed,
    /// A required parameter is absent.
    #[error("authorization parameter {0} is missing")]
    Missing(&'static str),
    /// A parameter appears twice (ambiguous: rejected).
    #[error("authorization parameter {0} appears twice")]
    Duplicate(String),
}

fn message_with_ts(
    method: &str,
    canonical_url: &str,
    ts: &str,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(
        method.len() + canonical_url.len() + ts.len() + nonce.len() + body.len() + 5,
    );
    for part in [
        method.as_bytes(),
        canonical_url.as_bytes(),
        ts.as_bytes(),
        nonce.as_bytes(),
        body,
    ] {
        m.extend_from_slice(part);
        m.push(b'\n');
    }
    m
}

/// The message a v3 API request signs: `METHOD\n/url?query\ntimestamp\nnonce\nbody\n`.
/// `method` is upper case (`GET`, `POST`); `canonical_url` is the path and query, without
/// scheme and host.
pub fn request_message(
    method: &str,
    canonical_url: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    message_with_ts(method, canonical_url, &timestamp.to_string(), nonce, body)
}

/// Builds the `Authorization` header value of a v3 API request signed with the merchant key.
#[allow(clippy::too_many_arguments)]
pub fn authorization_header(
    mchid: &str,
    serial_no: &str,
    key: &PrivateKey,
    method: &str,
    canonical_url: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> String {
    let signature = sign_sha256_rsa(
        key,
        &request_message(method, canonical_url, timestamp, nonce, body),
    );
    format!(
        "{AUTH_SCHEMA} mchid=\"{mchid}\",nonce_str=\"{nonce}\",signature=\"{signature}\",timestamp=\"{timestamp}\",serial_no=\"{serial_no}\""
    )
}

/// Parses an `Authorization` header: the schema, then comma-separated `key="value"` pairs in
/// any order (spaces around separators tolerated; unknown keys ignored; duplicates rejected).
pub fn parse_authorization(header: &str) -> Result<AuthorizationParams, AuthorizationError> {
    let rest = header
        .trim()
        .strip_prefix(AUTH_SCHEMA)
        .ok_or(AuthorizationError::Schema)?;
    if !rest.starts_with([' ', '\t']) {
        return Err(AuthorizationError::Schema);
    }
    let mut fields: [Option<String>; 5] = Default::default();
    const NAMES: [&str; 5] = ["mchid", "nonce_str", "signature", "timestamp", "serial_no"];

    let mut rest = rest.trim_start();
    loop {
        let eq = rest.find('=').ok_or(AuthorizationError::Malformed)?;
        let name = rest[..eq].trim();
        if name.is_empty() || name.contains([',', '"', ' ']) {
            return Err(AuthorizationError::Malformed);
        }
        let after = rest[eq + 1..].trim_start();
        let quoted = after
            .strip_prefix('"')
            .ok_or(AuthorizationError::Malformed)?;
        let close = quoted.find('"').ok_or(AuthorizationError::Malformed)?;
        let value = &quoted[..close];
        if let Some(i) = NAMES.iter().position(|n| *n == name) {
            if fields[i].is_some() {
                return Err(AuthorizationError::Duplicate(name.to_owned()));
            }
            fields[i] = Some(value.to_owned());
        }
        let tail = quoted[close + 1..].trim_start();
        if tail.is_empty() {
            break;
        }
        rest = tail
            .strip_prefix(',')
            .ok_or(AuthorizationError::Malformed)?
            .trim_start();
    }

    let [mchid, nonce_str, signature, timestamp, serial_no] = fields;
    Ok(AuthorizationParams {
        mchid: mchid.ok_or(AuthorizationError::Missing("mchid"))?,
        nonce_str: nonce_str.ok_or(AuthorizationError::Missing("nonce_str"))?,
        signature: signature.ok_or(AuthorizationError::Missing("signature"))?,
        timestamp: timestamp.ok_or(AuthorizationError::Missing("timestamp"))?,
        serial_no: serial_no.ok_or(AuthorizationError::Missing("serial_no"))?,
    })
}

/// Verifies the signature of a parsed `Authorization` against the merchant's public key and
/// the request. The timestamp must be well-formed; its freshness is the caller's choice (see
/// [`super::verify::check_timestamp`]).
pub fn verify_authorization(
    params: &AuthorizationParams,
    key: &PublicKey,
    method: &str,
    canonical_url: &str,
    body: &[u8],
) -> Result<(), VerifyError> {
    if !is_timestamp(&params.timestamp) {
        return Err(VerifyError::BadTimestamp);
    }
    let message = message_with_ts(
        method,
        canonical_url,
        &params.timestamp,
        &params.nonce_str,
        body,
    );
    verify_sha256_rsa(key, &message, &params.signature)
}

/// Verifies a v3 API *response* (the reconciler's query results): WeChat Pay signs responses
/// with the same `Wechatpay-*` headers and the same `timestamp\nnonce\nbody\n` message as
/// notifications, so the same rules apply, probes included.
/// <https://pay.weixin.qq.com/docs/merchant/development/interface-rules/signature-verification.html>
pub fn verify_response(
    headers: &WechatpayHeaders,
    body: &[u8],
    keys: &PlatformKeys,
    check: TimestampCheck,
) -> Result<(), VerifyError> {
    super::verify::verify_notification(headers, body, keys, check)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "uOVRnA4qG/MNnYzdQxJanN+zU+lTgIcnU9BxGw5dKjK+VdEUz2FeIoC+D5sB/LN+nGzX3hfZg6r5wT1pl2ZobmIc6p0ldN7J6yDgUzbX8Uk3sD4a4eZVPTBvqNDoUqcYMlZ9uuDdCvNv4TM3c1WzsXUrExwVkI1XO5jCNbgDJ25nkT/c1gIFvqoogl7MdSFGc4W4xZsqCItnqbypR3RuGIlR9h9vlRsy7zJR9PBI83X8alLDIfR1ukt1P7tMnmogZ0cuDY8cZsd8ZlCgLadmvej58SLsIkVxFJ8XmUgx9tAYlINxIRB5lRyNHVNL8SzTJxyVkRcbLjvZ6r+g+8FBDw==";

    #[test]
    fn parses_official_example_in_any_order_and_spacing() {
        let header = format!(
            "WECHATPAY2-SHA256-RSA2048 mchid=\"1900000001\",nonce_str=\"593BEC0C930BF1AFEB40B4A08C8FB242\",signature=\"{SIG}\",timestamp=\"1554208460\",serial_no=\"1DDE55AD98ED71D6EDD4A4A16996DE7B47773A8C\""
        );
        let p = parse_authorization(&header).unwrap();
        assert_eq!(p.mchid, "1900000001");
        assert_eq!(p.signature, SIG);
        assert_eq!(p.timestamp, "1554208460");
        let reordered = format!(
            "WECHATPAY2-SHA256-RSA2048  serial_no=\"1DDE55AD98ED71D6EDD4A4A16996DE7B47773A8C\" , timestamp=\"1554208460\",signature=\"{SIG}\", extra=\"x\",nonce_str=\"593BEC0C930BF1AFEB40B4A08C8FB242\",mchid=\"1900000001\""
        );
        assert_eq!(parse_authorization(&reordered).unwrap(), p);
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(
            parse_authorization("Bearer x"),
            Err(AuthorizationError::Schema)
        );
        assert_eq!(
            parse_authorization("WECHATPAY2-SHA256-RSA2048mchid=\"1\""),
            Err(AuthorizationError::Schema)
        );
        assert_eq!(
            parse_authorization("WECHATPAY2-SHA256-RSA2048 mchid=1"),
            Err(AuthorizationError::Malformed)
        );
        assert_eq!(
            parse_authorization("WECHATPAY2-SHA256-RSA2048 mchid=\"1"),
            Err(AuthorizationError::Malformed)
        );
        assert_eq!(
            parse_authorization("WECHATPAY2-SHA256-RSA2048 mchid=\"1\" nonce_str=\"2\""),
            Err(AuthorizationError::Malformed)
        );
        assert_eq!(
            parse_authorization("WECHATPAY2-SHA256-RSA2048 mchid=\"1\",mchid=\"2\""),
            Err(AuthorizationError::Duplicate("mchid".into()))
        );
        assert_eq!(
            parse_authorization("WECHATPAY2-SHA256-RSA2048 mchid=\"1\",nonce_str=\"n\",signature=\"s\",timestamp=\"1\""),
            Err(AuthorizationError::Missing("serial_no"))
        );
    }

    #[test]
    fn request_message_layout() {
        assert_eq!(
            request_message(
                "GET",
                "/v3/certificates",
                1554208460,
                "593BEC0C930BF1AFEB40B4A08C8FB242",
                b""
            ),
            b"GET\n/v3/certificates\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n".to_vec()
        );
    }
}
