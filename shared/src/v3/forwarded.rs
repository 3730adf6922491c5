//! The notifications that move no order here but that the business system needs: merchant
//! transfers, profit sharing, pay score, and any kind WeChat Pay adds later. They are
//! verified and decrypted like payments, then forwarded as they are; the kinds known here are
//! also read typed, for a business key that dedupes the same news under two notification ids.
//!
//! - 商家转账 (merchant transfer bill), `MCHTRANSFER.BILL.FINISHED`, original_type
//!   `mch_payment`: <https://pay.weixin.qq.com/doc/v3/merchant/4012712115>
//! - 商家转账到零钱 (batch), `MCHTRANSFER.BATCH.FINISHED` / `.CLOSED`:
//!   <https://pay.weixin.qq.com/docs/merchant/apis/batch-transfer-to-balance/transfer-batch-callback-notice.html>
//! - 分账动账通知 (profit sharing), `PROFITSHARING.SUCCESS` / `PROFITSHARING.RETURN`; WeChat
//!   Pay also sends them as `TRANSACTION.SUCCESS` with original_type `profitsharing`, so the
//!   kind is told by `original_type` and shape, never by the event type alone:
//!   <https://pay.weixin.qq.com/wiki/doc/apiv3/apis/chapter8_1_10.shtml>
//! - 微信支付分 (pay score), `PAYSCORE.USER_OPEN_SERVICE`, `.USER_CLOSE_SERVICE`,
//!   `.USER_CONFIRM`, `.USER_PAID`:
//!   <https://pay.weixin.qq.com/wiki/doc/apiv3/apis/chapter6_1_16.shtml>

use serde::Deserialize;

use super::resource::ResourceError;

/// The family of a forwarded notification, told by its envelope's `event_type` and its
/// resource's `original_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedFamily {
    TransferBill,
    TransferBatch,
    ProfitSharing,
    PayScore,
    /// Any other kind: forwarded with its notification id as its key.
    Other,
}

impl ForwardedFamily {
    /// The family of a notification of `event_type` whose resource is `original_type`.
    pub fn of(event_type: &str, original_type: &str) -> Self {
        if original_type == "profitsharing" || event_type.starts_with("PROFITSHARING.") {
            Self::ProfitSharing
        } else if event_type.starts_with("MCHTRANSFER.BILL.") || original_type == "mch_payment" {
            Self::TransferBill
        } else if event_type.starts_with("MCHTRANSFER.BATCH.") {
            Self::TransferBatch
        } else if event_type.starts_with("PAYSCORE.") || original_type == "payscore" {
            Self::PayScore
        } else {
            Self::Other
        }
    }

    /// Short name, the first part of the business key.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TransferBill => "transfer",
            Self::TransferBatch => "transfer-batch",
            Self::ProfitSharing => "profitsharing",
            Self::PayScore => "payscore",
            Self::Other => "notification",
        }
    }
}

/// What a typed resource tells of itself: the merchant it names (empty when it names none)
/// and the parts of its business key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedIdentity {
    pub family: ForwardedFamily,
    /// `mchid` / `mch_id` / `sp_mchid` as the resource names it; empty when absent.
    pub merchant: String,
    /// A service provider's `sub_mchid`; empty for a direct merchant.
    pub sub_merchant: String,
    /// What identifies this news, whichever notification id carries it (the key's tail).
    pub business_id: String,
}

/// A transfer bill (商家转账): one result per `out_bill_no` and `state`.
#[derive(Debug, Deserialize)]
struct TransferBill {
    #[serde(default)]
    mch_id: String,
    #[serde(default)]
    sub_mchid: String,
    out_bill_no: String,
    state: String,
    /// Fen; parsed so that a float is refused, as every amount.
    #[serde(default)]
    #[allow(dead_code)]
    transfer_amount: Option<i64>,
}

