//! AEAD_AES_256_GCM, the encryption of the `resource` of v3 notifications (and of platform
//! certificates downloaded from the API).
//!
//! Rules: <https://pay.weixin.qq.com/docs/merchant/development/interface-rules/certificate-callback-decryption.html>
//! - key: the merchant's APIv3 key, 32 bytes (32 ASCII characters);
//! - nonce: `resource.nonce`, 12 bytes, used as the GCM IV as-is (its ASCII bytes);
//! - AAD: `resource.associated_data` (may be empty);
//! - `resource.ciphertext`: base64 of ciphertext ‖ 16-byte tag.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

/// Length of the APIv3 key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of the GCM nonce in bytes.
pub const NONCE_LEN: usize = 12;
/// Length of the GCM tag appended to the ciphertext.
pub const TAG_LEN: usize = 16;

/// Why a resource cannot be decrypted (or encrypted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AeadError {
    /// The APIv3 key is not 32 bytes (a configuration error).
    #[error("APIv3 key must be 32 bytes, got {0}")]
    KeyLength(usize),
    /// The nonce is not 12 bytes.
    #[error("AEAD nonce must be 12 bytes, got {0}")]
    NonceLength(usize),
    /// The ciphertext is not standard base64.
    #[error("ciphertext is not base64")]
    Base64,
    /// Authentication failed: wrong key, wrong associated data, or tampered ciphertext.
    #[error("AEAD tag mismatch (wrong APIv3 key, associated data or tampered ciphertext)")]
    Tag,
}

fn cipher(api_v3_key: &[u8]) -> Result<Aes256Gcm, AeadError> {
    if api_v3_key.len() != KEY_LEN {
        return Err(AeadError::KeyLength(api_v3_key.len()));
    }
    Aes256Gcm::new_from_slice(api_v3_key).map_err(|_| AeadError::KeyLength(api_v3_key.len()))
}

fn nonce(nonce: &str) -> Result<&Nonce<aes_gcm::aead::consts::U12>, AeadError> {
    if nonce.len() != NONCE_LEN {
        return Err(AeadError::NonceLength(nonce.len()));
    }
    Ok(Nonce::from_slice(nonce.as_bytes()))
}

/// Decrypts a resource: base64 `ciphertext_b64` (ciphertext ‖ tag) under `api_v3_key` with
/// `nonce` and `associated_data` as AAD. Returns the plaintext (JSON for notifications).
pub fn decrypt(
    api_v3_key: &[u8],
    nonce_str: &str,
    associated_data: &str,
    ciphertext_b64: &str,
) -> Result<Vec<u8>, AeadError> {
    let cipher = cipher(api_v3_key)?;
    let iv = nonce(nonce_str)?;
    let raw = BASE64
        .decode(ciphertext_b64)
        .map_err(|_| AeadError::Base64)?;
    if raw.len() < TAG_LEN {
        return Err(AeadError::Tag);
    }
    cipher
        .decrypt(
            iv,
            Payload {
                msg: &raw,
                aad: associated_data.as_bytes(),
            },
        )
        .map_err(|_| AeadError::Tag)
}

/// Encrypts `plaintext` the way WeChat Pay does, returning base64 of ciphertext ‖ tag.
/// For the simulator and tests. The nonce must never be reused with the same key.
pub fn encrypt(
    api_v3_key: &[u8],
    nonce_str: &str,
    associated_data: &str,
    plaintext: &[u8],
) -> Result<String, AeadError> {
    let cipher = cipher(api_v3_key)?;
    let iv = nonce(nonce_str)?;
    let sealed = cipher
        .encrypt(
            iv,
            Payload {
                msg: plaintext,
                aad: associated_data.as_bytes(),
            },
        )
        .map_err(|_| AeadError::Tag)?;
    Ok(BASE64.encode(sealed))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"Zyxwvutsrqponmlkjihgfedcba543210";

    #[test]
    fn lengths_are_checked_before_anything_else() {
        assert_eq!(
            decrypt(b"short", "fdasflkja484", "", "AAAA"),
            Err(AeadError::KeyLength(5))
        );
        assert_eq!(
            decrypt(KEY, "short", "", "AAAA"),
            Err(AeadError::NonceLength(5))
        );
        assert_eq!(
            decrypt(KEY, "fdasflkja484", "", "!!"),
            Err(AeadError::Base64)
        );
        assert_eq!(
            decrypt(KEY, "fdasflkja484", "", "AAAA"),
            Err(AeadError::Tag)
        );
        assert_eq!(
            encrypt(&KEY[..31], "fdasflkja484", "", b"x"),
            Err(AeadError::KeyLength(31))
        );
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let c = encrypt(KEY, "fdasflkja484", "", b"").unwrap();
        assert_eq!(decrypt(KEY, "fdasflkja484", "", &c).unwrap(), b"");
    }
}
