//! Every body the simulator builds verifies with wxpay-shared's verifiers; every bad variant
//! fails for the right reason.

use chrono::Utc;
use wxpay_shared::v2::{
    self, PayNotification, RefundEnvelope, RefundInfo, SignError, SignType, XmlFields,
};
use wxpay_shared::v3::{
    verify_notification, NotificationEnvelope, TimestampCheck, VerifyError, WechatpayHeaders,
};
use wxpay_simulator::build::{
    self, BuildError, Kind, Notification, Payment, Refund, V2Signing, Variant,
};
use wxpay_simulator::secrets::SimMerchant;

use crate::helpers::Fixture;

fn payment(amount: i64) -> Payment {
    Payment::new("ORDER-20240101-0001", amount)
}

fn refund() -> Refund {
    Refund {
        out_trade_no: "ORDER-20240101-0001".into(),
        transaction_id: build::new_transaction_id(),
        out_refund_no: "REFUND-0001".into(),
        refund_id: build::new_refund_id(),
        total_fee: 1000,
        refund_fee: 400,
        succeeded_at: Utc::now(),
    }
}

pub(crate) fn headers(n: &Notification) -> WechatpayHeaders {
    WechatpayHeaders::from_lookup(|name| {
        n.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    })
    .expect("all Wechatpay headers present")
}

pub(crate) fn verify_v3(m: &SimMerchant, n: &Notification) -> Result<(), VerifyError> {
    verify_notification(
        &headers(n),
        &n.body,
        &m.platform_keys(),
        TimestampCheck::now(),
    )
}

#[test]
fn v2_pay_verifies_with_every_signing_choice() {
    let f = Fixture::new();
    let m = &f.merchant;
    let choices = [
        (SignType::Md5, false),
        (SignType::Md5, true),
        (SignType::HmacSha256, false),
        (SignType::HmacSha256, true),
    ];
    for (sign_type, omit_sign_type) in choices {
        let p = payment(12_345);
        let n = build::v2_pay(
            m,
            &p,
            V2Signing {
                sign_type,
                omit_sign_type,
            },
            Variant::Genuine,
        )
        .unwrap();
        assert_eq!(n.route, "/notify/v2/pay");
        let fields = XmlFields::parse(&n.body).unwrap();
        assert_eq!(v2::verify(&fields, &m.api_v2_key), Ok(sign_type));
        assert_eq!(fields.get("sign_type").is_none(), omit_sign_type);
        let pay = PayNotification::from_fields(&fields).unwrap();
        assert!(pay.is_success());
        assert_eq!(pay.total_fee, 12_345);
        assert_eq!(pay.cash_fee, Some(12_345));
        assert_eq!(pay.mch_id, m.mch_id);
        assert_eq!(pay.appid, m.appid);
        assert_eq!(pay.transaction_id, p.transaction_id);
        assert_eq!(pay.trade_type.as_deref(), Some("JSAPI"));
        assert_eq!(pay.fee_type.as_deref(), Some("CNY"));
        // time_end is Beijing time, to the second.
        let paid_at = pay.paid_at().expect("time_end parses");
        assert_eq!(paid_at.timestamp(), p.paid_at.timestamp());
        for field in [
            "nonce_str",
            "openid",
            "is_subscribe",
            "bank_type",
            "result_code",
            "return_code",
        ] {
            assert!(fields.get(field).is_some(), "{field}");
        }
    }
}

