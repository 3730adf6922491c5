//! Notifications as WeChat Pay sends them, signed and encrypted through wxpay-shared: v2
//! XML (支付结果通知, 退款结果通知 with its `req_info`), the v3 envelope with its
//! AEAD_AES_256_GCM resource and the `Wechatpay-*` headers, and the queue messages the
//! gateway makes of them.
//!
//! Fields: <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_7> (v2 pay),
//! <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_16&index=10> (v2 refund),
//! <https://pay.weixin.qq.com/docs/merchant/apis/jsapi-payment/payment-notice.html> (v3).

use serde_json::{json, Value};
use wxpay_shared::message::{NotifyKind, NotifyMessage};
use wxpay_shared::v2::{self, SignType, XmlFields};
use wxpay_shared::v3::{self, PrivateKey, WechatpayHeaders};

use crate::merchants::{platform_key, SubMerchant, TestMerchant, MERCHANT};

/// The AEAD nonce of every test resource (a test may tamper with it in the body).
pub const RESOURCE_NONCE: &str = "fdasflkja484";

/// The transaction id the refund builders name for `out_trade_no`: pay the order with it,
/// or a v2 refund disagrees with the order (REFUND_MISMATCH).
pub fn transaction_of(out_trade_no: &str) -> String {
    format!("42{out_trade_no}")
}

/// Now, in unix seconds (the v3 timestamp).
pub fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

// ------------------------------------------------------------------------------- v2

/// The fields of a successful v2 payment of [`transaction_of`]`(out_trade_no)`, unsigned.
pub fn v2_pay_fields(mch_id: &str, appid: &str, out_trade_no: &str, total_fee: i64) -> XmlFields {
    let mut fields = XmlFields::new();
    fields.insert("appid", appid);
    fields.insert("bank_type", "CMC");
    fields.insert("cash_fee", total_fee.to_string());
    fields.insert("fee_type", "CNY");
    fields.insert("is_subscribe", "N");
    fields.insert("mch_id", mch_id);
    fields.insert("nonce_str", "5d2b6c2a8db53831f7eda20af46e531c");
    fields.insert("openid", "oUpF8uMEb4qRXf22hE3X68TekukE");
    fields.insert("out_trade_no", out_trade_no);
    fields.insert("result_code", v2::SUCCESS);
    fields.insert("return_code", v2::SUCCESS);
    fields.insert("time_end", "20240102030405");
    fields.insert("total_fee", total_fee.to_string());
    fields.insert("trade_type", "JSAPI");
    fields.insert("transaction_id", transaction_of(out_trade_no));
    fields
}

/// Signs `fields` with `key`; `sign_type` is written into the body only when `declare` is
/// set (WeChat Pay sometimes leaves HMAC-SHA256 undeclared).
pub fn signed_xml(mut fields: XmlFields, key: &str, sign_type: SignType, declare: bool) -> String {
    if declare {
        fields.insert("sign_type", sign_type.as_str());
    }
    let signature = v2::sign(&fields, key, sign_type);
    fields.insert("sign", signature);
    fields.to_xml()
}

/// A successful v2 payment notification of [`MERCHANT`], MD5-signed.
pub fn v2_pay_body(out_trade_no: &str, total_fee: i64) -> String {
    signed_xml(
        v2_pay_fields(MERCHANT.mch_id, MERCHANT.appid, out_trade_no, total_fee),
        MERCHANT.api_v2_key,
        SignType::Md5,
        false,
    )
}

/// A refund of the payment [`transaction_of`] `out_trade_no`, as both versions notify it.
#[derive(Debug, Clone, Copy)]
pub struct Refund<'a> {
    pub out_trade_no: &'a str,
    pub out_refund_no: &'a str,
    pub refund_id: &'a str,
    /// The order's total, in fen.
    pub total: i64,
    /// This refund, in fen.
    pub refund: i64,
}

impl<'a> Refund<'a> {
    pub fn new(
        out_trade_no: &'a str,
        out_refund_no: &'a str,
        refund_id: &'a str,
        total: i64,
        refund: i64,
    ) -> Refund<'a> {
        Refund {
            out_trade_no,
            out_refund_no,
            refund_id,
            total,
            refund,
        }
    }
}

