//! Platform certificates (平台证书) as `GET /v3/certificates` hands them out.
//!
//! Rules: <https://pay.weixin.qq.com/doc/v3/merchant/4012551764>
//! - the request is signed like any v3 API call ([`super::authorization`]), the answer like
//!   any v3 answer (`Wechatpay-*` headers, [`super::verify`]);
//! - the answer is `{"data":[{"serial_no","effective_time","expire_time",
//!   "encrypt_certificate":{"algorithm":"AEAD_AES_256_GCM","nonce","associated_data",
//!   "ciphertext"}}]}`, each certificate's PEM encrypted with the merchant's APIv3 key
//!   ([`super::aead`]; `associated_data` is `certificate`);
//! - a certificate is used under its own serial number; WeChat Pay keeps several valid
//!   during a rotation, and the newest may sign before a merchant has it.
//!
//! AES-GCM under the APIv3 key authenticates the certificate: only WeChat Pay and the
//! merchant hold that key. That is why a certificate decrypted here may verify the very
//! answer that brought it (the first download, when no platform key is known yet), and
//! why an encrypted certificate may travel through a store nobody trusts.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::aead::{self, AeadError};
use super::error::VerifyError;
use super::headers::WechatpayHeaders;
use super::keys::{certificate_info, KeyError, PlatformKeys, PublicKey};
use super::verify::{verify_notification, TimestampCheck};

/// The path of the download (GET, no query, empty body).
pub const CERTIFICATES_PATH: &str = "/v3/certificates";
/// The only `encrypt_certificate.algorithm` WeChat Pay uses.
pub const ALGORITHM: &str = "AEAD_AES_256_GCM";
/// The `associated_data` WeChat Pay gives certificates.
pub const ASSOCIATED_DATA: &str = "certificate";

/// The answer of `GET /v3/certificates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificatesAnswer {
    pub data: Vec<EncryptedCertificate>,
}

/// One certificate of the answer, still encrypted: what may be stored or passed on as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedCertificate {
    /// The certificate's serial number (upper-case hex), its `Wechatpay-Serial`.
    pub serial_no: String,
    /// RFC 3339, e.g. `2026-11-26T00:05:05+08:00`; informative (the certificate's own
    /// validity is what is checked).
    pub effective_time: String,
    /// RFC 3339; informative, as `effective_time`.
    pub expire_time: String,
    pub encrypt_certificate: EncryptedPem,
}

/// `encrypt_certificate`: the PEM, AES-256-GCM under the APIv3 key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedPem {
    pub algorithm: String,
    pub nonce: String,
    pub associated_data: String,
    /// Base64 of ciphertext ‖ tag.
    pub ciphertext: String,
}

/// A certificate decrypted and checked: its key may verify what WeChat Pay signs under
/// `serial`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformCertificate {
    pub serial: String,
    pub key: PublicKey,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Why a downloaded (or shared) certificate is refused. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("unsupported algorithm {0:?}")]
    Algorithm(String),
    /// Wrong APIv3 key, or a ciphertext that WeChat Pay did not make.
    #[error("does not decrypt: {0}")]
    Decrypt(#[from] AeadError),
    #[error("the plaintext is not a certificate: {0}")]
    NotACertificate(KeyError),
    /// The certificate inside is not the one `serial_no` names.
    #[error("serial_no {serial_no} holds the certificate of serial {certificate}")]
    SerialMismatch {
        serial_no: String,
        certificate: String,
    },
    #[error("not valid yet")]
    NotYetValid,
    #[error("expired")]
    Expired,
}

impl CertificateError {
    /// A short stable code, for metric labels and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Algorithm(_) => "algorithm",
            Self::Decrypt(_) => "decrypt",
            Self::NotACertificate(_) => "not_a_certificate",
            Self::SerialMismatch { .. } => "serial_mismatch",
            Self::NotYetValid => "not_yet_valid",
            Self::Expired => "expired",
        }
    }
}

