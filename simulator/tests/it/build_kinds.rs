//! The other v3 kinds (merchant transfer, profit sharing, pay score) verify with the platform
//! key and decrypt with the merchant's APIv3 key to the fields WeChat Pay documents.

use chrono::Utc;
use serde_json::Value;
use wxpay_shared::v3::{NotificationEnvelope, VerifyError};
use wxpay_simulator::build::{BuildError, Kind, Variant};
use wxpay_simulator::build_kinds::OtherKind::{self, PayScore, ProfitSharing, TransferBatch};
use wxpay_simulator::build_kinds::{OtherNotice, PROFIT_SHARING_RECEIVER};
use wxpay_simulator::init::{init, InitOptions};
use wxpay_simulator::secrets::SimMerchant;

use crate::build::verify_v3;
use crate::helpers::Fixture;

/// The notification of `notice`, genuine, checked to verify and to be of `event_type` and
/// `original_type`; its envelope and decrypted resource.
fn open(
    m: &SimMerchant,
    notice: &OtherNotice,
    (event_type, original_type): (&str, &str),
) -> (NotificationEnvelope, Value) {
    let n = notice
        .notification(m, Variant::Genuine, Utc::now())
        .expect("builds");
    assert_eq!(verify_v3(m, &n), Ok(()));
    assert_eq!(n.kind, Kind::V3Other(notice.kind));
    assert_eq!(n.route, format!("/notify/v3/{}", m.mch_id));
    let envelope = NotificationEnvelope::parse(&n.body).expect("envelope");
    assert_eq!(envelope.event_type, event_type);
    assert_eq!(envelope.resource.original_type, original_type);
    assert_eq!(envelope.resource_type, "encrypt-resource");
    assert_eq!(envelope.resource.algorithm, "AEAD_AES_256_GCM");
    let plain = envelope
        .decrypt(m.api_v3_key.as_bytes())
        .expect("decrypts with the merchant's APIv3 key");
    let resource = serde_json::from_slice(&plain).expect("a JSON resource");
    (envelope, resource)
}

fn notice(kind: OtherKind, out_no: &str, amount: i64) -> OtherNotice {
    OtherNotice::new(kind, out_no, amount, Utc::now())
}

/// The amount of [`of_event`]'s notices, in fen.
const EVENT_AMOUNT: i64 = 900;

/// [`notice`] of [`EVENT_AMOUNT`] and the family's `event_type`.
fn of_event(kind: OtherKind, out_no: &str, event_type: &str) -> OtherNotice {
    OtherNotice {
        event_type: Some(event_type.into()),
        ..notice(kind, out_no, EVENT_AMOUNT)
    }
}

/// Why `notice` cannot be built.
fn refused(m: &SimMerchant, notice: &OtherNotice) -> BuildError {
    let built = notice.notification(m, Variant::Genuine, Utc::now());
    built.expect_err("not built")
}

#[test]
fn a_transfer_bill_decrypts_to_the_documented_fields() {
    let f = Fixture::new();
    let m = &f.merchant;
    let bill = notice(OtherKind::Transfer, "BILL-1", 1234);
    const BILL_FINISHED: (&str, &str) = ("MCHTRANSFER.BILL.FINISHED", "mch_payment");
    let (envelope, resource) = open(m, &bill, BILL_FINISHED);
    assert_eq!(envelope.resource.associated_data, "mch_payment");
    assert_eq!(resource["mch_id"], m.mch_id.as_str());
    assert_eq!(resource["out_bill_no"], "BILL-1");
    assert_eq!(resource["state"], "SUCCESS");
    assert_eq!(resource["transfer_amount"], 1234);
    let transfer_bill_no = resource["transfer_bill_no"].as_str().expect("a string");
    assert!(transfer_bill_no.starts_with("1330") && transfer_bill_no.len() == 40);
    for field in ["openid", "create_time", "update_time"] {
        assert!(resource[field].is_string(), "{field}: {resource}");
    }
    assert!(resource.get("fail_reason").is_none());

    // The same bill notified again: another notification, WeChat Pay's same bill number.
    let (again, again_resource) = open(m, &bill, BILL_FINISHED);
    assert_ne!(again.id, envelope.id);
    assert_eq!(again_resource["transfer_bill_no"], transfer_bill_no);

    let failed = OtherNotice {
        state: Some("FAIL".into()),
        ..notice(OtherKind::Transfer, "BILL-2", 50)
    };
    let (_, resource) = open(m, &failed, BILL_FINISHED);
    assert_eq!(resource["state"], "FAIL");
    assert!(resource["fail_reason"].is_string());

    let unknown_state = OtherNotice {
        state: Some("PAID".into()),
        ..notice(OtherKind::Transfer, "BILL-3", 50)
    };
    assert!(matches!(
        refused(m, &unknown_state),
        BuildError::NotInFamily { what: "state", .. }
    ));
}

