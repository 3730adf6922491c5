//! From a queue message to one channel-agnostic event.
//!
//! The queue is a trust boundary: every message is re-verified here with the merchant's
//! keys (the timestamp is not re-checked: a retried message is legitimately old), and a
//! message that fails is poison, parked and never applied. Whatever channel brought the
//! news (v2 XML, v3 JSON, the reconciler's query answers), the result is a [`Decoded`]:
//! `apply` never looks at the wire format.
//!
//! - v2 支付结果通知: <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_7>
//! - v2 退款结果通知 (no `sign`; the `req_info` decrypting under the merchant's key is the
//!   authentication): <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_16&index=10>
//! - v2 查询订单 / 查询退款: <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_2>,
//!   <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_5>
//! - v3 notifications and responses:
//!   <https://pay.weixin.qq.com/docs/merchant/development/interface-rules/signature-verification.html>
//! - A service provider's (服务商) notifications and answers are verified with the provider's
//!   keys and name the sub-merchant (v2 `sub_mch_id`, `sub_appid`:
//!   <https://pay.weixin.qq.com/wiki/doc/api/jsapi_sl.php?chapter=9_7>; v3 `sp_mchid`,
//!   `sub_mchid`, `sub_appid`: <https://pay.weixin.qq.com/doc/v3/partner/4012085801>): the
//!   event carries it in `sub_mch_id` (empty for a direct merchant), and `appid` is the one
//!   the order was paid in (the `sub_appid` when there is one, else the provider's).
//! - A combine payment (合单支付) arrives as a plain payment does (`TRANSACTION.SUCCESS`,
//!   `original_type` `transaction`; its query answer as `query.pay`) and is told apart by its
//!   shape (`wxpay_shared::v3::combine::is_combine`): it becomes one [`Decoded::Combine`] whose
//!   sub orders are payments of their own merchants:
//!   <https://pay.weixin.qq.com/docs/merchant/apis/combine-payment/orders/combine-payment-notice.html>

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use wxpay_runtime::config::{Merchant, Merchants};
use wxpay_shared::message::{NotifyKind, NotifyMessage};
use wxpay_shared::state::{RefundState, RefundStatus, TradeState};
use wxpay_shared::v2::{self, PayNotification, RefundEnvelope, RefundInfo, XmlFields};
use wxpay_shared::v3::combine::{self, CombineTransaction, SubOrder};
use wxpay_shared::v3::forwarded::{self, ForwardedFamily};
use wxpay_shared::v3::{
    verify_notification, verify_response, EventType, NotificationEnvelope, RefundResource,
    TimestampCheck, Transaction, WechatpayHeaders,
};

/// A payment result, whichever channel brought it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayEvent {
    /// The merchant named inside the signed body (a service provider's own id).
    pub mch_id: String,
    /// The service provider's sub-merchant named inside the body; empty for a direct merchant.
    pub sub_mch_id: String,
    /// The appid the order was paid in: `sub_appid` when the body has one, else `appid` /
    /// `sp_appid`.
    pub appid: String,
    pub out_trade_no: String,
    /// WeChat Pay's order number; absent for unpaid states of query answers.
    pub transaction_id: Option<String>,
    /// Order amount in fen.
    pub amount_total: i64,
    /// Paid (`SUCCESS`, or `REFUND` in a query answer: it was paid, then refunded).
    pub success: bool,
    /// `SUCCESS`, or the failure / trade state as WeChat Pay wrote it.
    pub state_text: String,
    pub paid_at: Option<DateTime<Utc>>,
    /// ISO 4217 currency of `amount_total` (`fee_type`, `amount.currency`); WeChat Pay's
    /// default `CNY` when the message names none.
    pub currency: String,
    /// Everything else the message says, for the business system.
    pub details: PayDetails,
    /// The decrypted resource of a v3 notification as WeChat Pay wrote it, stored with the
    /// notification for audit (its raw body is ciphertext); `None` where the raw body is
    /// already clear text.
    pub resource: Option<Value>,
}

impl PayEvent {
    /// The business key of this payment: `pay:{merchant}:{transaction_id}`, where
    /// `{merchant}` is the `mch_id` of a direct merchant (the keys of before service providers,
    /// unchanged) and `{mch_id}.{sub_mch_id}` of a provider's sub-merchant. A payment that did
    /// not succeed may have no transaction id: its key holds the order, the state and the
    /// SHA-256 of the body, so WeChat's re-sends of it still dedupe. A combine payment's sub
    /// order has this key too, so it is the same payment whichever channel brings it.
    pub fn dedupe_key(&self, body: &[u8]) -> String {
        let merchant = merchant_key(&self.mch_id, &self.sub_mch_id);
        match (&self.transaction_id, self.success) {
            (Some(transaction_id), true) => format!("pay:{merchant}:{transaction_id}"),
            _ => format!(
                "pay:{merchant}:{}:{}:{}",
                self.out_trade_no,
                self.state_text,
                hex::encode(Sha256::digest(body))
            ),
        }
    }
}

/// `{mch_id}` of a direct merchant, `{mch_id}.{sub_mch_id}` of a provider's sub-merchant.
fn merchant_key(mch_id: &str, sub_mch_id: &str) -> String {
    match sub_mch_id {
        "" => mch_id.to_owned(),
        sub_mch_id => format!("{mch_id}.{sub_mch_id}"),
    }
}

/// A combine payment (合单支付): several orders, each of its own merchant, paid at once, as
/// its notification or the combine query's answer tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CombineEvent {
    /// The merchant that started the combine payment (`combine_mchid`): the message is
    /// addressed to it.
    pub combine_mch_id: String,
    /// Its number for the whole combine payment (not an order's number).
    pub combine_out_trade_no: String,
    /// One payment per sub order, each naming its own merchant (`mchid`, `sub_mchid`).
    pub sub_orders: Vec<PayEvent>,
    /// The decrypted resource of the notification, stored with its rows (as
    /// [`PayEvent::resource`]); `None` for the combine query's answer.
    pub resource: Option<Value>,
}

