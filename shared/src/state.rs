//! The states, spelled once: WeChat Pay's trade and refund states on the wire, and the
//! state columns of the worker's tables (`orders.state`, `refunds.status`,
//! `notifications.outcome`).
//!
//! Each enum has `as_str` (the exact wire / column spelling), `parse` (exact and
//! case-sensitive, as WeChat Pay and the CHECK constraints are), [`FromStr`] with an
//! [`UnknownState`] error, and serde as that same spelling.
//!
//! - `trade_state` of 查询订单: <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_2>
//! - `refund_status` of 退款结果通知 / 查询退款:
//!   <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_16&index=10>,
//!   <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_5>

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A text that is not one of the spellings of a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownState {
    /// Which state: `trade_state`, `refund_status`, …
    pub kind: &'static str,
    /// The text as found.
    pub value: String,
}

/// One enum with its spellings, and everything that only converts between the two.
macro_rules! spelled {
    (
        $(#[$meta:meta])*
        $name:ident ($kind:literal) {
            $($(#[$variant_meta:meta])* $variant:ident => $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$variant_meta])* $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The exact spelling.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The variant spelled exactly `text`.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;

            fn from_str(text: &str) -> Result<Self, UnknownState> {
                Self::parse(text).ok_or_else(|| UnknownState {
                    kind: $kind,
                    value: text.to_owned(),
                })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

spelled! {
    /// WeChat Pay's `trade_state` of an order (v2 and v3 alike).
    TradeState("trade_state") {
        /// 支付成功.
        Success => "SUCCESS",
        /// 转入退款: paid, then refunded.
        Refund => "REFUND",
        /// 未支付.
        NotPay => "NOTPAY",
        /// 已关闭.
        Closed => "CLOSED",
        /// 已撤销 (card payments).
        Revoked => "REVOKED",
        /// 用户支付中 (waiting for the user's password).
        UserPaying => "USERPAYING",
        /// 支付失败 (e.g. the bank refused).
        PayError => "PAYERROR",
    }
}

impl TradeState {
    /// Paid: `SUCCESS`, or `REFUND` (paid, then refunded) in a query answer.
    pub fn is_paid(self) -> bool {
        matches!(self, TradeState::Success | TradeState::Refund)
    }
}

spelled! {
    /// WeChat Pay's refund status, in both versions' words: v2 says `SUCCESS`, `CHANGE`,
    /// `REFUNDCLOSE` (and `PROCESSING` in the refund query); v3 says `SUCCESS`, `CLOSED`,
    /// `PROCESSING`, `ABNORMAL`.
    RefundStatus("refund_status") {
        /// 退款成功.
        Success => "SUCCESS",
        /// 退款处理中.
        Processing => "PROCESSING",
        /// v3 退款关闭.
        Closed => "CLOSED",
        /// v3 退款异常: the refund failed (e.g. the card is closed) and needs a human.
        Abnormal => "ABNORMAL",
        /// v2 退款异常, v3's `ABNORMAL`.
        Change => "CHANGE",
        /// v2 退款关闭, v3's `CLOSED`.
        RefundClose => "REFUNDCLOSE",
    }
}

impl RefundStatus {
    /// One word per meaning across v2 and v3 (the word stored and used in dedupe keys, so
    /// that the same news from two channels dedupes): `REFUNDCLOSE` is `CLOSED`, `CHANGE`
    /// is `ABNORMAL`. The results are also v3's spellings.
    pub fn normalised(self) -> RefundState {
        match self {
            RefundStatus::Success => RefundState::Success,
            RefundStatus::Processing => RefundState::Processing,
            RefundStatus::Closed | RefundStatus::RefundClose => RefundState::Closed,
            RefundStatus::Abnormal | RefundStatus::Change => RefundState::Abnormal,
        }
    }
}

spelled! {
    /// The `refunds.status` column.
    RefundState("refunds.status") {
        Processing => "PROCESSING",
        Success => "SUCCESS",
        /// Allowed by the column but never written: [`RefundStatus::normalised`] stores
        /// `CHANGE` as `ABNORMAL`.
        Change => "CHANGE",
        Closed => "CLOSED",
        Abnormal => "ABNORMAL",
    }
}

impl RefundState {
    /// WeChat Pay will not change it any more (everything but `PROCESSING`).
    pub fn is_final(self) -> bool {
        self != RefundState::Processing
    }
}

spelled! {
    /// The `orders.state` column.
    OrderState("orders.state") {
        /// What the business system inserts before the user pays.
        NotPay => "NOTPAY",
        Paid => "PAID",
        PartiallyRefunded => "PARTIALLY_REFUNDED",
        Refunded => "REFUNDED",
        Closed => "CLOSED",
    }
}

spelled! {
    /// The `notifications.outcome` column: what processing one notification did.
    NotificationOutcome("notifications.outcome") {
        /// A state change (and its events).
        Applied => "APPLIED",
        /// Already in that state: logged only.
        Noop => "NOOP",
        /// Logged, no state change (a failed payment, a refund still processing).
        Recorded => "RECORDED",
        /// Contradicts what we know: logged and alerted, never a state change.
        Anomaly => "ANOMALY",
        /// A verified notification of a kind that moves no order here (merchant transfers,
        /// profit sharing, pay score, any future kind): logged with its decrypted resource and
        /// published as a `wechatpay.<event_type>` event for the business system.
        Forwarded => "FORWARDED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<T>(all: &[T])
    where
        T: Copy + PartialEq + fmt::Debug + fmt::Display + FromStr<Err = UnknownState>,
        T: Serialize + for<'de> Deserialize<'de>,
    {
        let mut seen = std::collections::HashSet::new();
        for &state in all {
            let text = state.to_string();
            assert!(seen.insert(text.clone()), "{text} spelled twice");
            assert_eq!(text.parse::<T>(), Ok(state));
            let json = serde_json::to_string(&state).expect("serialise");
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(
                serde_json::from_str::<T>(&json).expect("deserialise"),
                state
            );
            // Exact: WeChat Pay and the CHECK constraints are case-sensitive.
            assert!(text.to_lowercase().parse::<T>().is_err(), "{text}");
        }
        assert!("".parse::<T>().is_err());
        assert!(serde_json::from_str::<T>("\"NOPE\"").is_err());
    }

    #[test]
    fn every_state_round_trips() {
        round_trips(TradeState::ALL);
        round_trips(RefundStatus::ALL);
        round_trips(RefundState::ALL);
        round_trips(OrderState::ALL);
        round_trips(NotificationOutcome::ALL);
    }

    #[test]
    fn unknown_states_say_which() {
        assert_eq!(
            "DONE".parse::<TradeState>(),
            Err(UnknownState {
                kind: "trade_state",
                value: "DONE".into()
            })
        );
    }

    #[test]
    fn paid_trade_states() {
        let paid: Vec<_> = TradeState::ALL.iter().filter(|s| s.is_paid()).collect();
        assert_eq!(paid, [&TradeState::Success, &TradeState::Refund]);
    }

    #[test]
    fn refund_statuses_normalise_across_versions() {
        use RefundStatus as W;
        assert_eq!(W::RefundClose.normalised(), W::Closed.normalised());
        assert_eq!(W::Change.normalised(), W::Abnormal.normalised());
        // The normalised words are v3's spellings, so v3 statuses keep theirs.
        for v3 in [W::Success, W::Processing, W::Closed, W::Abnormal] {
            assert_eq!(v3.normalised().as_str(), v3.as_str());
        }
        let finished: Vec<_> = W::ALL
            .iter()
            .filter(|s| s.normalised().is_final())
            .collect();
        assert_eq!(finished.len(), W::ALL.len() - 1);
        assert!(!W::Processing.normalised().is_final());
    }
}
