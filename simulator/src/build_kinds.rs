//! The v3 notifications WeChat Pay sends besides payments and refunds, in the same signed and
//! encrypted envelope ([`crate::build`]): merchant transfers (商家转账), profit sharing (分账)
//! and pay score (支付分). The receiver does not book them; it forwards them, so what matters
//! here is that each carries the fields WeChat Pay documents, byte for byte as it would.
//!
//! - Transfer bill, `MCHTRANSFER.BILL.FINISHED`, original_type `mch_payment`:
//!   <https://pay.weixin.qq.com/docs/merchant/apis/batch-transfer-to-balance/callback-notice.html>
//! - Transfer batch, `MCHTRANSFER.BATCH.FINISHED` / `.CLOSED`:
//!   <https://pay.weixin.qq.com/docs/merchant/apis/batch-transfer-to-balance/transfer-batch-callback-notice.html>
//! - Profit sharing (分账动账通知), `PROFITSHARING.SUCCESS` / `.RETURN`, original_type
//!   `profitsharing`: <https://pay.weixin.qq.com/wiki/doc/apiv3/apis/chapter8_1_10.shtml>
//!   (a provider's: <https://pay.weixin.qq.com/wiki/doc/apiv3_partner/apis/chapter8_1_10.shtml>,
//!   `sp_mchid` and `sub_mchid`). Some direct merchants receive it with event_type
//!   `TRANSACTION.SUCCESS` and original_type `profitsharing` (`as_transaction`).
//! - Pay score, original_type `payscore`, empty associated_data:
//!   `PAYSCORE.USER_CONFIRM` <https://pay.weixin.qq.com/docs/merchant/apis/weixin-pay-score/confirm-notification.html>,
//!   `PAYSCORE.USER_PAID` (支付成功回调, with `collection`),
//!   `PAYSCORE.USER_OPEN_SERVICE` / `.USER_CLOSE_SERVICE`
//!   <https://pay.weixin.qq.com/wiki/doc/apiv3/apis/chapter6_1_10.shtml>.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::build::{
    self, check_amount, not_applicable, partner_form, v3_time, BuildError, Kind, Notification,
    V3Event, Variant,
};
use crate::secrets::SimMerchant;

/// The kinds of v3 notification that are neither a payment nor a refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherKind {
    /// 商家转账: one transfer bill reached a final state.
    Transfer,
    /// 商家转账 (batch API): a batch finished or was closed.
    TransferBatch,
    /// 分账: a share of a payment went to a receiver (or came back).
    ProfitSharing,
    /// 支付分: a service order or the user's authorization changed.
    PayScore,
}

/// The states of a transfer bill (`state`), as documented.
pub const TRANSFER_STATES: [&str; 8] = [
    "ACCEPTED",
    "PROCESSING",
    "WAIT_USER_CONFIRM",
    "TRANSFERING",
    "SUCCESS",
    "FAIL",
    "CANCELING",
    "CANCELLED",
];

/// The merchant a profit sharing goes to (`receiver.account`, type `MERCHANT_ID`).
pub const PROFIT_SHARING_RECEIVER: &str = "1900000110";

/// The pay score service id in every pay score notification (WeChat Pay gives one per
/// service; 32 digits in its examples).
pub const PAY_SCORE_SERVICE_ID: &str = "2002000000000558128851361561536";

impl OtherKind {
    /// Every kind, in the order of the CLI's list.
    pub const ALL: [OtherKind; 4] = [
        Self::Transfer,
        Self::TransferBatch,
        Self::ProfitSharing,
        Self::PayScore,
    ];

