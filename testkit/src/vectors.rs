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

/// The [`V3Vector`] a fixture script wrote as `fixtures/<path>.json` and `.headers`.
macro_rules! v3_vector {
    ($path:literal) => {
        V3Vector {
            body: include_str!(concat!("../fixtures/", $path, ".json")),
            headers: include_str!(concat!("../fixtures/", $path, ".headers")),
        }
    };
}

/// A v3 notification: its body and its `Wechatpay-*` headers, one `Name: value` a line.
#[derive(Debug, Clone, Copy)]
pub struct V3Vector {
    pub body: &'static str,
    pub headers: &'static str,
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

    /// As the gateway queues it for [`PROVIDER`].
    pub fn message(&self) -> NotifyMessage {
        self.message_to(&PROVIDER)
    }

    /// As the gateway queues it for `merchant`.
    pub fn message_to(&self, merchant: &TestMerchant) -> NotifyMessage {
        NotifyMessage::new(
            NotifyKind::V3,
            merchant.mch_id,
            self.body.as_bytes().to_vec(),
            Some("application/json".into()),
            Some(self.wechatpay_headers()),
        )
    }
}

/// A v2 vector of [`PROVIDER`] as the gateway queues it.
pub fn v2_message(kind: NotifyKind, xml: &str) -> NotifyMessage {
    xml_message_of(PROVIDER.mch_id, kind, xml.to_owned())
}