#[test]
fn v2_pay_bad_variants_fail_signature_verification() {
    let f = Fixture::new();
    let m = &f.merchant;
    let p = payment(50_000);
    let forged = build::v2_pay(m, &p, V2Signing::default(), Variant::Forge).unwrap();
    let fields = XmlFields::parse(&forged.body).unwrap();
    assert_eq!(v2::verify(&fields, &m.api_v2_key), Err(SignError::Mismatch));

    let tampered = build::v2_pay(m, &p, V2Signing::default(), Variant::TamperAmount).unwrap();
    let mut fields = XmlFields::parse(&tampered.body).unwrap();
    assert_eq!(
        fields.get("total_fee"),
        Some("50000"),
        "the claimed amount is the order's"
    );
    assert_eq!(v2::verify(&fields, &m.api_v2_key), Err(SignError::Mismatch));
    // It was genuinely signed for 1 fen: restoring that amount makes it verify again.
    fields.insert("total_fee", "1");
    fields.insert("cash_fee", "1");
    assert_eq!(v2::verify(&fields, &m.api_v2_key), Ok(SignType::Md5));

    for variant in [Variant::Probe, Variant::Stale] {
        let err = build::v2_pay(m, &p, V2Signing::default(), variant).unwrap_err();
        assert!(
            matches!(err, BuildError::VariantNotApplicable { .. }),
            "{err}"
        );
    }
    assert!(matches!(
        build::v2_pay(m, &payment(0), V2Signing::default(), Variant::Genuine),
        Err(BuildError::Amount(0))
    ));
}

#[test]
fn v2_refund_decrypts_and_forgery_does_not() {
    let f = Fixture::new();
    let m = &f.merchant;
    let r = refund();
    let n = build::v2_refund(m, &r, Variant::Genuine).unwrap();
    assert_eq!(n.route, "/notify/v2/refund");
    let fields = XmlFields::parse(&n.body).unwrap();
    assert!(
        fields.get("sign").is_none(),
        "refund notifications carry no sign"
    );
    let envelope = RefundEnvelope::from_fields(&fields).unwrap();
    assert_eq!(envelope.mch_id, m.mch_id);
    let root = v2::decrypt_req_info(&envelope.req_info, &m.api_v2_key).unwrap();
    let info = RefundInfo::from_fields(&root).unwrap();
    assert_eq!(info.out_refund_no, "REFUND-0001");
    assert_eq!(info.refund_fee, 400);
    assert_eq!(info.total_fee, 1000);
    assert_eq!(info.settlement_refund_fee, Some(400));
    assert_eq!(info.transaction_id, r.transaction_id);
    assert_eq!(info.refund_id, r.refund_id);
    assert_eq!(
        info.succeeded_at().map(|t| t.timestamp()),
        Some(r.succeeded_at.timestamp())
    );
    for field in [
        "refund_recv_accout",
        "refund_account",
        "refund_request_source",
        "refund_status",
    ] {
        assert!(root.get(field).is_some(), "{field}");
    }

    let forged = build::v2_refund(m, &r, Variant::Forge).unwrap();
    let fields = XmlFields::parse(&forged.body).unwrap();
    let req_info = fields.get("req_info").unwrap();
    assert!(v2::decrypt_req_info(req_info, &m.api_v2_key).is_err());

    assert!(build::v2_refund(m, &r, Variant::TamperAmount).is_err());
    let too_much = Refund {
        refund_fee: 1001,
        ..r
    };
    assert!(matches!(
        build::v2_refund(m, &too_much, Variant::Genuine),
        Err(BuildError::RefundFee { .. })
    ));
}

