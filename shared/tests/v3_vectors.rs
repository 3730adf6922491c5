//! v3 AEAD and resource parsing against vectors computed outside this crate.

use wxpay_shared::v3::aead::{self, AeadError};
use wxpay_shared::v3::resource::{
    EventType, NotificationEnvelope, RefundResource, ResourceError, Transaction,
};

/// Vector D: computed with an independent AES-256-GCM implementation.
const KEY: &[u8] = b"Zyxwvutsrqponmlkjihgfedcba543210";
const NONCE: &str = "fdasflkja484";
const AAD: &str = "transaction";
const CIPHERTEXT: &str = "wri2Av4HTR5JLGne1s3Ukts6CVmkhY2MM0uhr0LJIk4XPfgoIWXuGY1xCHIqT498ue1u0mlWUMYHMXZSjNZ+VZwH0kajBj2J06ByQ9KjUk0t6JfEqLSlEhCKL6obAm5diVo0wBwjscWL563qhqBOl57IbKcJRnq6giPG7zys7gwEyRQ=";
const PLAINTEXT: &str = r#"{"mchid":"1900000109","out_trade_no":"1217752501201407033233368018","trade_state":"SUCCESS","amount":{"total":100}}"#;

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn vector_d_decrypts() {
    let plain = aead::decrypt(KEY, NONCE, AAD, CIPHERTEXT).unwrap();
    assert_eq!(std::str::from_utf8(&plain).unwrap(), PLAINTEXT);
}

#[test]
fn vector_d_encrypts_to_the_same_ciphertext() {
    assert_eq!(
        aead::encrypt(KEY, NONCE, AAD, PLAINTEXT.as_bytes()).unwrap(),
        CIPHERTEXT
    );
}

#[test]
fn vector_d_changed_aad_fails() {
    for aad in ["", "transactioN", "transaction ", "refund"] {
        assert_eq!(
            aead::decrypt(KEY, NONCE, aad, CIPHERTEXT),
            Err(AeadError::Tag),
            "{aad:?}"
        );
    }
}

#[test]
fn vector_d_any_flipped_bit_fails() {
    let raw = unb64(CIPHERTEXT);
    for byte in 0..raw.len() {
        for bit in [0u8, 3, 7] {
            let mut t = raw.clone();
            t[byte] ^= 1 << bit;
            assert_eq!(
                aead::decrypt(KEY, NONCE, AAD, &b64(&t)),
                Err(AeadError::Tag),
                "byte {byte} bit {bit}"
            );
        }
    }
}

#[test]
fn vector_d_wrong_key_nonce_or_truncation_fails() {
    assert_eq!(
        aead::decrypt(b"Zyxwvutsrqponmlkjihgfedcba543211", NONCE, AAD, CIPHERTEXT),
        Err(AeadError::Tag)
    );
    assert_eq!(
        aead::decrypt(KEY, "fdasflkja485", AAD, CIPHERTEXT),
        Err(AeadError::Tag)
    );
    let raw = unb64(CIPHERTEXT);
    assert_eq!(
        aead::decrypt(KEY, NONCE, AAD, &b64(&raw[..raw.len() - 1])),
        Err(AeadError::Tag)
    );
    assert_eq!(
        aead::decrypt(KEY, NONCE, AAD, &b64(&raw[..15])),
        Err(AeadError::Tag)
    );
    assert_eq!(aead::decrypt(KEY, NONCE, AAD, ""), Err(AeadError::Tag));
    assert_eq!(
        aead::decrypt(KEY, NONCE, AAD, "not base64!"),
        Err(AeadError::Base64)
    );
    assert_eq!(
        aead::decrypt(&KEY[..16], NONCE, AAD, CIPHERTEXT),
        Err(AeadError::KeyLength(16))
    );
    assert_eq!(
        aead::decrypt(KEY, "fdasflkja48", AAD, CIPHERTEXT),
        Err(AeadError::NonceLength(11))
    );
}

/// A payment notice shaped like the official example, carrying vector D's ciphertext.
fn envelope_json(algorithm: &str, ciphertext: &str) -> String {
    format!(
        r#"{{"id":"EV-2018022511223320873","create_time":"2015-05-20T13:29:35+08:00","resource_type":"encrypt-resource","event_type":"TRANSACTION.SUCCESS","summary":"支付成功","resource":{{"original_type":"transaction","algorithm":"{algorithm}","ciphertext":"{ciphertext}","associated_data":"transaction","nonce":"fdasflkja484"}}}}"#
    )
}