    /// Parses the CLI spelling: `v3-transfer`, `v3-transfer-batch`, `v3-profitsharing`,
    /// `v3-payscore`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == s)
    }

    /// The CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transfer => "v3-transfer",
            Self::TransferBatch => "v3-transfer-batch",
            Self::ProfitSharing => "v3-profitsharing",
            Self::PayScore => "v3-payscore",
        }
    }

    /// The event types of the family; the first is the default.
    pub fn event_types(self) -> &'static [&'static str] {
        match self {
            Self::Transfer => &["MCHTRANSFER.BILL.FINISHED"],
            Self::TransferBatch => &["MCHTRANSFER.BATCH.FINISHED", "MCHTRANSFER.BATCH.CLOSED"],
            Self::ProfitSharing => &["PROFITSHARING.SUCCESS", "PROFITSHARING.RETURN"],
            Self::PayScore => &[
                "PAYSCORE.USER_CONFIRM",
                "PAYSCORE.USER_PAID",
                "PAYSCORE.USER_OPEN_SERVICE",
                "PAYSCORE.USER_CLOSE_SERVICE",
            ],
        }
    }

    /// The name of the merchant's number of what it is about, and of the `notify` option
    /// that sets it.
    pub fn out_no_field(self) -> &'static str {
        match self {
            Self::Transfer => "out_bill_no",
            Self::TransferBatch => "out_batch_no",
            Self::ProfitSharing | Self::PayScore => "out_order_no",
        }
    }

    /// `resource.original_type`.
    fn original_type(self) -> &'static str {
        match self {
            Self::Transfer | Self::TransferBatch => "mch_payment",
            Self::ProfitSharing => "profitsharing",
            Self::PayScore => "payscore",
        }
    }
}

/// One notification of an [`OtherKind`] to build.
#[derive(Debug, Clone)]
pub struct OtherNotice {
    pub kind: OtherKind,
    /// One of [`OtherKind::event_types`]; `None`: the first.
    pub event_type: Option<String>,
    /// The merchant's number of what it is about: `out_bill_no` (transfer), `out_batch_no`
    /// (batch), `out_order_no` (profit sharing, pay score order; the authorization's
    /// `out_request_no` for pay score's USER_OPEN/CLOSE_SERVICE).
    pub out_no: String,
    /// Transfer bills only: one of [`TRANSFER_STATES`]; `None`: SUCCESS.
    pub state: Option<String>,
    /// Fen: transferred, shared, or the pay score order's total.
    pub amount: i64,
    /// The payment shared (profit sharing) or paid (pay score USER_PAID).
    pub transaction_id: String,
    /// Profit sharing only: event_type `TRANSACTION.SUCCESS`, as some direct merchants
    /// receive it.
    pub profitsharing_as_transaction: bool,
    pub at: DateTime<Utc>,
}

impl OtherNotice {
    /// A notice of `kind` about `out_no` for `amount` fen, with the family's first event
    /// type, at `at`, about a fresh transaction id.
    pub fn new(kind: OtherKind, out_no: impl Into<String>, amount: i64, at: DateTime<Utc>) -> Self {
        Self {
            kind,
            event_type: None,
            out_no: out_no.into(),
            state: None,
            amount,
            transaction_id: build::new_transaction_id(),
            profitsharing_as_transaction: false,
            at,
        }
    }

