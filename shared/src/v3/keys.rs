//! RSA keys of API v3: loading the platform keys (certificates or WeChat Pay public keys) and
//! the merchant key, and the RSA PKCS#1 v1.5 SHA-256 signature scheme
//! (`WECHATPAY2-SHA256-RSA2048`).
//!
//! WeChat Pay signs with either a platform certificate (平台证书, serial = the certificate's
//! serial number in hex) or, since 2024, a WeChat Pay public key (微信支付公钥, serial
//! `PUB_KEY_ID_…`). Both are RSA-2048; during a rotation several are valid at once, so the
//! keys are kept by serial in [`PlatformKeys`].
//!
//! The RSA operations run on `ring`: constant time, unlike the `rsa` crate
//! (RUSTSEC-2023-0071, "Marvin"), which the gateway and worker therefore do not link.
//! <https://pay.weixin.qq.com/docs/merchant/development/interface-rules/signature-verification.html>

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{
    RsaKeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256,
};
use secrecy::zeroize::Zeroizing;
use x509_cert::der::asn1::{AnyRef, BitStringRef, UintRef};
use x509_cert::der::pem::LineEnding;
use x509_cert::der::{Decode, Encode, Reader, SliceReader};
use x509_cert::spki::{AlgorithmIdentifierRef, ObjectIdentifier, SubjectPublicKeyInfoRef};

use super::error::VerifyError;

/// Why a key could not be loaded. Messages never contain key material.
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

/// `rsaEncryption` (RFC 8017), the algorithm of an RSA SubjectPublicKeyInfo.
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// Modulus sizes that [`RSA_PKCS1_2048_8192_SHA256`] verifies; checked at load time so that a
/// key that could never verify is a configuration error, not a signature mismatch later.
const MODULUS_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// An RSA public key (a platform key, or the merchant's for the simulator), held as the
/// PKCS#1 `RSAPublicKey` DER that `ring` verifies with. Equal keys have equal encodings (DER
/// is canonical), whichever PEM form they were loaded from.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    pkcs1_der: Box<[u8]>,
    bits: usize,
}

impl PublicKey {
    /// Checks a PKCS#1 `RSAPublicKey` (`SEQUENCE { n, e }`): modulus of 2048 to 8192 bits
    /// and an odd exponent that `ring` accepts (3 ..= 2^33 − 1).
    fn from_pkcs1_der(der: &[u8]) -> Result<Self, String> {
        let mut reader = SliceReader::new(der).map_err(|e| e.to_string())?;
        let (n, e) = reader
            .sequence(|seq| Ok((seq.decode::<UintRef>()?, seq.decode::<UintRef>()?)))
            .map_err(|e| e.to_string())?;
        reader.finish(()).map_err(|e| e.to_string())?;
        let n = n.as_bytes();
        let bits = n
            .first()
            .map_or(0, |top| n.len() * 8 - top.leading_zeros() as usize);
        if !MODULUS_BITS.contains(&bits) {
            return Err(format!(
                "RSA modulus of {bits} bits (supported: {} to {})",
                MODULUS_BITS.start(),
                MODULUS_BITS.end()
            ));
        }
        let e = e.as_bytes();
        let exponent_ok = e.len() <= 8 && {
            let e = e.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b));
            e % 2 == 1 && (3..1 << 33).contains(&e)
        };
        if !exponent_ok {
            return Err("unsupported RSA public exponent".into());
        }
        Ok(Self {
            pkcs1_der: der.into(),
            bits,
        })
    }

    /// The key of a SubjectPublicKeyInfo (`PUBLIC KEY` PEM or a certificate's key), given
    /// its algorithm and its subjectPublicKey bits.
    fn from_spki(algorithm: ObjectIdentifier, key: Option<&[u8]>) -> Result<Self, String> {
        if algorithm != RSA_ENCRYPTION {
            return Err(format!("not an RSA key (algorithm {algorithm})"));
        }
        Self::from_pkcs1_der(key.ok_or("subjectPublicKey is not a whole number of bytes")?)
    }

    /// Size of the modulus in bits (2048 for WeChat Pay).
    pub fn modulus_bits(&self) -> usize {
        self.bits
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("bits", &self.bits)
            .finish()
    }
}

/// An RSA private key (the merchant's API key, or the platform key the simulator signs
/// with), in `ring`'s constant-time implementation. Cloning shares the key.
#[derive(Clone)]
pub struct PrivateKey {
    pair: Arc<RsaKeyPair>,
    public: PublicKey,
}

impl PrivateKey {
    fn from_key_pair(pair: RsaKeyPair) -> Result<Self, String> {
        let public = PublicKey::from_pkcs1_der(pair.public().as_ref())?;
        Ok(Self {
            pair: Arc::new(pair),
            public,
        })
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        self.public.clone()
    }
}

/// Two private keys are the same key when their moduli (and exponents) are: the modulus
/// determines the primes.
impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        self.public == other.public
    }
}

impl Eq for PrivateKey {}

