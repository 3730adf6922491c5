//! Why a v3 signature is rejected: the error of the RSA primitive ([`super::keys`]) and of the
//! notification rules built on it ([`super::verify`], [`super::authorization`]). It lives
//! apart so that those modules take it from here rather than from one another.

/// Why a v3 signature is rejected. All of them mean "answer FAIL, never enqueue".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A `WECHATPAY/SIGNTEST/` probe: it must fail, whatever else it carries.
    #[error("signature probe (WECHATPAY/SIGNTEST/)")]
    Probe,
    /// No configured key has this serial (unknown or already rotated out).
    #[error("unknown platform key serial {0:?}")]
    UnknownSerial(String),
    /// The timestamp is more than
    /// [`MAX_CLOCK_SKEW_SECS`](super::verify::MAX_CLOCK_SKEW_SECS) from now; `skew_secs`
    /// is now − timestamp (positive: in the past).
    #[error("timestamp {skew_secs} s away from now")]
    StaleTimestamp {
        /// now − timestamp, in seconds.
        skew_secs: i64,
    },
    /// The timestamp is not a unix time in seconds.
    #[error("malformed timestamp")]
    BadTimestamp,
    /// `Wechatpay-Signature-Type` is present and not `WECHATPAY2-SHA256-RSA2048`.
    #[error("unsupported signature type {0:?}")]
    UnsupportedSignatureType(String),
    /// The signature is not base64.
    #[error("signature is not base64")]
    BadSignatureEncoding,
    /// The signature does not match the message under the key.
    #[error("signature mismatch")]
    SignatureMismatch,
}

impl VerifyError {
    /// A short stable code, for metric labels and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Probe => "probe",
            Self::UnknownSerial(_) => "unknown_serial",
            Self::StaleTimestamp { .. } => "stale_timestamp",
            Self::BadTimestamp => "bad_timestamp",
            Self::UnsupportedSignatureType(_) => "unsupported_signature_type",
            Self::BadSignatureEncoding => "bad_signature_encoding",
            Self::SignatureMismatch => "signature_mismatch",
        }
    }
}
