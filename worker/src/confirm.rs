//! Confirm-by-query: a merchant may have a large payment confirmed by WeChat Pay's order
//! query before it is applied, so goods never ship on a notification alone
//! (`merchants.confirm_by_query_min_fen`, off unless set).
//!
//! A verified notification can still lie when a merchant's key leaked; the order query
//! (查询订单, <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_2>, v3
//! <https://pay.weixin.qq.com/docs/merchant/apis/jsapi-payment/query-by-out-trade-no.html>) is
//! WeChat Pay answering on a channel we opened, signed with its own key. It is asked through
//! the reconciler's client ([`QueryClient`]: signed request, verified answer, 5xx / 429 tried
//! again), paced per merchant at `reconciler.rate_per_merchant`, and always before the apply
//! transaction begins: no transaction is held open across a network call.
//!
//! - `SUCCESS`, same amount in the same currency, same `transaction_id`:
//!   [`Confirmation::Confirmed`], applied as usual;
//! - any other answer (another state, amount or transaction, or an order WeChat Pay does not
//!   know): [`Confirmation::Disagrees`], recorded as the anomaly `QUERY_MISMATCH`;
//! - no usable answer (transport, status, signature, a malformed answer): [`ConfirmError`],
//!   a transient failure: nothing is written, the business key stays free, and the message
//!   goes through the retry tiers like a database outage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use wxpay_runtime::config::{Merchant, Settings};
use wxpay_runtime::telemetry::metric;
use wxpay_shared::message::NotifyKind;
use wxpay_shared::state::TradeState;

use crate::apply::Confirmation;
use crate::decode::{self, DecodeError, Decoded, PayEvent};
use crate::reconcile::query::{Found, OrderOf, QueryClient, QueryError, Record};
use crate::reconcile::rate::RateLimiter;

/// `result` labels of `wxpay_worker_confirm_queries_total`.
pub mod result {
    wxpay_shared::names! {
        CONFIRMED => "confirmed",
        DISAGREED => "disagreed",
        FAILED => "failed",
    }
}

/// Retry reason code (`x-wxpay-retry-reason`) of a payment whose query gave no usable answer.
pub const CONFIRM_FAILED_REASON: &str = "confirm_query_failed";

/// Why a payment that needed confirming could not be: transient, retried.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    #[error("order query failed: {0}")]
    Query(#[from] QueryError),
    #[error("order query answer unusable: {0}")]
    Answer(#[from] DecodeError),
    #[error("merchant {0} is not configured")]
    UnknownMerchant(String),
}

impl ConfirmError {
    /// Short label for logs and the retry reason header.
    pub fn code(&self) -> &'static str {
        CONFIRM_FAILED_REASON
    }
}

/// Asks the order query about payments that need it: one client, one limiter per merchant.
#[derive(Debug)]
pub struct Confirmer {
    client: QueryClient,
    rate_per_merchant: u32,
    /// Created on a merchant's first query; shared by every delivery of that merchant.
    limiters: Mutex<HashMap<String, Arc<RateLimiter>>>,
}

impl Confirmer {
    pub fn new(settings: &Settings) -> Result<Confirmer, QueryError> {
        Ok(Confirmer {
            client: QueryClient::new(&settings.wechatpay)?,
            rate_per_merchant: settings.reconciler.rate_per_merchant,
            limiters: Mutex::new(HashMap::new()),
        })
    }

    /// What the order query says of `decoded`, delivered as `kind` to `merchant`:
    /// [`Confirmation::NotRequired`] without asking unless it is a successful payment of at
    /// least the merchant's `confirm_by_query_min_fen`, and a notification (a reconciler's
    /// `query.pay` is the query's own answer). A body naming another merchant is not asked
    /// about either: it is an anomaly whatever the query says.
    pub async fn confirm(
        &self,
        merchant: &Merchant,
        kind: NotifyKind,
        decoded: &Decoded,
    ) -> Result<Confirmation, ConfirmError> {
        let Decoded::Pay(pay) = decoded else {
            return Ok(Confirmation::NotRequired);
        };
        let required = !kind.is_query()
            && pay.success
            && pay.mch_id == merchant.mch_id
            && merchant
                .confirm_by_query_min_fen
                .is_some_and(|min_fen| pay.amount_total >= min_fen);
        if !required {
            return Ok(Confirmation::NotRequired);
        }
        let outcome = self.ask(merchant, pay).await;
        let label = match &outcome {
            Ok(Confirmation::Disagrees { .. }) => result::DISAGREED,
            Ok(_) => result::CONFIRMED,
            Err(_) => result::FAILED,
        };
        metrics::counter!(metric::WORKER_CONFIRM_QUERIES_TOTAL, "result" => label).increment(1);
        outcome
    }

