//! Builds the notifications WeChat Pay sends, genuine and bad, byte for byte.
//!
//! Field shapes follow the WeChat Pay documentation:
//! - v2 pay (支付结果通知): <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_7>
//! - v2 refund (退款结果通知): <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_16>
//! - v3 pay: <https://pay.weixin.qq.com/docs/merchant/apis/jsapi-payment/payment-notice.html>
//! - v3 refund: <https://pay.weixin.qq.com/docs/merchant/apis/jsapi-payment/refund-result-notice.html>
//!
//! A service provider acting for a sub-merchant ([`SimMerchant::for_sub_merchant`]) sends the
//! partner form: v2 adds `sub_mch_id` and `sub_appid`
//! (<https://pay.weixin.qq.com/wiki/doc/api/jsapi_sl.php?chapter=9_7>), v3 resources name
//! `sp_appid`, `sp_mchid`, `sub_appid`, `sub_mchid` instead of `appid`, `mchid`
//! (<https://pay.weixin.qq.com/doc/v3/partner/4012085801>).
//!
//! The other kinds (merchant transfer, profit sharing, pay score) are built in
//! [`crate::build_kinds`] with the same envelope and signature.
//!
//! Every signature and every encryption goes through `wxpay-shared`, the same code the gateway
//! and the worker verify with: the simulator never has its own copy of the protocol.

use chrono::{DateTime, FixedOffset, Offset as _, Utc};
use rand::distributions::{Alphanumeric, DistString};
use rand::Rng;
use serde_json::json;
use wxpay_shared::state::{RefundStatus, TradeState};
use wxpay_shared::v2::{self, SignType, XmlFields};
use wxpay_shared::v3::{self, AeadError};

use crate::build_kinds::OtherKind;
use crate::secrets::SimMerchant;

/// Content type of v2 notifications (WeChat Pay posts XML).
pub const V2_CONTENT_TYPE: &str = "text/xml";
/// Content type of v3 notifications.
pub const V3_CONTENT_TYPE: &str = "application/json";
/// How old a `--stale` v3 notification's timestamp is: twice the 5 minutes allowed.
pub const STALE_SECS: i64 = 600;

/// Which notification to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    V2Pay,
    V2Refund,
    V3Pay,
    V3Refund,
    /// A combine payment (合单支付): [`crate::combine`].
    V3Combine,
    /// A v3 notification that is neither a payment nor a refund.
    V3Other(OtherKind),
}

impl Kind {
    /// Parses the CLI spelling: `v2-pay`, `v2-refund`, `v3-pay`, `v3-refund`, `v3-combine`,
    /// and those of [`OtherKind`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "v2-pay" => Some(Self::V2Pay),
            "v2-refund" => Some(Self::V2Refund),
            "v3-pay" => Some(Self::V3Pay),
            "v3-refund" => Some(Self::V3Refund),
            "v3-combine" => Some(Self::V3Combine),
            other => OtherKind::parse(other).map(Self::V3Other),
        }
    }

    /// The CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V2Pay => "v2-pay",
            Self::V2Refund => "v2-refund",
            Self::V3Pay => "v3-pay",
            Self::V3Refund => "v3-refund",
            Self::V3Combine => "v3-combine",
            Self::V3Other(other) => other.as_str(),
        }
    }

    /// Whether the gateway answers in the v2 XML format.
    pub fn is_v2(self) -> bool {
        matches!(self, Self::V2Pay | Self::V2Refund)
    }

    /// The gateway route to append to its base URL.
    pub fn route(self, mch_id: &str) -> String {
        match self {
            Self::V2Pay => "/notify/v2/pay".to_owned(),
            Self::V2Refund => "/notify/v2/refund".to_owned(),
            Self::V3Pay | Self::V3Refund | Self::V3Combine | Self::V3Other(_) => {
                format!("/notify/v3/{mch_id}")
            }
        }
    }
}

/// A bad notification, to check that the receiver rejects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Genuine,
    /// Signed (v2, v3) or encrypted (v2 refund) with a key that is not the right one.
    Forge,
    /// Genuinely signed for 1 fen (or 2), then the amount changed to the order's: the classic
    /// "pay little, claim the full amount" attack. v2 pay and v3 only.
    TamperAmount,
    /// v3 only: signature `WECHATPAY/SIGNTEST/…`, WeChat Pay's probe that checks merchants verify.
    Probe,
    /// v3 only: genuinely signed, timestamp [`STALE_SECS`] old (a replay).
    Stale,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Genuine => "genuine",
            Self::Forge => "forge",
            Self::TamperAmount => "tamper-amount",
            Self::Probe => "probe",
            Self::Stale => "stale",
        }
    }
}