impl CertificatesAnswer {
    /// Parses the answer's body.
    pub fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

impl EncryptedCertificate {
    /// Decrypts with the merchant's APIv3 key and checks that the certificate is the one
    /// `serial_no` names and that `now` is within its validity.
    pub fn decrypt(
        &self,
        api_v3_key: &[u8],
        now: SystemTime,
    ) -> Result<PlatformCertificate, CertificateError> {
        let sealed = &self.encrypt_certificate;
        if sealed.algorithm != ALGORITHM {
            return Err(CertificateError::Algorithm(
                sealed.algorithm.chars().take(32).collect(),
            ));
        }
        let pem = aead::decrypt(
            api_v3_key,
            &sealed.nonce,
            &sealed.associated_data,
            &sealed.ciphertext,
        )?;
        let pem = String::from_utf8_lossy(&pem);
        let info = certificate_info(&pem).map_err(CertificateError::NotACertificate)?;
        if info.serial != self.serial_no {
            return Err(CertificateError::SerialMismatch {
                serial_no: self.serial_no.chars().take(64).collect(),
                certificate: info.serial,
            });
        }
        if now < info.not_before {
            return Err(CertificateError::NotYetValid);
        }
        if now > info.not_after {
            return Err(CertificateError::Expired);
        }
        Ok(PlatformCertificate {
            serial: info.serial,
            key: info.key,
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }

    /// Encrypts a certificate as WeChat Pay hands it out (serial and times read from the
    /// certificate). For the simulator and tests; `nonce` must never repeat under a key.
    pub fn encrypt(
        api_v3_key: &[u8],
        nonce: &str,
        certificate_pem: &str,
    ) -> Result<EncryptedCertificate, CertificateError> {
        let info = certificate_info(certificate_pem).map_err(CertificateError::NotACertificate)?;
        let ciphertext = aead::encrypt(
            api_v3_key,
            nonce,
            ASSOCIATED_DATA,
            certificate_pem.as_bytes(),
        )?;
        Ok(EncryptedCertificate {
            serial_no: info.serial,
            effective_time: beijing_time(info.not_before),
            expire_time: beijing_time(info.not_after),
            encrypt_certificate: EncryptedPem {
                algorithm: ALGORITHM.to_owned(),
                nonce: nonce.to_owned(),
                associated_data: ASSOCIATED_DATA.to_owned(),
                ciphertext,
            },
        })
    }
}

/// A verified answer of `GET /v3/certificates`.
#[derive(Debug, Clone)]
pub struct Downloaded {
    /// The answer as WeChat Pay sent it (the encrypted certificates, to pass on).
    pub answer: CertificatesAnswer,
    /// The certificates that decrypted and passed their checks.
    pub accepted: Vec<PlatformCertificate>,
    /// The others, by `serial_no`, with why.
    pub refused: Vec<(String, CertificateError)>,
}

/// Why an answer of `GET /v3/certificates` is not used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("answer signature does not verify: {0}")]
    Signature(#[from] VerifyError),
}

/// [`EncryptedCertificate::decrypt`] of each certificate: those that pass, and the others
/// by `serial_no` (at most 64 characters of it) with why.
pub fn decrypt_each(
    certificates: &[EncryptedCertificate],
    api_v3_key: &[u8],
    now: SystemTime,
) -> (Vec<PlatformCertificate>, Vec<(String, CertificateError)>) {
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for certificate in certificates {
        match certificate.decrypt(api_v3_key, now) {
            Ok(decrypted) => accepted.push(decrypted),
            Err(error) => refused.push((certificate.serial_no.chars().take(64).collect(), error)),
        }
    }
    (accepted, refused)
}

/// Checks an answer of `GET /v3/certificates`: decrypts each certificate with the APIv3 key
/// ([`EncryptedCertificate::decrypt`] at `now`), then verifies the answer's signature with
/// the `known` platform keys or, for a serial none of them has, with a certificate of the
/// answer itself: it is authenticated by AES-GCM under the APIv3 key, which only WeChat Pay
/// and the merchant hold, so the very first download (no key known yet) can be verified too.
pub fn verify_download(
    headers: &WechatpayHeaders,
    body: &[u8],
    known: &PlatformKeys,
    api_v3_key: &[u8],
    check: TimestampCheck,
    now: SystemTime,
) -> Result<Downloaded, DownloadError> {
    let answer = CertificatesAnswer::parse(body)
        .map_err(|error| DownloadError::Malformed(error.to_string()))?;
    let (accepted, refused) = decrypt_each(&answer.data, api_v3_key, now);
    let mut keys = known.clone();
    for certificate in &accepted {
        if keys.get(&certificate.serial).is_none() {
            keys.insert_certificate(
                certificate.serial.clone(),
                certificate.key.clone(),
                certificate.not_after,
            );
        }
    }
    verify_notification(headers, body, &keys, check)?;
    Ok(Downloaded {
        answer,
        accepted,
        refused,
    })
}

/// RFC 3339 in Beijing time, as WeChat Pay writes its times.
fn beijing_time(at: SystemTime) -> String {
    let offset = chrono::FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| unreachable!());
    chrono::DateTime::<chrono::Utc>::from(at)
        .with_timezone(&offset)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}
