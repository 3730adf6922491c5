//! What a load run sends, decided up front (pure, so it can be tested and so the verifier
//! knows exactly what to expect).

use rand::Rng;

use crate::build::new_transaction_id;

/// Duplicates repeat one of the last this-many genuine orders (WeChat Pay re-sends soon after
/// the first attempt); it also bounds what the sender keeps in memory to repeat bodies.
pub const DUP_WINDOW: usize = 2048;

/// Channel of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    V2,
    V3,
}

impl Channel {
    pub fn other(self) -> Self {
        match self {
            Self::V2 => Self::V3,
            Self::V3 => Self::V2,
        }
    }
}

/// What happens to an order during the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Genuinely paid: must end PAID exactly once.
    Genuine,
    /// Only ever receives forged notifications (wrong key): must stay NOTPAY, no trace.
    Forged,
    /// Only ever receives a tampered notification (amount changed after signing): must stay
    /// NOTPAY, rejected by the gateway.
    Tampered,
}

/// One order of the run.
#[derive(Debug, Clone)]
pub struct PlannedOrder {
    pub out_trade_no: String,
    /// Fen.
    pub amount: i64,
    pub fate: Fate,
    pub channel: Channel,
    pub transaction_id: String,
}

/// One HTTP send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendKind {
    /// The order's first notification (genuine, forged or tampered per its fate).
    First,
    /// The very same request again (a WeChat Pay re-send).
    DuplicateSame,
    /// The same payment through the other channel (v2 ↔ v3), same transaction_id.
    DuplicateOtherChannel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedSend {
    /// Index into [`Plan::orders`].
    pub order: usize,
    pub kind: SendKind,
}

/// The mix and ratios of a run.
#[derive(Debug, Clone, Copy)]
pub struct Ratios {
    /// Share of new genuine orders sent through v2 first (the rest through v3).
    pub v2_share: f64,
    /// Share of sends that are duplicates of an earlier genuine order.
    pub dup: f64,
    /// Share of sends that are forged.
    pub forged: f64,
    /// Share of sends that are tampered.
    pub tampered: f64,
}

/// Why the ratios are unusable.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RatioError {
    #[error("{0} must be between 0 and 1")]
    Range(&'static str),
    #[error("--dup-ratio + --forged-ratio + --tampered-ratio must stay below 1")]
    Sum,
    #[error("--mix must look like v2:0.5,v3:0.5 (non-negative weights, not all zero): {0}")]
    Mix(String),
}

impl Ratios {
    pub fn validate(&self) -> Result<(), RatioError> {
        for (name, v) in [
            ("mix share", self.v2_share),
            ("--dup-ratio", self.dup),
            ("--forged-ratio", self.forged),
            ("--tampered-ratio", self.tampered),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(RatioError::Range(name));
            }
        }
        if self.dup + self.forged + self.tampered >= 1.0 {
            return Err(RatioError::Sum);
        }
        Ok(())
    }
}

/// Parses `--mix v2:0.5,v3:0.5` into the v2 share.
pub fn parse_mix(s: &str) -> Result<f64, RatioError> {
    let (mut v2, mut v3) = (0.0f64, 0.0f64);
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part
            .split_once(':')
            .ok_or_else(|| RatioError::Mix(part.to_owned()))?;
        let weight: f64 = weight
            .trim()
            .parse()
            .map_err(|_| RatioError::Mix(part.to_owned()))?;
        if !weight.is_finite() || weight < 0.0 {
            return Err(RatioError::Mix(part.to_owned()));
        }
        match name.trim() {
            "v2" => v2 += weight,
            "v3" => v3 += weight,
            _ => return Err(RatioError::Mix(part.to_owned())),
        }
    }
    if v2 + v3 <= 0.0 {
        return Err(RatioError::Mix(s.to_owned()));
    }
    Ok(v2 / (v2 + v3))
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `LOAD<run-uuid-8>-`: every out_trade_no of the run starts with it.
    pub prefix: String,
    pub orders: Vec<PlannedOrder>,
    pub sends: Vec<PlannedSend>,
}

