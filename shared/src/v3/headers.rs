//! The `Wechatpay-*` HTTP headers that carry the signature of a v3 notification or response.
//!
//! Rules: <https://pay.weixin.qq.com/docs/merchant/development/interface-rules/signature-verification.html>.
//! The gateway reads them from the HTTP request and copies them into the queue message (see
//! [`WechatpayHeaders::pairs`]); the worker rebuilds them from the message with
//! [`WechatpayHeaders::from_lookup`], so both sides apply the same rules.

/// Unix time (seconds) at which WeChat Pay signed the message; part of the signed message.
pub const HEADER_TIMESTAMP: &str = "Wechatpay-Timestamp";
/// Random string chosen by WeChat Pay; part of the signed message.
pub const HEADER_NONCE: &str = "Wechatpay-Nonce";
/// Base64 RSA signature of `timestamp\nnonce\nbody\n`.
pub const HEADER_SIGNATURE: &str = "Wechatpay-Signature";
/// Serial of the platform certificate or WeChat Pay public key (`PUB_KEY_ID_…`) that signed.
pub const HEADER_SERIAL: &str = "Wechatpay-Serial";
/// Signature algorithm; WeChat Pay only uses [`SIGNATURE_TYPE_RSA`] for merchants in mainland China.
pub const HEADER_SIGNATURE_TYPE: &str = "Wechatpay-Signature-Type";
/// The only signature type we accept: RSA PKCS#1 v1.5 with SHA-256, 2048-bit keys.
pub const SIGNATURE_TYPE_RSA: &str = "WECHATPAY2-SHA256-RSA2048";

/// Why the `Wechatpay-*` headers of a request cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A required header is absent or empty (an unsigned request, never a real notification).
    #[error("missing header {0}")]
    Missing(&'static str),
    /// `Wechatpay-Timestamp` is not a decimal number of seconds.
    #[error("Wechatpay-Timestamp is not a unix timestamp in seconds")]
    BadTimestamp,
}

/// The signature headers of one v3 notification (or API response), values exactly as received.
///
/// The values are kept as strings, not parsed, because the timestamp and nonce are signed
/// byte for byte: re-formatting them would break verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WechatpayHeaders {
    /// `Wechatpay-Timestamp`: ASCII digits (checked by [`WechatpayHeaders::from_lookup`]).
    pub timestamp: String,
    /// `Wechatpay-Nonce`.
    pub nonce: String,
    /// `Wechatpay-Signature`: base64, or a `WECHATPAY/SIGNTEST/` probe.
    pub signature: String,
    /// `Wechatpay-Serial`: which platform key signed.
    pub serial: String,
    /// `Wechatpay-Signature-Type`: optional; when absent RSA is implied.
    pub signature_type: Option<String>,
}

/// Longest accepted timestamp: 12 digits covers every second until the year 33658 and keeps
/// the value far from `i64` overflow.
const MAX_TIMESTAMP_DIGITS: usize = 12;

impl WechatpayHeaders {
    /// Collects the headers through `get`, which looks a header up by its canonical name
    /// (the caller does the case-insensitive matching of its HTTP library).
    ///
    /// A missing or empty required header gives [`HeaderError::Missing`] with its name; a
    /// timestamp that is not 1 to 12 ASCII digits gives [`HeaderError::BadTimestamp`]. An
    /// empty `Wechatpay-Signature-Type` counts as absent.
    pub fn from_lookup<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Self, HeaderError> {
        let required = |name: &'static str| -> Result<String, HeaderError> {
            match get(name) {
                Some(v) if !v.is_empty() => Ok(v.to_owned()),
                _ => Err(HeaderError::Missing(name)),
            }
        };
        let timestamp = required(HEADER_TIMESTAMP)?;
        if !is_timestamp(&timestamp) {
            return Err(HeaderError::BadTimestamp);
        }
        Ok(Self {
            timestamp,
            nonce: required(HEADER_NONCE)?,
            signature: required(HEADER_SIGNATURE)?,
            serial: required(HEADER_SERIAL)?,
            signature_type: get(HEADER_SIGNATURE_TYPE)
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
        })
    }

    /// The timestamp as unix seconds.
    pub fn timestamp_secs(&self) -> Result<i64, HeaderError> {
        parse_timestamp(&self.timestamp).ok_or(HeaderError::BadTimestamp)
    }

    /// `(canonical name, value)` of every present header, in a fixed order, for copying into
    /// the queue message.
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![
            (HEADER_TIMESTAMP, self.timestamp.as_str()),
            (HEADER_NONCE, self.nonce.as_str()),
            (HEADER_SIGNATURE, self.signature.as_str()),
            (HEADER_SERIAL, self.serial.as_str()),
        ];
        if let Some(t) = &self.signature_type {
            out.push((HEADER_SIGNATURE_TYPE, t.as_str()));
        }
        out
    }
}