impl CombineEvent {
    /// The key of the combine message itself: `combine:{combine_mchid}:{combine_out_trade_no}:
    /// {sha256}`, the SHA-256 (hex) over each sub order's merchant, sub-merchant, order,
    /// state and transaction, in the message's order. A re-send says the same and dedupes; a
    /// later query answer in which more sub orders are paid says something new and is
    /// applied, its sub orders already booked being duplicates under their own keys.
    pub fn dedupe_key(&self) -> String {
        let mut states = Sha256::new();
        for sub in &self.sub_orders {
            let transaction_id = sub.transaction_id.as_deref().unwrap_or_default();
            states.update(format!(
                "{}|{}|{}|{}|{transaction_id}\n",
                sub.mch_id, sub.sub_mch_id, sub.out_trade_no, sub.state_text
            ));
        }
        format!(
            "combine:{}:{}:{}",
            self.combine_mch_id,
            self.combine_out_trade_no,
            hex::encode(states.finalize())
        )
    }

    /// The sub order whose own payment key ([`PayEvent::dedupe_key`]) is `key`.
    pub fn sub_order_keyed(&self, key: &str, body: &[u8]) -> Option<&PayEvent> {
        self.sub_orders
            .iter()
            .find(|sub| sub.dedupe_key(body) == key)
    }
}

/// What a payment result says beyond what moves money: passed on in `order.paid` for the
/// business system (shipping, accounting, loyalty); nothing here is checked or applied.
/// Fields absent from the message are `None` (`null` in the event: every event of a type
/// has the same keys); serialised, it is those fields of the event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PayDetails {
    /// The merchant's `attach`, echoed back as the order was created with it.
    pub attach: Option<String>,
    /// The payer's openid under the appid the order was paid in (v2 `sub_openid` / `openid`,
    /// v3 `payer.sub_openid` / `payer.openid` / `payer.sp_openid`).
    pub payer_openid: Option<String>,
    /// What the payer paid in fen, after discounts (v2 `cash_fee`, v3 `amount.payer_total`).
    pub payer_total: Option<i64>,
    /// Currency of `payer_total` (v2 `cash_fee_type`, v3 `amount.payer_currency`).
    pub payer_currency: Option<String>,
    /// `JSAPI`, `NATIVE`, `APP`, `MWEB`, …
    pub trade_type: Option<String>,
    /// The payer's bank, e.g. `CMC`.
    pub bank_type: Option<String>,
    /// Coupons and discounts: v3 `promotion_detail` as WeChat Pay wrote it; v2's numbered
    /// `coupon_id_$n` / `coupon_type_$n` / `coupon_fee_$n` as a list of
    /// `{coupon_id, type, amount}`.
    pub promotion_detail: Option<Value>,
}

/// What a refund result says beyond what moves money: passed on in `order.refunded` and
/// `refund.updated`, as [`PayDetails`] in `order.paid`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RefundDetails {
    /// What goes back to the payer in fen (v3 `amount.payer_refund`; v2
    /// `settlement_refund_fee`, the refund net of non-cash coupons).
    pub payer_refund: Option<i64>,
    /// What the payer paid for the order in fen (v3 `amount.payer_total`; v2
    /// `settlement_total_fee`).
    pub payer_total: Option<i64>,
    /// Where the money went back, e.g. `招商银行信用卡0403` (v2 `refund_recv_accout`).
    pub user_received_account: Option<String>,
    /// Which of the merchant's funds paid it (v3 query `funds_account`, v2 `refund_account`).
    pub funds_account: Option<String>,
}

/// A verified notification of a kind that moves no order here (merchant transfers, profit
/// sharing, pay score, any kind WeChat Pay adds): recorded `FORWARDED` and published as a
/// `wechatpay.<event_type>` event ([`wxpay_shared::v3::forwarded`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardEvent {
    /// The merchant whose keys verified and decrypted it.
    pub mch_id: String,
    /// The resource's `sub_mchid`; empty when it names none.
    pub sub_mch_id: String,
    /// The merchant the resource itself names (`mchid`, `mch_id`, `sp_mchid`); empty when
    /// it names none or the kind is not read typed.
    pub named_mch_id: String,
    pub family: ForwardedFamily,
    /// The envelope's `id`.
    pub notification_id: String,
    pub event_type: String,
    pub original_type: String,
    pub create_time: String,
    pub summary: String,
    /// The decrypted resource, as WeChat Pay wrote it.
    pub resource: Value,
    /// What identifies the news whichever notification id carries it (the dedupe key's tail).
    pub business_id: String,
}

impl ForwardEvent {
    /// The routing key of its event on the events exchange.
    pub fn routing_key(&self) -> String {
        format!("{FORWARDED_EVENT_PREFIX}{}", self.event_type)
    }
}

/// Routing keys of forwarded notifications begin with this.
pub const FORWARDED_EVENT_PREFIX: &str = "wechatpay.";

/// A refund result, whichever channel brought it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundEvent {
    pub mch_id: String,
    /// The service provider's sub-merchant; empty for a direct merchant.
    pub sub_mch_id: String,
    pub out_trade_no: String,
    pub out_refund_no: String,
    pub refund_id: String,
    /// Refund amount in fen.
    pub refund_fee: i64,
    /// Normalised ([`RefundStatus::normalised`]): the dedupe key uses this word, so the same
    /// news from two channels dedupes.
    pub status: RefundState,
    pub succeeded_at: Option<DateTime<Utc>>,
    /// Currency of the refund; `CNY` when the message names none.
    pub currency: String,
    /// Everything else the message says, for the business system.
    pub details: RefundDetails,
    /// The decrypted resource (v3) or `req_info` (v2, as an object of its fields), kept as
    /// [`PayEvent::resource`]; `None` for query answers (clear text already).
    pub resource: Option<Value>,
    /// What a v2 refund notification says of its order. Its `req_info` is AES-256-ECB
    /// without integrity of its own, so these must agree with the order before money moves.
    pub order_check: Option<RefundOrderCheck>,
}

/// The order as a refund notification describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundOrderCheck {
    pub transaction_id: String,
    /// The order's total in fen.
    pub total_fee: i64,
}

/// WeChat Pay's currency when a message names none.
pub const DEFAULT_CURRENCY: &str = "CNY";