impl Plan {
    /// `total_sends` sends drawn with `ratios`; out_trade_nos are `<prefix><n>`.
    pub fn new(prefix: &str, total_sends: usize, ratios: Ratios, rng: &mut impl Rng) -> Self {
        let mut orders: Vec<PlannedOrder> = Vec::new();
        let mut sends = Vec::with_capacity(total_sends);
        let mut genuine: Vec<usize> = Vec::new();
        let draws: Vec<(f64, f64, f64, usize)> = (0..total_sends)
            .map(|_| (rng.gen(), rng.gen(), rng.gen(), rng.gen()))
            .collect();
        let mut new_order = |orders: &mut Vec<PlannedOrder>, fate: Fate, channel: Channel| {
            orders.push(PlannedOrder {
                out_trade_no: format!("{prefix}{}", orders.len()),
                amount: rng.gen_range(1..=100_000),
                fate,
                channel,
                transaction_id: new_transaction_id(),
            });
            orders.len() - 1
        };
        for (x, channel_draw, dup_draw, pick) in draws {
            let channel = if channel_draw < ratios.v2_share {
                Channel::V2
            } else {
                Channel::V3
            };
            let send = if x < ratios.forged {
                PlannedSend {
                    order: new_order(&mut orders, Fate::Forged, channel),
                    kind: SendKind::First,
                }
            } else if x < ratios.forged + ratios.tampered {
                PlannedSend {
                    order: new_order(&mut orders, Fate::Tampered, channel),
                    kind: SendKind::First,
                }
            } else if x < ratios.forged + ratios.tampered + ratios.dup && !genuine.is_empty() {
                let back = pick % genuine.len().min(DUP_WINDOW);
                PlannedSend {
                    order: genuine[genuine.len() - 1 - back],
                    kind: if dup_draw < 0.5 {
                        SendKind::DuplicateSame
                    } else {
                        SendKind::DuplicateOtherChannel
                    },
                }
            } else {
                let order = new_order(&mut orders, Fate::Genuine, channel);
                genuine.push(order);
                PlannedSend {
                    order,
                    kind: SendKind::First,
                }
            };
            sends.push(send);
        }
        Plan {
            prefix: prefix.to_owned(),
            orders,
            sends,
        }
    }

    /// Orders of a fate.
    pub fn count(&self, fate: Fate) -> usize {
        self.orders.iter().filter(|o| o.fate == fate).count()
    }

    /// Sends that are duplicates.
    pub fn duplicates(&self) -> usize {
        self.sends
            .iter()
            .filter(|s| s.kind != SendKind::First)
            .count()
    }

    /// Whether the gateway must acknowledge `send`.
    pub fn must_accept(&self, send: &PlannedSend) -> bool {
        self.orders
            .get(send.order)
            .is_some_and(|o| o.fate == Fate::Genuine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses() {
        assert_eq!(parse_mix("v2:0.5,v3:0.5"), Ok(0.5));
        assert_eq!(parse_mix("v2:1"), Ok(1.0));
        assert_eq!(parse_mix("v3:3, v2:1"), Ok(0.25));
        assert!(parse_mix("v4:1").is_err());
        assert!(parse_mix("v2:-1,v3:2").is_err());
        assert!(parse_mix("v2:0").is_err());
        assert!(parse_mix("v2").is_err());
    }

    #[test]
    fn ratios_are_checked() {
        let ok = Ratios {
            v2_share: 0.5,
            dup: 0.2,
            forged: 0.1,
            tampered: 0.1,
        };
        assert!(ok.validate().is_ok());
        assert_eq!(
            Ratios {
                dup: 0.6,
                forged: 0.4,
                ..ok
            }
            .validate(),
            Err(RatioError::Sum)
        );
        assert!(Ratios { dup: -0.1, ..ok }.validate().is_err());
    }

    #[test]
    fn plan_has_the_asked_shape() {
        let ratios = Ratios {
            v2_share: 0.5,
            dup: 0.2,
            forged: 0.05,
            tampered: 0.05,
        };
        let plan = Plan::new("LOADabcdef01-", 10_000, ratios, &mut rand::thread_rng());
        assert_eq!(plan.sends.len(), 10_000);
        let forged = plan.count(Fate::Forged) as f64;
        let dups = plan.duplicates() as f64;
        assert!((300.0..700.0).contains(&forged), "{forged}");
        assert!((1_600.0..2_400.0).contains(&dups), "{dups}");
        // Unique out_trade_no, all with the prefix; duplicates only of genuine orders.
        let mut nos: Vec<_> = plan.orders.iter().map(|o| o.out_trade_no.clone()).collect();
        nos.sort();
        nos.dedup();
        assert_eq!(nos.len(), plan.orders.len());
        assert!(nos
            .iter()
            .all(|n| n.starts_with("LOADabcdef01-") && n.len() <= 32));
        for s in &plan.sends {
            if s.kind != SendKind::First {
                assert_eq!(plan.orders[s.order].fate, Fate::Genuine);
            }
        }
        // Every order has exactly one First send, and it comes before its duplicates.
        let mut firsts = vec![0usize; plan.orders.len()];
        for s in &plan.sends {
            if s.kind == SendKind::First {
                firsts[s.order] += 1;
            } else {
                assert_eq!(firsts[s.order], 1);
            }
        }
        assert!(firsts.iter().all(|&n| n == 1));
        let v2 = plan
            .orders
            .iter()
            .filter(|o| o.channel == Channel::V2)
            .count() as f64;
        let share = v2 / plan.orders.len() as f64;
        assert!((0.4..0.6).contains(&share), "{share}");
    }
}
