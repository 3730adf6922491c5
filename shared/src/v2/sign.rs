//! API v2 signatures (签名算法): MD5 or HMAC-SHA256 over the sorted fields.
//!
//! Rule, from <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=4_3>:
//! 1. take every field except `sign` whose value is not empty;
//! 2. sort them by key in ASCII (byte) order and join as `k1=v1&k2=v2…`;
//! 3. append `&key=API_V2_KEY`;
//! 4. MD5 it, or HMAC-SHA256 it keyed with the API v2 key, and write the digest in
//!    UPPERCASE hex.
//!
//! The string is never materialised: pieces are fed to the digest directly, and the
//! received signature is decoded to bytes and compared in constant time, so verification
//! allocates only one small vector of references (this is the gateway's hot path).

use hmac::digest::{FixedOutput, KeyInit, Update};
use hmac::Hmac;
use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::xml::XmlFields;

/// The two signature methods of API v2 (`sign_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignType {
    /// `MD5`: the default when `sign_type` is absent from a request.
    Md5,
    /// `HMAC-SHA256`, keyed with the API v2 key.
    HmacSha256,
}

impl SignType {
    /// The value of the `sign_type` field: `MD5` or `HMAC-SHA256`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SignType::Md5 => "MD5",
            SignType::HmacSha256 => "HMAC-SHA256",
        }
    }

    /// Length of the signature in hex characters.
    fn hex_len(self) -> usize {
        match self {
            SignType::Md5 => 32,
            SignType::HmacSha256 => 64,
        }
    }
}

impl std::fmt::Display for SignType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SignType {
    type Err = SignError;

    /// Exactly `MD5` or `HMAC-SHA256`, as WeChat Pay writes them (spelled once, by
    /// [`SignType::as_str`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [SignType::Md5, SignType::HmacSha256]
            .into_iter()
            .find(|sign_type| sign_type.as_str() == s)
            .ok_or_else(|| SignError::UnknownSignType(s.chars().take(32).collect()))
    }
}

/// Why a v2 signature did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    /// No `sign` field, or an empty one.
    #[error("missing sign")]
    Missing,
    /// A `sign_type` other than `MD5` and `HMAC-SHA256` (at most 32 chars of it kept).
    #[error("unknown sign_type {0:?}")]
    UnknownSignType(String),
    /// The signature does not match (wrong key, tampered fields, or not a hex digest of
    /// the right length).
    #[error("signature mismatch")]
    Mismatch,
}

/// Signs `fields` (the `sign` field, if any, is ignored): UPPERCASE hex digest.
pub fn sign(fields: &XmlFields, api_v2_key: &str, sign_type: SignType) -> String {
    match sign_type {
        SignType::Md5 => hex::encode_upper(md5_digest(fields, api_v2_key)),
        SignType::HmacSha256 => hex::encode_upper(hmac_digest(fields, api_v2_key)),
    }
}

/// Verifies the `sign` field of `fields` and returns the method that was used.
///
/// The method is the `sign_type` field when present; WeChat Pay omits it from some
/// notifications even for HMAC-SHA256 merchants, so when absent the length of `sign`
/// decides (32 hex = MD5, 64 = HMAC-SHA256). `sign_type` is itself covered by the
/// signature, so it cannot be swapped. The received sign may be upper or lower case.
pub fn verify(fields: &XmlFields, api_v2_key: &str) -> Result<SignType, SignError> {
    let received = match fields.get("sign") {
        Some(s) if !s.is_empty() => s,
        _ => return Err(SignError::Missing),
    };
    let sign_type = match fields.get("sign_type") {
        Some(t) if !t.is_empty() => t.parse()?,
        _ => match received.len() {
            32 => SignType::Md5,
            64 => SignType::HmacSha256,
            _ => return Err(SignError::Mismatch),
        },
    };
    if received.len() != sign_type.hex_len() {
        return Err(SignError::Mismatch);
    }
    let matches = match sign_type {
        SignType::Md5 => {
            let mut got = [0u8; 16];
            hex::decode_to_slice(received, &mut got).map_err(|_| SignError::Mismatch)?;
            md5_digest(fields, api_v2_key).ct_eq(&got)
        }
        SignType::HmacSha256 => {
            let mut got = [0u8; 32];
            hex::decode_to_slice(received, &mut got).map_err(|_| SignError::Mismatch)?;
            hmac_digest(fields, api_v2_key).ct_eq(&got)
        }
    };
    if bool::from(matches) {
        Ok(sign_type)
    } else {
        Err(SignError::Mismatch)
    }
}

fn md5_digest(fields: &XmlFields, key: &str) -> [u8; 16] {
    let mut hasher = Md5::new();
    feed(&mut hasher, fields, key);
    hasher.finalize().into()
}

fn hmac_digest(fields: &XmlFields, key: &str) -> [u8; 32] {
    let mut mac = hmac_sha256(key.as_bytes());
    feed(&mut mac, fields, key);
    mac.finalize_fixed().into()
}

/// HMAC-SHA256 keyed with `key`, built from the RFC 2104 key block (keys longer than the
/// 64-byte block are hashed first, shorter ones zero-padded) so construction is
/// infallible for any key length without an `expect`.
fn hmac_sha256(key: &[u8]) -> Hmac<Sha256> {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    <Hmac<Sha256> as KeyInit>::new(&block.into())
}

/// Feeds the signing string `k=v&…&key=KEY` to `digest` without building it.
fn feed(digest: &mut impl Update, fields: &XmlFields, key: &str) {
    let mut signed: Vec<(&str, &str)> = fields
        .iter()
        .filter(|(k, v)| *k != "sign" && !v.is_empty())
        .collect();
    signed.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for (k, v) in signed {
        digest.update(k.as_bytes());
        digest.update(b"=");
        digest.update(v.as_bytes());
        digest.update(b"&");
    }
    digest.update(b"key=");
    digest.update(key.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::Mac;

    #[test]
    fn hmac_key_block_matches_the_hmac_crate_for_any_key_length() {
        for len in [0usize, 1, 32, 63, 64, 65, 200] {
            let key = vec![b'k'; len];
            let mut ours = hmac_sha256(&key);
            Update::update(&mut ours, b"message");
            let mut theirs = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("any length");
            Mac::update(&mut theirs, b"message");
            assert_eq!(
                ours.finalize_fixed(),
                theirs.finalize().into_bytes(),
                "key length {len}"
            );
        }
    }

    #[test]
    fn sign_type_round_trips_through_str() {
        for t in [SignType::Md5, SignType::HmacSha256] {
            assert_eq!(t.as_str().parse::<SignType>(), Ok(t));
        }
        assert_eq!(
            "md5".parse::<SignType>(),
            Err(SignError::UnknownSignType("md5".to_owned()))
        );
    }

    #[test]
    fn sign_field_itself_is_not_signed() {
        let mut f: XmlFields = [("a", "1"), ("b", "")].into_iter().collect();
        let before = sign(&f, "k", SignType::Md5);
        f.insert("sign", "whatever");
        assert_eq!(sign(&f, "k", SignType::Md5), before);
    }
}
