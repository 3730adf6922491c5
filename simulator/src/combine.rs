//! Combine payments (合单支付): several orders paid together, as WeChat Pay notifies them
//! (`notify --kind v3-combine`) and answers the combine query (`serve`,
//! `GET /v3/combine-transactions/out-trade-no/{combine_out_trade_no}`).
//!
//! - Notification: <https://pay.weixin.qq.com/docs/merchant/apis/combine-payment/orders/combine-payment-notice.html>
//! - Query: <https://pay.weixin.qq.com/doc/v3/merchant/4012557006>
//!
//! The resource is `wxpay_shared::v3::CombineTransaction`, the type the worker parses, and it
//! is sealed and signed by `build` through `wxpay-shared` like every other kind. A combine
//! payment is started by the simulator's merchant itself (its own `mch_id` as
//! `combine_mchid`); each sub order names its merchant, that one by default.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use wxpay_shared::state::TradeState;
use wxpay_shared::v3::combine::{CombinePayer, CombineTransaction, SceneInfo, SubOrder};
use wxpay_shared::v3::SubOrderAmount;

use crate::build::{self, v3_time, BuildError, Kind, Notification, V3Event, Variant};
use crate::secrets::SimMerchant;

/// One sub order, as WeChat Pay knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CombineSubOrder {
    pub out_trade_no: String,
    /// Fen.
    pub amount: i64,
    /// The merchant the order belongs to; `None`: the simulator's merchant.
    #[serde(default)]
    pub mch_id: Option<String>,
    pub transaction_id: String,
    pub state: TradeState,
}

/// A combine payment: the book's record of it, and what its notification says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CombinePayment {
    pub combine_out_trade_no: String,
    pub sub_orders: Vec<CombineSubOrder>,
    pub openid: String,
    pub paid_at: DateTime<Utc>,
}

/// A `--sub-order` of the CLI: `OUT_TRADE_NO:AMOUNT[:MCHID]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubOrderArg {
    pub out_trade_no: String,
    /// Fen.
    pub amount: i64,
    pub mch_id: Option<String>,
}

impl SubOrderArg {
    /// Parses `OUT_TRADE_NO:AMOUNT[:MCHID]` (amount in fen, positive).
    pub fn parse(text: &str) -> Result<SubOrderArg, String> {
        let mut parts = text.split(':');
        let (Some(out_trade_no), Some(amount)) = (parts.next(), parts.next()) else {
            return Err(format!("{text:?}: expected OUT_TRADE_NO:AMOUNT[:MCHID]"));
        };
        let mch_id = parts.next().map(str::to_owned);
        if out_trade_no.is_empty() || parts.next().is_some() || mch_id.as_deref() == Some("") {
            return Err(format!("{text:?}: expected OUT_TRADE_NO:AMOUNT[:MCHID]"));
        }
        let amount: i64 = amount
            .parse()
            .ok()
            .filter(|fen| *fen > 0)
            .ok_or_else(|| format!("{text:?}: AMOUNT must be positive fen"))?;
        Ok(SubOrderArg {
            out_trade_no: out_trade_no.to_owned(),
            amount,
            mch_id,
        })
    }
}

impl CombinePayment {
    /// `sub_orders` paid together now, as `combine_out_trade_no`; a sub order `known` (the
    /// same combine payment sent before) keeps its transaction id, so a re-run is WeChat
    /// Pay's re-send, not a second payment.
    pub fn paid(
        combine_out_trade_no: &str,
        sub_orders: &[SubOrderArg],
        known: Option<&CombinePayment>,
        now: DateTime<Utc>,
    ) -> CombinePayment {
        let known_transaction = |out_trade_no: &str| {
            known?
                .sub_orders
                .iter()
                .find(|sub| sub.out_trade_no == out_trade_no)
                .map(|sub| sub.transaction_id.clone())
        };
        CombinePayment {
            combine_out_trade_no: combine_out_trade_no.to_owned(),
            sub_orders: sub_orders
                .iter()
                .map(|arg| CombineSubOrder {
                    out_trade_no: arg.out_trade_no.clone(),
                    amount: arg.amount,
                    mch_id: arg.mch_id.clone(),
                    transaction_id: known_transaction(&arg.out_trade_no)
                        .unwrap_or_else(build::new_transaction_id),
                    state: TradeState::Success,
                })
                .collect(),
            openid: "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".to_owned(),
            paid_at: known.map_or(now, |known| known.paid_at),
        }
    }

