//! The refund result notification (退款结果通知) and its encrypted `req_info`.
//!
//! From <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_16&index=10>: the
//! notification carries no `sign`. Its `req_info` is authenticated by encryption only:
//! base64 of AES-256-ECB with PKCS#7 padding, keyed with the 32 ASCII bytes of the
//! lowercase hex MD5 of the API v2 key; it decrypts to a flat `<root>…</root>` document.
//! A wrong key shows up as bad padding (or, rarely, as garbage that is not XML), which is
//! how a forged or misrouted notification is detected.

use aes::Aes256;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use ecb::cipher::block_padding::Pkcs7;
use ecb::cipher::{BlockDecryptMut, BlockEncryptMut, KeyInit};
use md5::{Digest, Md5};

use super::xml::{XmlError, XmlFields};
use super::{optional, parse_beijing_time, parse_fen, parse_optional_fen, text_if, SUCCESS};
use crate::state::RefundStatus;

/// Root element of the decrypted `req_info`.
const REQ_INFO_ROOT: &str = "root";

/// AES block size in bytes.
const BLOCK: usize = 16;

/// The outer refund notification, before `req_info` is decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundEnvelope {
    /// `SUCCESS` or `FAIL` (communication status).
    pub return_code: String,
    /// Reason when `return_code` is not `SUCCESS`.
    pub return_msg: Option<String>,
    /// The app id (empty when `return_code` is not `SUCCESS`).
    pub appid: String,
    /// The merchant, which selects the API v2 key (empty when `return_code` is not `SUCCESS`);
    /// a service provider's own.
    pub mch_id: String,
    /// The sub-merchant of a service provider whose order was refunded (partner mode only,
    /// <https://pay.weixin.qq.com/wiki/doc/api/jsapi_sl.php?chapter=9_16&index=11>).
    pub sub_mch_id: Option<String>,
    /// The sub-merchant's app id, when the order was placed with one (partner mode only).
    pub sub_appid: Option<String>,
    /// Random string.
    pub nonce_str: Option<String>,
    /// The encrypted details, see [`decrypt_req_info`] (empty when `return_code` is not
    /// `SUCCESS`).
    pub req_info: String,
}

impl RefundEnvelope {
    /// Reads the envelope: `return_code` is required; `appid`, `mch_id` and `req_info`
    /// too when it is `SUCCESS`.
    pub fn from_fields(fields: &XmlFields) -> Result<Self, XmlError> {
        let return_code = fields.require("return_code")?;
        let ok = return_code == SUCCESS;
        let text = |name: &'static str| text_if(fields, ok, name);
        Ok(Self {
            return_code: return_code.to_owned(),
            return_msg: optional(fields, "return_msg"),
            appid: text("appid")?,
            mch_id: text("mch_id")?,
            sub_mch_id: optional(fields, "sub_mch_id"),
            sub_appid: optional(fields, "sub_appid"),
            nonce_str: optional(fields, "nonce_str"),
            req_info: text("req_info")?,
        })
    }
}

/// The refund notification only ever says `SUCCESS`, `CHANGE` or `REFUNDCLOSE`.
fn notified_status(text: &str) -> Result<RefundStatus, XmlError> {
    match RefundStatus::parse(text) {
        Some(
            status @ (RefundStatus::Success | RefundStatus::Change | RefundStatus::RefundClose),
        ) => Ok(status),
        _ => Err(XmlError::InvalidField {
            field: "refund_status",
            reason: "not SUCCESS, CHANGE or REFUNDCLOSE".to_owned(),
        }),
    }
}

/// The decrypted refund details (`<root>` of `req_info`). Amounts in fen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundInfo {
    /// WeChat Pay's order number.
    pub transaction_id: String,
    /// The merchant's order number.
    pub out_trade_no: String,
    /// WeChat Pay's refund number.
    pub refund_id: String,
    /// The merchant's refund number: with `mch_id`, the key of a refund.
    pub out_refund_no: String,
    /// Order amount in fen.
    pub total_fee: i64,
    /// Refund amount requested, in fen.
    pub refund_fee: i64,
    /// Refund amount net of coupons, in fen.
    pub settlement_refund_fee: Option<i64>,
    /// Outcome.
    pub refund_status: RefundStatus,
    /// `yyyy-MM-dd HH:mm:ss` in Beijing time, when the refund succeeded.
    pub success_time: Option<String>,
    /// Where the money went back (note WeChat's spelling `accout`).
    pub refund_recv_accout: Option<String>,
    /// `API` or `VENDOR_PLATFORM` (made by hand in the merchant platform).
    pub refund_request_source: Option<String>,
}