#[test]
fn a_transfer_batch_finishes_or_closes() {
    let f = Fixture::new();
    let m = &f.merchant;
    let finished = notice(OtherKind::TransferBatch, "BATCH-1", 900);
    let (_, resource) = open(m, &finished, ("MCHTRANSFER.BATCH.FINISHED", "mch_payment"));
    assert_eq!(resource["out_batch_no"], "BATCH-1");
    assert_eq!(resource["batch_status"], "FINISHED");
    assert_eq!(
        (&resource["total_amount"], &resource["success_amount"]),
        (&Value::from(900), &Value::from(900))
    );

    let closed = of_event(TransferBatch, "BATCH-2", "MCHTRANSFER.BATCH.CLOSED");
    let (_, resource) = open(m, &closed, ("MCHTRANSFER.BATCH.CLOSED", "mch_payment"));
    assert_eq!(resource["batch_status"], "CLOSED");
    assert_eq!(resource["success_amount"], 0);
    assert!(resource["close_reason"].is_string());

    let not_a_batch_event = of_event(TransferBatch, "BATCH-3", "MCHTRANSFER.BILL.FINISHED");
    assert!(matches!(
        refused(m, &not_a_batch_event),
        BuildError::NotInFamily {
            what: "event type",
            ..
        }
    ));
}

#[test]
fn a_profit_sharing_decrypts_to_the_documented_fields_also_as_a_transaction() {
    let f = Fixture::new();
    let m = &f.merchant;
    let sharing = notice(OtherKind::ProfitSharing, "PS-1", 300);
    let (_, resource) = open(m, &sharing, ("PROFITSHARING.SUCCESS", "profitsharing"));
    assert_eq!(resource["mchid"], m.mch_id.as_str());
    assert_eq!(resource["out_order_no"], "PS-1");
    assert_eq!(resource["transaction_id"], sharing.transaction_id.as_str());
    assert!(resource["order_id"]
        .as_str()
        .is_some_and(|id| id.starts_with("3008")));
    assert_eq!(resource["receiver"]["type"], "MERCHANT_ID");
    assert_eq!(resource["receiver"]["account"], PROFIT_SHARING_RECEIVER);
    assert_eq!(resource["receiver"]["amount"], 300);
    assert!(resource["receiver"]["description"].is_string());
    assert!(resource["success_time"].is_string());

    let as_transaction = OtherNotice {
        profitsharing_as_transaction: true,
        ..notice(OtherKind::ProfitSharing, "PS-2", 300)
    };
    let (_, resource) = open(m, &as_transaction, ("TRANSACTION.SUCCESS", "profitsharing"));
    assert_eq!(resource["out_order_no"], "PS-2");

    let returned = of_event(ProfitSharing, "PS-3", "PROFITSHARING.RETURN");
    open(m, &returned, ("PROFITSHARING.RETURN", "profitsharing"));

    let transfer_as_transaction = OtherNotice {
        profitsharing_as_transaction: true,
        ..notice(OtherKind::Transfer, "BILL-4", 300)
    };
    let with_a_state = OtherNotice {
        state: Some("SUCCESS".into()),
        ..notice(OtherKind::ProfitSharing, "PS-4", 300)
    };
    for not_applicable in [transfer_as_transaction, with_a_state] {
        assert!(matches!(
            not_applicable.notification(m, Variant::Genuine, Utc::now()),
            Err(BuildError::OptionNotApplicable { .. })
        ));
    }
}

