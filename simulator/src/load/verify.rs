//! Checks the end state of a load run against its plan: the guarantees of docs/ARCHITECTURE.md seen
//! from the outside (exactly once, forgeries and tampering never applied).

use std::collections::HashMap;

use wxpay_shared::state::{NotificationOutcome, OrderState};

use super::plan::{Fate, Plan};

/// What PostgreSQL says about the run's orders (all keyed by out_trade_no).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// `orders.state` and `orders.transaction_id`.
    pub orders: HashMap<String, (OrderState, Option<String>)>,
    /// `notifications` rows per outcome.
    pub notifications: HashMap<String, HashMap<NotificationOutcome, i64>>,
    /// `outbox` rows with event_type `order.paid`.
    pub paid_events: HashMap<String, i64>,
}

impl Observed {
    /// The database state a correct system leaves: every genuine order PAID by exactly one
    /// applied notification and one `order.paid` event, nothing else changed. Used when the
    /// database is not audited, so that only the answers are judged.
    pub fn expected(plan: &Plan) -> Self {
        let mut observed = Observed::default();
        for o in &plan.orders {
            let genuine = o.fate == Fate::Genuine;
            let state = if genuine {
                OrderState::Paid
            } else {
                OrderState::NotPay
            };
            observed.orders.insert(
                o.out_trade_no.clone(),
                (state, genuine.then(|| o.transaction_id.clone())),
            );
            if genuine {
                observed
                    .notifications
                    .entry(o.out_trade_no.clone())
                    .or_default()
                    .insert(NotificationOutcome::Applied, 1);
                observed.paid_events.insert(o.out_trade_no.clone(), 1);
            }
        }
        observed
    }

    fn rows(&self, out_trade_no: &str) -> i64 {
        self.notifications
            .get(out_trade_no)
            .map(|m| m.values().sum())
            .unwrap_or(0)
    }

    fn outcome(&self, out_trade_no: &str, outcome: NotificationOutcome) -> i64 {
        self.notifications
            .get(out_trade_no)
            .and_then(|m| m.get(&outcome))
            .copied()
            .unwrap_or(0)
    }
}

/// What the gateway answered, per order index.
#[derive(Debug, Clone, Default)]
pub struct Answers {
    /// Orders of which at least one genuine send was acknowledged.
    pub genuine_acknowledged: Vec<bool>,
    /// Orders of which a forged or tampered send was acknowledged (must never happen).
    pub bad_acknowledged: Vec<bool>,
}

impl Answers {
    pub fn new(orders: usize) -> Self {
        Self {
            genuine_acknowledged: vec![false; orders],
            bad_acknowledged: vec![false; orders],
        }
    }
}

/// At most this many example out_trade_nos per kind of problem.
const EXAMPLES: usize = 5;

/// Collects problems of one kind: a count and a few examples.
#[derive(Default)]
struct Tally {
    kinds: Vec<(String, usize, Vec<String>)>,
}

impl Tally {
    fn add(&mut self, what: &str, out_trade_no: &str, detail: String) {
        let entry = match self.kinds.iter().position(|(k, _, _)| k == what) {
            Some(i) => &mut self.kinds[i],
            None => {
                self.kinds.push((what.to_owned(), 0, Vec::new()));
                let last = self.kinds.len() - 1;
                &mut self.kinds[last]
            }
        };
        entry.1 += 1;
        if entry.2.len() < EXAMPLES {
            entry.2.push(if detail.is_empty() {
                out_trade_no.to_owned()
            } else {
                format!("{out_trade_no} ({detail})")
            });
        }
    }

    fn into_problems(self) -> Vec<String> {
        self.kinds
            .into_iter()
            .map(|(what, n, examples)| {
                format!("{what}: {n} order(s), e.g. {}", examples.join(", "))
            })
            .collect()
    }
}