/// A transfer batch: one result per `out_batch_no` and `batch_status`.
#[derive(Debug, Deserialize)]
struct TransferBatch {
    #[serde(default)]
    mchid: String,
    #[serde(default)]
    sub_mchid: String,
    out_batch_no: String,
    batch_status: String,
}

/// A profit-sharing movement: one per order, receiver and event (share or return); the
/// success time tells a return from the share it returns when both arrive as
/// `TRANSACTION.SUCCESS`.
#[derive(Debug, Deserialize)]
struct ProfitSharing {
    #[serde(default)]
    mchid: String,
    #[serde(default)]
    sp_mchid: String,
    #[serde(default)]
    sub_mchid: String,
    order_id: String,
    receiver: ProfitSharingReceiver,
    #[serde(default)]
    success_time: String,
}

#[derive(Debug, Deserialize)]
struct ProfitSharingReceiver {
    #[serde(rename = "type")]
    kind: String,
    account: String,
    #[allow(dead_code)]
    amount: i64,
}

/// A pay-score event: one per service order (or authorization) and event type.
#[derive(Debug, Deserialize)]
struct PayScore {
    #[serde(default)]
    mchid: String,
    #[serde(default)]
    sub_mchid: String,
    #[serde(default)]
    out_order_no: String,
    #[serde(default)]
    authorization_code: String,
    #[serde(default)]
    out_request_no: String,
    #[serde(default)]
    openid: String,
    #[serde(default)]
    #[allow(dead_code)]
    total_amount: Option<i64>,
}

fn typed<'a, T: Deserialize<'a>>(resource: &'a [u8]) -> Result<T, ResourceError> {
    serde_json::from_slice(resource).map_err(|e| ResourceError::Json(e.to_string()))
}