#[test]
fn a_provider_names_its_sub_merchant_in_a_profit_sharing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = InitOptions {
        dir: dir.path().to_path_buf(),
        partner: true,
        ..InitOptions::default()
    };
    init(&options).expect("init --partner");
    let provider = SimMerchant::load(&dir.path().join("simulator.toml")).expect("secrets");
    let m = provider
        .for_sub_merchant("1900000201")
        .expect("a sub-merchant");
    let sharing = notice(OtherKind::ProfitSharing, "PS-5", 10);
    let (_, resource) = open(&m, &sharing, ("PROFITSHARING.SUCCESS", "profitsharing"));
    assert_eq!(resource["sp_mchid"], m.mch_id.as_str());
    assert_eq!(resource["sub_mchid"], "1900000201");
    assert!(resource.get("mchid").is_none());
}

#[test]
fn pay_score_notifications_have_an_empty_associated_data_and_their_documented_fields() {
    let f = Fixture::new();
    let m = &f.merchant;
    let confirmed = notice(OtherKind::PayScore, "PAYSCORE-1", 4000);
    let (envelope, resource) = open(m, &confirmed, ("PAYSCORE.USER_CONFIRM", "payscore"));
    assert_eq!(envelope.resource.associated_data, "");
    assert_eq!(
        (&resource["appid"], &resource["mchid"]),
        (
            &Value::from(m.appid.as_str()),
            &Value::from(m.mch_id.as_str())
        )
    );
    assert_eq!(resource["out_order_no"], "PAYSCORE-1");
    assert_eq!(resource["state"], "DOING");
    assert_eq!(resource["state_description"], "USER_CONFIRM");
    assert_eq!(resource["total_amount"], 4000);
    for field in ["service_id", "openid", "order_id"] {
        assert!(resource[field].is_string(), "{field}: {resource}");
    }

    let paid = of_event(PayScore, "PAYSCORE-2", "PAYSCORE.USER_PAID");
    let (envelope, resource) = open(m, &paid, ("PAYSCORE.USER_PAID", "payscore"));
    assert_eq!(envelope.resource.associated_data, "");
    assert_eq!(resource["state"], "DONE");
    assert_eq!(resource["collection"]["state"], "USER_PAID");
    assert_eq!(resource["collection"]["paid_amount"], EVENT_AMOUNT);
    assert_eq!(
        resource["collection"]["details"][0]["transaction_id"],
        paid.transaction_id.as_str()
    );

    let opened = of_event(PayScore, "AUTH-1", "PAYSCORE.USER_OPEN_SERVICE");
    let (_, resource) = open(m, &opened, ("PAYSCORE.USER_OPEN_SERVICE", "payscore"));
    assert_eq!(resource["user_service_status"], "USER_OPEN_SERVICE");
    assert_eq!(resource["out_request_no"], "AUTH-1");
    assert!(resource["openorclose_time"].is_string());
    assert!(matches!(
        opened.notification(m, Variant::TamperAmount, Utc::now()),
        Err(BuildError::VariantNotApplicable { .. })
    ));
}

#[test]
fn bad_variants_of_other_kinds_fail_verification() {
    let f = Fixture::new();
    let m = &f.merchant;
    let now = Utc::now();
    let bill = notice(OtherKind::Transfer, "BILL-5", 5000);
    let forged = bill.notification(m, Variant::Forge, now).unwrap();
    assert_eq!(verify_v3(m, &forged), Err(VerifyError::SignatureMismatch));
    let tampered = bill.notification(m, Variant::TamperAmount, now).unwrap();
    assert_eq!(verify_v3(m, &tampered), Err(VerifyError::SignatureMismatch));
    let claimed: Value = serde_json::from_slice(
        &NotificationEnvelope::parse(&tampered.body)
            .unwrap()
            .decrypt(m.api_v3_key.as_bytes())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claimed["transfer_amount"], 5000);
    let probe = bill.notification(m, Variant::Probe, now).unwrap();
    assert_eq!(verify_v3(m, &probe), Err(VerifyError::Probe));
}
