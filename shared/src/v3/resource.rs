//! The v3 notification envelope and the decrypted resources it carries.
//!
//! - Envelope and payment resource (支付成功通知):
//!   <https://pay.weixin.qq.com/docs/merchant/apis/jsapi-payment/payment-notice.html>
//! - Refund resource (退款结果通知):
//!   <https://pay.weixin.qq.com/docs/merchant/apis/jsapi-payment/refund-result-notice.html>
//! - The same for a service provider (服务商) and its sub-merchants, whose resources name
//!   `sp_appid`, `sp_mchid`, `sub_appid`, `sub_mchid` instead of `appid`, `mchid`:
//!   <https://pay.weixin.qq.com/doc/v3/partner/4012085801> (payment),
//!   <https://pay.weixin.qq.com/docs/partner/apis/partner-jsapi-payment/refund-result-notice.html> (refund)
//!
//! Amounts are integers in fen (分) and are parsed as `i64`: a JSON number with a fraction or
//! an exponent (`1.5`, `100.0`, `1e2`) is a parse error, never truncated or rounded.
//! Unknown fields are ignored (WeChat Pay adds fields over time); duplicated fields are
//! rejected.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::aead::{self, AeadError};
use crate::state::{RefundStatus, TradeState};

/// The only resource algorithm WeChat Pay uses.
pub const ALGORITHM_AEAD_AES_256_GCM: &str = "AEAD_AES_256_GCM";

/// Why a notification or resource cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// Malformed JSON, a missing required field, or a wrong type (e.g. a float amount).
    #[error("invalid JSON: {0}")]
    Json(String),
    /// The resource does not decrypt (wrong APIv3 key, AAD or tampering).
    #[error(transparent)]
    Aead(#[from] AeadError),
    /// `resource.algorithm` is not `AEAD_AES_256_GCM`.
    #[error("unsupported resource algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// The decrypted resource is not UTF-8.
    #[error("decrypted resource is not UTF-8")]
    Utf8,
}

fn json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ResourceError> {
    serde_json::from_slice(bytes).map_err(|e| ResourceError::Json(e.to_string()))
}

/// The JSON body of a v3 notification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotificationEnvelope {
    /// Notification id (unique per notification, identical across re-sends).
    pub id: String,
    /// RFC 3339 creation time.
    pub create_time: String,
    /// e.g. `TRANSACTION.SUCCESS`; see [`EventType`].
    pub event_type: String,
    /// `encrypt-resource`.
    pub resource_type: String,
    /// The encrypted payload.
    pub resource: EncryptedResource,
    /// Human-readable summary, e.g. `支付成功`.
    #[serde(default)]
    pub summary: String,
}

/// The encrypted `resource` of a notification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncryptedResource {
    /// `AEAD_AES_256_GCM`.
    pub algorithm: String,
    /// base64 of ciphertext ‖ tag.
    pub ciphertext: String,
    /// AAD; may be empty or absent.
    #[serde(default)]
    pub associated_data: String,
    /// `transaction` or `refund`.
    pub original_type: String,
    /// 12-character nonce.
    pub nonce: String,
}

/// The `event_type` of a notification.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventType {
    /// `TRANSACTION.SUCCESS`: a payment succeeded.
    TransactionSuccess,
    /// `REFUND.SUCCESS`: a refund reached the payer.
    RefundSuccess,
    /// `REFUND.ABNORMAL`: the refund failed (e.g. the payer's card was closed); needs a human.
    RefundAbnormal,
    /// `REFUND.CLOSED`: the refund was closed.
    RefundClosed,
    /// Any other event type, kept verbatim.
    Other(String),
}

impl EventType {
    /// The wire form, e.g. `TRANSACTION.SUCCESS`.
    pub fn as_str(&self) -> &str {
        match self {
            Self::TransactionSuccess => "TRANSACTION.SUCCESS",
            Self::RefundSuccess => "REFUND.SUCCESS",
            Self::RefundAbnormal => "REFUND.ABNORMAL",
            Self::RefundClosed => "REFUND.CLOSED",
            Self::Other(s) => s,
        }
    }