fn currency_or_default(currency: Option<&str>) -> String {
    currency
        .filter(|c| !c.is_empty())
        .unwrap_or(DEFAULT_CURRENCY)
        .to_owned()
}

/// The one internal event type `apply` works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Pay(PayEvent),
    Refund(RefundEvent),
    Combine(CombineEvent),
    Forward(ForwardEvent),
}

impl Decoded {
    /// The business dedupe key, identical whichever channel brought the news:
    /// [`PayEvent::dedupe_key`] for a payment, `refund:{merchant}:{refund_id}:{status}` for a
    /// refund (`{merchant}` as for a payment), [`CombineEvent::dedupe_key`] for the message
    /// of a combine payment (each of its sub orders is booked under its own payment key). A
    /// forwarded notification's key is `{family}:{merchant}:{business id}` (e.g.
    /// `transfer:{merchant}:{out_bill_no}:{state}`; `notification:{merchant}:{id}` for a kind
    /// not read typed).
    pub fn dedupe_key(&self, body: &[u8]) -> String {
        match self {
            Decoded::Pay(pay) => pay.dedupe_key(body),
            Decoded::Refund(refund) => format!(
                "refund:{}:{}:{}",
                merchant_key(&refund.mch_id, &refund.sub_mch_id),
                refund.refund_id,
                refund.status.as_str()
            ),
            Decoded::Combine(combine) => combine.dedupe_key(),
            Decoded::Forward(forward) => format!(
                "{}:{}:{}",
                forward.family.as_str(),
                merchant_key(&forward.mch_id, &forward.sub_mch_id),
                forward.business_id
            ),
        }
    }

    /// The decrypted resource to store with the notification, when there is one.
    pub fn resource(&self) -> Option<&Value> {
        match self {
            Decoded::Pay(pay) => pay.resource.as_ref(),
            Decoded::Refund(refund) => refund.resource.as_ref(),
            Decoded::Forward(forward) => Some(&forward.resource),
            Decoded::Combine(combine) => combine.resource.as_ref(),
        }
    }

    /// The merchant named in the signed body.
    pub fn mch_id(&self) -> &str {
        match self {
            Decoded::Pay(pay) => &pay.mch_id,
            Decoded::Refund(refund) => &refund.mch_id,
            Decoded::Combine(combine) => &combine.combine_mch_id,
            Decoded::Forward(forward) => &forward.mch_id,
        }
    }

    /// The sub-merchant named in the body; empty for a direct merchant and for a combine
    /// payment (its sub orders name theirs).
    pub fn sub_mch_id(&self) -> &str {
        match self {
            Decoded::Pay(pay) => &pay.sub_mch_id,
            Decoded::Refund(refund) => &refund.sub_mch_id,
            Decoded::Combine(_) => "",
            Decoded::Forward(forward) => &forward.sub_mch_id,
        }
    }

    /// The order the news is about: a combine payment's own number (`combine_out_trade_no`),
    /// empty for a forwarded notification.
    pub fn out_trade_no(&self) -> &str {
        match self {
            Decoded::Pay(pay) => &pay.out_trade_no,
            Decoded::Refund(refund) => &refund.out_trade_no,
            Decoded::Combine(combine) => &combine.combine_out_trade_no,
            Decoded::Forward(_) => "",
        }
    }
}

/// Why a message is poison. Each has a short stable code (park reason, metric label).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown merchant {0}")]
    UnknownMerchant(String),
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
    #[error("merchant {0} has no APIv3 key")]
    NoV3Key(String),
    #[error("query answer is not SUCCESS: {0}")]
    QueryFailed(String),
}

impl DecodeError {
    /// Park reason code (also the `reason` label of `wxpay_worker_parked_total`).
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::UnknownMerchant(_) => "unknown_merchant",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::BadSignature(_) => "bad_signature",
            DecodeError::Decrypt(_) => "decrypt_failed",
            DecodeError::NoV3Key(_) => "no_v3_key",
            DecodeError::QueryFailed(_) => "query_failed",
        }
    }
}

fn malformed(error: impl std::fmt::Display) -> DecodeError {
    DecodeError::Malformed(error.to_string())
}

/// The configured merchant `message` is addressed to.
pub fn merchant_of<'m>(
    message: &NotifyMessage,
    merchants: &'m Merchants,
) -> Result<&'m Merchant, DecodeError> {
    merchants
        .get(&message.mch_id)
        .map(AsRef::as_ref)
        .ok_or_else(|| DecodeError::UnknownMerchant(message.mch_id.clone()))
}

/// Verifies and decodes `message` with the keys of the merchant it is addressed to.
pub fn decode(message: &NotifyMessage, merchants: &Merchants) -> Result<Decoded, DecodeError> {
    let merchant = merchant_of(message, merchants)?;
    let body = message.body.as_slice();
    match message.kind {
        NotifyKind::V2Pay => decode_v2_pay(body, merchant),
        NotifyKind::V2Refund => decode_v2_refund(body, merchant),
        NotifyKind::V3 => {
            let headers = message
                .wechatpay
                .as_ref()
                .ok_or_else(|| malformed("v3 message without wechatpay headers"))?;
            decode_v3(headers, body, merchant)
        }
        NotifyKind::QueryPay => match message.wechatpay.as_ref() {
            // The combine query (v3 only) answers in the combine's shape.
            Some(headers) if combine::is_combine(body) => {
                verify_v3_response(headers, body, merchant)?;
                combine_from(body, None)
            }
            headers => order_query_answer(headers, body, merchant).map(Decoded::Pay),
        },
        NotifyKind::QueryRefund => {
            let decoded = match &message.wechatpay {
                Some(headers) => {
                    verify_v3_response(headers, body, merchant)?;
                    let resource = RefundResource::parse(body).map_err(malformed)?;
                    refund_from_resource(resource, None, merchant)
                }
                None => decode_v2_refund_query(body, merchant),
            }?;
            asked_sub_merchant(decoded, message.sub_mch_id.as_deref())
        }
    }
}

