//! A service provider's (服务商) notifications made outside this workspace, by
//! `testkit/fixtures/partner/make.py` (run once at dev time): v3 resources encrypted with
//! AES-256-GCM by Python's `cryptography` and envelopes signed RSA-SHA256 by the OpenSSL
//! CLI with `fixtures/platform_private.pem`; the v2 payment signed by Python's hashlib
//! (MD5), the v2 refund's `req_info` encrypted by `openssl enc -aes-256-ecb`. None of them
//! comes from wxpay-shared, so a rule both our signer and our verifier got wrong fails here.
//!
//! The keys are [`PROVIDER`]'s; the notifications are for its sub-merchants
//! [`SUB_A`](crate::merchants::SUB_A) and [`SUB_B`](crate::merchants::SUB_B), which both use
//! the `out_trade_no` [`SHARED_OUT_TRADE_NO`], and for the unserved
//! [`SUB_NOT_SERVED`](crate::merchants::SUB_NOT_SERVED).
//!
//! The notifications of other kinds (merchant transfer, profit sharing, pay score, a kind not
//! yet documented) are made the same way, by `testkit/fixtures/kinds/make.py`, with the keys
//! of the direct merchant [`MERCHANT`](crate::merchants::MERCHANT): [`V3_TRANSFER_BILL_SUCCESS`] and the others below.
//!
//! Combine payments (合单支付) of the direct [`MERCHANT`](crate::merchants::MERCHANT), made the same way by
//! `testkit/fixtures/combine/make.py`: [`V3_COMBINE_TWO_ORDERS`] and its variants.

use wxpay_shared::message::{NotifyKind, NotifyMessage};
use wxpay_shared::v3::WechatpayHeaders;

use crate::merchants::{TestMerchant, PROVIDER};
use crate::notifications::xml_message_of;

/// The order number both sub-merchants' orders have.
pub const SHARED_OUT_TRADE_NO: &str = "SHARED-1";
/// The refund number both sub-merchants' refunds have.
pub const SHARED_OUT_REFUND_NO: &str = "SHARED-R1";

/// A v3 notification: its body and its `Wechatpay-*` headers, one `Name: value` a line.
#[derive(Debug, Clone, Copy)]
pub struct V3Vector {
    pub body: &'static str,
    pub headers: &'static str,
}

/// The [`V3Vector`] of `fixtures/<path>.json` and `fixtures/<path>.headers`.
macro_rules! v3_vector {
    ($path:literal) => {
        V3Vector {
            body: include_str!(concat!("../fixtures/", $path, ".json")),
            headers: include_str!(concat!("../fixtures/", $path, ".headers")),
        }
    };
}

/// [`SUB_A`](crate::merchants::SUB_A)'s `SHARED-1` paid 2500 fen in its `sub_appid`,
/// transaction [`V3_PAY_SUB_A_TRANSACTION`].
pub const V3_PAY_SUB_A: V3Vector = v3_vector!("partner/v3_pay_sub_a");
pub const V3_PAY_SUB_A_TRANSACTION: &str = "4200000201202612010000000001";

/// `SHARED-1` of the sub-merchant 1900000299, which [`PROVIDER`] does not serve, 2500 fen.
pub const V3_PAY_NOT_SERVED: V3Vector = v3_vector!("partner/v3_pay_not_served");

/// `SHARED-R1`: 1000 of the 2500 fen of [`V3_PAY_SUB_A`] refunded (REFUND.SUCCESS).
pub const V3_REFUND_SUB_A: V3Vector = v3_vector!("partner/v3_refund_sub_a");

/// The combine payment `COMBINE-1` of [`MERCHANT`](crate::merchants::MERCHANT): its orders [`COMBINE_ORDERS`] paid
/// together, 1200 and 800 fen, by the transactions [`COMBINE_TRANSACTIONS`].
pub const V3_COMBINE_TWO_ORDERS: V3Vector = v3_vector!("combine/v3_combine_two_orders");
/// [`V3_COMBINE_TWO_ORDERS`]'s number.
pub const COMBINE_OUT_TRADE_NO: &str = "COMBINE-1";
/// [`V3_COMBINE_TWO_ORDERS`]'s orders of [`MERCHANT`](crate::merchants::MERCHANT) and their amounts in fen.
pub const COMBINE_ORDERS: [(&str, i64); 2] = [("COMBINE-A", 1200), ("COMBINE-B", 800)];
pub const COMBINE_TRANSACTIONS: [&str; 2] = [
    "4200000109202612010000000001",
    "4200000109202612010000000002",
];

