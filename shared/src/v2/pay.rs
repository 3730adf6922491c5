//! The typed payment result notification (支付结果通知), after its signature was verified.
//!
//! Fields from <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_7>; a service
//! provider's (服务商) notification adds `sub_mch_id` and, when the order was placed with one,
//! `sub_appid` (<https://pay.weixin.qq.com/wiki/doc/api/jsapi_sl.php?chapter=9_7>), and its
//! `appid` / `mch_id` are the provider's. Only
//! `return_code` is always present: when it is not `SUCCESS` the notification carries no
//! business data (the other required fields are then left empty / zero). Amounts are
//! integers in fen (分).

use chrono::{DateTime, Utc};

use super::xml::{XmlError, XmlFields};
use super::{optional, parse_beijing_time, parse_fen, parse_optional_fen, text_if, SUCCESS};

/// A payment result notification (支付结果通知).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayNotification {
    /// `SUCCESS` or `FAIL`: communication status, not the payment result.
    pub return_code: String,
    /// Reason when `return_code` is not `SUCCESS`.
    pub return_msg: Option<String>,
    /// `SUCCESS` or `FAIL`: the payment result.
    pub result_code: Option<String>,
    /// Error code when `result_code` is `FAIL`.
    pub err_code: Option<String>,
    /// Error description when `result_code` is `FAIL`.
    pub err_code_des: Option<String>,
    /// The app id the order was paid in (empty when `return_code` is not `SUCCESS`).
    pub appid: String,
    /// The merchant (empty when `return_code` is not `SUCCESS`); a service provider's own.
    pub mch_id: String,
    /// The sub-merchant of a service provider the order belongs to (partner mode only).
    pub sub_mch_id: Option<String>,
    /// The sub-merchant's app id, when the order was placed with one (partner mode only).
    pub sub_appid: Option<String>,
    /// The merchant's order number (empty when `return_code` is not `SUCCESS`).
    pub out_trade_no: String,
    /// WeChat Pay's order number (empty when `return_code` is not `SUCCESS`).
    pub transaction_id: String,
    /// Order amount in fen (0 when `return_code` is not `SUCCESS` and it is absent).
    pub total_fee: i64,
    /// Amount paid in cash, in fen.
    pub cash_fee: Option<i64>,
    /// Currency, `CNY` by default.
    pub fee_type: Option<String>,
    /// `JSAPI`, `NATIVE`, `APP`, `MWEB`, …
    pub trade_type: Option<String>,
    /// Payment time, `yyyyMMddHHmmss` in Beijing time.
    pub time_end: Option<String>,
    /// The merchant's data echoed back.
    pub attach: Option<String>,
}

impl PayNotification {
    /// Reads the typed view. `return_code` is required; `appid`, `mch_id`,
    /// `out_trade_no` and `total_fee` too when it is `SUCCESS`, and `transaction_id` when
    /// `result_code` is `SUCCESS` as well (a failed payment may come without one).
    /// Amounts, when present, must be non-negative integers (`1.00` is invalid).
    pub fn from_fields(fields: &XmlFields) -> Result<Self, XmlError> {
        let return_code = fields.require("return_code")?;
        let ok = return_code == SUCCESS;
        let text = |name: &'static str| text_if(fields, ok, name);
        let total_fee = match fields.get("total_fee") {
            Some(v) if !v.is_empty() => parse_fen("total_fee", v)?,
            _ if ok => return Err(XmlError::MissingField("total_fee")),
            _ => 0,
        };
        Ok(Self {
            return_code: return_code.to_owned(),
            return_msg: optional(fields, "return_msg"),
            result_code: optional(fields, "result_code"),
            err_code: optional(fields, "err_code"),
            err_code_des: optional(fields, "err_code_des"),
            appid: text("appid")?,
            mch_id: text("mch_id")?,
            sub_mch_id: optional(fields, "sub_mch_id"),
            sub_appid: optional(fields, "sub_appid"),
            out_trade_no: text("out_trade_no")?,
            transaction_id: text_if(
                fields,
                ok && fields.get("result_code") == Some(SUCCESS),
                "transaction_id",
            )?,
            total_fee,
            cash_fee: parse_optional_fen(fields, "cash_fee")?,
            fee_type: optional(fields, "fee_type"),
            trade_type: optional(fields, "trade_type"),
            time_end: optional(fields, "time_end"),
            attach: optional(fields, "attach"),
        })
    }

    /// Whether the order was paid: `return_code` and `result_code` both `SUCCESS`.
    pub fn is_success(&self) -> bool {
        self.return_code == SUCCESS && self.result_code.as_deref() == Some(SUCCESS)
    }

    /// `time_end` (`yyyyMMddHHmmss`, Beijing time UTC+8) as an instant; `None` when absent
    /// or not a valid time.
    pub fn paid_at(&self) -> Option<DateTime<Utc>> {
        parse_beijing_time(self.time_end.as_deref()?, "%Y%m%d%H%M%S", 14)
    }