/// Shows the size only: never key material.
impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("bits", &self.public.bits)
            .finish_non_exhaustive()
    }
}

/// Loads an RSA public key from PEM: `PUBLIC KEY` (SubjectPublicKeyInfo, the form of the
/// WeChat Pay public key), `RSA PUBLIC KEY` (PKCS#1) or `CERTIFICATE` (X.509 platform
/// certificate: its subject public key is used; validity dates are not checked here because
/// WeChat Pay itself keeps signing with a certificate until the rotation completes).
pub fn load_public_key_pem(pem: &str) -> Result<PublicKey, KeyError> {
    let (label, pem) = first_pem_block(pem)?;
    let loaded = match label.as_str() {
        "PUBLIC KEY" => pem_der(&pem).and_then(|der| {
            let spki = SubjectPublicKeyInfoRef::from_der(&der).map_err(|e| e.to_string())?;
            PublicKey::from_spki(spki.algorithm.oid, spki.subject_public_key.as_bytes())
        }),
        "RSA PUBLIC KEY" => pem_der(&pem).and_then(|der| PublicKey::from_pkcs1_der(&der)),
        "CERTIFICATE" => decode_certificate(&pem)
            .map_err(|e| e.to_string())
            .and_then(|cert| {
                let spki = &cert.tbs_certificate.subject_public_key_info;
                PublicKey::from_spki(spki.algorithm.oid, spki.subject_public_key.as_bytes())
            }),
        _ => return Err(KeyError::UnsupportedLabel(label)),
    };
    loaded.map_err(|reason| invalid(&label, reason))
}

/// The DER inside a normalised PEM block, wiped when dropped (it may be a private key).
fn pem_der(pem: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    x509_cert::der::pem::decode_vec(pem.as_bytes())
        .map(|(_, der)| Zeroizing::new(der))
        .map_err(|e| e.to_string())
}

fn decode_certificate(pem: &str) -> Result<x509_cert::Certificate, x509_cert::der::Error> {
    let (_, der) = x509_cert::der::pem::decode_vec(pem.as_bytes())?;
    x509_cert::Certificate::from_der(&der)
}

/// What the services read from an X.509 platform certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The serial number as WeChat Pay writes it in `Wechatpay-Serial` and `serial_no`:
    /// uppercase hex of the serial's bytes.
    pub serial: String,
    /// The subject public key, which verifies what the certificate's owner signed.
    pub key: PublicKey,
    /// Valid from (`notBefore`).
    pub not_before: std::time::SystemTime,
    /// Valid until (`notAfter`).
    pub not_after: std::time::SystemTime,
}

/// Reads an X.509 certificate's serial, key and validity. A PEM that is not a certificate
/// (a WeChat Pay public key, which has no serial number of its own and no expiry) is
/// [`KeyError::UnsupportedLabel`].
pub fn certificate_info(pem: &str) -> Result<CertificateInfo, KeyError> {
    let (label, pem) = first_pem_block(pem)?;
    if label != "CERTIFICATE" {
        return Err(KeyError::UnsupportedLabel(label));
    }
    let cert = decode_certificate(&pem).map_err(|e| invalid(&label, e))?;
    let tbs = &cert.tbs_certificate;
    let spki = &tbs.subject_public_key_info;
    let key = PublicKey::from_spki(spki.algorithm.oid, spki.subject_public_key.as_bytes())
        .map_err(|reason| invalid(&label, reason))?;
    Ok(CertificateInfo {
        serial: hex::encode_upper(tbs.serial_number.as_bytes()),
        key,
        not_before: tbs.validity.not_before.to_system_time(),
        not_after: tbs.validity.not_after.to_system_time(),
    })
}

/// The serial number of an X.509 certificate as WeChat Pay writes it in `Wechatpay-Serial`
/// and `serial_no` ([`CertificateInfo::serial`]). Useful to check that a configured
/// certificate sits under the right serial.
pub fn certificate_serial_hex(pem: &str) -> Result<String, KeyError> {
    certificate_info(pem).map(|info| info.serial)
}

/// When an X.509 certificate stops being valid (`notAfter`). A PEM that is not a certificate
/// (a WeChat Pay public key, which has no expiry) is [`KeyError::UnsupportedLabel`].
pub fn certificate_not_after(pem: &str) -> Result<std::time::SystemTime, KeyError> {
    certificate_info(pem).map(|info| info.not_after)
}

/// Loads an RSA private key (the merchant's API key, `apiclient_key.pem`) from PEM:
/// `PRIVATE KEY` (PKCS#8, as WeChat Pay's tool writes it) or `RSA PRIVATE KEY` (PKCS#1).
/// Encrypted keys are not supported; `ring` signs with moduli of 2048 to 4096 bits.
pub fn load_private_key_pem(pem: &str) -> Result<PrivateKey, KeyError> {
    let (label, pem) = first_pem_block(pem)?;
    let parse: fn(&[u8]) -> Result<RsaKeyPair, ring::error::KeyRejected> = match label.as_str() {
        "PRIVATE KEY" => RsaKeyPair::from_pkcs8,
        "RSA PRIVATE KEY" => RsaKeyPair::from_der,
        _ => return Err(KeyError::UnsupportedLabel(label)),
    };
    pem_der(&pem)
        .and_then(|der| parse(&der).map_err(|e| format!("rejected by ring: {e}")))
        .and_then(PrivateKey::from_key_pair)
        .map_err(|reason| invalid(&label, reason))
}