#[test]
fn envelope_parses_and_decrypts() {
    let env = NotificationEnvelope::parse(envelope_json("AEAD_AES_256_GCM", CIPHERTEXT).as_bytes())
        .unwrap();
    assert_eq!(env.id, "EV-2018022511223320873");
    assert_eq!(env.event(), EventType::TransactionSuccess);
    assert_eq!(env.summary, "支付成功");
    assert_eq!(env.resource.original_type, "transaction");
    assert_eq!(env.decrypt(KEY).unwrap(), PLAINTEXT.as_bytes());
    assert_eq!(env.decrypt_utf8(KEY).unwrap(), PLAINTEXT);
    // Vector D's plaintext lacks appid: a Transaction requires it.
    assert!(matches!(
        env.decrypt_transaction(KEY),
        Err(ResourceError::Json(_))
    ));
    assert!(matches!(
        env.decrypt(b"Zyxwvutsrqponmlkjihgfedcba543211"),
        Err(ResourceError::Aead(AeadError::Tag))
    ));
}

#[test]
fn envelope_rejects_other_algorithms_before_decrypting() {
    let env =
        NotificationEnvelope::parse(envelope_json("AEAD_SM4_GCM", CIPHERTEXT).as_bytes()).unwrap();
    assert!(matches!(
        env.decrypt(KEY),
        Err(ResourceError::UnsupportedAlgorithm(a)) if a == "AEAD_SM4_GCM"
    ));
}

#[test]
fn envelope_missing_fields_and_garbage_are_errors() {
    for body in [
        "",
        "null",
        "[]",
        "{}",
        r#"{"id":"x"}"#,
        r#"{"id":"x","create_time":"t","event_type":"e","resource_type":"r","resource":{}}"#,
        "<xml></xml>",
    ] {
        assert!(
            matches!(
                NotificationEnvelope::parse(body.as_bytes()),
                Err(ResourceError::Json(_))
            ),
            "{body}"
        );
    }
    // Optional fields may be absent.
    let minimal = r#"{"id":"x","create_time":"t","event_type":"REFUND.CLOSED","resource_type":"encrypt-resource","resource":{"algorithm":"AEAD_AES_256_GCM","ciphertext":"","original_type":"refund","nonce":"n"}}"#;
    let env = NotificationEnvelope::parse(minimal.as_bytes()).unwrap();
    assert_eq!(env.summary, "");
    assert_eq!(env.resource.associated_data, "");
    assert_eq!(env.event(), EventType::RefundClosed);
}

#[test]
fn a_duplicated_field_is_rejected() {
    let body = r#"{"appid":"a","mchid":"m","out_trade_no":"o","trade_state":"NOTPAY","trade_state":"SUCCESS"}"#;
    assert!(matches!(
        Transaction::parse(body.as_bytes()),
        Err(ResourceError::Json(_))
    ));
}

#[test]
fn event_types_round_trip() {
    for (s, e) in [
        ("TRANSACTION.SUCCESS", EventType::TransactionSuccess),
        ("REFUND.SUCCESS", EventType::RefundSuccess),
        ("REFUND.ABNORMAL", EventType::RefundAbnormal),
        ("REFUND.CLOSED", EventType::RefundClosed),
        (
            "TRANSACTION.CLOSED",
            EventType::Other("TRANSACTION.CLOSED".into()),
        ),
    ] {
        let parsed: EventType = s.parse().unwrap();
        assert_eq!(parsed, e);
        assert_eq!(parsed.as_str(), s);
        assert_eq!(parsed.to_string(), s);
    }
    assert!(EventType::RefundAbnormal.is_refund());
    assert!(!EventType::TransactionSuccess.is_refund());
}