    /// True for the three `REFUND.*` events.
    pub fn is_refund(&self) -> bool {
        matches!(
            self,
            Self::RefundSuccess | Self::RefundAbnormal | Self::RefundClosed
        )
    }
}

impl FromStr for EventType {
    type Err = Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "TRANSACTION.SUCCESS" => Self::TransactionSuccess,
            "REFUND.SUCCESS" => Self::RefundSuccess,
            "REFUND.ABNORMAL" => Self::RefundAbnormal,
            "REFUND.CLOSED" => Self::RefundClosed,
            other => Self::Other(other.to_owned()),
        })
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl NotificationEnvelope {
    /// Parses the raw HTTP body of a v3 notification.
    pub fn parse(body: &[u8]) -> Result<Self, ResourceError> {
        json(body)
    }

    /// The event type.
    pub fn event(&self) -> EventType {
        match self.event_type.parse() {
            Ok(e) => e,
            Err(never) => match never {},
        }
    }

    /// Decrypts the resource with the merchant's APIv3 key; rejects any algorithm other than
    /// `AEAD_AES_256_GCM`.
    pub fn decrypt(&self, api_v3_key: &[u8]) -> Result<Vec<u8>, ResourceError> {
        let r = &self.resource;
        if r.algorithm != ALGORITHM_AEAD_AES_256_GCM {
            return Err(ResourceError::UnsupportedAlgorithm(r.algorithm.clone()));
        }
        Ok(aead::decrypt(
            api_v3_key,
            &r.nonce,
            &r.associated_data,
            &r.ciphertext,
        )?)
    }

    /// [`Self::decrypt`], as UTF-8 text.
    pub fn decrypt_utf8(&self, api_v3_key: &[u8]) -> Result<String, ResourceError> {
        String::from_utf8(self.decrypt(api_v3_key)?).map_err(|_| ResourceError::Utf8)
    }

    /// Decrypts and parses a payment resource (`TRANSACTION.*` events).
    pub fn decrypt_transaction(&self, api_v3_key: &[u8]) -> Result<Transaction, ResourceError> {
        Transaction::parse(&self.decrypt(api_v3_key)?)
    }

    /// Decrypts and parses a refund resource (`REFUND.*` events).
    pub fn decrypt_refund(&self, api_v3_key: &[u8]) -> Result<RefundResource, ResourceError> {
        RefundResource::parse(&self.decrypt(api_v3_key)?)
    }
}

/// The provider's `sp_mchid` when the resource is in the partner form, else `mchid`.
fn provider_or<'a>(sp_mchid: &'a str, mchid: &'a str) -> &'a str {
    if sp_mchid.is_empty() {
        mchid
    } else {
        sp_mchid
    }
}

fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A payment (the decrypted resource of `TRANSACTION.SUCCESS`, and the body of the order query
/// 查询订单 used by the reconciler), of a direct merchant (`appid`, `mchid`) or of a service
/// provider's sub-merchant (`sp_appid`, `sp_mchid`, `sub_appid`, `sub_mchid`). [`Self::parse`]
/// requires one of the two forms; read the merchant through [`Self::merchant`],
/// [`Self::sub_merchant`] and [`Self::paid_appid`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// Direct merchant: the app the order was made in (empty in the partner form).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub appid: String,
    /// Direct merchant: its id (empty in the partner form).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mchid: String,
    /// Partner form: the service provider's appid.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sp_appid: String,
    /// Partner form: the service provider's merchant id, whose keys sign and encrypt.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sp_mchid: String,
    /// Partner form: the sub-merchant's appid, when the order was placed with one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_appid: String,
    /// Partner form: the sub-merchant the order belongs to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_mchid: String,
    /// The merchant's order number.
    pub out_trade_no: String,
    /// WeChat Pay's order number (absent for unpaid orders in queries).
    #[serde(default)]
    pub transaction_id: String,
    /// JSAPI, NATIVE, APP, MICROPAY, MWEB, FACEPAY.
    #[serde(default)]
    pub trade_type: String,
    /// SUCCESS, REFUND, NOTPAY, CLOSED, REVOKED, USERPAYING, PAYERROR.
    pub trade_state: String,
    /// Description of the state.
    #[serde(default)]
    pub trade_state_desc: String,
    /// RFC 3339 time of payment, e.g. `2018-06-08T10:34:56+08:00`.
    #[serde(default)]
    pub success_time: Option<String>,
    /// Merchant's attach data, returned as given.
    #[serde(default)]
    pub attach: String,
    /// Amounts; absent in some query answers for unpaid orders.
    pub amount: Option<TransactionAmount>,
    /// Who paid (absent in query answers for unpaid orders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<Payer>,
    /// The payer's bank, e.g. `CMC` (招商银行信用卡) or `OTHERS`.
    #[serde(default)]
    pub bank_type: String,
    /// Coupons and discounts applied (优惠功能), passed on as WeChat Pay wrote them: their
    /// shape varies by promotion and nothing here is computed from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion_detail: Option<serde_json::Value>,
}

/// The payer of a payment: `openid` for a direct merchant; a service provider's payment names
/// `sp_openid` (under the provider's appid) and `sub_openid` (under the `sub_appid`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payer {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub openid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sp_openid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_openid: String,
}

impl Payer {
    /// The openid under the appid the order was paid in ([`Transaction::paid_appid`]):
    /// `sub_openid` when there is one, else `openid` / `sp_openid`.
    pub fn paid_openid(&self) -> &str {
        [&self.sub_openid, &self.openid, &self.sp_openid]
            .into_iter()
            .find(|id| !id.is_empty())
            .map_or("", String::as_str)
    }
}

/// Amounts of a payment, in fen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionAmount {
    /// Order total in fen: what the order was created with.
    pub total: i64,
    /// What the payer actually paid in fen (total minus discounts).
    #[serde(default)]
    pub payer_total: Option<i64>,
    /// Currency of `total`, `CNY`.
    #[serde(default)]
    pub currency: String,
    /// Currency the payer paid in.
    #[serde(default)]
    pub payer_currency: String,
}

impl Transaction {
    /// Parses a decrypted payment resource: `appid` and `mchid` (a direct merchant), or
    /// `sp_appid`, `sp_mchid` and `sub_mchid` (a sub-merchant of a service provider), never
    /// a mixture (which merchant it names would be a guess).
    pub fn parse(json_bytes: &[u8]) -> Result<Self, ResourceError> {
        let t: Self = json(json_bytes)?;
        let set = |field: &String| !field.is_empty();
        let direct_fields = set(&t.appid) || set(&t.mchid);
        let partner_fields = [&t.sp_appid, &t.sp_mchid, &t.sub_appid, &t.sub_mchid];
        let direct = set(&t.appid) && set(&t.mchid) && !partner_fields.into_iter().any(set);
        let partner = set(&t.sp_appid) && set(&t.sp_mchid) && set(&t.sub_mchid) && !direct_fields;
        if !direct && !partner {
            return Err(ResourceError::Json(
                "a payment names either appid and mchid, or sp_appid, sp_mchid and sub_mchid"
                    .into(),
            ));
        }
        Ok(t)
    }

    /// The merchant whose keys sign and encrypt: `mchid`, or the provider's `sp_mchid`.
    pub fn merchant(&self) -> &str {
        provider_or(&self.sp_mchid, &self.mchid)
    }

    /// The sub-merchant the order belongs to; empty for a direct merchant.
    pub fn sub_merchant(&self) -> &str {
        &self.sub_mchid
    }