    /// The first sub order's amount: the one a tampered notification changes.
    pub fn first_amount(&self) -> i64 {
        self.sub_orders.first().map_or(0, |sub| sub.amount)
    }

    /// The resource (and query answer) of merchant `m`, the first sub order saying
    /// `first_amount` fen.
    pub fn transaction(&self, m: &SimMerchant, first_amount: i64) -> CombineTransaction {
        let sub_orders = self.sub_orders.iter().enumerate().map(|(index, sub)| {
            let amount = if index == 0 { first_amount } else { sub.amount };
            let paid = sub.state.is_paid();
            SubOrder {
                mchid: sub.mch_id.clone().unwrap_or_else(|| m.mch_id.clone()),
                sub_mchid: String::new(),
                sub_appid: String::new(),
                trade_type: "JSAPI".to_owned(),
                trade_state: sub.state.as_str().to_owned(),
                bank_type: if paid {
                    "CMC".to_owned()
                } else {
                    String::new()
                },
                attach: String::new(),
                success_time: paid.then(|| v3_time(self.paid_at)),
                transaction_id: if paid {
                    sub.transaction_id.clone()
                } else {
                    String::new()
                },
                out_trade_no: sub.out_trade_no.clone(),
                amount: Some(SubOrderAmount {
                    total_amount: amount,
                    payer_amount: paid.then_some(amount),
                    currency: "CNY".to_owned(),
                    payer_currency: "CNY".to_owned(),
                }),
                promotion_detail: None,
            }
        });
        CombineTransaction {
            combine_appid: m.appid.clone(),
            combine_mchid: m.mch_id.clone(),
            combine_out_trade_no: self.combine_out_trade_no.clone(),
            scene_info: Some(SceneInfo {
                device_id: "POS1:1".to_owned(),
            }),
            sub_orders: sub_orders.collect(),
            combine_payer_info: Some(CombinePayer {
                openid: self.openid.clone(),
            }),
        }
    }
}

/// The v3 combine payment notification of `c` (TRANSACTION.SUCCESS, original_type
/// `transaction`: the worker tells it by its shape), signed as WeChat Pay at `now` or spoilt
/// as `variant` says; `--tamper-amount` changes the first sub order's amount.
pub fn v3_combine(
    m: &SimMerchant,
    c: &CombinePayment,
    variant: Variant,
    now: DateTime<Utc>,
) -> Result<Notification, BuildError> {
    if let Some(sub) = c.sub_orders.iter().find(|sub| sub.amount <= 0) {
        return Err(BuildError::Amount(sub.amount));
    }
    let event = V3Event {
        kind: Kind::V3Combine,
        event_type: "TRANSACTION.SUCCESS",
        summary: "支付成功",
        original_type: "transaction",
        associated_data: "transaction",
    };
    let resource =
        |first_amount| serde_json::to_vec(&c.transaction(m, first_amount)).unwrap_or_default();
    let notification = build::v3_signed(m, &event, c.first_amount(), &resource, variant, now)?;
    Ok(Notification {
        out_trade_no: c.combine_out_trade_no.clone(),
        ..notification
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_order_arguments() {
        assert_eq!(
            SubOrderArg::parse("A-1:1200").expect("parses"),
            SubOrderArg {
                out_trade_no: "A-1".into(),
                amount: 1200,
                mch_id: None
            }
        );
        assert_eq!(
            SubOrderArg::parse("A-1:1200:1900000110")
                .expect("parses")
                .mch_id
                .as_deref(),
            Some("1900000110")
        );
        for bad in [
            "A-1",
            ":5",
            "A-1:0",
            "A-1:-3",
            "A-1:1.5",
            "A-1:5:",
            "A-1:5:m:x",
        ] {
            assert!(SubOrderArg::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_re_sent_combine_keeps_its_transactions() {
        let now = Utc::now();
        let args = [
            SubOrderArg::parse("A:100").expect("a"),
            SubOrderArg::parse("B:200").expect("b"),
        ];
        let first = CombinePayment::paid("C", &args, None, now);
        assert_ne!(
            first.sub_orders[0].transaction_id,
            first.sub_orders[1].transaction_id
        );
        let again = CombinePayment::paid("C", &args, Some(&first), Utc::now());
        assert_eq!(again, first);
    }
}