impl RefundInfo {
    /// Reads the typed view of the decrypted `<root>`; ids, amounts and status required.
    pub fn from_fields(root: &XmlFields) -> Result<Self, XmlError> {
        Ok(Self {
            transaction_id: root.require("transaction_id")?.to_owned(),
            out_trade_no: root.require("out_trade_no")?.to_owned(),
            refund_id: root.require("refund_id")?.to_owned(),
            out_refund_no: root.require("out_refund_no")?.to_owned(),
            total_fee: parse_fen("total_fee", root.require("total_fee")?)?,
            refund_fee: parse_fen("refund_fee", root.require("refund_fee")?)?,
            settlement_refund_fee: parse_optional_fen(root, "settlement_refund_fee")?,
            refund_status: notified_status(root.require("refund_status")?)?,
            success_time: optional(root, "success_time"),
            refund_recv_accout: optional(root, "refund_recv_accout"),
            refund_request_source: optional(root, "refund_request_source"),
        })
    }

    /// `success_time` (`yyyy-MM-dd HH:mm:ss`, Beijing time UTC+8) as an instant; `None`
    /// when absent or not a valid time.
    pub fn succeeded_at(&self) -> Option<DateTime<Utc>> {
        parse_beijing_time(self.success_time.as_deref()?, "%Y-%m-%d %H:%M:%S", 19)
    }

    /// The `<root>` fields of this refund, for the simulator to encrypt.
    pub fn to_fields(&self) -> XmlFields {
        let mut f = XmlFields::new();
        f.insert("transaction_id", self.transaction_id.as_str());
        f.insert("out_trade_no", self.out_trade_no.as_str());
        f.insert("refund_id", self.refund_id.as_str());
        f.insert("out_refund_no", self.out_refund_no.as_str());
        f.insert("total_fee", self.total_fee.to_string());
        f.insert("refund_fee", self.refund_fee.to_string());
        let settlement = self.settlement_refund_fee.map(|fee| fee.to_string());
        f.insert_some("settlement_refund_fee", settlement);
        f.insert("refund_status", self.refund_status.as_str());
        f.insert_some("success_time", self.success_time.as_deref());
        f.insert_some("refund_recv_accout", self.refund_recv_accout.as_deref());
        f.insert_some(
            "refund_request_source",
            self.refund_request_source.as_deref(),
        );
        f
    }
}

/// Why `req_info` could not be decrypted.
#[derive(Debug, thiserror::Error)]
pub enum RefundCryptoError {
    /// Not standard base64.
    #[error("req_info is not valid base64")]
    Base64,
    /// The ciphertext is empty or not a whole number of AES blocks.
    #[error("req_info is not a whole number of AES blocks")]
    BlockLength,
    /// The PKCS#7 padding is wrong: wrong API v2 key, or garbage.
    #[error("req_info padding is invalid (wrong API v2 key?)")]
    Padding,
    /// The plaintext is not a valid `<root>` document (also possible with a wrong key).
    #[error("req_info plaintext: {0}")]
    Xml(#[from] XmlError),
}

/// The AES-256 key of `req_info`: the 32 ASCII bytes of the lowercase hex MD5 of the
/// API v2 key.
pub fn req_info_key(api_v2_key: &str) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Md5::digest(api_v2_key.as_bytes());
    let mut key = [0u8; 32];
    for (pair, byte) in key.chunks_exact_mut(2).zip(digest.iter()) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
    key
}

