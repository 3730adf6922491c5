//! RSA keys of API v3: loading the platform keys (certificates or WeChat Pay public keys) and
//! the merchant key, and the RSA PKCS#1 v1.5 SHA-256 signature scheme
//! (`WECHATPAY2-SHA256-RSA2048`).
//!
//! WeChat Pay signs with either a platform certificate (平台证书, serial = the certificate's
//! serial number in hex) or, since 2024, a WeChat Pay public key (微信支付公钥, serial
//! `PUB_KEY_ID_…`). Both are RSA-2048; during a rotation several are valid at once, so the
//! keys are kept by serial in [`PlatformKeys`].
//! <https://pay.weixin.qq.com/docs/merchant/development/interface-rules/signature-verification.html>

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rsa::pkcs1::der::zeroize::Zeroizing;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::signature::{RandomizedSigner, SignatureEncoding, Verifier};
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;
use x509_cert::der::{Decode, Encode};

use super::verify::VerifyError;

/// Why a key could not be loaded or generated. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text holds no `-----BEGIN …-----` / `-----END …-----` block.
    #[error("no PEM block found")]
    NoPem,
    /// A PEM block of a kind this function does not load (e.g. a private key given where a
    /// public key is expected, or an EC key).
    #[error("unsupported PEM label {0:?}")]
    UnsupportedLabel(String),
    /// The PEM block has a supported label but its content is not a valid RSA key.
    #[error("invalid {label} PEM: {reason}")]
    Invalid {
        /// The PEM label, e.g. `CERTIFICATE`.
        label: String,
        /// What the decoder said.
        reason: String,
    },
    /// Key generation failed (e.g. an unsupported size).
    #[error("RSA key generation failed: {0}")]
    Generate(String),
}

/// Finds the first PEM block in `text` and rebuilds it with one trimmed line per line, so
/// that keys pasted into TOML with indentation, CRLF or surrounding text (as printed by
/// `openssl x509 -text`) still load. Returns the label and the normalised PEM.
fn first_pem_block(text: &str) -> Result<(String, Zeroizing<String>), KeyError> {
    const BEGIN: &str = "-----BEGIN ";
    const DASHES: &str = "-----";
    let start = text.find(BEGIN).ok_or(KeyError::NoPem)?;
    let after_begin = &text[start + BEGIN.len()..];
    let label_len = after_begin.find(DASHES).ok_or(KeyError::NoPem)?;
    let label = &after_begin[..label_len];
    if label.contains('\n') {
        return Err(KeyError::NoPem);
    }
    let end_marker = format!("-----END {label}-----");
    let end = text[start..].find(&end_marker).ok_or(KeyError::NoPem)? + start + end_marker.len();
    let mut normalised = Zeroizing::new(String::with_capacity(end - start + 1));
    for line in text[start..end].lines() {
        let line = line.trim();
        if !line.is_empty() {
            normalised.push_str(line);
            normalised.push('\n');
        }
    }
    Ok((label.to_owned(), normalised))
}

fn invalid(label: &str, reason: impl fmt::Display) -> KeyError {
    KeyError::Invalid {
        label: label.to_owned(),
        reason: reason.to_string(),
    }
}

/// Loads an RSA public key from PEM: `PUBLIC KEY` (SubjectPublicKeyInfo, the form of the
/// WeChat Pay public key), `RSA PUBLIC KEY` (PKCS#1) or `CERTIFICATE` (X.509 platform
/// certificate: its subject public key is used; validity dates are not checked here because
/// WeChat Pay itself keeps signing with a certificate until the rotation completes).
pub fn load_public_key_pem(pem: &str) -> Result<RsaPublicKey, KeyError> {
    let (label, pem) = first_pem_block(pem)?;
    match label.as_str() {
        "PUBLIC KEY" => RsaPublicKey::from_public_key_pem(&pem).map_err(|e| invalid(&label, e)),
        "RSA PUBLIC KEY" => RsaPublicKey::from_pkcs1_pem(&pem).map_err(|e| invalid(&label, e)),
        "CERTIFICATE" => {
            let spki_der = certificate_spki_der(&pem).map_err(|e| invalid(&label, e))?;
            RsaPublicKey::from_public_key_der(&spki_der).map_err(|e| invalid(&label, e))
        }
        _ => Err(KeyError::UnsupportedLabel(label)),
    }
}

