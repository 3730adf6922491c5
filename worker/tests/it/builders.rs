//! Signed test notifications, built with wxpay-shared exactly as WeChat Pay would send them.
//! Shared by the integration tests and the `drain` benchmark.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use secrecy::SecretString;
use wxpay_runtime::config::MerchantSettings;
use wxpay_shared::message::{NotifyKind, NotifyMessage};
use wxpay_shared::v2::{self, SignType, XmlFields};
use wxpay_shared::v3::{self, PrivateKey, WechatpayHeaders};

pub const MCH_ID: &str = "1900000109";
pub const APPID: &str = "wxd930ea5d5a258f4f";
pub const OTHER_APPID: &str = "wx0000000000000000";
pub const V2_KEY: &str = "192006250b4c09247ec02edce69f6a2d";
pub const V3_KEY: &str = "0123456789abcdef0123456789ABCDEF";
pub const SERIAL: &str = "PUB_KEY_ID_0119000001092025TEST";

const PLATFORM_PRIVATE_PEM: &str = include_str!("fixtures/platform_private.pem");
const PLATFORM_PUBLIC_PEM: &str = include_str!("fixtures/platform_public.pem");

/// The platform key WeChat Pay would sign v3 notifications with (fixture made with openssl).
pub fn platform_key() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        v3::load_private_key_pem(PLATFORM_PRIVATE_PEM).expect("fixture private key loads")
    })
}

/// The test merchant (v2 and v3).
pub fn merchant_settings() -> MerchantSettings {
    let mut keys = BTreeMap::new();
    keys.insert(SERIAL.to_owned(), PLATFORM_PUBLIC_PEM.to_owned());
    MerchantSettings {
        mch_id: MCH_ID.to_owned(),
        appids: vec![APPID.to_owned()],
        api_v2_key: SecretString::from(V2_KEY),
        api_v3_key: Some(SecretString::from(V3_KEY)),
        platform_public_keys: keys,
        merchant_private_key_pem: None,
        merchant_serial: None,
        confirm_by_query_min_fen: None,
    }
}

/// A v2 支付结果通知, MD5-signed.
pub fn v2_pay(out_trade_no: &str, transaction_id: &str, total_fee: i64) -> NotifyMessage {
    v2_pay_in(out_trade_no, transaction_id, total_fee, "CNY")
}

pub fn v2_pay_with(
    out_trade_no: &str,
    transaction_id: &str,
    total_fee: i64,
    appid: &str,
    result_code: &str,
    key: &str,
) -> NotifyMessage {
    v2_pay_signed(
        out_trade_no,
        transaction_id,
        total_fee,
        appid,
        result_code,
        key,
        "CNY",
    )
}

/// A genuine v2 payment notification in currency `fee_type`.
pub fn v2_pay_in(
    out_trade_no: &str,
    transaction_id: &str,
    total_fee: i64,
    fee_type: &str,
) -> NotifyMessage {
    v2_pay_signed(
        out_trade_no,
        transaction_id,
        total_fee,
        APPID,
        "SUCCESS",
        V2_KEY,
        fee_type,
    )
}

fn v2_pay_signed(
    out_trade_no: &str,
    transaction_id: &str,
    total_fee: i64,
    appid: &str,
    result_code: &str,
    key: &str,
    fee_type: &str,
) -> NotifyMessage {
    let mut fields = XmlFields::new();
    fields.insert("appid", appid);
    fields.insert("bank_type", "CFT");
    fields.insert("cash_fee", total_fee.to_string());
    fields.insert("fee_type", fee_type);
    fields.insert("is_subscribe", "N");
    fields.insert("mch_id", MCH_ID);
    fields.insert("nonce_str", "5d2b6c2a8db53831f7eda20af46e531c");
    fields.insert("openid", "oUpF8uMEb4qRXf22hE3X68TekukE");
    fields.insert("out_trade_no", out_trade_no);
    fields.insert("result_code", result_code);
    if result_code != "SUCCESS" {
        fields.insert("err_code", "BANKERROR");
    }
    fields.insert("return_code", "SUCCESS");
    fields.insert("time_end", "20240102030405");
    fields.insert("total_fee", total_fee.to_string());
    fields.insert("trade_type", "JSAPI");
    if result_code == "SUCCESS" {
        fields.insert("transaction_id", transaction_id);
    }
    let sign = v2::sign(&fields, key, SignType::Md5);
    fields.insert("sign", sign);
    NotifyMessage::new(
        NotifyKind::V2Pay,
        MCH_ID,
        fields.to_xml().into_bytes(),
        Some("text/xml".into()),
        None,
    )
}

/// The transaction id the refund builders name for `out_trade_no`: pay the order with it,
/// or the v2 refund disagrees with the order (REFUND_MISMATCH).
pub fn transaction_of(out_trade_no: &str) -> String {
    format!("42{out_trade_no}")
}