/// The decrypted payment resource of the official payment notice example.
const TRANSACTION: &str = r#"{
  "transaction_id":"1217752501201407033233368018",
  "amount":{"payer_total":100,"total":100,"currency":"CNY","payer_currency":"CNY"},
  "mchid":"1230000109",
  "trade_state":"SUCCESS",
  "bank_type":"CMC",
  "promotion_detail":[{"amount":100,"wechatpay_contribute":0,"coupon_id":"109519","scope":"GLOBAL","merchant_contribute":0,"name":"单品惠-6","other_contribute":0,"currency":"CNY","stock_id":"931386","goods_detail":[{"goods_remark":"商品备注信息","quantity":1,"discount_amount":1,"goods_id":"M1006","unit_price":100}]}],
  "success_time":"2018-06-08T10:34:56+08:00",
  "payer":{"openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
  "out_trade_no":"1217752501201407033233368018",
  "appid":"wxd678efh567hg6787",
  "trade_state_desc":"支付成功",
  "trade_type":"MICROPAY",
  "attach":"自定义数据",
  "scene_info":{"device_id":"013467007045764"}
}"#;

/// Every field `parsed` serialises back to is as the official `example` has it (those the
/// example lacks, defaulted by the parser, aside).
fn assert_as_in_example(example: &str, parsed: &impl serde::Serialize) {
    let example: serde_json::Value = serde_json::from_str(example).unwrap();
    let serde_json::Value::Object(parsed) = serde_json::to_value(parsed).unwrap() else {
        panic!("a resource serialises to an object");
    };
    for (field, value) in &parsed {
        if let Some(expected) = example.get(field) {
            assert_eq!(value, expected, "{field}");
        }
    }
}

#[test]
fn transaction_parses_official_example() {
    let t = Transaction::parse(TRANSACTION.as_bytes()).unwrap();
    assert_as_in_example(TRANSACTION, &t);
    assert!(t.is_success());
    let paid = t.paid_at().unwrap();
    assert_eq!(paid.to_rfc3339(), "2018-06-08T02:34:56+00:00");
    // Serialising and parsing again gives the same value (the worker may store it as JSON).
    let again = Transaction::parse(&serde_json::to_vec(&t).unwrap()).unwrap();
    assert_eq!(again, t);
}

#[test]
fn transaction_not_paid_and_bad_time() {
    let t = Transaction::parse(
        br#"{"appid":"a","mchid":"m","out_trade_no":"o","trade_state":"NOTPAY","success_time":"yesterday"}"#,
    )
    .unwrap();
    assert!(!t.is_success());
    assert_eq!(t.amount, None);
    assert_eq!(t.paid_at(), None);
    assert_eq!(t.transaction_id, "");
}

#[test]
fn amounts_must_be_integers() {
    for total in [
        "1.5",
        "100.0",
        "1e2",
        "\"100\"",
        "null",
        "9223372036854775808",
        "true",
    ] {
        let body = format!(
            r#"{{"appid":"a","mchid":"m","out_trade_no":"o","trade_state":"SUCCESS","amount":{{"total":{total}}}}}"#
        );
        assert!(
            matches!(
                Transaction::parse(body.as_bytes()),
                Err(ResourceError::Json(_))
            ),
            "total {total} must not parse"
        );
    }
    let refund = r#"{"mchid":"m","out_trade_no":"o","transaction_id":"t","out_refund_no":"r","refund_id":"i","refund_status":"SUCCESS","amount":{"total":100,"refund":0.5,"payer_total":100,"payer_refund":1}}"#;
    assert!(matches!(
        RefundResource::parse(refund.as_bytes()),
        Err(ResourceError::Json(_))
    ));
}

/// The decrypted refund resource of the official refund notice example.
const REFUND: &str = r#"{
  "mchid":"1900000100",
  "transaction_id":"1008450740201411110005820873",
  "out_trade_no":"20150806125346",
  "refund_id":"50200207182018070300011301001",
  "out_refund_no":"7752501201407033233368018",
  "refund_status":"SUCCESS",
  "success_time":"2018-06-08T10:34:56+08:00",
  "user_received_account":"招商银行信用卡0403",
  "amount":{"total":999,"refund":999,"payer_total":999,"payer_refund":999}
}"#;

#[test]
fn refund_parses_official_example() {
    let r = RefundResource::parse(REFUND.as_bytes()).unwrap();
    assert_as_in_example(REFUND, &r);
    assert_eq!(
        r.succeeded_at().unwrap().to_rfc3339(),
        "2018-06-08T02:34:56+00:00"
    );
}