/// Reads the decrypted `resource` of a notification of `event_type` / `original_type`.
/// A kind known here that lacks its identifying fields (or has a fractional amount) is an
/// error; any other kind is identified by its notification id.
pub fn identify(
    event_type: &str,
    original_type: &str,
    notification_id: &str,
    resource: &[u8],
) -> Result<ForwardedIdentity, ResourceError> {
    let family = ForwardedFamily::of(event_type, original_type);
    let (merchant, sub_merchant, business_id) = match family {
        ForwardedFamily::TransferBill => {
            let bill: TransferBill = typed(resource)?;
            (
                bill.mch_id,
                bill.sub_mchid,
                format!("{}:{}", bill.out_bill_no, bill.state),
            )
        }
        ForwardedFamily::TransferBatch => {
            let batch: TransferBatch = typed(resource)?;
            (
                batch.mchid,
                batch.sub_mchid,
                format!("{}:{}", batch.out_batch_no, batch.batch_status),
            )
        }
        ForwardedFamily::ProfitSharing => {
            let share: ProfitSharing = typed(resource)?;
            let merchant = if share.sp_mchid.is_empty() {
                share.mchid
            } else {
                share.sp_mchid
            };
            let receiver = share.receiver;
            (
                merchant,
                share.sub_mchid,
                format!(
                    "{}:{}:{}:{event_type}:{}",
                    share.order_id, receiver.kind, receiver.account, share.success_time
                ),
            )
        }
        ForwardedFamily::PayScore => {
            let score: PayScore = typed(resource)?;
            let subject = [
                &score.out_order_no,
                &score.authorization_code,
                &score.out_request_no,
                &score.openid,
            ]
            .into_iter()
            .find(|id| !id.is_empty())
            .ok_or_else(|| {
                ResourceError::Json(
                    "a pay-score resource names no out_order_no, authorization_code, \
                     out_request_no or openid"
                        .into(),
                )
            })?;
            (
                score.mchid.clone(),
                score.sub_mchid.clone(),
                format!("{subject}:{event_type}"),
            )
        }
        ForwardedFamily::Other => (String::new(), String::new(), notification_id.to_owned()),
    };
    Ok(ForwardedIdentity {
        family,
        merchant,
        sub_merchant,
        business_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_follow_original_type_before_event_type() {
        let of = ForwardedFamily::of;
        assert_eq!(
            of("MCHTRANSFER.BILL.FINISHED", "mch_payment"),
            ForwardedFamily::TransferBill
        );
        assert_eq!(
            of("MCHTRANSFER.BATCH.CLOSED", "mch_payment_batch"),
            ForwardedFamily::TransferBatch
        );
        // A direct merchant's profit sharing arrives as TRANSACTION.SUCCESS.
        assert_eq!(
            of("TRANSACTION.SUCCESS", "profitsharing"),
            ForwardedFamily::ProfitSharing
        );
        assert_eq!(
            of("PROFITSHARING.RETURN", "profitsharing"),
            ForwardedFamily::ProfitSharing
        );
        assert_eq!(
            of("PAYSCORE.USER_CONFIRM", "payscore"),
            ForwardedFamily::PayScore
        );
        assert_eq!(of("FUTURE.SOMETHING", "future"), ForwardedFamily::Other);
    }

    #[test]
    fn transfer_keys_are_the_bill_and_its_state() {
        let bill = br#"{"mch_id":"1900001109","out_bill_no":"plfk2020042013","transfer_bill_no":"1330000071100999991182020050700019480001","state":"SUCCESS","transfer_amount":2000,"openid":"o-MYE42l80oelYMDE34nYD456Xoy"}"#;
        let id = identify("MCHTRANSFER.BILL.FINISHED", "mch_payment", "EV-1", bill).unwrap();
        assert_eq!(id.family, ForwardedFamily::TransferBill);
        assert_eq!(id.merchant, "1900001109");
        assert_eq!(id.business_id, "plfk2020042013:SUCCESS");
        // Same bill, another notification id: same key.
        let again = identify("MCHTRANSFER.BILL.FINISHED", "mch_payment", "EV-2", bill).unwrap();
        assert_eq!(again, id);
    }

    #[test]
    fn a_known_kind_without_its_fields_or_with_a_fractional_amount_is_refused() {
        let no_bill = br#"{"mch_id":"1","state":"SUCCESS"}"#;
        assert!(identify("MCHTRANSFER.BILL.FINISHED", "mch_payment", "EV", no_bill).is_err());
        let float = br#"{"mch_id":"1","out_bill_no":"b","state":"SUCCESS","transfer_amount":1.5}"#;
        assert!(identify("MCHTRANSFER.BILL.FINISHED", "mch_payment", "EV", float).is_err());
        assert!(identify("PAYSCORE.USER_PAID", "payscore", "EV", br#"{"mchid":"1"}"#).is_err());
    }

    #[test]
    fn profit_sharing_and_its_return_differ_under_one_event_type() {
        let share = |time: &str| {
            format!(
                r#"{{"mchid":"1900000100","transaction_id":"4200","order_id":"1008450740201411110005820873","out_order_no":"P20150806125346","receiver":{{"type":"MERCHANT_ID","account":"1900000109","amount":888,"description":"分给商户1900000109"}},"success_time":"{time}"}}"#
            )
        };
        let [a, b] = [
            ("EV-1", "2018-06-08T10:34:56+08:00"),
            ("EV-2", "2018-06-09T10:00:00+08:00"),
        ]
        .map(|(id, time)| {
            identify(
                "TRANSACTION.SUCCESS",
                "profitsharing",
                id,
                share(time).as_bytes(),
            )
            .unwrap()
        });
        assert_eq!(a.family, ForwardedFamily::ProfitSharing);
        assert_ne!(a.business_id, b.business_id);
    }

    #[test]
    fn unknown_kinds_are_keyed_by_notification_id() {
        let id = identify("FUTURE.SOMETHING", "future", "EV-9", br#"{"x":1}"#).unwrap();
        assert_eq!(id.family, ForwardedFamily::Other);
        assert_eq!(id.business_id, "EV-9");
        assert_eq!(id.merchant, "");
    }
}