/// `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo), the form WeChat Pay distributes its
/// public key in; the simulator's `init` writes it into the configuration.
pub fn public_key_to_pem(key: &PublicKey) -> String {
    let spki = SubjectPublicKeyInfoRef {
        algorithm: AlgorithmIdentifierRef {
            oid: RSA_ENCRYPTION,
            // RFC 8017 A.1: the parameters of rsaEncryption are NULL (as openssl writes them).
            parameters: Some(AnyRef::NULL),
        },
        subject_public_key: BitStringRef::from_bytes(&key.pkcs1_der)
            .unwrap_or_else(|_| unreachable!("a key of at most 8192 bits fits a BIT STRING")),
    };
    // Encoding a checked in-memory key cannot fail (no input is parsed).
    #[allow(clippy::expect_used)]
    let der = spki.to_der().expect("an RSA SPKI always encodes");
    #[allow(clippy::expect_used)]
    x509_cert::der::pem::encode_string("PUBLIC KEY", LineEnding::LF, &der)
        .expect("DER always encodes as PEM")
}

/// The platform keys of one merchant, by serial (`Wechatpay-Serial`). Several at once during
/// a certificate or public-key rotation, when WeChat Pay may sign with either.
#[derive(Clone, Default)]
pub struct PlatformKeys {
    keys: BTreeMap<String, PublicKey>,
    /// `notAfter` of the keys that came from a certificate (WeChat Pay public keys have
    /// none), for the expiry metric.
    not_after: BTreeMap<String, std::time::SystemTime>,
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
            keys.insert_pem(serial, pem)
                .map_err(|e| (serial.to_owned(), e))?;
        }
        Ok(keys)
    }

    /// Loads `pem` ([`load_public_key_pem`]) under `serial`, remembering the `notAfter` of
    /// a certificate.
    pub fn insert_pem(&mut self, serial: &str, pem: &str) -> Result<(), KeyError> {
        let key = load_public_key_pem(pem)?;
        match certificate_not_after(pem) {
            Ok(not_after) => self.insert_certificate(serial, key, not_after),
            Err(_) => self.insert(serial, key),
        }
        Ok(())
    }

    /// Adds (or replaces) the key for `serial`, a key without expiry (a WeChat Pay public key).
    pub fn insert(&mut self, serial: impl Into<String>, key: PublicKey) {
        let serial = serial.into();
        self.not_after.remove(&serial);
        self.keys.insert(serial, key);
    }

    /// Adds (or replaces) the key of a certificate valid until `not_after` under `serial`.
    pub fn insert_certificate(
        &mut self,
        serial: impl Into<String>,
        key: PublicKey,
        not_after: std::time::SystemTime,
    ) {
        let serial = serial.into();
        self.not_after.insert(serial.clone(), not_after);
        self.keys.insert(serial, key);
    }

    /// The serials that came from certificates, with their `notAfter`, sorted by serial.
    pub fn certificates(&self) -> impl Iterator<Item = (&str, std::time::SystemTime)> {
        self.not_after
            .iter()
            .map(|(serial, not_after)| (serial.as_str(), *not_after))
    }

    /// The key named by `serial`, exactly (serials are case-sensitive in WeChat's headers).
    pub fn get(&self, serial: &str) -> Option<&PublicKey> {
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
/// `ring`'s private-key operation is constant time (no RUSTSEC-2023-0071 "Marvin" timing leak).
pub fn sign_sha256_rsa(key: &PrivateKey, message: &[u8]) -> String {
    let mut signature = vec![0; key.pair.public().modulus_len()];
    // ring fails only on an output buffer of the wrong size (it is sized from the key here)
    // or when the random source fails, which PKCS#1 v1.5 padding never draws from.
    #[allow(clippy::expect_used)]
    key.pair
        .sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            message,
            &mut signature,
        )
        .expect("RSA PKCS#1 v1.5 signing into a modulus-sized buffer cannot fail");
    BASE64.encode(signature)
}

/// Verifies a base64 RSA PKCS#1 v1.5 SHA-256 signature of `message`.
///
/// [`VerifyError::BadSignatureEncoding`] when the text is not standard base64;
/// [`VerifyError::SignatureMismatch`] when it does not verify (wrong key, altered message,
/// wrong length).
pub fn verify_sha256_rsa(
    key: &PublicKey,
    message: &[u8],
    signature_b64: &str,
) -> Result<(), VerifyError> {
    let raw = BASE64
        .decode(signature_b64)
        .map_err(|_| VerifyError::BadSignatureEncoding)?;
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &key.pkcs1_der[..])
        .verify(message, &raw)
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