/// The problems found; empty means verified.
pub fn verify(plan: &Plan, answers: &Answers, observed: &Observed) -> Vec<String> {
    let mut t = Tally::default();
    for (i, order) in plan.orders.iter().enumerate() {
        let no = order.out_trade_no.as_str();
        let Some((state, transaction_id)) = observed.orders.get(no) else {
            t.add("order row missing", no, "inserted before the run".into());
            continue;
        };
        let applied = observed.outcome(no, NotificationOutcome::Applied);
        let paid_events = observed.paid_events.get(no).copied().unwrap_or(0);
        let bad_ack = answers.bad_acknowledged.get(i).copied().unwrap_or(false);
        match order.fate {
            Fate::Genuine => {
                if !answers
                    .genuine_acknowledged
                    .get(i)
                    .copied()
                    .unwrap_or(false)
                {
                    t.add(
                        "genuine notification never acknowledged by the gateway",
                        no,
                        String::new(),
                    );
                }
                if *state != OrderState::Paid {
                    t.add("genuine order not PAID", no, format!("state {state}"));
                } else if transaction_id.as_deref() != Some(order.transaction_id.as_str()) {
                    t.add(
                        "genuine order PAID with another transaction_id",
                        no,
                        format!("{transaction_id:?}"),
                    );
                }
                if applied != 1 {
                    t.add(
                        "genuine order not APPLIED exactly once",
                        no,
                        format!("{applied} APPLIED notification rows"),
                    );
                }
                if paid_events != 1 {
                    t.add(
                        "genuine order without exactly one order.paid event",
                        no,
                        format!("{paid_events} events"),
                    );
                }
            }
            Fate::Forged | Fate::Tampered => {
                let what = if order.fate == Fate::Forged {
                    "forged"
                } else {
                    "tampered"
                };
                if bad_ack {
                    t.add(
                        &format!("{what} notification acknowledged by the gateway"),
                        no,
                        String::new(),
                    );
                }
                if *state != OrderState::NotPay {
                    t.add(
                        &format!("{what} notification changed the order"),
                        no,
                        format!("state {state}"),
                    );
                }
                let rows = observed.rows(no);
                if rows != 0 {
                    t.add(
                        &format!("{what} notification reached the worker"),
                        no,
                        format!("{rows} notification rows, {applied} APPLIED"),
                    );
                }
                if paid_events != 0 {
                    t.add(
                        &format!("{what} notification emitted order.paid"),
                        no,
                        format!("{paid_events} events"),
                    );
                }
            }
        }
    }
    t.into_problems()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::plan::{Ratios, SendKind};

    fn plan() -> Plan {
        let ratios = Ratios {
            v2_share: 0.5,
            dup: 0.2,
            forged: 0.1,
            tampered: 0.1,
        };
        Plan::new("LOADtest0001-", 400, ratios, &mut rand::thread_rng())
    }

    /// The state a correct system leaves behind, with the duplicates' no-op rows.
    fn perfect(plan: &Plan) -> (Answers, Observed) {
        let mut answers = Answers::new(plan.orders.len());
        for (i, o) in plan.orders.iter().enumerate() {
            answers.genuine_acknowledged[i] = o.fate == Fate::Genuine;
        }
        let mut observed = Observed::expected(plan);
        for s in &plan.sends {
            if s.kind != SendKind::First {
                let no = &plan.orders[s.order].out_trade_no;
                *observed
                    .notifications
                    .entry(no.clone())
                    .or_default()
                    .entry(NotificationOutcome::Noop)
                    .or_default() += 1;
            }
        }
        (answers, observed)
    }

    fn first_of(plan: &Plan, fate: Fate) -> (usize, String) {
        let i = plan
            .orders
            .iter()
            .position(|o| o.fate == fate)
            .expect("the plan has every fate");
        (i, plan.orders[i].out_trade_no.clone())
    }

    #[test]
    fn a_correct_run_verifies() {
        let plan = plan();
        let (answers, observed) = perfect(&plan);
        assert_eq!(verify(&plan, &answers, &observed), Vec::<String>::new());
    }

    #[test]
    fn double_application_is_caught() {
        let plan = plan();
        let (answers, mut observed) = perfect(&plan);
        let (_, no) = first_of(&plan, Fate::Genuine);
        observed
            .notifications
            .get_mut(&no)
            .unwrap()
            .insert(NotificationOutcome::Applied, 2);
        observed.paid_events.insert(no.clone(), 2);
        let problems = verify(&plan, &answers, &observed);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("not APPLIED exactly once") && problems[0].contains(&no));
        assert!(problems[1].contains("order.paid"));
    }

    #[test]
    fn unpaid_genuine_and_missing_rows_are_caught() {
        let plan = plan();
        let (mut answers, mut observed) = perfect(&plan);
        let (i, no) = first_of(&plan, Fate::Genuine);
        observed
            .orders
            .insert(no.clone(), (OrderState::NotPay, None));
        answers.genuine_acknowledged[i] = false;
        let (_, other) = first_of(&plan, Fate::Forged);
        observed.orders.remove(&other);
        let problems = verify(&plan, &answers, &observed).join("\n");
        assert!(problems.contains("never acknowledged"), "{problems}");
        assert!(problems.contains("genuine order not PAID"), "{problems}");
        assert!(problems.contains("order row missing"), "{problems}");
    }

    #[test]
    fn applied_forgery_and_tampering_are_caught() {
        let plan = plan();
        let (mut answers, mut observed) = perfect(&plan);
        let (i, forged) = first_of(&plan, Fate::Forged);
        answers.bad_acknowledged[i] = true;
        observed
            .orders
            .insert(forged.clone(), (OrderState::Paid, Some("x".into())));
        observed
            .notifications
            .entry(forged.clone())
            .or_default()
            .insert(NotificationOutcome::Applied, 1);
        let (_, tampered) = first_of(&plan, Fate::Tampered);
        observed
            .notifications
            .entry(tampered.clone())
            .or_default()
            .insert(NotificationOutcome::Anomaly, 1);
        let problems = verify(&plan, &answers, &observed).join("\n");
        assert!(
            problems.contains("forged notification acknowledged"),
            "{problems}"
        );
        assert!(
            problems.contains("forged notification changed the order"),
            "{problems}"
        );
        assert!(
            problems.contains("forged notification reached the worker"),
            "{problems}"
        );
        assert!(
            problems.contains("tampered notification reached the worker"),
            "{problems}"
        );
    }

    #[test]
    fn examples_are_bounded() {
        let plan = plan();
        let (answers, mut observed) = perfect(&plan);
        observed.paid_events.clear();
        let problems = verify(&plan, &answers, &observed);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].matches("LOADtest0001-").count(), EXAMPLES);
    }
}
