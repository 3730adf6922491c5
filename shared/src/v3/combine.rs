//! Combine payments (合单支付): one payer, one password, several orders (sub orders, 子单),
//! each of its own merchant, paid at once.
//!
//! - Notification (`TRANSACTION.SUCCESS`, `original_type` `transaction`, the resource below):
//!   <https://pay.weixin.qq.com/docs/merchant/apis/combine-payment/orders/combine-payment-notice.html>,
//!   a service provider's (sub orders with `sub_mchid`, `sub_appid`):
//!   <https://pay.weixin.qq.com/docs/partner/apis/combine-payment/orders/combine-payment-notice.html>
//! - Query `GET /v3/combine-transactions/out-trade-no/{combine_out_trade_no}`: the same shape,
//!   signed and not encrypted; a sub order not paid yet says `NOTPAY` (and more):
//!   <https://pay.weixin.qq.com/doc/v3/merchant/4012557006>
//!
//! The notification shares its event type and `original_type` with a plain payment, so a
//! resource is told apart by its shape ([`is_combine`]). As in [`super::resource`], amounts are
//! `i64` fen (a fraction or an exponent is a parse error), unknown fields are ignored and
//! duplicated fields rejected.

use chrono::{DateTime, Utc};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::resource::{json, parse_time, ResourceError};
use crate::state::TradeState;

/// The path of the combine order query for `combine_out_trade_no` (already percent-encoded
/// by the caller when it needs to be).
pub fn query_path(combine_out_trade_no: &str) -> String {
    format!("/v3/combine-transactions/out-trade-no/{combine_out_trade_no}")
}

/// A combine payment: the decrypted resource of its notification, or the combine query's
/// answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CombineTransaction {
    /// The app of the merchant that started the combine payment.
    pub combine_appid: String,
    /// The merchant that started it: the one the notification is addressed to and whose keys
    /// sign and encrypt.
    pub combine_mchid: String,
    /// That merchant's number for the whole combine payment.
    pub combine_out_trade_no: String,
    /// Where the payment was made (device id); returned as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scene_info: Option<SceneInfo>,
    /// The orders paid together (at most 50).
    pub sub_orders: Vec<SubOrder>,
    /// The payer (absent in a query answer before payment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combine_payer_info: Option<CombinePayer>,
}

/// `scene_info` of a combine payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SceneInfo {
    #[serde(default)]
    pub device_id: String,
}

/// `combine_payer_info` of a combine payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CombinePayer {
    /// The payer's openid under `combine_appid`.
    #[serde(default)]
    pub openid: String,
}

/// One order of a combine payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubOrder {
    /// The merchant the order belongs to (a provider's own id in the partner form).
    pub mchid: String,
    /// Partner form: the sub-merchant the order belongs to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_mchid: String,
    /// Partner form: the sub-merchant's appid, when the order was placed with one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_appid: String,
    /// JSAPI, NATIVE, APP, MWEB.
    #[serde(default)]
    pub trade_type: String,
    /// SUCCESS in a notification; a query answer may say NOTPAY, CLOSED, … per order.
    pub trade_state: String,
    #[serde(default)]
    pub bank_type: String,
    /// The merchant's attach data, returned as given.
    #[serde(default)]
    pub attach: String,
    /// RFC 3339 time of payment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_time: Option<String>,
    /// WeChat Pay's number of this order's payment (empty while unpaid).
    #[serde(default)]
    pub transaction_id: String,
    /// The merchant's order number.
    pub out_trade_no: String,
    /// Amounts; absent in some query answers for unpaid orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<SubOrderAmount>,
    /// Discounts, kept as WeChat Pay wrote them (nothing here reads their amounts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion_detail: Option<serde_json::Value>,
}

/// The amounts of a sub order, in fen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubOrderAmount {
    /// The order's total: what it was placed with.
    pub total_amount: i64,
    /// What the payer paid for it (total minus discounts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer_amount: Option<i64>,
    /// Currency of `total_amount` (`CNY`).
    #[serde(default)]
    pub currency: String,
    #[serde(default)]
    pub payer_currency: String,
}