    /// The event type, checked against the family (default: its first).
    fn event_type(&self) -> Result<&'static str, BuildError> {
        let family = self.kind.event_types();
        self.one_of("event type", self.event_type.as_deref(), family, family[0])
    }

    /// The transfer bill's state, checked (default: SUCCESS).
    fn transfer_state(&self) -> Result<&'static str, BuildError> {
        self.one_of("state", self.state.as_deref(), &TRANSFER_STATES, "SUCCESS")
    }

    /// `wanted` if it is one of `known`, `default` if none is wanted.
    fn one_of(
        &self,
        what: &'static str,
        wanted: Option<&str>,
        known: &[&'static str],
        default: &'static str,
    ) -> Result<&'static str, BuildError> {
        let Some(wanted) = wanted else {
            return Ok(default);
        };
        let found = known.iter().copied().find(|k| *k == wanted);
        found.ok_or_else(|| BuildError::NotInFamily {
            kind: self.kind.as_str(),
            what,
            value: wanted.to_owned(),
            expected: known.join(", "),
        })
    }

    /// The envelope's words: event type, summary, original_type, associated data.
    fn event(&self) -> Result<V3Event, BuildError> {
        let kind = Kind::V3Other(self.kind);
        let original_type = self.kind.original_type();
        if self.profitsharing_as_transaction {
            if self.kind != OtherKind::ProfitSharing {
                return Err(BuildError::OptionNotApplicable {
                    option: "--profitsharing-as-transaction",
                    kind: self.kind.as_str(),
                });
            }
            return Ok(V3Event {
                kind,
                event_type: "TRANSACTION.SUCCESS",
                summary: "分账",
                original_type,
                associated_data: original_type,
            });
        }
        if self.state.is_some() && self.kind != OtherKind::Transfer {
            return Err(BuildError::OptionNotApplicable {
                option: "--state",
                kind: self.kind.as_str(),
            });
        }
        let event_type = self.event_type()?;
        let summary = match event_type {
            "MCHTRANSFER.BILL.FINISHED" => "商家转账单据终态通知",
            "MCHTRANSFER.BATCH.FINISHED" => "转账批次处理完成",
            "MCHTRANSFER.BATCH.CLOSED" => "转账批次关闭",
            "PROFITSHARING.RETURN" => "分账回退",
            "PROFITSHARING.SUCCESS" => "分账",
            "PAYSCORE.USER_PAID" => "支付成功",
            "PAYSCORE.USER_OPEN_SERVICE" => "授权成功",
            "PAYSCORE.USER_CLOSE_SERVICE" => "解除授权成功",
            "PAYSCORE.USER_CONFIRM" => "确认订单",
            // Every event type of a family is above; a new one is summarised by its name.
            other => other,
        };
        // Pay score notifications carry an empty associated_data (confirm-notification.html).
        let associated_data = match self.kind {
            OtherKind::PayScore => "",
            _ => original_type,
        };
        Ok(V3Event {
            kind,
            event_type,
            summary,
            original_type,
            associated_data,
        })
    }

    /// The decrypted resource of `event_type` carrying `amount` fen (and, for a transfer
    /// bill, `transfer_state`), in the partner form for a provider.
    fn resource(
        &self,
        m: &SimMerchant,
        (event_type, transfer_state): (&str, &str),
        amount: i64,
    ) -> Value {
        let at = v3_time(self.at);
        let resource = match self.kind {
            OtherKind::Transfer => {
                let state = transfer_state;
                let mut bill = json!({
                    "mch_id": m.mch_id,
                    "out_bill_no": self.out_no,
                    "transfer_bill_no": format!("1330{}", digits_of(&self.out_no, 36)),
                    "state": state,
                    "transfer_amount": amount,
                    "openid": OPENID,
                    "create_time": at,
                    "update_time": at,
                });
                if state == "FAIL" {
                    bill["fail_reason"] = json!("PAYEE_ACCOUNT_ABNORMAL");
                }
                bill
            }
            OtherKind::TransferBatch => {
                let closed = event_type == "MCHTRANSFER.BATCH.CLOSED";
                let (status, success) = if closed {
                    ("CLOSED", 0)
                } else {
                    ("FINISHED", amount)
                };
                let mut batch = json!({
                    "mchid": m.mch_id,
                    "out_batch_no": self.out_no,
                    "batch_id": format!("1030{}", digits_of(&self.out_no, 36)),
                    "batch_status": status,
                    "total_num": 1,
                    "total_amount": amount,
                    "success_amount": success,
                    "success_num": i64::from(!closed),
                    "fail_amount": amount - success,
                    "fail_num": i64::from(closed),
                    "update_time": at,
                });
                if closed {
                    batch["close_reason"] = json!("OVERDUE_CLOSE");
                }
                batch
            }
            OtherKind::ProfitSharing => json!({
                "mchid": m.mch_id,
                "transaction_id": self.transaction_id,
                "order_id": format!("3008{}", digits_of(&self.out_no, 24)),
                "out_order_no": self.out_no,
                "receiver": {
                    "type": "MERCHANT_ID",
                    "account": PROFIT_SHARING_RECEIVER,
                    "amount": amount,
                    "description": "分给商户",
                },
                "success_time": at,
            }),
            OtherKind::PayScore => self.pay_score(m, event_type, amount, &at),
        };
        partner_form(resource, m)
    }

    fn pay_score(&self, m: &SimMerchant, event_type: &str, amount: i64, at: &str) -> Value {
        let mut order = json!({
            "appid": m.appid,
            "mchid": m.mch_id,
            "service_id": PAY_SCORE_SERVICE_ID,
            "openid": OPENID,
        });
        match event_type {
            "PAYSCORE.USER_OPEN_SERVICE" | "PAYSCORE.USER_CLOSE_SERVICE" => {
                let status = event_type.trim_start_matches("PAYSCORE.");
                order["out_request_no"] = json!(self.out_no);
                order["authorization_code"] = json!(self.out_no);
                order["user_service_status"] = json!(status);
                order["openorclose_time"] = json!(build::v2_time(self.at));
            }
            "PAYSCORE.USER_PAID" => {
                order["out_order_no"] = json!(self.out_no);
                order["order_id"] = json!(format!("1000{}", digits_of(&self.out_no, 16)));
                order["state"] = json!("DONE");
                order["total_amount"] = json!(amount);
                order["need_collection"] = json!(true);
                order["collection"] = json!({
                    "state": "USER_PAID",
                    "total_amount": amount,
                    "paying_amount": 0,
                    "paid_amount": amount,
                    "details": [{
                        "seq": 1,
                        "amount": amount,
                        "paid_type": "NEWTON",
                        "paid_time": at,
                        "transaction_id": self.transaction_id,
                    }],
                });
            }
            // PAYSCORE.USER_CONFIRM: the user confirmed the order, still in service.
            _ => {
                order["out_order_no"] = json!(self.out_no);
                order["order_id"] = json!(format!("1000{}", digits_of(&self.out_no, 16)));
                order["state"] = json!("DOING");
                order["state_description"] = json!("USER_CONFIRM");
                order["total_amount"] = json!(amount);
                order["service_introduction"] = json!("某某酒店");
                order["need_collection"] = json!(true);
            }
        }
        order
    }
}