#[test]
fn refund_without_the_payer_view_still_parses() {
    // Only `total` and `refund` move money; a sender that omits payer_* must not be parked.
    let minimal = REFUND.replace(r#","payer_total":999,"payer_refund":999"#, "");
    assert_ne!(minimal, REFUND);
    let r = RefundResource::parse(minimal.as_bytes()).unwrap();
    assert_eq!((r.amount.total, r.amount.refund), (999, 999));
    assert_eq!(r.amount.payer_refund, None);
    assert_eq!(
        RefundResource::parse(REFUND.as_bytes())
            .unwrap()
            .amount
            .payer_refund,
        Some(999)
    );
}

#[test]
fn refund_query_answer_shape_parses() {
    // 查询单笔退款 answers with `status` and without `mchid`.
    let q = r#"{"refund_id":"50000000382019052709732678859","out_refund_no":"1217752501201407033233368018","transaction_id":"1217752501201407033233368018","out_trade_no":"1217752501201407033233368018","channel":"ORIGINAL","user_received_account":"招商银行信用卡0403","create_time":"2020-12-01T16:18:12+08:00","status":"PROCESSING","amount":{"total":100,"refund":100,"payer_total":90,"payer_refund":90,"settlement_refund":100,"settlement_total":100,"discount_refund":10,"currency":"CNY"}}"#;
    let r = RefundResource::parse(q.as_bytes()).unwrap();
    assert_eq!(r.refund_status, "PROCESSING");
    assert_eq!(r.mchid, "");
    assert_eq!(r.succeeded_at(), None);
}

#[test]
fn refund_envelope_round_trip() {
    let aad = "refund";
    let nonce = "0123456789ab";
    let ct = aead::encrypt(KEY, nonce, aad, REFUND.as_bytes()).unwrap();
    let body = format!(
        r#"{{"id":"EV-1","create_time":"2018-06-08T10:34:56+08:00","resource_type":"encrypt-resource","event_type":"REFUND.SUCCESS","summary":"退款成功","resource":{{"original_type":"refund","algorithm":"AEAD_AES_256_GCM","ciphertext":"{ct}","associated_data":"{aad}","nonce":"{nonce}"}}}}"#
    );
    let env = NotificationEnvelope::parse(body.as_bytes()).unwrap();
    assert_eq!(env.event(), EventType::RefundSuccess);
    assert_eq!(
        env.decrypt_refund(KEY).unwrap(),
        RefundResource::parse(REFUND.as_bytes()).unwrap()
    );
}

/// A service provider's sub-merchant's payment (https://pay.weixin.qq.com/doc/v3/partner/4012085801):
/// `sp_*` and `sub_*` instead of `appid` / `mchid`.
#[test]
fn partner_transaction_names_provider_sub_merchant_and_paid_appid() {
    let partner = r#"{"sp_appid":"wx2222222222222222","sp_mchid":"1900000120","sub_appid":"wx3333333333333333","sub_mchid":"1900000201","out_trade_no":"SHARED-1","transaction_id":"4200000201","trade_state":"SUCCESS","payer":{"sp_openid":"o1","sub_openid":"o2"},"amount":{"total":2500}}"#;
    let t = Transaction::parse(partner.as_bytes()).unwrap();
    assert_eq!(
        (t.merchant(), t.sub_merchant(), t.paid_appid()),
        ("1900000120", "1900000201", "wx3333333333333333")
    );
    // Placed without a sub_appid: paid in the provider's appid.
    let without_sub_appid = partner.replace(r#""sub_appid":"wx3333333333333333","#, "");
    let t = Transaction::parse(without_sub_appid.as_bytes()).unwrap();
    assert_eq!(t.paid_appid(), "wx2222222222222222");
    let direct = Transaction::parse(TRANSACTION.as_bytes()).unwrap();
    assert_eq!(
        (direct.merchant(), direct.sub_merchant()),
        ("1230000109", "")
    );
    // Neither form, or a partner form without its sub-merchant, is not a payment.
    for broken in [
        partner.replace(r#""sub_mchid":"1900000201","#, ""),
        partner.replace(r#""sp_mchid":"1900000120","#, ""),
        partner.replace(
            r#""sp_appid":"wx2222222222222222","#,
            r#""appid":"wx1","mchid":"1","#,
        ),
    ] {
        assert!(
            matches!(
                Transaction::parse(broken.as_bytes()),
                Err(ResourceError::Json(_))
            ),
            "{broken}"
        );
    }
}
