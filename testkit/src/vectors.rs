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

use wxpay_shared::message::{NotifyKind, NotifyMessage};
use wxpay_shared::v3::WechatpayHeaders;

use crate::merchants::PROVIDER;
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

/// [`SUB_A`](crate::merchants::SUB_A)'s `SHARED-1` paid 2500 fen in its `sub_appid`,
/// transaction [`V3_PAY_SUB_A_TRANSACTION`].
pub const V3_PAY_SUB_A: V3Vector = V3Vector {
    body: include_str!("../fixtures/partner/v3_pay_sub_a.json"),
    headers: include_str!("../fixtures/partner/v3_pay_sub_a.headers"),
};
pub const V3_PAY_SUB_A_TRANSACTION: &str = "4200000201202612010000000001";

/// `SHARED-1` of the sub-merchant 1900000299, which [`PROVIDER`] does not serve, 2500 fen.
pub const V3_PAY_NOT_SERVED: V3Vector = V3Vector {
    body: include_str!("../fixtures/partner/v3_pay_not_served.json"),
    headers: include_str!("../fixtures/partner/v3_pay_not_served.headers"),
};

/// `SHARED-R1`: 1000 of the 2500 fen of [`V3_PAY_SUB_A`] refunded (REFUND.SUCCESS).
pub const V3_REFUND_SUB_A: V3Vector = V3Vector {
    body: include_str!("../fixtures/partner/v3_refund_sub_a.json"),
    headers: include_str!("../fixtures/partner/v3_refund_sub_a.headers"),
};

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
        NotifyMessage::new(
            NotifyKind::V3,
            PROVIDER.mch_id,
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