fn decode_certificate(pem: &str) -> Result<x509_cert::Certificate, x509_cert::der::Error> {
    let (_, der) = x509_cert::der::pem::decode_vec(pem.as_bytes())?;
    x509_cert::Certificate::from_der(&der)
}

fn certificate_spki_der(pem: &str) -> Result<Vec<u8>, x509_cert::der::Error> {
    decode_certificate(pem)?
        .tbs_certificate
        .subject_public_key_info
        .to_der()
}

/// The serial number of an X.509 certificate as WeChat Pay writes it in `Wechatpay-Serial`
/// and `serial_no`: uppercase hex of the serial's bytes. Useful to check that a configured
/// certificate sits under the right serial.
pub fn certificate_serial_hex(pem: &str) -> Result<String, KeyError> {
    let (label, pem) = first_pem_block(pem)?;
    if label != "CERTIFICATE" {
        return Err(KeyError::UnsupportedLabel(label));
    }
    let cert = decode_certificate(&pem).map_err(|e| invalid(&label, e))?;
    Ok(hex::encode_upper(
        cert.tbs_certificate.serial_number.as_bytes(),
    ))
}

/// When an X.509 certificate stops being valid (`notAfter`). A PEM that is not a certificate
/// (a WeChat Pay public key, which has no expiry) is [`KeyError::UnsupportedLabel`].
pub fn certificate_not_after(pem: &str) -> Result<std::time::SystemTime, KeyError> {
    let (label, pem) = first_pem_block(pem)?;
    if label != "CERTIFICATE" {
        return Err(KeyError::UnsupportedLabel(label));
    }
    let cert = decode_certificate(&pem).map_err(|e| invalid(&label, e))?;
    Ok(cert.tbs_certificate.validity.not_after.to_system_time())
}

/// Loads an RSA private key (the merchant's API key, `apiclient_key.pem`) from PEM:
/// `PRIVATE KEY` (PKCS#8, as WeChat Pay's tool writes it) or `RSA PRIVATE KEY` (PKCS#1).
/// Encrypted keys are not supported.
pub fn load_private_key_pem(pem: &str) -> Result<RsaPrivateKey, KeyError> {
    let (label, pem) = first_pem_block(pem)?;
    match label.as_str() {
        "PRIVATE KEY" => RsaPrivateKey::from_pkcs8_pem(&pem).map_err(|e| invalid(&label, e)),
        "RSA PRIVATE KEY" => RsaPrivateKey::from_pkcs1_pem(&pem).map_err(|e| invalid(&label, e)),
        _ => Err(KeyError::UnsupportedLabel(label)),
    }
}

/// `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo), the form WeChat Pay distributes its
/// public key in; the simulator's `init` writes it into the configuration.
pub fn public_key_to_pem(key: &RsaPublicKey) -> String {
    // Encoding a well-formed in-memory RSA key into DER cannot fail (no input is parsed);
    // an error here would be a bug in the rsa crate, not bad input.
    #[allow(clippy::expect_used)]
    key.to_public_key_pem(LineEnding::LF)
        .expect("an RsaPublicKey always encodes as SPKI")
}

/// `-----BEGIN PRIVATE KEY-----` (PKCS#8), like WeChat Pay's `apiclient_key.pem`.
pub fn private_key_to_pem(key: &RsaPrivateKey) -> String {
    // As in `public_key_to_pem`: encoding a valid in-memory key cannot fail.
    #[allow(clippy::expect_used)]
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .expect("an RsaPrivateKey always encodes as PKCS#8");
    pem.to_string()
}

/// Generates an RSA key (2048 bits for WeChat Pay) from the OS random generator.
/// Slow (seconds in debug builds): for the simulator and tests, not for request paths.
pub fn generate_private_key(bits: usize) -> Result<RsaPrivateKey, KeyError> {
    RsaPrivateKey::new(&mut rand::thread_rng(), bits).map_err(|e| KeyError::Generate(e.to_string()))
}

/// The platform keys of one merchant, by serial (`Wechatpay-Serial`). Several at once during
/// a certificate or public-key rotation, when WeChat Pay may sign with either.
#[derive(Clone, Default)]
pub struct PlatformKeys {
    keys: BTreeMap<String, RsaPublicKey>,
}