#[test]
fn v3_pay_and_refund_verify_and_decrypt() {
    let f = Fixture::new();
    let m = &f.merchant;
    let p = payment(777);
    let n = build::v3_pay(m, &p, Variant::Genuine, Utc::now()).unwrap();
    assert_eq!(n.route, format!("/notify/v3/{}", m.mch_id));
    assert_eq!(n.kind, Kind::V3Pay);
    assert_eq!(verify_v3(m, &n), Ok(()));
    let h = headers(&n);
    assert_eq!(h.serial, m.platform_serial);
    assert_eq!(
        h.signature_type.as_deref(),
        Some("WECHATPAY2-SHA256-RSA2048")
    );
    let envelope = NotificationEnvelope::parse(&n.body).unwrap();
    assert_eq!(envelope.event_type, "TRANSACTION.SUCCESS");
    assert_eq!(envelope.resource_type, "encrypt-resource");
    assert_eq!(envelope.resource.original_type, "transaction");
    assert_eq!(envelope.resource.algorithm, "AEAD_AES_256_GCM");
    let t = envelope
        .decrypt_transaction(m.api_v3_key.as_bytes())
        .unwrap();
    assert!(t.is_success());
    assert_eq!(t.out_trade_no, p.out_trade_no);
    assert_eq!(t.transaction_id, p.transaction_id);
    assert_eq!(
        (t.mchid.as_str(), t.appid.as_str()),
        (m.mch_id.as_str(), m.appid.as_str())
    );
    assert_eq!(t.amount.as_ref().map(|a| a.total), Some(777));
    assert_eq!(
        t.paid_at().map(|x| x.timestamp()),
        Some(p.paid_at.timestamp())
    );

    let r = refund();
    let n = build::v3_refund(m, &r, Variant::Genuine, Utc::now()).unwrap();
    assert_eq!(verify_v3(m, &n), Ok(()));
    let envelope = NotificationEnvelope::parse(&n.body).unwrap();
    assert_eq!(envelope.event_type, "REFUND.SUCCESS");
    let rr = envelope.decrypt_refund(m.api_v3_key.as_bytes()).unwrap();
    assert_eq!(rr.out_refund_no, r.out_refund_no);
    assert_eq!(rr.refund_status, "SUCCESS");
    assert_eq!((rr.amount.total, rr.amount.refund), (1000, 400));
}

#[test]
fn v3_bad_variants_fail_for_the_right_reason() {
    let f = Fixture::new();
    let m = &f.merchant;
    let p = payment(9_900);
    let now = Utc::now();

    let forged = build::v3_pay(m, &p, Variant::Forge, now).unwrap();
    assert_eq!(verify_v3(m, &forged), Err(VerifyError::SignatureMismatch));

    let tampered = build::v3_pay(m, &p, Variant::TamperAmount, now).unwrap();
    assert_eq!(verify_v3(m, &tampered), Err(VerifyError::SignatureMismatch));
    // The resource itself decrypts (the attacker knew the APIv3 key) and claims the full amount.
    let t = NotificationEnvelope::parse(&tampered.body)
        .unwrap()
        .decrypt_transaction(m.api_v3_key.as_bytes())
        .unwrap();
    assert_eq!(t.amount.map(|a| a.total), Some(9_900));

    let probe = build::v3_pay(m, &p, Variant::Probe, now).unwrap();
    assert!(headers(&probe).signature.starts_with("WECHATPAY/SIGNTEST/"));
    assert_eq!(verify_v3(m, &probe), Err(VerifyError::Probe));

    let stale = build::v3_pay(m, &p, Variant::Stale, now).unwrap();
    assert!(
        matches!(verify_v3(m, &stale), Err(VerifyError::StaleTimestamp { skew_secs }) if skew_secs >= 600)
    );
    // Genuinely signed: only the timestamp is wrong (the worker, which skips it, would accept).
    assert_eq!(
        verify_notification(
            &headers(&stale),
            &stale.body,
            &m.platform_keys(),
            TimestampCheck::Skip
        ),
        Ok(())
    );

    let r = refund();
    let forged = build::v3_refund(m, &r, Variant::Forge, now).unwrap();
    assert_eq!(verify_v3(m, &forged), Err(VerifyError::SignatureMismatch));
    let tampered = build::v3_refund(m, &r, Variant::TamperAmount, now).unwrap();
    assert_eq!(verify_v3(m, &tampered), Err(VerifyError::SignatureMismatch));
}

#[test]
fn kinds_parse_and_route() {
    for k in [Kind::V2Pay, Kind::V2Refund, Kind::V3Pay, Kind::V3Refund] {
        assert_eq!(Kind::parse(k.as_str()), Some(k));
    }
    assert_eq!(Kind::parse("v4-pay"), None);
    assert_eq!(Kind::V3Refund.route("123"), "/notify/v3/123");
}