    /// The fields of this notification (without `sign`, `nonce_str`, …), for the
    /// simulator to extend and sign.
    pub fn to_fields(&self) -> XmlFields {
        let mut f = XmlFields::new();
        f.insert("return_code", self.return_code.as_str());
        f.insert_some("return_msg", self.return_msg.as_deref());
        f.insert_some("result_code", self.result_code.as_deref());
        f.insert_some("err_code", self.err_code.as_deref());
        f.insert_some("err_code_des", self.err_code_des.as_deref());
        f.insert("appid", self.appid.as_str());
        f.insert("mch_id", self.mch_id.as_str());
        for (k, v) in [
            ("sub_mch_id", &self.sub_mch_id),
            ("sub_appid", &self.sub_appid),
        ] {
            if let Some(v) = v {
                f.insert(k, v.as_str());
            }
        }
        f.insert("out_trade_no", self.out_trade_no.as_str());
        f.insert("transaction_id", self.transaction_id.as_str());
        f.insert("total_fee", self.total_fee.to_string());
        f.insert_some("cash_fee", self.cash_fee.map(|cash| cash.to_string()));
        f.insert_some("fee_type", self.fee_type.as_deref());
        f.insert_some("trade_type", self.trade_type.as_deref());
        f.insert_some("time_end", self.time_end.as_deref());
        f.insert_some("attach", self.attach.as_deref());
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> XmlFields {
        [
            ("return_code", "SUCCESS"),
            ("result_code", "SUCCESS"),
            ("appid", "wx2421b1c4370ec43b"),
            ("mch_id", "10000100"),
            ("out_trade_no", "1409811653"),
            ("transaction_id", "1004400740201409030005092168"),
            ("total_fee", "1"),
            ("cash_fee", "1"),
            ("fee_type", "CNY"),
            ("trade_type", "JSAPI"),
            ("time_end", "20140903131540"),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn reads_a_successful_notification() {
        let n = PayNotification::from_fields(&sample()).expect("valid");
        assert!(n.is_success());
        assert_eq!(n.total_fee, 1);
        assert_eq!(n.cash_fee, Some(1));
        assert_eq!(n.attach, None);
        assert_eq!(
            n.paid_at().map(|t| t.to_rfc3339()).as_deref(),
            Some("2014-09-03T05:15:40+00:00")
        );
        assert_eq!(PayNotification::from_fields(&n.to_fields()), Ok(n));
    }

    #[test]
    fn reads_a_service_providers_notification() {
        let mut f = sample();
        f.insert("sub_mch_id", "1900000201");
        f.insert("sub_appid", "wx1111111111111111");
        let n = PayNotification::from_fields(&f).expect("valid");
        assert_eq!(n.sub_mch_id.as_deref(), Some("1900000201"));
        assert_eq!(n.sub_appid.as_deref(), Some("wx1111111111111111"));
        assert_eq!(PayNotification::from_fields(&n.to_fields()), Ok(n));
    }

    #[test]
    fn requires_business_fields_on_success_only() {
        let mut f = sample();
        f.remove("transaction_id");
        assert_eq!(
            PayNotification::from_fields(&f),
            Err(XmlError::MissingField("transaction_id"))
        );
        f.insert("result_code", "FAIL");
        let failed_payment = PayNotification::from_fields(&f).expect("no transaction_id needed");
        assert_eq!(failed_payment.transaction_id, "");
        assert!(!failed_payment.is_success());
        let fail: XmlFields = [("return_code", "FAIL"), ("return_msg", "签名失败")]
            .into_iter()
            .collect();
        let n = PayNotification::from_fields(&fail).expect("valid");
        assert!(!n.is_success());
        assert_eq!(n.total_fee, 0);
        assert_eq!(n.appid, "");
        assert_eq!(
            PayNotification::from_fields(&XmlFields::new()),
            Err(XmlError::MissingField("return_code"))
        );
    }

    #[test]
    fn result_fail_is_not_success() {
        let mut f = sample();
        f.insert("result_code", "FAIL");
        let n = PayNotification::from_fields(&f).expect("valid");
        assert!(!n.is_success());
    }

    #[test]
    fn rejects_non_integer_amounts() {
        for (field, bad) in [
            ("total_fee", "1.00"),
            ("total_fee", "-1"),
            ("cash_fee", "x"),
        ] {
            let mut f = sample();
            f.insert(field, bad);
            assert!(
                matches!(
                    PayNotification::from_fields(&f),
                    Err(XmlError::InvalidField { field: got, .. }) if got == field
                ),
                "{field}={bad} accepted"
            );
        }
        let mut f = sample();
        f.insert("total_fee", "");
        assert_eq!(
            PayNotification::from_fields(&f),
            Err(XmlError::MissingField("total_fee"))
        );
    }
}
