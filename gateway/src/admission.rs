//! Who may send, and how much at once: the checks made before a notification costs
//! anything (body, verification, broker).
//!
//! - Per source, off by default: a CIDR allowlist and a per-address token bucket. The
//!   address is the TCP peer, or, when the peer is a configured trusted proxy, the nearest
//!   untrusted hop of `X-Forwarded-For` ([`client_address`]).
//! - Load shedding: at most `gateway.max_in_flight` publishes wait for a confirm; past it,
//!   and while RabbitMQ blocks the connection, the answer is FAIL at once. WeChat Pay
//!   re-sends a failed notification, so shedding loses nothing and keeps answers fast.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wxpay_runtime::config::{Cidr, GatewaySettings};

/// Why a request was shed: the `reason` label of `wxpay_gateway_shed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// `gateway.max_in_flight` publishes already wait for their confirm.
    InFlightFull,
    /// RabbitMQ has blocked the connection (memory or disk alarm).
    BrokerBlocked,
    /// The answer deadline passed before the publish could start.
    Deadline,
}

impl Shed {
    /// Every reason, to pre-register metric labels.
    pub const ALL: [Shed; 3] = [Shed::InFlightFull, Shed::BrokerBlocked, Shed::Deadline];

    /// The metric label and log field.
    pub fn code(self) -> &'static str {
        match self {
            Shed::InFlightFull => "in_flight_full",
            Shed::BrokerBlocked => "broker_blocked",
            Shed::Deadline => "deadline",
        }
    }
}

/// Tracked addresses past which idle (full) buckets are forgotten, bounding memory under a
/// flood of spoofed or many distinct sources.
const MAX_TRACKED_SOURCES: usize = 65_536;