impl PlatformKeys {
    /// No keys: every notification fails with an unknown serial.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads `(serial, PEM)` pairs as configured in `[merchants.platform_public_keys]`;
    /// each PEM is a `PUBLIC KEY`, `RSA PUBLIC KEY` or `CERTIFICATE`. The error names the
    /// serial whose PEM is bad.
    pub fn from_pems<'a>(
        pems: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, (String, KeyError)> {
        let mut keys = Self::new();
        for (serial, pem) in pems {
            let key = load_public_key_pem(pem).map_err(|e| (serial.to_owned(), e))?;
            keys.insert(serial, key);
        }
        Ok(keys)
    }

    /// Adds (or replaces) the key for `serial`.
    pub fn insert(&mut self, serial: impl Into<String>, key: RsaPublicKey) {
        self.keys.insert(serial.into(), key);
    }

    /// The key named by `serial`, exactly (serials are case-sensitive in WeChat's headers).
    pub fn get(&self, serial: &str) -> Option<&RsaPublicKey> {
        self.keys.get(serial)
    }

    /// Known serials, sorted.
    pub fn serials(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// True when no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

impl fmt::Debug for PlatformKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformKeys")
            .field("serials", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Signs `message` with RSA PKCS#1 v1.5 over SHA-256 and returns the signature in standard
/// base64, as WeChat Pay's `Wechatpay-Signature` and the `signature` of `Authorization`.
///
/// Security note: the `rsa` crate is subject to RUSTSEC-2023-0071 ("Marvin": private-key
/// operations are not constant time, so an attacker who can time many of them may recover the
/// key). The signature is computed with blinding (a randomized signer), which mitigates but
/// does not formally remove that risk. Only the simulator and the reconciler sign, with keys
/// that sign a few requests; the gateway's and worker's path ([`verify_sha256_rsa`]) uses
/// public keys only and is not affected.
pub fn sign_sha256_rsa(key: &RsaPrivateKey, message: &[u8]) -> String {
    let signer = SigningKey::<Sha256>::new(key.clone());
    let signature = signer.sign_with_rng(&mut rand::thread_rng(), message);
    BASE64.encode(signature.to_bytes())
}

/// Verifies a base64 RSA PKCS#1 v1.5 SHA-256 signature of `message`.
///
/// [`VerifyError::BadSignatureEncoding`] when the text is not standard base64;
/// [`VerifyError::SignatureMismatch`] when it does not verify (wrong key, altered message,
/// wrong length).
pub fn verify_sha256_rsa(
    key: &RsaPublicKey,
    message: &[u8],
    signature_b64: &str,
) -> Result<(), VerifyError> {
    let raw = BASE64
        .decode(signature_b64)
        .map_err(|_| VerifyError::BadSignatureEncoding)?;
    let signature =
        Signature::try_from(raw.as_slice()).map_err(|_| VerifyError::SignatureMismatch)?;
    VerifyingKey::<Sha256>::new(key.clone())
        .verify(message, &signature)
        .map_err(|_| VerifyError::SignatureMismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_block_is_found_inside_text_and_normalised() {
        let text = "Certificate:\n  junk\n   -----BEGIN PUBLIC KEY-----\r\n   QUJD\r\n\r\n  -----END PUBLIC KEY-----\ntrailer";
        let (label, pem) = first_pem_block(text).unwrap();
        assert_eq!(label, "PUBLIC KEY");
        assert_eq!(
            pem.as_str(),
            "-----BEGIN PUBLIC KEY-----\nQUJD\n-----END PUBLIC KEY-----\n"
        );
    }

    #[test]
    fn no_pem_and_unsupported_labels_are_errors() {
        assert_eq!(load_public_key_pem("not a key"), Err(KeyError::NoPem));
        assert_eq!(
            load_public_key_pem("-----BEGIN PUBLIC KEY-----\nQUJD\n"),
            Err(KeyError::NoPem)
        );
        assert_eq!(
            load_public_key_pem("-----BEGIN EC PUBLIC KEY-----\nQUJD\n-----END EC PUBLIC KEY-----"),
            Err(KeyError::UnsupportedLabel("EC PUBLIC KEY".into()))
        );
        assert!(matches!(
            load_public_key_pem("-----BEGIN PUBLIC KEY-----\nQUJD\n-----END PUBLIC KEY-----"),
            Err(KeyError::Invalid { .. })
        ));
        assert!(matches!(
            load_private_key_pem("-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----"),
            Err(KeyError::UnsupportedLabel(_))
        ));
    }
}
