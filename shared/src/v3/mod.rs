//! WeChat Pay API v3 notifications (JSON, RSA, AEAD).
//!
//! - [`headers`]: the `Wechatpay-*` signature headers.
//! - [`keys`]: loading RSA keys (public key, PKCS#1, certificate, PKCS#8) and the
//!   RSA-SHA256 signature scheme (through `ring`); [`PlatformKeys`] by serial, for rotation.
//! - [`error`]: [`VerifyError`], why a signature is rejected.
//! - [`verify`]: verification of notifications (probe, type, serial, timestamp, signature).
//! - [`aead`]: AEAD_AES_256_GCM decryption of the `resource`.
//! - [`resource`]: the notification envelope, payment and refund resources.
//! - [`authorization`]: the `Authorization` header of API calls, and response verification.
//! - [`certificates`]: platform certificates downloaded from `GET /v3/certificates`.
//!
//! Reference: <https://pay.weixin.qq.com/docs/merchant/development/interface-rules/introduction.html>

pub mod aead;
pub mod authorization;
pub mod certificates;
pub mod error;
pub mod forwarded;
pub mod headers;
pub mod keys;
pub mod resource;
pub mod verify;

pub use aead::AeadError;
pub use authorization::{
    authorization_header, parse_authorization, request_message, verify_authorization,
    verify_response, AuthorizationError, AuthorizationParams, AUTH_SCHEMA,
};
pub use certificates::{
    decrypt_each, verify_download, CertificateError, CertificatesAnswer, DownloadError, Downloaded,
    EncryptedCertificate, PlatformCertificate,
};
pub use headers::{
    HeaderError, WechatpayHeaders, HEADER_NONCE, HEADER_SERIAL, HEADER_SIGNATURE,
    HEADER_SIGNATURE_TYPE, HEADER_TIMESTAMP, SIGNATURE_TYPE_RSA,
};
pub use keys::{
    certificate_info, load_private_key_pem, load_public_key_pem, public_key_to_pem,
    sign_sha256_rsa, verify_sha256_rsa, CertificateInfo, KeyError, PlatformKeys, PrivateKey,
    PublicKey,
};
pub use resource::{
    EncryptedResource, EventType, NotificationEnvelope, Payer, RefundAmount, RefundResource,
    ResourceError, Transaction, TransactionAmount,
};
pub use verify::{
    sign_notification, signed_message, verify_notification, TimestampCheck, VerifyError,
    MAX_CLOCK_SKEW_SECS,
};