    async fn ask(&self, merchant: &Merchant, pay: &PayEvent) -> Result<Confirmation, ConfirmError> {
        let limiter = self.limiter(&merchant.mch_id);
        let found = self
            .client
            .query(
                Record::Order,
                merchant,
                OrderOf {
                    appid: &pay.appid,
                    sub_mch_id: &pay.sub_mch_id,
                },
                &pay.out_trade_no,
                &limiter,
            )
            .await?;
        let answer = match found {
            Found::NotFound => {
                return Ok(Confirmation::Disagrees {
                    detail: "order query: WeChat Pay does not know the order".into(),
                })
            }
            Found::Answer(answer) => answer,
        };
        // The client verified the answer; decoding reads its amount and transaction the
        // way the worker reads the reconciler's answers.
        let queried =
            decode::order_query_answer(answer.wechatpay.as_ref(), &answer.body, merchant)?;
        Ok(compare(pay, &answer.state, &queried))
    }

    fn limiter(&self, mch_id: &str) -> Arc<RateLimiter> {
        let mut limiters = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
        limiters
            .entry(mch_id.to_owned())
            .or_insert_with(|| Arc::new(RateLimiter::per_second(self.rate_per_merchant)))
            .clone()
    }
}

/// The notified payment against the query's answer: `trade_state` exactly `SUCCESS` (a
/// `REFUND` answer is not the paid order the notification describes either), the same fen in
/// the same currency, the same transaction.
fn compare(notified: &PayEvent, trade_state: &str, queried: &PayEvent) -> Confirmation {
    let detail = if TradeState::parse(trade_state) != Some(TradeState::Success) {
        format!("order query: trade_state {trade_state}, notified SUCCESS")
    } else if (queried.amount_total, &queried.currency)
        != (notified.amount_total, &notified.currency)
    {
        format!(
            "order query: {} fen {}, notified {} fen {}",
            queried.amount_total, queried.currency, notified.amount_total, notified.currency
        )
    } else if queried.transaction_id != notified.transaction_id {
        format!(
            "order query: transaction {}, notified {}",
            queried.transaction_id.as_deref().unwrap_or("none"),
            notified.transaction_id.as_deref().unwrap_or("none")
        )
    } else {
        return Confirmation::Confirmed;
    };
    Confirmation::Disagrees { detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paid(amount_total: i64, transaction_id: &str) -> PayEvent {
        PayEvent {
            sub_mch_id: String::new(),
            mch_id: "1900000109".into(),
            appid: "wxd930ea5d5a258f4f".into(),
            out_trade_no: "big-1".into(),
            transaction_id: Some(transaction_id.into()),
            amount_total,
            success: true,
            state_text: TradeState::Success.as_str().into(),
            paid_at: None,
            currency: decode::DEFAULT_CURRENCY.into(),
            details: decode::PayDetails::default(),
            resource: None,
        }
    }

    #[test]
    fn only_the_same_success_amount_currency_and_transaction_confirm() {
        let notified = paid(100_000, "4200001");
        let success = TradeState::Success.as_str();
        assert_eq!(
            compare(&notified, success, &paid(100_000, "4200001")),
            Confirmation::Confirmed
        );
        let disagreement =
            |state: &str, queried: PayEvent| match compare(&notified, state, &queried) {
                Confirmation::Disagrees { detail } => detail,
                other => panic!("{state} {queried:?}: {other:?}"),
            };
        assert_eq!(
            disagreement(success, paid(99_999, "4200001")),
            "order query: 99999 fen CNY, notified 100000 fen CNY"
        );
        assert_eq!(
            disagreement(success, paid(100_000, "4200002")),
            "order query: transaction 4200002, notified 4200001"
        );
        let in_dollars = PayEvent {
            currency: "USD".into(),
            ..paid(100_000, "4200001")
        };
        assert!(disagreement(success, in_dollars).contains("100000 fen USD"));
        let unpaid = PayEvent {
            transaction_id: None,
            success: false,
            ..paid(0, "")
        };
        for state in [TradeState::NotPay, TradeState::Closed, TradeState::Refund] {
            assert!(disagreement(state.as_str(), unpaid.clone()).contains(state.as_str()));
        }
        // A state word WeChat Pay never sends is no confirmation either.
        assert!(disagreement("success", paid(100_000, "4200001")).contains("trade_state"));
    }
}