/// A v2 退款结果通知 (`req_info` encrypted with the merchant's key) of the order paid by
/// [`transaction_of`]. `status` is the v2 wire value: SUCCESS | CHANGE | REFUNDCLOSE.
pub fn v2_refund(
    out_trade_no: &str,
    out_refund_no: &str,
    refund_id: &str,
    total_fee: i64,
    refund_fee: i64,
    status: &str,
) -> NotifyMessage {
    let mut root = XmlFields::new();
    root.insert("out_refund_no", out_refund_no);
    root.insert("out_trade_no", out_trade_no);
    root.insert("refund_account", "REFUND_SOURCE_RECHARGE_FUNDS");
    root.insert("refund_fee", refund_fee.to_string());
    root.insert("refund_id", refund_id);
    root.insert("refund_recv_accout", "支付用户零钱");
    root.insert("refund_request_source", "API");
    root.insert("refund_status", status);
    root.insert("settlement_refund_fee", refund_fee.to_string());
    root.insert("settlement_total_fee", total_fee.to_string());
    if status == "SUCCESS" {
        root.insert("success_time", "2024-01-02 03:04:05");
    }
    root.insert("total_fee", total_fee.to_string());
    root.insert("transaction_id", transaction_of(out_trade_no));
    let mut fields = XmlFields::new();
    fields.insert("return_code", "SUCCESS");
    fields.insert("appid", APPID);
    fields.insert("mch_id", MCH_ID);
    fields.insert("nonce_str", "TeqClE3i0mvn3DrK");
    fields.insert("req_info", v2::encrypt_req_info(&root, V2_KEY));
    NotifyMessage::new(
        NotifyKind::V2Refund,
        MCH_ID,
        fields.to_xml().into_bytes(),
        Some("text/xml".into()),
        None,
    )
}

fn v3_message(
    event_type: &str,
    original_type: &str,
    resource: &serde_json::Value,
) -> NotifyMessage {
    let nonce = "fdasflkja484";
    let aad = original_type;
    let plaintext = serde_json::to_vec(resource).expect("json");
    let ciphertext =
        v3::aead::encrypt(V3_KEY.as_bytes(), nonce, aad, &plaintext).expect("encrypts");
    let body = serde_json::to_vec(&serde_json::json!({
        "id": format!("EV-{}", uuid::Uuid::new_v4()),
        "create_time": "2024-01-02T03:04:05+08:00",
        "resource_type": "encrypt-resource",
        "event_type": event_type,
        "summary": "支付成功",
        "resource": {
            "original_type": original_type,
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": ciphertext,
            "associated_data": aad,
            "nonce": nonce,
        }
    }))
    .expect("json");
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let header_nonce = uuid::Uuid::new_v4().simple().to_string();
    let signature = v3::sign_notification(platform_key(), &timestamp, &header_nonce, &body);
    let headers = WechatpayHeaders {
        timestamp,
        nonce: header_nonce,
        signature,
        serial: SERIAL.to_owned(),
        signature_type: Some(v3::SIGNATURE_TYPE_RSA.to_owned()),
    };
    NotifyMessage::new(
        NotifyKind::V3,
        MCH_ID,
        body,
        Some("application/json".into()),
        Some(headers),
    )
}

/// A v3 TRANSACTION.SUCCESS notification.
pub fn v3_pay(out_trade_no: &str, transaction_id: &str, total: i64) -> NotifyMessage {
    v3_message(
        "TRANSACTION.SUCCESS",
        "transaction",
        &serde_json::json!({
            "appid": APPID,
            "mchid": MCH_ID,
            "out_trade_no": out_trade_no,
            "transaction_id": transaction_id,
            "trade_type": "JSAPI",
            "trade_state": "SUCCESS",
            "trade_state_desc": "支付成功",
            "bank_type": "CMC",
            "attach": "",
            "success_time": "2024-01-02T03:04:05+08:00",
            "payer": { "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" },
            "amount": { "total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY" }
        }),
    )
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
    v3_message(
        &format!("REFUND.{status}"),
        "refund",
        &serde_json::json!({
            "mchid": MCH_ID,
            "out_trade_no": out_trade_no,
            "transaction_id": transaction_of(out_trade_no),
            "out_refund_no": out_refund_no,
            "refund_id": refund_id,
            "refund_status": status,
            "success_time": "2024-01-02T03:04:05+08:00",
            "user_received_account": "招商银行信用卡0403",
            "amount": { "total": total, "refund": refund, "payer_total": total, "payer_refund": refund }
        }),
    )
}

/// A copy as WeChat Pay re-sends it: same body, new request id.
pub fn resend(message: &NotifyMessage) -> NotifyMessage {
    NotifyMessage::new(
        message.kind,
        message.mch_id.clone(),
        message.body.clone(),
        message.content_type.clone(),
        message.wechatpay.clone(),
    )
}