/// Why a notification cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("--{variant} does not apply to {kind}: {why}")]
    VariantNotApplicable {
        variant: &'static str,
        kind: &'static str,
        why: &'static str,
    },
    #[error("amount must be positive fen, got {0}")]
    Amount(i64),
    #[error("refund fee {refund_fee} must be positive and at most the order amount {total}")]
    RefundFee { refund_fee: i64, total: i64 },
    #[error("encryption failed: {0}")]
    Aead(#[from] AeadError),
    #[error("{kind} has no {what} {value:?}; expected one of {expected}")]
    NotInFamily {
        kind: &'static str,
        what: &'static str,
        value: String,
        expected: String,
    },
    #[error("{option} does not apply to {kind}")]
    OptionNotApplicable {
        option: &'static str,
        kind: &'static str,
    },
}

/// One payment, as WeChat Pay reports it.
#[derive(Debug, Clone)]
pub struct Payment {
    pub out_trade_no: String,
    pub transaction_id: String,
    /// Fen.
    pub amount: i64,
    pub openid: String,
    pub paid_at: DateTime<Utc>,
}

impl Payment {
    /// A payment of `amount` fen for `out_trade_no`, paid now, with a fresh transaction id.
    pub fn new(out_trade_no: impl Into<String>, amount: i64) -> Self {
        Self {
            out_trade_no: out_trade_no.into(),
            transaction_id: new_transaction_id(),
            amount,
            openid: "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".to_owned(),
            paid_at: Utc::now(),
        }
    }
}

/// One refund of a payment.
#[derive(Debug, Clone)]
pub struct Refund {
    pub out_trade_no: String,
    pub transaction_id: String,
    pub out_refund_no: String,
    pub refund_id: String,
    /// Fen: the order's amount.
    pub total_fee: i64,
    /// Fen: the refunded amount.
    pub refund_fee: i64,
    pub succeeded_at: DateTime<Utc>,
}

/// A notification ready to POST.
#[derive(Debug, Clone)]
pub struct Notification {
    pub kind: Kind,
    pub variant: Variant,
    /// Path to append to the gateway's base URL.
    pub route: String,
    pub content_type: &'static str,
    /// `Wechatpay-*` headers (v3), in order.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// For log lines: the order (and refund) this is about.
    pub out_trade_no: String,
    pub out_refund_no: Option<String>,
}

impl Notification {
    /// A v2 notification: the XML body on the merchant's v2 route, no headers.
    fn v2(
        kind: Kind,
        variant: Variant,
        m: &SimMerchant,
        fields: &XmlFields,
        out_trade_no: &str,
        out_refund_no: Option<&str>,
    ) -> Self {
        Notification {
            kind,
            variant,
            route: kind.route(&m.mch_id),
            content_type: V2_CONTENT_TYPE,
            headers: Vec::new(),
            body: fields.to_xml().into_bytes(),
            out_trade_no: out_trade_no.to_owned(),
            out_refund_no: out_refund_no.map(str::to_owned),
        }
    }
}

/// How a v2 notification is signed.
#[derive(Debug, Clone, Copy)]
pub struct V2Signing {
    pub sign_type: SignType,
    /// Leave `sign_type` out of the body, as WeChat Pay does in some notifications: the
    /// receiver must then tell the method from the sign's length.
    pub omit_sign_type: bool,
}

impl Default for V2Signing {
    fn default() -> Self {
        Self {
            sign_type: SignType::Md5,
            omit_sign_type: false,
        }
    }
}

/// A random alphanumeric string (nonces).
pub fn random_string(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), len)
}

fn random_digits(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

/// A 28-digit transaction id shaped like WeChat Pay's (`4200…`).
pub fn new_transaction_id() -> String {
    format!("4200{}", random_digits(24))
}

/// A 29-digit refund id shaped like WeChat Pay's (`5030…`).
pub fn new_refund_id() -> String {
    format!("5030{}", random_digits(25))
}

/// Beijing time (UTC+8), the zone of every v2 time field and of v3's RFC 3339 times.
fn beijing(t: DateTime<Utc>) -> DateTime<FixedOffset> {
    // 8 h east is always a valid offset; UTC is the (unreachable) fallback.
    let zone = FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| Utc.fix());
    t.with_timezone(&zone)
}