/// The user's openid in the merchant's appid.
const OPENID: &str = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";

/// `len` digits standing for `out_no`: WeChat Pay's own number of the same thing is the
/// same in every notification about it (a re-send, or the same bill under another
/// notification id), so it is derived, not random.
fn digits_of(out_no: &str, len: usize) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut digits = String::with_capacity(len + 20);
    let mut round = 0u64;
    while digits.len() < len {
        let mut hasher = DefaultHasher::new();
        (out_no, round).hash(&mut hasher);
        digits.push_str(&format!("{:020}", hasher.finish()));
        round += 1;
    }
    digits.truncate(len);
    digits
}

impl OtherNotice {
    /// The v3 notification of this notice, signed as WeChat Pay at `now` (or spoilt as
    /// `variant` says). Its `out_trade_no` is empty: it is about no order.
    pub fn notification(
        &self,
        m: &SimMerchant,
        variant: Variant,
        now: DateTime<Utc>,
    ) -> Result<Notification, BuildError> {
        check_amount(self.amount)?;
        let event = self.event()?;
        let event_type = event.event_type;
        let transfer_state = self.transfer_state()?;
        let carries_no_amount = matches!(
            event_type,
            "PAYSCORE.USER_OPEN_SERVICE" | "PAYSCORE.USER_CLOSE_SERVICE"
        );
        if carries_no_amount && variant == Variant::TamperAmount {
            return Err(not_applicable(
                variant,
                event.kind,
                "an authorization carries no amount",
            ));
        }
        let resource = |amount| {
            self.resource(m, (event_type, transfer_state), amount)
                .to_string()
                .into_bytes()
        };
        build::v3_signed(m, &event, self.amount, &resource, variant, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_from_its_own_spelling() {
        for kind in OtherKind::ALL {
            assert_eq!(OtherKind::parse(kind.as_str()), Some(kind));
            assert_eq!(Kind::parse(kind.as_str()), Some(Kind::V3Other(kind)));
        }
        assert_eq!(OtherKind::parse("v3-pay"), None);
    }

    #[test]
    fn wechat_pay_numbers_stand_for_the_merchant_number() {
        assert_eq!(digits_of("B-1", 36), digits_of("B-1", 36));
        assert_ne!(digits_of("B-1", 36), digits_of("B-2", 36));
        assert_eq!(digits_of("B-1", 36).len(), 36);
        assert!(digits_of("B-1", 36).bytes().all(|b| b.is_ascii_digit()));
    }
}
