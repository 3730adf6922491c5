//! The test merchant and its signed notifications: the test kit's, under the names the
//! worker's tests use.

#![allow(unused_imports)]

pub use wxpay_testkit::merchants::{platform_key, OTHER_APPID};
pub use wxpay_testkit::notifications::{
    resend, transaction_of, v2_pay, v2_pay_in, v2_pay_with, v2_refund, v3_pay, v3_refund,
};

use wxpay_testkit::merchants::MERCHANT;

pub const MCH_ID: &str = MERCHANT.mch_id;
pub const APPID: &str = MERCHANT.appid;
pub const V2_KEY: &str = MERCHANT.api_v2_key;
pub const SERIAL: &str = MERCHANT.platform_serial;

/// The test merchant's `[[merchants]]` entry (v2 and v3).
pub fn merchant_settings() -> wxpay_runtime::config::MerchantSettings {
    MERCHANT.settings()
}
