//! WeChat Pay API v2 notifications (XML).
//!
//! - [`xml`]: the flat `<xml>` documents, parsed strictly (no DOCTYPE, no entities, bounded).
//! - [`sign`](mod@sign): the MD5 / HMAC-SHA256 signatures (签名算法).
//! - [`pay`]: the typed payment result notification (支付结果通知).
//! - [`refund`]: the refund result notification (退款结果通知) and its AES-256-ECB `req_info`.
//!
//! Reference: <https://pay.weixin.qq.com/wiki/doc/api/index.html>.

pub mod pay;
pub mod refund;
pub mod sign;
pub mod xml;

pub use pay::PayNotification;
pub use refund::{
    decrypt_req_info, encrypt_req_info, req_info_key, RefundCryptoError, RefundEnvelope, RefundInfo,
};
pub use sign::{sign, verify, SignError, SignType};
pub use xml::{XmlError, XmlFields};

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};

/// The `return_code` / `result_code` value of success.
pub const SUCCESS: &str = "SUCCESS";

/// Parses an amount in fen (分): ASCII digits only, so `-1`, `+1`, `1.00` and `1e2` are
/// all rejected (v2 amounts are non-negative integers; a float would lose money).
pub(crate) fn parse_fen(field: &'static str, value: &str) -> Result<i64, XmlError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(XmlError::InvalidField {
            field,
            reason: "not a non-negative integer amount in fen".to_owned(),
        });
    }
    value.parse::<i64>().map_err(|_| XmlError::InvalidField {
        field,
        reason: "amount out of range".to_owned(),
    })
}

/// An optional amount: absent or empty is `None`, anything else must be valid.
pub(crate) fn parse_optional_fen(
    fields: &XmlFields,
    field: &'static str,
) -> Result<Option<i64>, XmlError> {
    match fields.get(field) {
        Some(v) if !v.is_empty() => parse_fen(field, v).map(Some),
        _ => Ok(None),
    }
}

/// A field required only when `required` (business fields are required when
/// `return_code` is `SUCCESS`, and may be absent from a `FAIL` envelope); an absent
/// optional one reads as empty.
pub(crate) fn text_if(
    fields: &XmlFields,
    required: bool,
    name: &'static str,
) -> Result<String, XmlError> {
    if required {
        fields.require(name).map(str::to_owned)
    } else {
        Ok(fields.get(name).unwrap_or_default().to_owned())
    }
}

/// An optional text field: absent or empty is `None`.
pub(crate) fn optional(fields: &XmlFields, field: &str) -> Option<String> {
    fields
        .get(field)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Parses a local time of Beijing (UTC+8, no daylight saving), the zone of every v2
/// timestamp, in the `chrono` `format`; `expected_len` guards against the leniency of
/// `%Y` (which accepts more than four digits).
pub(crate) fn parse_beijing_time(
    value: &str,
    format: &str,
    expected_len: usize,
) -> Option<DateTime<Utc>> {
    if value.len() != expected_len {
        return None;
    }
    let naive = NaiveDateTime::parse_from_str(value, format).ok()?;
    let beijing = FixedOffset::east_opt(8 * 3600)?;
    beijing
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fen_accepts_digits_only() {
        assert_eq!(parse_fen("total_fee", "0"), Ok(0));
        assert_eq!(parse_fen("total_fee", "0101"), Ok(101));
        for bad in [
            "",
            "-1",
            "+1",
            "1.00",
            "1e2",
            " 1",
            "１",
            "99999999999999999999",
        ] {
            assert!(
                matches!(
                    parse_fen("total_fee", bad),
                    Err(XmlError::InvalidField {
                        field: "total_fee",
                        ..
                    })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn beijing_time_is_utc_plus_8() {
        let t = parse_beijing_time("20240102030405", "%Y%m%d%H%M%S", 14).expect("valid");
        assert_eq!(t.to_rfc3339(), "2024-01-01T19:04:05+00:00");
        assert_eq!(
            parse_beijing_time("2024010203040", "%Y%m%d%H%M%S", 14),
            None
        );
        assert_eq!(
            parse_beijing_time("20241302030405", "%Y%m%d%H%M%S", 14),
            None
        );
    }
}