/// A refund query's answer is about the sub-merchant the reconciler asked about: WeChat Pay's
/// v3 answer need not name it (<https://pay.weixin.qq.com/docs/partner/apis/partner-jsapi-payment/query-by-out-refund-no.html>),
/// so the one the message carries fills in; an answer naming another is not about it.
fn asked_sub_merchant(mut decoded: Decoded, asked: Option<&str>) -> Result<Decoded, DecodeError> {
    if let (Decoded::Refund(refund), Some(asked)) = (&mut decoded, asked) {
        match refund.sub_mch_id.as_str() {
            "" => refund.sub_mch_id = asked.to_owned(),
            named if named == asked => {}
            named => {
                return Err(malformed(format!(
                    "refund query answer names sub-merchant {named}, asked about {asked}"
                )))
            }
        }
    }
    Ok(decoded)
}

/// Decodes a notification read back from the `notifications` table (`anomaly resolve
/// --action reapply`): as [`decode`], except for v3 notification rows written before the
/// `Wechatpay-*` headers were stored with them (`notifications.wechatpay_headers` NULL).
/// Those cannot have their RSA signature checked again, and need not: the resource is
/// AEAD_AES_256_GCM under the merchant's APIv3 key, which only WeChat Pay and the merchant
/// hold, so a resource that decrypts (tag verified) was written by WeChat Pay; and the row
/// itself was written by this worker only after the full verification. The envelope's
/// clear-text fields only choose the resource's parser: a wrong choice fails to parse.
/// A v3 query answer is signed but not encrypted: without its headers it reads as v2 and
/// fails the v2 signature check, so it is never applied unverified.
pub fn decode_recorded(
    message: &NotifyMessage,
    merchants: &Merchants,
) -> Result<Decoded, DecodeError> {
    if message.kind == NotifyKind::V3 && message.wechatpay.is_none() {
        return decrypt_v3(&message.body, merchant_of(message, merchants)?);
    }
    decode(message, merchants)
}

fn v2_key(merchant: &Merchant) -> &str {
    merchant.api_v2_key.expose_secret()
}

fn verified_v2_fields(body: &[u8], merchant: &Merchant) -> Result<XmlFields, DecodeError> {
    let fields = XmlFields::parse(body).map_err(malformed)?;
    v2::verify(&fields, v2_key(merchant)).map_err(|e| DecodeError::BadSignature(e.to_string()))?;
    Ok(fields)
}

fn decode_v2_pay(body: &[u8], merchant: &Merchant) -> Result<Decoded, DecodeError> {
    let fields = verified_v2_fields(body, merchant)?;
    if fields.get("return_code") == Some(v2::SUCCESS)
        && fields.get("result_code") != Some(v2::SUCCESS)
    {
        return Ok(failed_v2_pay(&fields, merchant));
    }
    let n = PayNotification::from_fields(&fields).map_err(malformed)?;
    let success = n.is_success();
    let transaction_id = Some(n.transaction_id.clone()).filter(|id| !id.is_empty());
    if success && transaction_id.is_none() {
        return Err(malformed("successful payment without transaction_id"));
    }
    let state_text = pay_state_text(
        success,
        n.err_code
            .clone()
            .or_else(|| n.result_code.clone())
            .unwrap_or_else(|| n.return_code.clone()),
    );
    let paid_at = n.paid_at();
    Ok(Decoded::Pay(PayEvent {
        resource: None,
        details: v2_pay_details(&fields),
        currency: currency_or_default(n.fee_type.as_deref()),
        mch_id: non_empty_or(n.mch_id, &merchant.mch_id),
        sub_mch_id: n.sub_mch_id.unwrap_or_default(),
        appid: n.sub_appid.unwrap_or(n.appid),
        out_trade_no: n.out_trade_no,
        transaction_id,
        amount_total: n.total_fee,
        success,
        state_text,
        paid_at,
    }))
}

/// [`PayEvent::state_text`]: `SUCCESS` for a paid order, else what WeChat Pay reported.
fn pay_state_text(success: bool, reported: String) -> String {
    if success {
        TradeState::Success.as_str().to_owned()
    } else {
        reported
    }
}

/// A payment that failed (`result_code` FAIL) is recorded, not applied: read it leniently,
/// since WeChat Pay may leave out `transaction_id` (and amounts) of a failed payment.
fn failed_v2_pay(fields: &XmlFields, merchant: &Merchant) -> Decoded {
    let text = |name: &str| fields.get(name).unwrap_or_default().to_owned();
    let state_text = fields
        .get("err_code")
        .or_else(|| fields.get("result_code"))
        .filter(|s| !s.is_empty())
        .unwrap_or("FAIL")
        .to_owned();
    Decoded::Pay(PayEvent {
        resource: None,
        mch_id: non_empty_or(text("mch_id"), &merchant.mch_id),
        sub_mch_id: text("sub_mch_id"),
        appid: v2_paid_appid(fields),
        out_trade_no: text("out_trade_no"),
        transaction_id: fields
            .get("transaction_id")
            .filter(|id| !id.is_empty())
            .map(str::to_owned),
        amount_total: fields
            .get("total_fee")
            .and_then(|fee| fen("total_fee", fee).ok())
            .unwrap_or(0),
        success: false,
        state_text,
        paid_at: None,
        currency: currency_or_default(fields.get("fee_type")),
        details: v2_pay_details(fields),
    })
}

/// [`PayDetails`] of a v2 payment notification or order query answer
/// (<https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_7>): a service provider's
/// names the payer under the `sub_appid` as `sub_openid`.
fn v2_pay_details(fields: &XmlFields) -> PayDetails {
    let text = |name: &str| {
        fields
            .get(name)
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    };
    let coupons: Vec<Value> = (0..fields
        .get("coupon_count")
        .and_then(|count| count.parse::<usize>().ok())
        .unwrap_or(0))
        .filter_map(|n| {
            Some(serde_json::json!({
                "coupon_id": text(&format!("coupon_id_{n}"))?,
                "type": text(&format!("coupon_type_{n}")),
                "amount": fields.get(&format!("coupon_fee_{n}")).and_then(|fee| fen("coupon_fee", fee).ok()),
            }))
        })
        .collect();
    PayDetails {
        attach: text("attach"),
        payer_openid: text("sub_openid").or_else(|| text("openid")),
        payer_total: fields
            .get("cash_fee")
            .and_then(|fee| fen("cash_fee", fee).ok()),
        payer_currency: text("cash_fee_type"),
        trade_type: text("trade_type"),
        bank_type: text("bank_type"),
        promotion_detail: (!coupons.is_empty()).then_some(Value::Array(coupons)),
    }
}