/// [`V3_COMBINE_TWO_ORDERS`], except that it says `COMBINE-B` was paid 1 fen.
pub const V3_COMBINE_WRONG_AMOUNT: V3Vector = v3_vector!("combine/v3_combine_wrong_amount");

/// `COMBINE-2` of [`MERCHANT`](crate::merchants::MERCHANT): `COMBINE-V3` (500 fen) of
/// [`V3_MERCHANT`](crate::merchants::V3_MERCHANT), a configured merchant, paid in
/// [`MERCHANT`](crate::merchants::MERCHANT)'s appid, and `COMBINE-X` (300 fen) of
/// [`UNKNOWN_MCH_ID`](crate::merchants::UNKNOWN_MCH_ID), configured nowhere.
pub const V3_COMBINE_OTHER_MERCHANTS: V3Vector = v3_vector!("combine/v3_combine_other_merchants");

/// [`SUB_B`](crate::merchants::SUB_B)'s `SHARED-1` paid 1800 fen in the provider's appid,
/// transaction [`V2_PAY_SUB_B_TRANSACTION`], MD5-signed.
pub const V2_PAY_SUB_B: &str = include_str!("../fixtures/partner/v2_pay_sub_b.xml");
pub const V2_PAY_SUB_B_TRANSACTION: &str = "4200000202202612010000000001";

/// `SHARED-R1`: all 1800 fen of [`V2_PAY_SUB_B`] refunded (SUCCESS).
pub const V2_REFUND_SUB_B: &str = include_str!("../fixtures/partner/v2_refund_sub_b.xml");

impl V3Vector {
    /// The signature headers.
    pub fn wechatpay_headers(&self) -> WechatpayHeaders {
        let lines: Vec<(&str, &str)> = self
            .headers
            .lines()
            .filter_map(|line| line.split_once(": "))
            .collect();
        WechatpayHeaders::from_lookup(|name| {
            let found = lines.iter().find(|(key, _)| key.eq_ignore_ascii_case(name));
            found.map(|(_, value)| *value)
        })
        .expect("the fixture's headers parse")
    }

    /// As the gateway queues it for [`PROVIDER`] (the partner vectors).
    pub fn message(&self) -> NotifyMessage {
        self.message_of(&PROVIDER)
    }

    /// As the gateway queues it for `merchant` (the kinds vectors: [`MERCHANT`](crate::merchants::MERCHANT)).
    pub fn message_of(&self, merchant: &TestMerchant) -> NotifyMessage {
        NotifyMessage::new(
            NotifyKind::V3,
            merchant.mch_id,
            self.body.as_bytes().to_vec(),
            Some("application/json".into()),
            Some(self.wechatpay_headers()),
        )
    }
}

/// [`MERCHANT`](crate::merchants::MERCHANT)'s transfer bill (商家转账) [`TRANSFER_OUT_BILL_NO`] finished: MCHTRANSFER.BILL.FINISHED,
/// original_type `mch_payment`, state SUCCESS, [`TRANSFER_AMOUNT_FEN`] to the user.
pub const V3_TRANSFER_BILL_SUCCESS: V3Vector = v3_vector!("kinds/v3_transfer_bill_success");
/// The same bill and state as [`V3_TRANSFER_BILL_SUCCESS`] under another notification id.
pub const V3_TRANSFER_BILL_RESENT: V3Vector = v3_vector!("kinds/v3_transfer_bill_resent");
pub const TRANSFER_OUT_BILL_NO: &str = "KINDS-BILL-1";
pub const TRANSFER_AMOUNT_FEN: i64 = 1234;

/// [`MERCHANT`](crate::merchants::MERCHANT)'s profit sharing (分账) `KINDS-PS-1`: PROFITSHARING.SUCCESS, 300 fen to the
/// merchant receiver 1900000110.
pub const V3_PROFITSHARING_SUCCESS: V3Vector = v3_vector!("kinds/v3_profitsharing_success");
/// A direct merchant's profit sharing `KINDS-PS-2` in the form some receive it: event_type
/// TRANSACTION.SUCCESS with original_type `profitsharing` (not a payment).
pub const V3_PROFITSHARING_AS_TRANSACTION: V3Vector =
    v3_vector!("kinds/v3_profitsharing_as_transaction");

/// [`MERCHANT`](crate::merchants::MERCHANT)'s pay score (支付分) order `KINDS-PAYSCORE-1` confirmed by the user:
/// PAYSCORE.USER_CONFIRM, original_type `payscore`, empty `associated_data` (as documented).
pub const V3_PAYSCORE_USER_CONFIRM: V3Vector = v3_vector!("kinds/v3_payscore_user_confirm");