/// A token bucket per client address.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        RateLimiter {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `address` at `now`; `false` when its bucket is empty.
    pub fn allow(&self, address: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED_SOURCES && !buckets.contains_key(&address) {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(address).or_insert((self.burst, now));
        let refilled = now.saturating_duration_since(*at).as_secs_f64() * self.per_second;
        *tokens = (*tokens + refilled).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The client of a request: the TCP `peer`, unless the peer is a trusted proxy; then the
/// nearest hop of `X-Forwarded-For` (read right to left) that is not itself a trusted
/// proxy. Hops left of it were written by the client and prove nothing. A malformed hop
/// stops the walk at the last address known good.
pub fn client_address(
    peer: Option<IpAddr>,
    forwarded_for: &[&str],
    trusted: &[Cidr],
) -> Option<IpAddr> {
    let is_trusted = |address: IpAddr| trusted.iter().any(|block| block.contains(address));
    let mut client = peer?;
    if !is_trusted(client) {
        return Some(client);
    }
    let hops = forwarded_for
        .iter()
        .rev()
        .flat_map(|value| value.rsplit(','));
    for hop in hops {
        match hop.trim().parse::<IpAddr>() {
            Ok(address) => {
                client = address;
                if !is_trusted(address) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Some(client)
}

/// Why a source is refused before its request is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not in `gateway.allow_sources`.
    NotAllowed,
    /// Over `gateway.rate_limit_per_second`.
    RateLimited,
}

/// The admission state shared by all HTTP workers.
#[derive(Debug)]
pub struct Admission {
    in_flight: Arc<Semaphore>,
    allow: Vec<Cidr>,
    trusted: Vec<Cidr>,
    rate: Option<RateLimiter>,
}

impl Admission {
    /// From `[gateway]` (already validated: the CIDR lists parse).
    pub fn from_settings(gateway: &GatewaySettings) -> Self {
        let blocks = |list: &[String]| list.iter().filter_map(|b| Cidr::parse(b)).collect();
        Admission {
            in_flight: Arc::new(Semaphore::new(gateway.max_in_flight.max(1))),
            allow: blocks(&gateway.allow_sources),
            trusted: blocks(&gateway.trusted_proxies),
            rate: (gateway.rate_limit_per_second > 0)
                .then(|| RateLimiter::new(gateway.rate_limit_per_second, gateway.rate_limit_burst)),
        }
    }

    /// Whether per-source checks are configured at all (then the client address is needed).
    pub fn checks_sources(&self) -> bool {
        !self.allow.is_empty() || self.rate.is_some()
    }

    /// The client address of a request (see [`client_address`]).
    pub fn client(&self, peer: Option<IpAddr>, forwarded_for: &[&str]) -> Option<IpAddr> {
        client_address(peer, forwarded_for, &self.trusted)
    }

    /// Allowlist, then rate limit, for `client` (unknown: refused only by an allowlist).
    pub fn check_source(&self, client: Option<IpAddr>) -> Result<(), Refusal> {
        if !self.allow.is_empty()
            && !client.is_some_and(|address| self.allow.iter().any(|b| b.contains(address)))
        {
            return Err(Refusal::NotAllowed);
        }
        match (&self.rate, client) {
            (Some(rate), Some(address)) if !rate.allow(address, Instant::now()) => {
                Err(Refusal::RateLimited)
            }
            _ => Ok(()),
        }
    }

    /// A slot for one publish, or [`Shed::InFlightFull`] at once (never waits).
    pub fn publish_slot(&self) -> Result<OwnedSemaphorePermit, Shed> {
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| Shed::InFlightFull)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter()
            .map(|b| Cidr::parse(b).expect("test CIDR"))
            .collect()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        // Direct client: its own X-Forwarded-For is ignored.
        assert_eq!(
            client_address(Some(ip("203.0.113.7")), &["1.2.3.4"], &trusted),
            Some(ip("203.0.113.7"))
        );
        // Through the ingress: the hop it appended.
        assert_eq!(
            client_address(Some(ip("10.1.2.3")), &["9.9.9.9, 203.0.113.7"], &trusted),
            Some(ip("203.0.113.7"))
        );
        // Two trusted proxies, two header lines: skip both proxies.
        assert_eq!(
            client_address(
                Some(ip("10.1.2.3")),
                &["9.9.9.9, 203.0.113.7", "10.0.0.5"],
                &trusted
            ),
            Some(ip("203.0.113.7"))
        );
        // Garbage stops the walk at the last good address.
        assert_eq!(
            client_address(Some(ip("10.1.2.3")), &["203.0.113.7, x"], &trusted),
            Some(ip("10.1.2.3"))
        );
        // No header: the proxy itself.
        assert_eq!(
            client_address(Some(ip("10.1.2.3")), &[], &trusted),
            Some(ip("10.1.2.3"))
        );
        assert_eq!(client_address(None, &["1.2.3.4"], &trusted), None);
    }

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let limiter = RateLimiter::new(2, 3);
        let start = Instant::now();
        let a = ip("203.0.113.1");
        let allowed = (0..5).filter(|_| limiter.allow(a, start)).count();
        assert_eq!(allowed, 3);
        // Another source has its own bucket.
        assert!(limiter.allow(ip("203.0.113.2"), start));
        // Half a second at 2/s refills one token.
        let later = start + Duration::from_millis(500);
        assert!(limiter.allow(a, later));
        assert!(!limiter.allow(a, later));
    }

    #[test]
    fn allowlist_and_rate_are_off_by_default() {
        let admission = Admission::from_settings(&GatewaySettings::default());
        assert!(!admission.checks_sources());
        assert_eq!(admission.check_source(None), Ok(()));
        let gateway = GatewaySettings {
            allow_sources: vec!["203.0.113.0/24".into()],
            ..GatewaySettings::default()
        };
        let admission = Admission::from_settings(&gateway);
        assert_eq!(admission.check_source(Some(ip("203.0.113.9"))), Ok(()));
        assert_eq!(
            admission.check_source(Some(ip("198.51.100.1"))),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(admission.check_source(None), Err(Refusal::NotAllowed));
    }

    #[test]
    fn publish_slots_are_bounded_and_returned() {
        let gateway = GatewaySettings {
            max_in_flight: 2,
            ..GatewaySettings::default()
        };
        let admission = Admission::from_settings(&gateway);
        let first = admission.publish_slot().expect("first slot");
        let _second = admission.publish_slot().expect("second slot");
        assert_eq!(admission.publish_slot().err(), Some(Shed::InFlightFull));
        drop(first);
        assert!(admission.publish_slot().is_ok());
    }
}