/// The decrypted `<root>` of a v2 refund notification; `status` is the v2 wire value:
/// SUCCESS | CHANGE | REFUNDCLOSE.
pub fn refund_root(refund: &Refund, status: &str) -> XmlFields {
    let mut root = XmlFields::new();
    root.insert("out_refund_no", refund.out_refund_no);
    root.insert("out_trade_no", refund.out_trade_no);
    root.insert("refund_account", "REFUND_SOURCE_RECHARGE_FUNDS");
    root.insert("refund_fee", refund.refund.to_string());
    root.insert("refund_id", refund.refund_id);
    root.insert("refund_recv_accout", "支付用户零钱");
    root.insert("refund_request_source", "API");
    root.insert("refund_status", status);
    root.insert("settlement_refund_fee", refund.refund.to_string());
    root.insert("settlement_total_fee", refund.total.to_string());
    if status == v2::SUCCESS {
        root.insert("success_time", "2024-01-02 03:04:05");
    }
    root.insert("total_fee", refund.total.to_string());
    root.insert("transaction_id", transaction_of(refund.out_trade_no));
    root
}

/// A v2 refund notification whose `req_info` is `root` encrypted with `encrypt_key` (the
/// merchant's API v2 key; it carries no `sign`).
pub fn v2_refund_body(mch_id: &str, appid: &str, encrypt_key: &str, root: &XmlFields) -> String {
    v2_refund_fields(mch_id, appid, encrypt_key, root).to_xml()
}

/// The fields of [`v2_refund_body`].
fn v2_refund_fields(mch_id: &str, appid: &str, encrypt_key: &str, root: &XmlFields) -> XmlFields {
    let mut fields = XmlFields::new();
    fields.insert("return_code", v2::SUCCESS);
    fields.insert("appid", appid);
    fields.insert("mch_id", mch_id);
    fields.insert("nonce_str", "TeqClE3i0mvn3DrK");
    fields.insert("req_info", v2::encrypt_req_info(root, encrypt_key));
    fields
}

// ------------------------------------------------------------------------------- v3

/// The decrypted resource of a v3 TRANSACTION.SUCCESS (also the v3 order query's answer).
pub fn transaction_resource(
    merchant: &TestMerchant,
    out_trade_no: &str,
    transaction_id: &str,
    total: i64,
) -> Value {
    json!({
        "appid": merchant.appid, "mchid": merchant.mch_id, "out_trade_no": out_trade_no,
        "transaction_id": transaction_id, "trade_type": "JSAPI",
        "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "CMC",
        "success_time": "2024-01-02T03:04:05+08:00", "attach": "gift-wrap",
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"}
    })
}

/// The decrypted resource of a v3 REFUND.* notification of `merchant`; `status` is the v3
/// value: SUCCESS | CLOSED | ABNORMAL.
pub fn refund_resource(merchant: &TestMerchant, refund_of: &Refund, status: &str) -> Value {
    let Refund { total, refund, .. } = *refund_of;
    json!({
        "mchid": merchant.mch_id, "out_trade_no": refund_of.out_trade_no,
        "transaction_id": transaction_of(refund_of.out_trade_no),
        "out_refund_no": refund_of.out_refund_no, "refund_id": refund_of.refund_id,
        "refund_status": status, "success_time": "2024-01-02T03:04:05+08:00",
        "user_received_account": "支付用户零钱",
        "amount": {"total": total, "refund": refund, "payer_total": total, "payer_refund": refund}
    })
}

/// A v3 notification body: the envelope, `resource` encrypted with `api_v3_key`.
pub fn v3_envelope(
    api_v3_key: &str,
    event_type: &str,
    original_type: &str,
    resource: &Value,
) -> String {
    let associated_data = original_type;
    let ciphertext = v3::aead::encrypt(
        api_v3_key.as_bytes(),
        RESOURCE_NONCE,
        associated_data,
        resource.to_string().as_bytes(),
    )
    .expect("encrypts");
    json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "create_time": "2024-01-02T03:04:05+08:00",
        "resource_type": "encrypt-resource",
        "event_type": event_type,
        "summary": "支付成功",
        "resource": {
            "original_type": original_type,
            "algorithm": v3::resource::ALGORITHM_AEAD_AES_256_GCM,
            "ciphertext": ciphertext,
            "associated_data": associated_data,
            "nonce": RESOURCE_NONCE,
        }
    })
    .to_string()
}

/// The `Wechatpay-*` headers of `body`, signed with `key` at `timestamp` (a fresh nonce).
pub fn signed_headers(
    body: &[u8],
    timestamp: i64,
    key: &PrivateKey,
    serial: &str,
) -> WechatpayHeaders {
    let timestamp = timestamp.to_string();
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let signature = v3::sign_notification(key, &timestamp, &nonce, body);
    WechatpayHeaders {
        timestamp,
        nonce,
        signature,
        serial: serial.to_owned(),
        signature_type: Some(v3::SIGNATURE_TYPE_RSA.to_owned()),
    }
}