/// A kind nobody has documented yet (`FUTURE.SOMETHING`, original_type `future`), signed
/// and decryptable.
pub const V3_FUTURE_SOMETHING: V3Vector = v3_vector!("kinds/v3_future_something");

/// Every vector of `fixtures/kinds/`, all [`MERCHANT`](crate::merchants::MERCHANT)'s.
pub const V3_KINDS: [V3Vector; 6] = [
    V3_TRANSFER_BILL_SUCCESS,
    V3_TRANSFER_BILL_RESENT,
    V3_PROFITSHARING_SUCCESS,
    V3_PROFITSHARING_AS_TRANSACTION,
    V3_PAYSCORE_USER_CONFIRM,
    V3_FUTURE_SOMETHING,
];

/// A v2 vector of [`PROVIDER`] as the gateway queues it.
pub fn v2_message(kind: NotifyKind, xml: &str) -> NotifyMessage {
    xml_message_of(PROVIDER.mch_id, kind, xml.to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use wxpay_shared::v3::{verify_notification, NotificationEnvelope, TimestampCheck};

    use super::*;
    use crate::merchants::MERCHANT;

    /// Verifies `vector` with [`MERCHANT`]'s configured platform key and returns its
    /// envelope and decrypted resource.
    fn open(vector: &V3Vector) -> (NotificationEnvelope, Value) {
        let mut settings = crate::env::default_settings();
        settings.merchants = vec![MERCHANT.settings()];
        let merchants = settings.merchants().expect("valid merchant");
        let merchant = merchants.get(MERCHANT.mch_id).expect("configured");
        let message = vector.message_of(&MERCHANT);
        verify_notification(
            &vector.wechatpay_headers(),
            &message.body,
            &merchant.platform_keys,
            TimestampCheck::Skip,
        )
        .expect("verifies");
        let envelope = NotificationEnvelope::parse(&message.body).expect("envelope");
        let plain = envelope
            .decrypt(MERCHANT.api_v3_key.as_bytes())
            .expect("decrypts");
        let resource = serde_json::from_slice(&plain).expect("a JSON resource");
        (envelope, resource)
    }

    #[test]
    fn kinds_vectors_verify_and_decrypt_to_their_documented_fields() {
        let (bill, resource) = open(&V3_TRANSFER_BILL_SUCCESS);
        assert_eq!(bill.event_type, "MCHTRANSFER.BILL.FINISHED");
        assert_eq!(bill.resource.original_type, "mch_payment");
        assert_eq!(resource["out_bill_no"], TRANSFER_OUT_BILL_NO);
        assert_eq!(resource["transfer_amount"], TRANSFER_AMOUNT_FEN);
        assert_eq!(resource["state"], "SUCCESS");
        assert_eq!(resource["mch_id"], MERCHANT.mch_id);

        let (resent, resent_resource) = open(&V3_TRANSFER_BILL_RESENT);
        assert_ne!(resent.id, bill.id);
        assert_eq!(resent_resource, resource);

        let (sharing, resource) = open(&V3_PROFITSHARING_SUCCESS);
        assert_eq!(sharing.event_type, "PROFITSHARING.SUCCESS");
        assert_eq!(resource["out_order_no"], "KINDS-PS-1");
        assert_eq!(resource["receiver"]["amount"], 300);
        let (as_transaction, resource) = open(&V3_PROFITSHARING_AS_TRANSACTION);
        assert_eq!(as_transaction.event_type, "TRANSACTION.SUCCESS");
        assert_eq!(as_transaction.resource.original_type, "profitsharing");
        assert_eq!(resource["out_order_no"], "KINDS-PS-2");

        let (payscore, resource) = open(&V3_PAYSCORE_USER_CONFIRM);
        assert_eq!(payscore.event_type, "PAYSCORE.USER_CONFIRM");
        assert_eq!(payscore.resource.associated_data, "");
        assert_eq!(resource["state_description"], "USER_CONFIRM");

        let (future, resource) = open(&V3_FUTURE_SOMETHING);
        assert_eq!(future.event_type, "FUTURE.SOMETHING");
        assert_eq!(resource["future_no"], "KINDS-FUTURE-1");

        let ids: std::collections::BTreeSet<String> =
            V3_KINDS.iter().map(|v| open(v).0.id).collect();
        assert_eq!(ids.len(), V3_KINDS.len(), "one notification id each");
    }
}