/// Whether a decrypted payment resource (or a payment query's answer) is a combine payment:
/// it names `combine_out_trade_no` or has `sub_orders`, which a plain payment never has.
/// Anything that is not a JSON object is not.
pub fn is_combine(json_bytes: &[u8]) -> bool {
    serde_json::from_slice::<std::collections::HashMap<String, IgnoredAny>>(json_bytes)
        .is_ok_and(|fields| COMBINE_FIELDS.iter().any(|name| fields.contains_key(*name)))
}

/// [`is_combine`] of a resource already read as JSON (the worker keeps the decrypted resource
/// as JSON anyway: one parse instead of two).
pub fn is_combine_value(resource: &serde_json::Value) -> bool {
    COMBINE_FIELDS
        .iter()
        .any(|name| resource.get(*name).is_some())
}

/// The fields only a combine payment has.
const COMBINE_FIELDS: [&str; 2] = ["combine_out_trade_no", "sub_orders"];

impl CombineTransaction {
    /// Parses a combine payment; it must name its merchant and number and have at least one
    /// sub order, each naming its merchant and order.
    pub fn parse(json_bytes: &[u8]) -> Result<Self, ResourceError> {
        let combine: Self = json(json_bytes)?;
        let missing = |what: &str| {
            Err(ResourceError::Json(format!(
                "combine payment without {what}"
            )))
        };
        if combine.combine_mchid.is_empty() {
            return missing("combine_mchid");
        }
        if combine.combine_out_trade_no.is_empty() {
            return missing("combine_out_trade_no");
        }
        if combine.sub_orders.is_empty() {
            return missing("sub_orders");
        }
        if combine
            .sub_orders
            .iter()
            .any(|sub| sub.mchid.is_empty() || sub.out_trade_no.is_empty())
        {
            return missing("a sub order's mchid or out_trade_no");
        }
        Ok(combine)
    }

    /// The payer's openid; empty when the payment names none.
    pub fn payer_openid(&self) -> &str {
        self.combine_payer_info
            .as_ref()
            .map_or("", |payer| payer.openid.as_str())
    }
}

impl SubOrder {
    /// The appid the order was paid in: the sub-merchant's `sub_appid` when there is one,
    /// else the combine payment's `combine_appid`.
    pub fn paid_appid<'a>(&'a self, combine_appid: &'a str) -> &'a str {
        if self.sub_appid.is_empty() {
            combine_appid
        } else {
            &self.sub_appid
        }
    }

    /// `trade_state` typed; `None` when it is none of WeChat Pay's.
    pub fn state(&self) -> Option<TradeState> {
        TradeState::parse(&self.trade_state)
    }