/// `value`, unless it is empty (a field WeChat Pay left out or blank).
fn text(value: &str) -> Option<String> {
    Some(value.to_owned()).filter(|value| !value.is_empty())
}

/// [`PayDetails`] of a v3 payment or order query answer.
fn v3_pay_details(t: &Transaction) -> PayDetails {
    let amount = t.amount.as_ref();
    PayDetails {
        payer_openid: t.payer.as_ref().and_then(|payer| text(payer.paid_openid())),
        payer_total: amount.and_then(|amount| amount.payer_total),
        payer_currency: amount.and_then(|amount| text(&amount.payer_currency)),
        promotion_detail: t.promotion_detail.clone(),
        ..order_texts(&t.attach, &t.trade_type, &t.bank_type)
    }
}

/// The [`PayDetails`] a v3 payment or sub order names alike, blank ones left out.
fn order_texts(attach: &str, trade_type: &str, bank_type: &str) -> PayDetails {
    PayDetails {
        attach: text(attach),
        trade_type: text(trade_type),
        bank_type: text(bank_type),
        ..PayDetails::default()
    }
}

/// The appid a v2 payment or order query names for its order: a service provider's
/// `sub_appid` when there is one, else `appid`.
fn v2_paid_appid(fields: &XmlFields) -> String {
    fields
        .get("sub_appid")
        .filter(|id| !id.is_empty())
        .or_else(|| fields.get("appid"))
        .unwrap_or_default()
        .to_owned()
}

fn non_empty_or(value: String, fallback: &str) -> String {
    if value.is_empty() {
        fallback.to_owned()
    } else {
        value
    }
}

fn decode_v2_refund(body: &[u8], merchant: &Merchant) -> Result<Decoded, DecodeError> {
    let fields = XmlFields::parse(body).map_err(malformed)?;
    let envelope = RefundEnvelope::from_fields(&fields).map_err(malformed)?;
    if envelope.return_code != v2::SUCCESS {
        return Err(DecodeError::QueryFailed(format!(
            "refund notification return_code {}",
            envelope.return_code
        )));
    }
    // No sign in refund notifications: decrypting under this merchant's key authenticates.
    let root = v2::decrypt_req_info(&envelope.req_info, v2_key(merchant))
        .map_err(|e| DecodeError::Decrypt(e.to_string()))?;
    let info = RefundInfo::from_fields(&root).map_err(malformed)?;
    let succeeded_at = info.succeeded_at();
    let status = info.refund_status.normalised();
    let currency = currency_or_default(
        root.get("refund_fee_type")
            .filter(|c| !c.is_empty())
            .or_else(|| root.get("fee_type")),
    );
    let text = |name: &str| {
        root.get(name)
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    };
    let details = RefundDetails {
        payer_refund: info.settlement_refund_fee,
        payer_total: root
            .get("settlement_total_fee")
            .and_then(|fee| fen("settlement_total_fee", fee).ok()),
        user_received_account: info.refund_recv_accout.clone(),
        funds_account: text("refund_account"),
    };
    Ok(Decoded::Refund(RefundEvent {
        details,
        resource: Some(Value::Object(
            root.iter()
                .map(|(name, value)| (name.to_owned(), Value::from(value)))
                .collect(),
        )),
        mch_id: non_empty_or(envelope.mch_id, &merchant.mch_id),
        sub_mch_id: envelope.sub_mch_id.unwrap_or_default(),
        out_trade_no: info.out_trade_no,
        out_refund_no: info.out_refund_no,
        refund_id: info.refund_id,
        refund_fee: info.refund_fee,
        status,
        succeeded_at,
        currency,
        order_check: Some(RefundOrderCheck {
            transaction_id: info.transaction_id,
            total_fee: info.total_fee,
        }),
    }))
}

fn decode_v3(
    headers: &WechatpayHeaders,
    body: &[u8],
    merchant: &Merchant,
) -> Result<Decoded, DecodeError> {
    verify_notification(headers, body, &merchant.platform_keys, TimestampCheck::Skip)
        .map_err(|e| DecodeError::BadSignature(e.code().to_owned()))?;
    decrypt_v3(body, merchant)
}

/// The resource of a v3 notification whose signature was checked (or, for
/// [`decode_recorded`], need not be).
fn decrypt_v3(body: &[u8], merchant: &Merchant) -> Result<Decoded, DecodeError> {
    let envelope = NotificationEnvelope::parse(body).map_err(malformed)?;
    let key = merchant
        .api_v3_key
        .as_ref()
        .ok_or_else(|| DecodeError::NoV3Key(merchant.mch_id.clone()))?;
    let plaintext = envelope
        .decrypt(key.expose_secret().as_bytes())
        .map_err(|e| DecodeError::Decrypt(e.to_string()))?;
    let event = envelope.event();
    let original_type = envelope.resource.original_type.as_str();
    // Told by original_type and shape, not by the event type alone: a direct merchant's
    // profit sharing arrives as TRANSACTION.SUCCESS with original_type `profitsharing`
    // (<https://pay.weixin.qq.com/wiki/doc/apiv3/apis/chapter8_1_10.shtml>).
    let family = ForwardedFamily::of(envelope.event_type.as_str(), original_type);
    // Read once as JSON: stored with the rows, forwarded, and what tells a combine payment.
    let resource = clear_resource(&plaintext)?;
    if event.is_refund() || original_type == "refund" {
        let refund = RefundResource::parse(&plaintext).map_err(malformed)?;
        refund_from_resource(refund, Some(resource), merchant)
    } else if family == ForwardedFamily::Other
        && (event == EventType::TransactionSuccess || original_type == "transaction")
    {
        if combine::is_combine_value(&resource) {
            return combine_from(&plaintext, Some(resource));
        }
        let transaction = Transaction::parse(&plaintext).map_err(malformed)?;
        pay_from_transaction(transaction, Some(resource), merchant).map(Decoded::Pay)
    } else {
        forward(&envelope, family, &plaintext, resource, merchant)
    }
}

