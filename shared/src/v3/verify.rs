//! Verification of the signature of a v3 notification (and of a v3 API response, which is
//! signed the same way).
//!
//! Rules: <https://pay.weixin.qq.com/docs/merchant/development/interface-rules/signature-verification.html>
//! - the signed message is `Wechatpay-Timestamp\nWechatpay-Nonce\nbody\n`;
//! - the key is the platform certificate or WeChat Pay public key named by `Wechatpay-Serial`;
//! - a timestamp more than 5 minutes away from now is rejected (replay protection);
//! - a `Wechatpay-Signature` starting with `WECHATPAY/SIGNTEST/` is a probe WeChat Pay sends
//!   to check that the merchant verifies signatures: it must fail.

pub use super::error::VerifyError;
use super::headers::{WechatpayHeaders, SIGNATURE_TYPE_RSA};
use super::keys::{sign_sha256_rsa, verify_sha256_rsa, PlatformKeys, PrivateKey, PublicKey};

/// Largest accepted distance, in seconds, between `Wechatpay-Timestamp` and our clock, in
/// either direction (WeChat Pay's documented 5 minutes).
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// Prefix of the probe signatures WeChat Pay sends to check that the merchant verifies.
pub const PROBE_SIGNATURE_PREFIX: &str = "WECHATPAY/SIGNTEST/";

/// Whether (and against which clock) the timestamp is checked. The clock is injected so that
/// tests are deterministic. The gateway enforces; the worker skips, because a message
/// re-delivered from the queue is legitimately old and was checked at the door.
#[derive(Debug, Clone, Copy)]
pub enum TimestampCheck {
    /// Reject timestamps more than [`MAX_CLOCK_SKEW_SECS`] away from `now_unix`.
    Enforce {
        /// Current unix time in seconds.
        now_unix: i64,
    },
    /// Do not look at the clock (the timestamp must still be well-formed).
    Skip,
}

impl TimestampCheck {
    /// Enforce against the system clock.
    pub fn now() -> Self {
        Self::Enforce {
            now_unix: chrono::Utc::now().timestamp(),
        }
    }
}

/// The message WeChat Pay signs: `timestamp\nnonce\nbody\n` (body as raw bytes).
pub fn signed_message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(timestamp.len() + nonce.len() + body.len() + 3);
    m.extend_from_slice(timestamp.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(nonce.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body);
    m.push(b'\n');
    m
}

/// Checks a timestamp string (unix seconds) against `check`.
pub fn check_timestamp(timestamp: &str, check: TimestampCheck) -> Result<(), VerifyError> {
    let ts = super::headers::parse_timestamp(timestamp).ok_or(VerifyError::BadTimestamp)?;
    if let TimestampCheck::Enforce { now_unix } = check {
        let skew_secs = now_unix.saturating_sub(ts);
        if skew_secs.unsigned_abs() > MAX_CLOCK_SKEW_SECS.unsigned_abs() {
            return Err(VerifyError::StaleTimestamp { skew_secs });
        }
    }
    Ok(())
}

/// Verifies a v3 notification: the probe prefix, the signature type, the serial, the
/// timestamp (per `check`) and the RSA signature of [`signed_message`], in that order, so
/// that the cheap checks run before the RSA operation.
pub fn verify_notification(
    headers: &WechatpayHeaders,
    body: &[u8],
    keys: &PlatformKeys,
    check: TimestampCheck,
) -> Result<(), VerifyError> {
    if headers.signature.starts_with(PROBE_SIGNATURE_PREFIX) {
        return Err(VerifyError::Probe);
    }
    if let Some(t) = &headers.signature_type {
        if t != SIGNATURE_TYPE_RSA {
            return Err(VerifyError::UnsupportedSignatureType(t.clone()));
        }
    }
    let key: &PublicKey = keys
        .get(&headers.serial)
        .ok_or_else(|| VerifyError::UnknownSerial(headers.serial.clone()))?;
    check_timestamp(&headers.timestamp, check)?;
    let message = signed_message(&headers.timestamp, &headers.nonce, body);
    verify_sha256_rsa(key, &message, &headers.signature)
}

/// Signs a notification as WeChat Pay would: the base64 `Wechatpay-Signature` of
/// [`signed_message`]. For the simulator and tests.
pub fn sign_notification(key: &PrivateKey, timestamp: &str, nonce: &str, body: &[u8]) -> String {
    sign_sha256_rsa(key, &signed_message(timestamp, nonce, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_message_layout() {
        assert_eq!(signed_message("1", "n", b"{}"), b"1\nn\n{}\n".to_vec());
        assert_eq!(signed_message("1", "n", b""), b"1\nn\n\n".to_vec());
    }

    #[test]
    fn timestamp_window_is_inclusive_and_symmetric() {
        let now = 1_700_000_000;
        let check = TimestampCheck::Enforce { now_unix: now };
        assert_eq!(check_timestamp(&(now - 300).to_string(), check), Ok(()));
        assert_eq!(check_timestamp(&(now + 300).to_string(), check), Ok(()));
        assert_eq!(
            check_timestamp(&(now - 301).to_string(), check),
            Err(VerifyError::StaleTimestamp { skew_secs: 301 })
        );
        assert_eq!(
            check_timestamp(&(now + 301).to_string(), check),
            Err(VerifyError::StaleTimestamp { skew_secs: -301 })
        );
        assert_eq!(
            check_timestamp("999999999999", TimestampCheck::Skip),
            Ok(())
        );
        assert_eq!(
            check_timestamp("", TimestampCheck::Skip),
            Err(VerifyError::BadTimestamp)
        );
        // Extreme injected clocks do not overflow.
        let far = TimestampCheck::Enforce { now_unix: i64::MIN };
        assert!(matches!(
            check_timestamp("999999999999", far),
            Err(VerifyError::StaleTimestamp { .. })
        ));
    }
}