/// `yyyyMMddHHmmss` in Beijing time (`time_end`).
pub fn v2_time(t: DateTime<Utc>) -> String {
    beijing(t).format("%Y%m%d%H%M%S").to_string()
}

/// `yyyy-MM-dd HH:mm:ss` in Beijing time (`success_time` of v2 refunds).
pub fn v2_refund_time(t: DateTime<Utc>) -> String {
    beijing(t).format("%Y-%m-%d %H:%M:%S").to_string()
}

/// RFC 3339 with the +08:00 offset, as v3 writes times.
pub fn v3_time(t: DateTime<Utc>) -> String {
    beijing(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

pub(crate) fn check_amount(amount: i64) -> Result<(), BuildError> {
    if amount <= 0 {
        return Err(BuildError::Amount(amount));
    }
    Ok(())
}

/// The fields of a v2 pay notification, unsigned, with `total_fee` = `cash_fee` = `amount`.
pub fn v2_pay_fields(m: &SimMerchant, p: &Payment, amount: i64) -> XmlFields {
    let mut f = XmlFields::new();
    f.insert("appid", m.appid.as_str());
    f.insert("bank_type", "CMC");
    f.insert("cash_fee", amount.to_string());
    f.insert("fee_type", "CNY");
    f.insert("is_subscribe", "N");
    f.insert("mch_id", m.mch_id.as_str());
    f.insert("nonce_str", random_string(32));
    f.insert("openid", p.openid.as_str());
    f.insert("out_trade_no", p.out_trade_no.as_str());
    f.insert("result_code", "SUCCESS");
    f.insert("return_code", "SUCCESS");
    f.insert("time_end", v2_time(p.paid_at));
    f.insert("total_fee", amount.to_string());
    f.insert("trade_type", "JSAPI");
    f.insert("transaction_id", p.transaction_id.as_str());
    name_sub_merchant(&mut f, m);
    f
}

/// A provider's v2 body names the sub-merchant acted for (and its `sub_appid`, if any).
pub fn name_sub_merchant(f: &mut XmlFields, m: &SimMerchant) {
    if let Some(sub) = &m.sub {
        f.insert("sub_mch_id", sub.sub_mch_id.as_str());
        if !sub.sub_appid.is_empty() {
            f.insert("sub_appid", sub.sub_appid.as_str());
        }
    }
}

/// A provider's v3 resource (payment, refund, query answer) in the partner form: `appid` and
/// `mchid` become `sp_appid` and `sp_mchid`, beside `sub_mchid` (and `sub_appid`, if any).
pub fn partner_form(mut resource: serde_json::Value, m: &SimMerchant) -> serde_json::Value {
    let (Some(sub), Some(fields)) = (&m.sub, resource.as_object_mut()) else {
        return resource;
    };
    for (direct, partner) in [("appid", "sp_appid"), ("mchid", "sp_mchid")] {
        if let Some(value) = fields.remove(direct) {
            fields.insert(partner.to_owned(), value);
        }
    }
    fields.insert("sub_mchid".to_owned(), json!(sub.sub_mch_id));
    if !sub.sub_appid.is_empty() {
        fields.insert("sub_appid".to_owned(), json!(sub.sub_appid));
    }
    // The payer's openid under the provider's appid.
    let payer = fields
        .get_mut("payer")
        .and_then(|payer| payer.as_object_mut());
    if let Some(payer) = payer {
        if let Some(openid) = payer.remove("openid") {
            payer.insert("sp_openid".to_owned(), openid);
        }
    }
    resource
}

fn sign_v2(f: &mut XmlFields, key: &str, signing: V2Signing) {
    if !signing.omit_sign_type {
        f.insert("sign_type", signing.sign_type.as_str());
    }
    let sign = v2::sign(f, key, signing.sign_type);
    f.insert("sign", sign);
}

/// The v2 pay notification (支付结果通知).
pub fn v2_pay(
    m: &SimMerchant,
    p: &Payment,
    signing: V2Signing,
    variant: Variant,
) -> Result<Notification, BuildError> {
    check_amount(p.amount)?;
    let fields = match variant {
        Variant::Genuine => {
            let mut f = v2_pay_fields(m, p, p.amount);
            sign_v2(&mut f, &m.api_v2_key, signing);
            f
        }
        Variant::Forge => {
            let mut f = v2_pay_fields(m, p, p.amount);
            sign_v2(&mut f, &random_string(32), signing);
            f
        }
        Variant::TamperAmount => {
            let paid = if p.amount == 1 { 2 } else { 1 };
            let mut f = v2_pay_fields(m, p, paid);
            sign_v2(&mut f, &m.api_v2_key, signing);
            f.insert("total_fee", p.amount.to_string());
            f.insert("cash_fee", p.amount.to_string());
            f
        }
        Variant::Probe | Variant::Stale => {
            return Err(not_applicable(
                variant,
                Kind::V2Pay,
                "it is a v3 header check",
            ))
        }
    };
    Ok(Notification::v2(
        Kind::V2Pay,
        variant,
        m,
        &fields,
        &p.out_trade_no,
        None,
    ))
}

pub(crate) fn not_applicable(variant: Variant, kind: Kind, why: &'static str) -> BuildError {
    BuildError::VariantNotApplicable {
        variant: variant.as_str(),
        kind: kind.as_str(),
        why,
    }
}

fn check_refund(r: &Refund) -> Result<(), BuildError> {
    check_amount(r.total_fee)?;
    if r.refund_fee <= 0 || r.refund_fee > r.total_fee {
        return Err(BuildError::RefundFee {
            refund_fee: r.refund_fee,
            total: r.total_fee,
        });
    }
    Ok(())
}

/// The decrypted `<root>` of a v2 refund notification's `req_info`.
pub fn v2_refund_root(r: &Refund) -> XmlFields {
    let mut f = XmlFields::new();
    f.insert("out_refund_no", r.out_refund_no.as_str());
    f.insert("out_trade_no", r.out_trade_no.as_str());
    f.insert("refund_account", "REFUND_SOURCE_RECHARGE_FUNDS");
    f.insert("refund_fee", r.refund_fee.to_string());
    f.insert("refund_id", r.refund_id.as_str());
    f.insert("refund_recv_accout", "支付用户零钱");
    f.insert("refund_request_source", "API");
    f.insert("refund_status", RefundStatus::Success.as_str());
    f.insert("settlement_refund_fee", r.refund_fee.to_string());
    f.insert("settlement_total_fee", r.total_fee.to_string());
    f.insert("success_time", v2_refund_time(r.succeeded_at));
    f.insert("total_fee", r.total_fee.to_string());
    f.insert("transaction_id", r.transaction_id.as_str());
    f
}

/// The v2 refund notification (退款结果通知): no `sign`, the details in the encrypted
/// `req_info`.
pub fn v2_refund(
    m: &SimMerchant,
    r: &Refund,
    variant: Variant,
) -> Result<Notification, BuildError> {
    check_refund(r)?;
    let key = match variant {
        Variant::Genuine => m.api_v2_key.clone(),
        Variant::Forge => random_string(32),
        Variant::TamperAmount => {
            return Err(not_applicable(
                variant,
                Kind::V2Refund,
                "it carries no signature; its details are encrypted",
            ))
        }
        Variant::Probe | Variant::Stale => {
            return Err(not_applicable(
                variant,
                Kind::V2Refund,
                "it is a v3 header check",
            ))
        }
    };
    let mut f = XmlFields::new();
    f.insert("return_code", "SUCCESS");
    f.insert("appid", m.appid.as_str());
    f.insert("mch_id", m.mch_id.as_str());
    name_sub_merchant(&mut f, m);
    f.insert("nonce_str", random_string(32));
    f.insert("req_info", v2::encrypt_req_info(&v2_refund_root(r), &key));
    Ok(Notification::v2(
        Kind::V2Refund,
        variant,
        m,
        &f,
        &r.out_trade_no,
        Some(&r.out_refund_no),
    ))
}

/// The decrypted resource of a v3 pay notification (a `transaction`).
pub fn v3_transaction(m: &SimMerchant, p: &Payment, amount: i64) -> serde_json::Value {
    let transaction = json!({
        "mchid": m.mch_id,
        "appid": m.appid,
        "out_trade_no": p.out_trade_no,
        "transaction_id": p.transaction_id,
        "trade_type": "JSAPI",
        "trade_state": TradeState::Success,
        "trade_state_desc": "支付成功",
        "bank_type": "CMC",
        "attach": "",
        "success_time": v3_time(p.paid_at),
        "payer": { "openid": p.openid },
        "amount": {
            "total": amount,
            "payer_total": amount,
            "currency": "CNY",
            "payer_currency": "CNY"
        }
    });
    partner_form(transaction, m)
}

/// The decrypted resource of a v3 refund notification.
pub fn v3_refund_resource(m: &SimMerchant, r: &Refund) -> serde_json::Value {
    let refund = json!({
        "mchid": m.mch_id,
        "out_trade_no": r.out_trade_no,
        "transaction_id": r.transaction_id,
        "out_refund_no": r.out_refund_no,
        "refund_id": r.refund_id,
        "refund_status": RefundStatus::Success,
        "success_time": v3_time(r.succeeded_at),
        "user_received_account": "支付用户零钱",
        "amount": {
            "total": r.total_fee,
            "refund": r.refund_fee,
            "payer_total": r.total_fee,
            "payer_refund": r.refund_fee
        }
    });
    partner_form(refund, m)
}

/// The words of a v3 notification's envelope that depend on what it is about.
pub(crate) struct V3Event {
    pub(crate) kind: Kind,
    pub(crate) event_type: &'static str,
    pub(crate) summary: &'static str,
    /// `resource.original_type`.
    pub(crate) original_type: &'static str,
    /// The AEAD associated data: the original_type for payments and refunds, empty for some
    /// kinds (pay score).
    pub(crate) associated_data: &'static str,
}

/// The v3 envelope of `event` around `plaintext`, encrypted with `api_v3_key`.
fn v3_envelope(
    api_v3_key: &str,
    event: &V3Event,
    plaintext: &[u8],
    created: DateTime<Utc>,
) -> Result<Vec<u8>, BuildError> {
    let nonce = random_string(12);
    let original_type = event.original_type;
    let associated_data = event.associated_data;
    let ciphertext = v3::aead::encrypt(api_v3_key.as_bytes(), &nonce, associated_data, plaintext)?;
    let envelope = json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "create_time": v3_time(created),
        "resource_type": "encrypt-resource",
        "event_type": event.event_type,
        "summary": event.summary,
        "resource": {
            "original_type": original_type,
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": ciphertext,
            "associated_data": associated_data,
            "nonce": nonce
        }
    });
    Ok(envelope.to_string().into_bytes())
}