/// Decrypts `req_info`: base64 → AES-256-ECB → PKCS#7 → `<root>` fields.
pub fn decrypt_req_info(
    req_info_b64: &str,
    api_v2_key: &str,
) -> Result<XmlFields, RefundCryptoError> {
    // The plaintext is bounded by the XML limit; don't decode more than can fit.
    if req_info_b64.len() > (super::xml::MAX_XML_BYTES + BLOCK) / 3 * 4 + 4 {
        return Err(XmlError::TooLarge {
            limit: super::xml::MAX_XML_BYTES,
        }
        .into());
    }
    let ciphertext = STANDARD
        .decode(req_info_b64.as_bytes())
        .map_err(|_| RefundCryptoError::Base64)?;
    if ciphertext.is_empty() || ciphertext.len() % BLOCK != 0 {
        return Err(RefundCryptoError::BlockLength);
    }
    let key = req_info_key(api_v2_key);
    let plaintext = ecb::Decryptor::<Aes256>::new(&key.into())
        .decrypt_padded_vec_mut::<Pkcs7>(&ciphertext)
        .map_err(|_| RefundCryptoError::Padding)?;
    Ok(XmlFields::parse_with_root(&plaintext, REQ_INFO_ROOT)?)
}

/// Encrypts `root` as WeChat Pay does (the inverse of [`decrypt_req_info`]), for the
/// simulator and tests.
pub fn encrypt_req_info(root: &XmlFields, api_v2_key: &str) -> String {
    let plaintext = root.to_xml_with_root(REQ_INFO_ROOT);
    let key = req_info_key(api_v2_key);
    let ciphertext = ecb::Encryptor::<Aes256>::new(&key.into())
        .encrypt_padded_vec_mut::<Pkcs7>(plaintext.as_bytes());
    STANDARD.encode(ciphertext)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "aBcDeFgHiJkLmNoPqRsTuVwXyZ012345";

    fn sample() -> XmlFields {
        [
            ("transaction_id", "4200000001201901010000000001"),
            ("out_trade_no", "O1"),
            ("refund_id", "50000000012019010100000000001"),
            ("out_refund_no", "R1"),
            ("total_fee", "100"),
            ("refund_fee", "40"),
            ("settlement_refund_fee", "40"),
            ("refund_status", "SUCCESS"),
            ("success_time", "2019-01-01 08:00:00"),
            ("refund_recv_accout", "支付用户零钱"),
            ("refund_request_source", "API"),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn refund_info_round_trips_through_req_info() {
        let encrypted = encrypt_req_info(&sample(), KEY);
        let root = decrypt_req_info(&encrypted, KEY).expect("decrypts");
        let info = RefundInfo::from_fields(&root).expect("valid");
        assert_eq!(info.refund_fee, 40);
        assert_eq!(info.refund_status, RefundStatus::Success);
        assert_eq!(
            info.succeeded_at().map(|t| t.to_rfc3339()).as_deref(),
            Some("2019-01-01T00:00:00+00:00")
        );
        assert_eq!(RefundInfo::from_fields(&info.to_fields()), Ok(info));
    }

    #[test]
    fn refund_status_parses_exactly() {
        for s in [
            RefundStatus::Success,
            RefundStatus::Change,
            RefundStatus::RefundClose,
        ] {
            let mut f = sample();
            f.insert("refund_status", s.as_str());
            assert_eq!(RefundInfo::from_fields(&f).map(|i| i.refund_status), Ok(s));
        }
        // v3's words and other cases are not v2's.
        for wrong in ["success", "CLOSED", "ABNORMAL"] {
            let mut f = sample();
            f.insert("refund_status", wrong);
            assert!(matches!(
                RefundInfo::from_fields(&f),
                Err(XmlError::InvalidField {
                    field: "refund_status",
                    ..
                })
            ));
        }
    }

    #[test]
    fn envelope_requires_req_info_on_success() {
        let f: XmlFields = [
            ("return_code", "SUCCESS"),
            ("appid", "wx1"),
            ("mch_id", "1900000109"),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            RefundEnvelope::from_fields(&f),
            Err(XmlError::MissingField("req_info"))
        );
    }

    #[test]
    fn bad_lengths_and_base64_are_typed_errors() {
        assert!(matches!(
            decrypt_req_info("", KEY),
            Err(RefundCryptoError::BlockLength)
        ));
        assert!(matches!(
            decrypt_req_info("AAAA", KEY),
            Err(RefundCryptoError::BlockLength)
        ));
        assert!(matches!(
            decrypt_req_info("not base64!", KEY),
            Err(RefundCryptoError::Base64)
        ));
        let huge = "A".repeat(super::super::xml::MAX_XML_BYTES * 2);
        assert!(matches!(
            decrypt_req_info(&huge, KEY),
            Err(RefundCryptoError::Xml(XmlError::TooLarge { .. }))
        ));
    }
}