/// The decrypted resource as JSON, to be stored and forwarded: any JSON WeChat Pay wrote;
/// a resource that is not JSON is kept as its text.
fn clear_resource(plaintext: &[u8]) -> Result<Value, DecodeError> {
    match serde_json::from_slice(plaintext) {
        Ok(value) => Ok(value),
        Err(_) => std::str::from_utf8(plaintext)
            .map(|text| Value::String(text.to_owned()))
            .map_err(|_| malformed("decrypted resource is neither JSON nor UTF-8 text")),
    }
}

/// At most this long, and of letters, digits, `.`, `_` and `-` only: it becomes an AMQP
/// routing key (a short string of at most 255 bytes) and a Prometheus-safe log field.
const MAX_EVENT_TYPE_LEN: usize = 64;

/// A verified notification of any other kind, to be forwarded as it is.
fn forward(
    envelope: &NotificationEnvelope,
    family: ForwardedFamily,
    plaintext: &[u8],
    resource: Value,
    merchant: &Merchant,
) -> Result<Decoded, DecodeError> {
    let event_type = envelope.event_type.as_str();
    if event_type.is_empty()
        || event_type.len() > MAX_EVENT_TYPE_LEN
        || !event_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(malformed(format!(
            "event_type is not 1 to {MAX_EVENT_TYPE_LEN} letters, digits, '.', '_' or '-'"
        )));
    }
    let identity = forwarded::identify(
        event_type,
        &envelope.resource.original_type,
        &envelope.id,
        plaintext,
    )
    .map_err(malformed)?;
    debug_assert_eq!(identity.family, family);
    Ok(Decoded::Forward(ForwardEvent {
        mch_id: merchant.mch_id.clone(),
        sub_mch_id: identity.sub_merchant,
        named_mch_id: identity.merchant,
        family,
        notification_id: envelope.id.clone(),
        event_type: event_type.to_owned(),
        original_type: envelope.resource.original_type.clone(),
        create_time: envelope.create_time.clone(),
        summary: envelope.summary.clone(),
        resource,
        business_id: identity.business_id,
    }))
}

/// An order query's answer (查询订单): API v3 JSON signed in `headers`, or API v2 XML signed
/// inside (`headers` `None`). Verified here, whoever checked it before.
pub fn order_query_answer(
    headers: Option<&WechatpayHeaders>,
    body: &[u8],
    merchant: &Merchant,
) -> Result<PayEvent, DecodeError> {
    match headers {
        Some(headers) => {
            verify_v3_response(headers, body, merchant)?;
            pay_from_transaction(Transaction::parse(body).map_err(malformed)?, None, merchant)
        }
        None => decode_v2_order_query(body, merchant),
    }
}

fn verify_v3_response(
    headers: &WechatpayHeaders,
    body: &[u8],
    merchant: &Merchant,
) -> Result<(), DecodeError> {
    verify_response(headers, body, &merchant.platform_keys, TimestampCheck::Skip)
        .map_err(|e| DecodeError::BadSignature(e.code().to_owned()))
}

/// `SUCCESS`, and `REFUND` (转入退款: paid, then refunded) of the order query, mean paid;
/// an unknown state does not.
fn is_paid_state(trade_state: &str) -> bool {
    TradeState::parse(trade_state).is_some_and(TradeState::is_paid)
}

/// What a v3 payment says, a plain one or a combine payment's sub order, in the words
/// [`PayEvent`] keeps.
struct V3Payment<'a> {
    mch_id: String,
    sub_mch_id: String,
    appid: String,
    out_trade_no: String,
    trade_state: String,
    transaction_id: &'a str,
    /// `total` (plain) or `total_amount` (sub order), and its currency.
    amount: Option<(i64, &'a str)>,
    paid_at: Option<DateTime<Utc>>,
    details: PayDetails,
}

/// The one [`PayEvent`] of a v3 payment: paid only with a transaction id and an amount.
fn pay_from_v3(p: V3Payment<'_>) -> Result<PayEvent, DecodeError> {
    let success = is_paid_state(&p.trade_state);
    let transaction_id = Some(p.transaction_id.to_owned()).filter(|id| !id.is_empty());
    if success && transaction_id.is_none() {
        return Err(malformed("paid transaction without transaction_id"));
    }
    let amount_total = match (p.amount, success) {
        (Some((total, _)), _) => total,
        (None, false) => 0,
        (None, true) => return Err(malformed("paid transaction without amount")),
    };
    Ok(PayEvent {
        details: p.details,
        resource: None,
        currency: currency_or_default(p.amount.map(|(_, currency)| currency)),
        mch_id: p.mch_id,
        sub_mch_id: p.sub_mch_id,
        appid: p.appid,
        out_trade_no: p.out_trade_no,
        transaction_id,
        amount_total,
        success,
        state_text: pay_state_text(success, p.trade_state),
        paid_at: p.paid_at,
    })
}

fn pay_from_transaction(
    t: Transaction,
    resource: Option<Value>,
    merchant: &Merchant,
) -> Result<PayEvent, DecodeError> {
    let pay = pay_from_v3(V3Payment {
        details: v3_pay_details(&t),
        mch_id: non_empty_or(t.merchant().to_owned(), &merchant.mch_id),
        sub_mch_id: t.sub_merchant().to_owned(),
        appid: t.paid_appid().to_owned(),
        paid_at: t.paid_at(),
        transaction_id: &t.transaction_id,
        amount: t.amount.as_ref().map(|a| (a.total, a.currency.as_str())),
        out_trade_no: t.out_trade_no.clone(),
        trade_state: t.trade_state.clone(),
    })?;
    Ok(PayEvent { resource, ..pay })
}