/// The five `Wechatpay-*` headers signing `body` with `key`.
fn v3_headers(
    key: &v3::PrivateKey,
    serial: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let ts = timestamp.to_string();
    let nonce = random_string(32);
    let signature = v3::sign_notification(key, &ts, &nonce, body);
    vec![
        (v3::HEADER_TIMESTAMP, ts),
        (v3::HEADER_NONCE, nonce),
        (v3::HEADER_SIGNATURE, signature),
        (v3::HEADER_SERIAL, serial.to_owned()),
        (v3::HEADER_SIGNATURE_TYPE, v3::SIGNATURE_TYPE_RSA.to_owned()),
    ]
}

fn set_header(headers: &mut [(&'static str, String)], name: &str, value: String) {
    if let Some(slot) = headers.iter_mut().find(|(n, _)| *n == name) {
        slot.1 = value;
    }
}

/// What a v3 notification is about.
enum V3Subject<'a> {
    Pay(&'a Payment),
    Refund(&'a Refund),
}

impl V3Subject<'_> {
    fn event(&self) -> V3Event {
        match self {
            V3Subject::Pay(_) => V3Event {
                kind: Kind::V3Pay,
                event_type: "TRANSACTION.SUCCESS",
                summary: "支付成功",
                original_type: "transaction",
                associated_data: "transaction",
            },
            V3Subject::Refund(_) => V3Event {
                kind: Kind::V3Refund,
                event_type: "REFUND.SUCCESS",
                summary: "退款成功",
                original_type: "refund",
                associated_data: "refund",
            },
        }
    }

    /// The amount the notification carries, in fen: paid, or refunded.
    fn amount(&self) -> i64 {
        match self {
            V3Subject::Pay(p) => p.amount,
            V3Subject::Refund(r) => r.refund_fee,
        }
    }

    /// The decrypted resource, carrying `amount` (which a tampered notification changes).
    fn resource(&self, m: &SimMerchant, amount: i64) -> Vec<u8> {
        match self {
            V3Subject::Pay(p) => v3_transaction(m, p, amount),
            V3Subject::Refund(r) => v3_refund_resource(
                m,
                &Refund {
                    refund_fee: amount,
                    ..(*r).clone()
                },
            ),
        }
        .to_string()
        .into_bytes()
    }
}

fn v3_notification(
    m: &SimMerchant,
    subject: V3Subject<'_>,
    variant: Variant,
    now: DateTime<Utc>,
) -> Result<Notification, BuildError> {
    let event = subject.event();
    let (out_trade_no, out_refund_no) = match subject {
        V3Subject::Pay(p) => (p.out_trade_no.clone(), None),
        V3Subject::Refund(r) => (r.out_trade_no.clone(), Some(r.out_refund_no.clone())),
    };
    let resource = |amount| subject.resource(m, amount);
    let notification = v3_signed(m, &event, subject.amount(), &resource, variant, now)?;
    Ok(Notification {
        out_trade_no,
        out_refund_no,
        ..notification
    })
}

/// The notification of `event` about `resource(amount)` (the decrypted resource carrying
/// that amount, which a tampered notification changes), as WeChat Pay signs it at `now`, or
/// as `variant` spoils it; about no order until the caller says which.
pub(crate) fn v3_signed(
    m: &SimMerchant,
    event: &V3Event,
    real_amount: i64,
    resource: &dyn Fn(i64) -> Vec<u8>,
    variant: Variant,
    now: DateTime<Utc>,
) -> Result<Notification, BuildError> {
    let signed_amount = if real_amount == 1 { 2 } else { 1 };
    let timestamp = match variant {
        Variant::Stale => now.timestamp() - STALE_SECS,
        _ => now.timestamp(),
    };
    let seal =
        |api_v3_key: &str, amount: i64| v3_envelope(api_v3_key, event, &resource(amount), now);
    // WeChat Pay's key (the last platform certificate, if any), or another under its serial.
    let (platform_key, serial) = m.v3_signer();
    let sign = |key: &v3::PrivateKey, body: &[u8]| v3_headers(key, serial, timestamp, body);
    let (body, headers) = match variant {
        Variant::Genuine | Variant::Probe | Variant::Stale => {
            let body = seal(&m.api_v3_key, real_amount)?;
            let mut headers = sign(platform_key, &body);
            if variant == Variant::Probe {
                set_header(
                    &mut headers,
                    v3::HEADER_SIGNATURE,
                    format!("WECHATPAY/SIGNTEST/{}", random_string(64)),
                );
            }
            (body, headers)
        }
        Variant::Forge => {
            // A forger has neither the platform key nor the APIv3 key: here the merchant's own
            // key signs (a real RSA key, just not the platform's) and a random key encrypts.
            let body = seal(&random_string(32), real_amount)?;
            let headers = sign(&m.merchant_private_key, &body);
            (body, headers)
        }
        Variant::TamperAmount => {
            // Someone who learnt the APIv3 key but not the platform key: a genuinely signed
            // notification for a small amount, its resource re-encrypted with the real amount.
            let signed = seal(&m.api_v3_key, signed_amount)?;
            let headers = sign(platform_key, &signed);
            (seal(&m.api_v3_key, real_amount)?, headers)
        }
    };
    Ok(Notification {
        kind: event.kind,
        variant,
        route: event.kind.route(&m.mch_id),
        content_type: V3_CONTENT_TYPE,
        headers,
        body,
        out_trade_no: String::new(),
        out_refund_no: None,
    })
}

/// The v3 pay notification (TRANSACTION.SUCCESS), signed as WeChat Pay at `now`.
pub fn v3_pay(
    m: &SimMerchant,
    p: &Payment,
    variant: Variant,
    now: DateTime<Utc>,
) -> Result<Notification, BuildError> {
    check_amount(p.amount)?;
    v3_notification(m, V3Subject::Pay(p), variant, now)
}

/// The v3 refund notification (REFUND.SUCCESS), signed as WeChat Pay at `now`.
pub fn v3_refund(
    m: &SimMerchant,
    r: &Refund,
    variant: Variant,
    now: DateTime<Utc>,
) -> Result<Notification, BuildError> {
    check_refund(r)?;
    v3_notification(m, V3Subject::Refund(r), variant, now)
}