/// [`signed_headers`] as HTTP `(name, value)` pairs.
pub fn v3_headers(
    body: &str,
    timestamp: i64,
    key: &PrivateKey,
    serial: &str,
) -> Vec<(String, String)> {
    signed_headers(body.as_bytes(), timestamp, key, serial)
        .pairs()
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

// ------------------------------------------------------------- queue messages of MERCHANT

/// `fields` of [`MERCHANT`] MD5-signed with `key`, as the gateway queues them.
pub fn v2_signed_message(kind: NotifyKind, fields: XmlFields, key: &str) -> NotifyMessage {
    xml_message(kind, signed_xml(fields, key, SignType::Md5, false))
}

fn xml_message(kind: NotifyKind, xml: String) -> NotifyMessage {
    xml_message_of(MERCHANT.mch_id, kind, xml)
}

/// A v2 body of merchant `mch_id`, as the gateway queues it.
pub fn xml_message_of(mch_id: &str, kind: NotifyKind, xml: String) -> NotifyMessage {
    NotifyMessage::new(
        kind,
        mch_id,
        xml.into_bytes(),
        Some("text/xml".into()),
        None,
    )
}

/// `body` of [`MERCHANT`] signed now with the platform key, as the gateway queues a v3
/// notification (or the reconciler a v3 query answer).
pub fn v3_signed_message(kind: NotifyKind, body: Vec<u8>) -> NotifyMessage {
    v3_signed_message_of(&MERCHANT, kind, body)
}

/// `body` of `merchant` signed now with the platform key under its serial.
pub fn v3_signed_message_of(
    merchant: &TestMerchant,
    kind: NotifyKind,
    body: Vec<u8>,
) -> NotifyMessage {
    let headers = signed_headers(&body, now_unix(), platform_key(), merchant.platform_serial);
    NotifyMessage::new(
        kind,
        merchant.mch_id,
        body,
        Some("application/json".into()),
        Some(headers),
    )
}

/// A v2 支付结果通知, MD5-signed.
pub fn v2_pay(out_trade_no: &str, transaction_id: &str, total_fee: i64) -> NotifyMessage {
    v2_pay_in(out_trade_no, transaction_id, total_fee, "CNY")
}

/// A v2 payment in currency `fee_type`.
pub fn v2_pay_in(
    out_trade_no: &str,
    transaction_id: &str,
    total_fee: i64,
    fee_type: &str,
) -> NotifyMessage {
    let mut fields = v2_pay_fields(MERCHANT.mch_id, MERCHANT.appid, out_trade_no, total_fee);
    fields.insert("fee_type", fee_type);
    fields.insert("transaction_id", transaction_id);
    v2_signed_message(NotifyKind::V2Pay, fields, MERCHANT.api_v2_key)
}

/// A v2 payment in `appid` with `result_code`, signed with `key`: a failed payment
/// (`result_code` not SUCCESS) carries an `err_code` and no transaction id.
pub fn v2_pay_with(
    out_trade_no: &str,
    transaction_id: &str,
    total_fee: i64,
    appid: &str,
    result_code: &str,
    key: &str,
) -> NotifyMessage {
    let mut fields = v2_pay_fields(MERCHANT.mch_id, appid, out_trade_no, total_fee);
    fields.insert("result_code", result_code);
    if result_code == v2::SUCCESS {
        fields.insert("transaction_id", transaction_id);
    } else {
        fields.insert("err_code", "BANKERROR");
        fields.remove("transaction_id");
    }
    v2_signed_message(NotifyKind::V2Pay, fields, key)
}

/// A v2 退款结果通知 of the order paid by [`transaction_of`]; `status` is the v2 wire
/// value: SUCCESS | CHANGE | REFUNDCLOSE.
pub fn v2_refund(
    out_trade_no: &str,
    out_refund_no: &str,
    refund_id: &str,
    total_fee: i64,
    refund_fee: i64,
    status: &str,
) -> NotifyMessage {
    let refund = Refund::new(
        out_trade_no,
        out_refund_no,
        refund_id,
        total_fee,
        refund_fee,
    );
    let key = MERCHANT.api_v2_key;
    let body = v2_refund_body(
        MERCHANT.mch_id,
        MERCHANT.appid,
        key,
        &refund_root(&refund, status),
    );
    xml_message(NotifyKind::V2Refund, body)
}

/// A v3 TRANSACTION.SUCCESS notification.
pub fn v3_pay(out_trade_no: &str, transaction_id: &str, total: i64) -> NotifyMessage {
    let resource = transaction_resource(&MERCHANT, out_trade_no, transaction_id, total);
    v3_message("TRANSACTION.SUCCESS", "transaction", &resource)
}

/// A v3 REFUND.* notification; `status` is the v3 value: SUCCESS | CLOSED | ABNORMAL.
pub fn v3_refund(
    out_trade_no: &str,
    out_refund_no: &str,
    refund_id: &str,
    total: i64,
    refund: i64,
    status: &str,
) -> NotifyMessage {
    let refund = Refund::new(out_trade_no, out_refund_no, refund_id, total, refund);
    let resource = refund_resource(&MERCHANT, &refund, status);
    v3_message(&format!("REFUND.{status}"), "refund", &resource)
}

/// A v3 notification of [`MERCHANT`]: `resource` in its envelope, signed now.
fn v3_message(event_type: &str, original_type: &str, resource: &Value) -> NotifyMessage {
    v3_message_of(&MERCHANT, event_type, original_type, resource)
}

/// A v3 notification of `merchant`: `resource` in its envelope, signed now.
pub fn v3_message_of(
    merchant: &TestMerchant,
    event_type: &str,
    original_type: &str,
    resource: &Value,
) -> NotifyMessage {
    let body = v3_envelope(merchant.api_v3_key, event_type, original_type, resource);
    v3_signed_message_of(merchant, NotifyKind::V3, body.into_bytes())
}

// ------------------------------------------------- a service provider's sub-merchants
//
// Partner mode (服务商): the provider's keys sign and encrypt; the body names the
// sub-merchant. v2: <https://pay.weixin.qq.com/wiki/doc/api/jsapi_sl.php?chapter=9_7>
// (`sub_mch_id`, `sub_appid`); v3: <https://pay.weixin.qq.com/doc/v3/partner/4012085801>
// (`sp_appid`, `sp_mchid`, `sub_appid`, `sub_mchid`, `payer.sp_openid` / `payer.sub_openid`).

/// `sub_mch_id`, and `sub_appid` when the sub-merchant has one, added to v2 `fields`.
fn name_sub_merchant(fields: &mut XmlFields, sub: &SubMerchant) {
    fields.insert("sub_mch_id", sub.sub_mch_id);
    if !sub.sub_appid.is_empty() {
        fields.insert("sub_appid", sub.sub_appid);
    }
}

/// A v2 支付结果通知 of `sub`'s order, as `provider` receives it, MD5-signed with its key.
pub fn partner_v2_pay(
    (provider, sub): (&TestMerchant, &SubMerchant),
    out_trade_no: &str,
    transaction_id: &str,
    total_fee: i64,
) -> NotifyMessage {
    let mut fields = v2_pay_fields(provider.mch_id, provider.appid, out_trade_no, total_fee);
    fields.insert("transaction_id", transaction_id);
    name_sub_merchant(&mut fields, sub);
    let xml = signed_xml(fields, provider.api_v2_key, SignType::Md5, false);
    xml_message_of(provider.mch_id, NotifyKind::V2Pay, xml)
}

/// A v2 退款结果通知 of `sub`'s order, as `provider` receives it (`req_info` under its key);
/// `status` is the v2 wire value.
pub fn partner_v2_refund(
    (provider, sub): (&TestMerchant, &SubMerchant),
    refund: &Refund,
    status: &str,
) -> NotifyMessage {
    let root = refund_root(refund, status);
    let mut fields = v2_refund_fields(provider.mch_id, provider.appid, provider.api_v2_key, &root);
    name_sub_merchant(&mut fields, sub);
    xml_message_of(provider.mch_id, NotifyKind::V2Refund, fields.to_xml())
}

/// The decrypted resource of a v3 TRANSACTION.SUCCESS of `sub`'s order at `provider`.
pub fn partner_transaction_resource(
    (provider, sub): (&TestMerchant, &SubMerchant),
    out_trade_no: &str,
    transaction_id: &str,
    total: i64,
) -> Value {
    let mut resource = transaction_resource(provider, out_trade_no, transaction_id, total);
    let object = resource.as_object_mut().expect("an object");
    object.remove("appid");
    object.remove("mchid");
    object.insert("sp_appid".into(), json!(provider.appid));
    object.insert("sp_mchid".into(), json!(provider.mch_id));
    object.insert("sub_mchid".into(), json!(sub.sub_mch_id));
    if !sub.sub_appid.is_empty() {
        object.insert("sub_appid".into(), json!(sub.sub_appid));
    }
    let payer = json!({"sp_openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "sub_openid": "oXvL85rhdrWR0CpP2hzH4jnrLOpg"});
    object.insert("payer".into(), payer);
    resource
}

/// A v3 TRANSACTION.SUCCESS of `sub`'s order, as `provider` receives it.
pub fn partner_v3_pay(
    of: (&TestMerchant, &SubMerchant),
    out_trade_no: &str,
    transaction_id: &str,
    total: i64,
) -> NotifyMessage {
    let resource = partner_transaction_resource(of, out_trade_no, transaction_id, total);
    v3_message_of(of.0, "TRANSACTION.SUCCESS", "transaction", &resource)
}

/// The decrypted resource of a v3 REFUND.* of `sub`'s order at `provider`.
pub fn partner_refund_resource(
    (provider, sub): (&TestMerchant, &SubMerchant),
    refund: &Refund,
    status: &str,
) -> Value {
    let mut resource = refund_resource(provider, refund, status);
    let object = resource.as_object_mut().expect("an object");
    object.remove("mchid");
    object.insert("sp_mchid".into(), json!(provider.mch_id));
    object.insert("sub_mchid".into(), json!(sub.sub_mch_id));
    resource
}

/// A v3 REFUND.* of `sub`'s order, as `provider` receives it; `status` is the v3 value.
pub fn partner_v3_refund(
    of: (&TestMerchant, &SubMerchant),
    refund: &Refund,
    status: &str,
) -> NotifyMessage {
    let resource = partner_refund_resource(of, refund, status);
    v3_message_of(of.0, &format!("REFUND.{status}"), "refund", &resource)
}

/// A copy as WeChat Pay re-sends it: the same body, a new request (message id).
pub fn resend(message: &NotifyMessage) -> NotifyMessage {
    NotifyMessage::new(
        message.kind,
        message.mch_id.clone(),
        message.body.clone(),
        message.content_type.clone(),
        message.wechatpay.clone(),
    )
}

#[cfg(test)]
mod tests {
    use wxpay_shared::v2::{decrypt_req_info, RefundInfo};
    use wxpay_shared::v3::{verify_notification, NotificationEnvelope, TimestampCheck};

    use super::*;

    #[test]
    fn v2_bodies_verify_and_decrypt_with_the_merchants_key() {
        let pay = XmlFields::parse(v2_pay_body("o-1", 100).as_bytes()).expect("XML");
        assert_eq!(v2::verify(&pay, MERCHANT.api_v2_key), Ok(SignType::Md5));
        assert_eq!(
            pay.get("transaction_id"),
            Some(transaction_of("o-1").as_str())
        );
        let failed = v2_pay_with("o-2", "", 1, MERCHANT.appid, "FAIL", MERCHANT.api_v2_key);
        let failed = XmlFields::parse(&failed.body).expect("XML");
        assert_eq!(failed.get("transaction_id"), None);
        assert_eq!(failed.get("err_code"), Some("BANKERROR"));

        let refund = v2_refund("o-1", "r-1", "5001", 100, 40, "SUCCESS");
        let fields = XmlFields::parse(&refund.body).expect("XML");
        let root = decrypt_req_info(
            fields.get("req_info").expect("req_info"),
            MERCHANT.api_v2_key,
        )
        .expect("decrypts");
        let info = RefundInfo::from_fields(&root).expect("a refund");
        assert_eq!((info.total_fee, info.refund_fee), (100, 40));
        assert_eq!(info.transaction_id, transaction_of("o-1"));
    }

    #[test]
    fn v3_messages_verify_with_the_configured_platform_key_and_decrypt() {
        let mut settings = crate::env::default_settings();
        settings.merchants = vec![MERCHANT.settings()];
        let merchants = settings.merchants().expect("valid merchant");
        let merchant = merchants.get(MERCHANT.mch_id).expect("configured");
        let message = v3_pay("o-3", "4200o3", 700);
        let headers = message.wechatpay.as_ref().expect("headers");
        verify_notification(
            headers,
            &message.body,
            &merchant.platform_keys,
            TimestampCheck::now(),
        )
        .expect("verifies");
        let envelope = NotificationEnvelope::parse(&message.body).expect("envelope");
        let transaction = envelope
            .decrypt_transaction(MERCHANT.api_v3_key.as_bytes())
            .expect("decrypts");
        assert_eq!(transaction.amount.map(|a| a.total), Some(700));
    }
}