/// A combine payment's resource (decrypted by the caller, kept as `resource`) or query
/// answer (verified by the caller; clear text already, `resource` `None`).
fn combine_from(body: &[u8], resource: Option<Value>) -> Result<Decoded, DecodeError> {
    let combine = CombineTransaction::parse(body).map_err(malformed)?;
    let sub_orders = combine
        .sub_orders
        .iter()
        .map(|sub| pay_from_sub_order(&combine, sub))
        .collect::<Result<_, _>>()?;
    Ok(Decoded::Combine(CombineEvent {
        combine_mch_id: combine.combine_mchid,
        combine_out_trade_no: combine.combine_out_trade_no,
        sub_orders,
        resource,
    }))
}

/// A sub order as a payment of its own merchant, in the app it was paid in.
fn pay_from_sub_order(
    combine: &CombineTransaction,
    sub: &SubOrder,
) -> Result<PayEvent, DecodeError> {
    pay_from_v3(V3Payment {
        mch_id: sub.mchid.clone(),
        sub_mch_id: sub.sub_mchid.clone(),
        appid: sub.paid_appid(&combine.combine_appid).to_owned(),
        out_trade_no: sub.out_trade_no.clone(),
        trade_state: sub.trade_state.clone(),
        transaction_id: &sub.transaction_id,
        amount: sub
            .amount
            .as_ref()
            .map(|a| (a.total_amount, a.currency.as_str())),
        paid_at: sub.paid_at(),
        details: sub_order_details(combine, sub),
    })
}

/// A sub order's [`PayDetails`]: its own fields and the combine payment's payer. No
/// resource: the combine payment's is stored with every row of it ([`CombineEvent::resource`]).
fn sub_order_details(combine: &CombineTransaction, sub: &SubOrder) -> PayDetails {
    let amount = sub.amount.as_ref();
    PayDetails {
        payer_openid: text(combine.payer_openid()),
        payer_total: amount.and_then(|amount| amount.payer_amount),
        payer_currency: amount.and_then(|amount| text(&amount.payer_currency)),
        promotion_detail: sub.promotion_detail.clone(),
        ..order_texts(&sub.attach, &sub.trade_type, &sub.bank_type)
    }
}

/// A v3 refund notification's resource (`resource`: it decrypted) or refund query answer.
fn refund_from_resource(
    r: RefundResource,
    resource: Option<Value>,
    merchant: &Merchant,
) -> Result<Decoded, DecodeError> {
    let status = r
        .status()
        .ok_or_else(|| malformed(format!("unknown refund_status {:?}", r.refund_status)))?
        .normalised();
    let succeeded_at = r.succeeded_at();
    let text = |value: &str| Some(value.to_owned()).filter(|value| !value.is_empty());
    let details = RefundDetails {
        payer_refund: r.amount.payer_refund,
        payer_total: r.amount.payer_total,
        user_received_account: text(&r.user_received_account),
        funds_account: text(&r.funds_account),
    };
    Ok(Decoded::Refund(RefundEvent {
        resource,
        details,
        currency: currency_or_default(r.amount.currency.as_deref()),
        mch_id: non_empty_or(r.merchant().to_owned(), &merchant.mch_id),
        sub_mch_id: r.sub_mchid,
        out_trade_no: r.out_trade_no,
        out_refund_no: r.out_refund_no,
        refund_id: r.refund_id,
        refund_fee: r.amount.refund,
        status,
        succeeded_at,
        // Signed (notification) or signed and encrypted with AEAD: the check of v2's
        // unauthenticated req_info is not needed.
        order_check: None,
    }))
}

/// A v2 query answer must say `SUCCESS` twice (communication and business) to carry data.
fn require_query_success(fields: &XmlFields) -> Result<(), DecodeError> {
    for field in ["return_code", "result_code"] {
        let value = fields.get(field).unwrap_or_default();
        if value != v2::SUCCESS {
            return Err(DecodeError::QueryFailed(format!("{field} {value}")));
        }
    }
    Ok(())
}

fn required<'a>(fields: &'a XmlFields, name: &'static str) -> Result<&'a str, DecodeError> {
    fields.require(name).map_err(malformed)
}

fn fen(field: &str, value: &str) -> Result<i64, DecodeError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(format!("{field} is not an amount in fen")));
    }
    value
        .parse()
        .map_err(|_| malformed(format!("{field} out of range")))
}

/// A v2 local time of Beijing (UTC+8) in `format`.
fn beijing_time(value: Option<&str>, format: &str) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(value?, format).ok()?;
    FixedOffset::east_opt(8 * 3600)?
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

fn decode_v2_order_query(body: &[u8], merchant: &Merchant) -> Result<PayEvent, DecodeError> {
    let fields = verified_v2_fields(body, merchant)?;
    require_query_success(&fields)?;
    let trade_state = required(&fields, "trade_state")?.to_owned();
    let success = is_paid_state(&trade_state);
    let transaction_id = fields
        .get("transaction_id")
        .filter(|id| !id.is_empty())
        .map(str::to_owned);
    if success && transaction_id.is_none() {
        return Err(malformed("paid order without transaction_id"));
    }
    let amount_total = match fields.get("total_fee").filter(|v| !v.is_empty()) {
        Some(value) => fen("total_fee", value)?,
        None if success => return Err(malformed("paid order without total_fee")),
        None => 0,
    };
    Ok(PayEvent {
        resource: None,
        currency: currency_or_default(fields.get("fee_type")),
        mch_id: required(&fields, "mch_id")?.to_owned(),
        sub_mch_id: fields.get("sub_mch_id").unwrap_or_default().to_owned(),
        appid: {
            required(&fields, "appid")?;
            v2_paid_appid(&fields)
        },
        out_trade_no: required(&fields, "out_trade_no")?.to_owned(),
        transaction_id,
        amount_total,
        success,
        state_text: pay_state_text(success, trade_state),
        paid_at: beijing_time(fields.get("time_end"), "%Y%m%d%H%M%S"),
        details: v2_pay_details(&fields),
    })
}