    /// `success_time` as UTC; `None` when absent or not RFC 3339.
    pub fn paid_at(&self) -> Option<DateTime<Utc>> {
        parse_time(self.success_time.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of WeChat Pay's combine notification document, sub orders of two
    /// merchants, plus a field this crate does not know.
    const NOTICE: &str = r#"{
        "combine_appid": "wxd678efh567hg6787",
        "combine_mchid": "1900000109",
        "combine_out_trade_no": "20150806125346",
        "scene_info": {"device_id": "POS1:123"},
        "sub_orders": [
            {"mchid": "1900000109", "trade_type": "JSAPI", "trade_state": "SUCCESS",
             "bank_type": "CMC", "attach": "深圳分店", "success_time": "2015-05-20T13:29:35+08:00",
             "transaction_id": "1009660380201506130728806387", "out_trade_no": "20150806125346",
             "amount": {"total_amount": 10, "payer_amount": 10, "currency": "CNY", "payer_currency": "CNY"},
             "promotion_detail": [{"coupon_id": "109519", "amount": 1}]},
            {"mchid": "1900000110", "sub_mchid": "1900000201", "sub_appid": "wxsub",
             "trade_type": "JSAPI", "trade_state": "NOTPAY", "out_trade_no": "20150806125347",
             "amount": {"total_amount": 20, "currency": "CNY"}}
        ],
        "combine_payer_info": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "something_new": 1
    }"#;

    #[test]
    fn parses_the_documented_notice_and_query_answer() {
        let combine = CombineTransaction::parse(NOTICE.as_bytes()).expect("parses");
        assert_eq!(combine.combine_mchid, "1900000109");
        assert_eq!(combine.combine_out_trade_no, "20150806125346");
        assert_eq!(combine.payer_openid(), "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");
        let [paid, unpaid] = &combine.sub_orders[..] else {
            panic!("two sub orders");
        };
        assert_eq!(paid.state(), Some(TradeState::Success));
        assert_eq!(paid.amount.as_ref().map(|a| a.total_amount), Some(10));
        assert_eq!(
            paid.paid_at().map(|t| t.to_rfc3339()).as_deref(),
            Some("2015-05-20T05:29:35+00:00")
        );
        assert_eq!(
            paid.paid_appid(&combine.combine_appid),
            "wxd678efh567hg6787"
        );
        assert_eq!(unpaid.state(), Some(TradeState::NotPay));
        assert_eq!(unpaid.paid_appid(&combine.combine_appid), "wxsub");
        assert_eq!(unpaid.sub_mchid, "1900000201");
        assert!(unpaid.transaction_id.is_empty());
    }

    #[test]
    fn float_amounts_and_duplicate_fields_are_refused() {
        for bad in [r#""total_amount": 10.0"#, r#""total_amount": 1e1"#] {
            let text = NOTICE.replacen(r#""total_amount": 10"#, bad, 1);
            assert!(CombineTransaction::parse(text.as_bytes()).is_err(), "{bad}");
        }
        let twice = NOTICE.replacen(
            r#""combine_mchid": "1900000109","#,
            r#""combine_mchid": "1900000109", "combine_mchid": "1900000999","#,
            1,
        );
        assert!(CombineTransaction::parse(twice.as_bytes()).is_err());
    }

    #[test]
    fn a_combine_names_its_merchant_number_and_sub_orders() {
        let without_orders = r#"{"combine_appid":"wx","combine_mchid":"1","combine_out_trade_no":"c","sub_orders":[]}"#;
        assert!(CombineTransaction::parse(without_orders.as_bytes()).is_err());
        let blank_number = NOTICE.replacen(r#""20150806125346","#, r#""","#, 1);
        assert!(CombineTransaction::parse(blank_number.as_bytes()).is_err());
        let blank_sub_merchant = NOTICE.replacen(r#""mchid": "1900000110""#, r#""mchid": """#, 1);
        assert!(CombineTransaction::parse(blank_sub_merchant.as_bytes()).is_err());
    }

    #[test]
    fn a_combine_is_told_from_a_plain_payment_by_its_shape() {
        assert!(is_combine(NOTICE.as_bytes()));
        assert!(is_combine(br#"{"sub_orders": []}"#));
        assert!(is_combine(br#"{"combine_out_trade_no": "c"}"#));
        let plain = br#"{"appid":"wx","mchid":"1","out_trade_no":"o","trade_state":"SUCCESS"}"#;
        assert!(!is_combine(plain));
        assert!(!is_combine(b"not json"));
        assert!(!is_combine(b"[1, 2]"));
        let value = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
        assert!(is_combine_value(&value(NOTICE)));
        assert!(!is_combine_value(&value(
            std::str::from_utf8(plain).unwrap()
        )));
        assert!(!is_combine_value(&value("[1, 2]")));
    }

    #[test]
    fn serialises_to_what_it_parses() {
        let combine = CombineTransaction::parse(NOTICE.as_bytes()).expect("parses");
        let text = serde_json::to_vec(&combine).expect("serialises");
        assert_eq!(
            CombineTransaction::parse(&text).expect("parses again"),
            combine
        );
    }
}