/// 1 to [`MAX_TIMESTAMP_DIGITS`] ASCII digits.
pub(crate) fn is_timestamp(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_TIMESTAMP_DIGITS && s.bytes().all(|b| b.is_ascii_digit())
}

/// Parses a timestamp that passes [`is_timestamp`]; `None` otherwise.
pub(crate) fn parse_timestamp(s: &str) -> Option<i64> {
    if is_timestamp(s) {
        s.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    #[test]
    fn reads_all_headers_and_round_trips_pairs() {
        let given = [
            (HEADER_TIMESTAMP, "1554208460"),
            (HEADER_NONCE, "593BEC0C930BF1AFEB40B4A08C8FB242"),
            (HEADER_SIGNATURE, "c2lnbmF0dXJl"),
            (HEADER_SERIAL, "PUB_KEY_ID_0114232134912410000000000000"),
            (HEADER_SIGNATURE_TYPE, SIGNATURE_TYPE_RSA),
        ];
        let h = WechatpayHeaders::from_lookup(lookup(&given)).unwrap();
        assert_eq!(h.timestamp_secs(), Ok(1_554_208_460));
        assert_eq!(h.signature_type.as_deref(), Some(SIGNATURE_TYPE_RSA));
        assert_eq!(h.pairs(), given.to_vec());
        let again = WechatpayHeaders::from_lookup(lookup(&h.pairs())).unwrap();
        assert_eq!(again, h);
    }

    #[test]
    fn missing_or_empty_required_header_is_named() {
        let complete = [
            (HEADER_TIMESTAMP, "1"),
            (HEADER_NONCE, "n"),
            (HEADER_SIGNATURE, "s"),
            (HEADER_SERIAL, "S"),
        ];
        for (name, _) in complete {
            let empty = complete.map(|(k, v)| (k, if k == name { "" } else { v }));
            let missing: Vec<_> = complete.into_iter().filter(|&(k, _)| k != name).collect();
            for given in [&empty[..], &missing[..]] {
                assert_eq!(
                    WechatpayHeaders::from_lookup(lookup(given)),
                    Err(HeaderError::Missing(name)),
                    "{given:?}"
                );
            }
        }
    }

    #[test]
    fn signature_type_is_optional_and_empty_means_absent() {
        let given = [
            (HEADER_TIMESTAMP, "1"),
            (HEADER_NONCE, "n"),
            (HEADER_SIGNATURE, "s"),
            (HEADER_SERIAL, "S"),
            (HEADER_SIGNATURE_TYPE, ""),
        ];
        let h = WechatpayHeaders::from_lookup(lookup(&given)).unwrap();
        assert_eq!(h.signature_type, None);
        assert_eq!(h.pairs().len(), 4);
    }

    #[test]
    fn timestamp_must_be_digits() {
        for bad in ["-1", "+1", " 1", "1.5", "0x10", "abc", "1234567890123"] {
            let given = [
                (HEADER_TIMESTAMP, bad),
                (HEADER_NONCE, "n"),
                (HEADER_SIGNATURE, "s"),
                (HEADER_SERIAL, "S"),
            ];
            assert_eq!(
                WechatpayHeaders::from_lookup(lookup(&given)),
                Err(HeaderError::BadTimestamp),
                "{bad:?}"
            );
        }
        let h = WechatpayHeaders {
            timestamp: "x".into(),
            nonce: "n".into(),
            signature: "s".into(),
            serial: "S".into(),
            signature_type: None,
        };
        assert_eq!(h.timestamp_secs(), Err(HeaderError::BadTimestamp));
    }
}