/// The v2 refund query answers with numbered fields; `_0` is the refund asked about.
fn decode_v2_refund_query(body: &[u8], merchant: &Merchant) -> Result<Decoded, DecodeError> {
    let fields = verified_v2_fields(body, merchant)?;
    require_query_success(&fields)?;
    let status_text = required(&fields, "refund_status_0")?;
    let status = RefundStatus::parse(status_text)
        .ok_or_else(|| malformed(format!("unknown refund_status_0 {status_text:?}")))?
        .normalised();
    Ok(Decoded::Refund(RefundEvent {
        resource: None,
        mch_id: required(&fields, "mch_id")?.to_owned(),
        sub_mch_id: fields.get("sub_mch_id").unwrap_or_default().to_owned(),
        out_trade_no: required(&fields, "out_trade_no")?.to_owned(),
        out_refund_no: required(&fields, "out_refund_no_0")?.to_owned(),
        refund_id: required(&fields, "refund_id_0")?.to_owned(),
        refund_fee: fen("refund_fee_0", required(&fields, "refund_fee_0")?)?,
        status,
        succeeded_at: beijing_time(fields.get("refund_success_time_0"), "%Y-%m-%d %H:%M:%S"),
        currency: currency_or_default(
            fields
                .get("refund_fee_type")
                .filter(|c| !c.is_empty())
                .or_else(|| fields.get("fee_type")),
        ),
        // A signed answer: nothing to cross-check.
        order_check: None,
        details: RefundDetails {
            payer_refund: fields
                .get("settlement_refund_fee_0")
                .and_then(|fee| fen("settlement_refund_fee_0", fee).ok()),
            payer_total: fields
                .get("settlement_total_fee")
                .and_then(|fee| fen("settlement_total_fee", fee).ok()),
            user_received_account: fields
                .get("refund_recv_accout_0")
                .filter(|account| !account.is_empty())
                .map(str::to_owned),
            funds_account: fields
                .get("refund_account_0")
                .filter(|account| !account.is_empty())
                .map(str::to_owned),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A successful payment of 100 fen to the direct merchant 1900000109.
    fn paid(out_trade_no: &str, transaction_id: &str) -> PayEvent {
        PayEvent {
            mch_id: "1900000109".into(),
            sub_mch_id: String::new(),
            appid: "wx1".into(),
            out_trade_no: out_trade_no.into(),
            transaction_id: Some(transaction_id.into()),
            amount_total: 100,
            success: true,
            state_text: TradeState::Success.as_str().into(),
            paid_at: None,
            currency: DEFAULT_CURRENCY.into(),
            details: PayDetails::default(),
            resource: None,
        }
    }

    #[test]
    fn dedupe_keys_are_business_keys() {
        let pay = paid("o1", "4200");
        assert_eq!(
            Decoded::Pay(pay.clone()).dedupe_key(b"a"),
            "pay:1900000109:4200"
        );
        assert_eq!(
            Decoded::Pay(pay.clone()).dedupe_key(b"b"),
            "pay:1900000109:4200"
        );
        let failed = PayEvent {
            success: false,
            transaction_id: None,
            state_text: "FAIL".into(),
            ..pay
        };
        let key_a = Decoded::Pay(failed.clone()).dedupe_key(b"a");
        assert!(key_a.starts_with("pay:1900000109:o1:FAIL:"));
        assert_ne!(key_a, Decoded::Pay(failed).dedupe_key(b"b"));
        let refund = RefundEvent {
            mch_id: "1".into(),
            sub_mch_id: String::new(),
            out_trade_no: "o".into(),
            out_refund_no: "r".into(),
            refund_id: "5030".into(),
            refund_fee: 1,
            status: RefundState::Closed,
            succeeded_at: None,
            currency: DEFAULT_CURRENCY.into(),
            details: RefundDetails::default(),
            resource: None,
            order_check: None,
        };
        assert_eq!(
            Decoded::Refund(refund.clone()).dedupe_key(b""),
            "refund:1:5030:CLOSED"
        );
        // A service provider's sub-merchant: the same news for two sub-merchants, two keys.
        let sub = |sub_mch_id: &str| RefundEvent {
            sub_mch_id: sub_mch_id.into(),
            ..refund.clone()
        };
        assert_eq!(
            Decoded::Refund(sub("1900000201")).dedupe_key(b""),
            "refund:1.1900000201:5030:CLOSED"
        );
        assert_ne!(
            Decoded::Refund(sub("1900000201")).dedupe_key(b""),
            Decoded::Refund(sub("1900000202")).dedupe_key(b"")
        );
    }

    #[test]
    fn a_combine_message_and_its_sub_orders_have_keys_of_their_own() {
        let sub = paid;
        let paid = CombineEvent {
            combine_mch_id: "1900000109".into(),
            combine_out_trade_no: "c1".into(),
            sub_orders: vec![sub("o1", "4201"), sub("o2", "4202")],
            resource: None,
        };
        let key = Decoded::Combine(paid.clone()).dedupe_key(b"any body");
        assert!(key.starts_with("combine:1900000109:c1:"), "{key}");
        assert_eq!(key, paid.dedupe_key());
        // Another sub order's state is another message (a later query answer).
        let mut one_unpaid = paid.clone();
        one_unpaid.sub_orders[1] = PayEvent {
            success: false,
            transaction_id: None,
            state_text: TradeState::NotPay.as_str().into(),
            ..sub("o2", "")
        };
        assert_ne!(one_unpaid.dedupe_key(), key);
        // Each sub order is found by its own payment key, the one a plain payment has.
        let own_key = Decoded::Pay(sub("o2", "4202")).dedupe_key(b"other body");
        assert_eq!(own_key, "pay:1900000109:4202");
        assert_eq!(
            paid.sub_order_keyed(&own_key, b"body")
                .map(|s| s.out_trade_no.as_str()),
            Some("o2")
        );
        assert_eq!(paid.sub_order_keyed("pay:1900000109:9999", b"body"), None);
    }

    #[test]
    fn beijing_times() {
        let t = beijing_time(Some("20240102030405"), "%Y%m%d%H%M%S").expect("valid");
        assert_eq!(t.to_rfc3339(), "2024-01-01T19:04:05+00:00");
        assert_eq!(beijing_time(Some("garbage"), "%Y%m%d%H%M%S"), None);
        assert_eq!(beijing_time(None, "%Y%m%d%H%M%S"), None);
    }
}