    /// The appid the order was paid in: `appid`; in the partner form the `sub_appid` when
    /// the order was placed with one, else the provider's `sp_appid`.
    pub fn paid_appid(&self) -> &str {
        [&self.sub_appid, &self.sp_appid, &self.appid]
            .into_iter()
            .find(|id| !id.is_empty())
            .map_or("", String::as_str)
    }

    /// `trade_state` typed; `None` when it is none of WeChat Pay's (the field stays text so
    /// that such an answer still parses and can be reported as it is).
    pub fn state(&self) -> Option<TradeState> {
        TradeState::parse(&self.trade_state)
    }

    /// True when `trade_state` is `SUCCESS` (the only state that marks an order paid).
    pub fn is_success(&self) -> bool {
        self.state() == Some(TradeState::Success)
    }

    /// `success_time` as UTC; `None` when absent or not RFC 3339.
    pub fn paid_at(&self) -> Option<DateTime<Utc>> {
        parse_time(self.success_time.as_deref())
    }
}

/// A refund (the decrypted resource of `REFUND.*` notifications).
///
/// `refund_status` also accepts the name `status`, and `mchid` may be absent, so that the
/// answer of the refund query (查询单笔退款), which uses those forms, parses too. A service
/// provider's sub-merchant's refund names `sp_mchid` and `sub_mchid` instead of `mchid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundResource {
    /// Merchant id (empty when absent: compare it with the expected merchant).
    #[serde(default)]
    pub mchid: String,
    /// Partner form: the service provider's merchant id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sp_mchid: String,
    /// Partner form: the sub-merchant the refunded order belongs to (the refund query's
    /// answer names it too).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_mchid: String,
    /// The merchant's order number.
    pub out_trade_no: String,
    /// WeChat Pay's order number.
    pub transaction_id: String,
    /// The merchant's refund number (dedupe key of refunds).
    pub out_refund_no: String,
    /// WeChat Pay's refund id.
    pub refund_id: String,
    /// SUCCESS | CLOSED | ABNORMAL | PROCESSING.
    #[serde(alias = "status")]
    pub refund_status: String,
    /// RFC 3339 time the refund succeeded.
    #[serde(default)]
    pub success_time: Option<String>,
    /// Where the money went back, e.g. `招商银行信用卡0403`.
    #[serde(default)]
    pub user_received_account: String,
    /// Which of the merchant's funds paid the refund (`UNSETTLED`, `AVAILABLE`, …): in the
    /// refund query's answer, not in the notification.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub funds_account: String,
    /// Amounts in fen.
    pub amount: RefundAmount,
}

/// Amounts of a refund, in fen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundAmount {
    /// Total of the original order.
    pub total: i64,
    /// Amount refunded by this refund.
    pub refund: i64,
    /// What the payer paid. Optional: only `total` and `refund` move money here, and a
    /// sender that leaves the payer's view out must not get its refund parked.
    #[serde(default)]
    pub payer_total: Option<i64>,
    /// What goes back to the payer (optional, as `payer_total`).
    #[serde(default)]
    pub payer_refund: Option<i64>,
    /// Currency of the amounts (`CNY`); optional, as in the refund notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

impl RefundResource {
    /// Parses a decrypted refund resource.
    pub fn parse(json_bytes: &[u8]) -> Result<Self, ResourceError> {
        json(json_bytes)
    }

    /// The merchant whose keys sign and encrypt: `sp_mchid` of a provider, else `mchid`
    /// (empty when the answer names neither).
    pub fn merchant(&self) -> &str {
        provider_or(&self.sp_mchid, &self.mchid)
    }

    /// `refund_status` typed; `None` when it is none of WeChat Pay's.
    pub fn status(&self) -> Option<RefundStatus> {
        RefundStatus::parse(&self.refund_status)
    }

    /// `success_time` as UTC; `None` when absent or not RFC 3339.
    pub fn succeeded_at(&self) -> Option<DateTime<Utc>> {
        parse_time(self.success_time.as_deref())
    }
}
