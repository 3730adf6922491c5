//! Sends a notification and re-sends it the way WeChat Pay does until it is acknowledged.
//!
//! WeChat Pay counts anything but a correct success answer within about 5 s as a failure and
//! re-sends after 15s, 15s, 30s, 3m, 10m, 20m, 30m, 30m, 30m, 60m, 3h, 3h, 3h, 6h, 6h
//! (<https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_7>). The schedule is scaled by
//! `time_scale` so tests can run it in milliseconds. What counts as success is decided by
//! [`wxpay_shared::answer`], the same rule the gateway is written against.

use std::time::{Duration, Instant};

use wxpay_shared::answer::{v2_answer_is_success, v3_answer_is_success};
use wxpay_shared::v2::XmlFields;

use crate::build::Notification;

/// Seconds between attempts: the first re-send 15 s after the first attempt, and so on.
pub const WECHAT_RESEND_SCHEDULE_SECS: [u64; 15] = [
    15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600,
];

/// The first attempt plus every re-send of the schedule.
pub const WECHAT_MAX_ATTEMPTS: u32 = 1 + WECHAT_RESEND_SCHEDULE_SECS.len() as u32;

/// WeChat Pay gives up on an answer after about 5 s.
pub const WECHAT_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How to deliver.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// Multiplies the schedule (1.0 = real time, 0.001 = milliseconds).
    pub time_scale: f64,
    /// Attempts in all, 1 ..= [`WECHAT_MAX_ATTEMPTS`] for WeChat's behaviour.
    pub max_attempts: u32,
    /// An answer slower than this is a failure.
    pub answer_timeout: Duration,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            time_scale: 1.0,
            max_attempts: WECHAT_MAX_ATTEMPTS,
            answer_timeout: WECHAT_ANSWER_TIMEOUT,
        }
    }
}

/// Why the delivery options are unusable.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("--time-scale must be a finite number >= 0, got {0}")]
    TimeScale(f64),
    #[error("--max-attempts must be at least 1")]
    MaxAttempts,
    #[error("invalid target URL {url:?}: {reason}")]
    Target { url: String, reason: String },
}

impl DeliveryOptions {
    pub fn validate(&self) -> Result<(), DeliveryError> {
        if !self.time_scale.is_finite() || self.time_scale < 0.0 {
            return Err(DeliveryError::TimeScale(self.time_scale));
        }
        if self.max_attempts == 0 {
            return Err(DeliveryError::MaxAttempts);
        }
        Ok(())
    }

    /// The pause before attempt `next` (2-based: the pause before the second attempt is
    /// the schedule's first entry). Past the schedule the last interval repeats.
    pub fn delay_before(&self, next: u32) -> Duration {
        let index = usize::try_from(next.saturating_sub(2)).unwrap_or(usize::MAX);
        let secs = WECHAT_RESEND_SCHEDULE_SECS
            .get(index)
            .or(WECHAT_RESEND_SCHEDULE_SECS.last())
            .copied()
            .unwrap_or(0);
        Duration::try_from_secs_f64(secs as f64 * self.time_scale).unwrap_or(Duration::ZERO)
    }
}

/// How one answer was judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub success: bool,
    /// Short human explanation, e.g. `HTTP 200 return_code SUCCESS` or
    /// `HTTP 200 but not the v2 XML answer ("success")`.
    pub reason: String,
}

/// One attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// 1-based.
    pub number: u32,
    /// `None` when no HTTP answer came (connection refused, timeout).
    pub status: Option<u16>,
    pub judgement: Judgement,
    pub latency: Duration,
}

/// The result of a delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub acknowledged: bool,
    pub attempts: Vec<Attempt>,
}

/// A printable excerpt of an answer body: at most 60 characters, control characters escaped.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .chars()
        .take(60)
        .collect::<String>()
        .escape_debug()
        .collect();
    if text.chars().count() > 60 {
        out.push('…');
    }
    out
}

/// Judges a v2 answer as WeChat Pay does: only HTTP 200 with the XML `return_code` SUCCESS.
pub fn judge_v2(status: u16, body: &[u8]) -> Judgement {
    if v2_answer_is_success(status, body) {
        return Judgement {
            success: true,
            reason: format!("HTTP {status} return_code SUCCESS"),
        };
    }
    let reason = match XmlFields::parse(body) {
        Ok(fields) => match fields.get("return_code") {
            Some(code) => format!(
                "HTTP {status} return_code {code} return_msg {:?}",
                fields.get("return_msg").unwrap_or("")
            ),
            None => format!("HTTP {status} XML answer without return_code"),
        },
        Err(_) => format!(
            "HTTP {status} but not the v2 XML answer (\"{}\")",
            excerpt(body)
        ),
    };
    Judgement {
        success: false,
        reason,
    }
}

/// Judges a v3 answer as WeChat Pay does: 200 or 204 is success, anything else is re-sent.
pub fn judge_v3(status: u16, body: &[u8]) -> Judgement {
    if v3_answer_is_success(status) {
        return Judgement {
            success: true,
            reason: format!("HTTP {status}"),
        };
    }
    let detail = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let code = v.get("code")?.as_str()?.to_owned();
            let message = v.get("message").and_then(|m| m.as_str()).unwrap_or("");
            Some(format!("code {code} message {message:?}"))
        })
        .unwrap_or_else(|| format!("\"{}\"", excerpt(body)));
    Judgement {
        success: false,
        reason: format!("HTTP {status} {detail}"),
    }
}

/// The URL of `notification` at the gateway whose base URL is `target`.
pub fn url_for(target: &str, notification: &Notification) -> Result<reqwest::Url, DeliveryError> {
    let joined = format!("{}{}", target.trim_end_matches('/'), notification.route);
    reqwest::Url::parse(&joined).map_err(|e| DeliveryError::Target {
        url: target.to_owned(),
        reason: e.to_string(),
    })
}

/// Sends `notification` once and judges the answer.
pub async fn send_once(
    client: &reqwest::Client,
    url: reqwest::Url,
    notification: &Notification,
    timeout: Duration,
) -> (Option<u16>, Judgement) {
    let mut request = client
        .post(url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, notification.content_type)
        .header(reqwest::header::USER_AGENT, "Mozilla/4.0")
        .body(notification.body.clone());
    for (name, value) in &notification.headers {
        request = request.header(*name, value.as_str());
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            let what = if e.is_timeout() {
                format!("no answer within {} ms", timeout.as_millis())
            } else if e.is_connect() {
                "connection failed".to_owned()
            } else {
                "request failed".to_owned()
            };
            return (
                None,
                Judgement {
                    success: false,
                    reason: what,
                },
            );
        }
    };
    let status = response.status().as_u16();
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(_) => {
            return (
                Some(status),
                Judgement {
                    success: false,
                    reason: format!("HTTP {status} answer body could not be read"),
                },
            )
        }
    };
    let judgement = if notification.kind.is_v2() {
        judge_v2(status, &body)
    } else {
        judge_v3(status, &body)
    };
    (Some(status), judgement)
}

/// Sends and re-sends on WeChat Pay's schedule until acknowledged or out of attempts;
/// `on_attempt` sees every attempt as it happens (to print it).
pub async fn deliver(
    client: &reqwest::Client,
    target: &str,
    notification: &Notification,
    options: &DeliveryOptions,
    mut on_attempt: impl FnMut(&Attempt),
) -> Result<Delivery, DeliveryError> {
    options.validate()?;
    let url = url_for(target, notification)?;
    let mut attempts = Vec::new();
    for number in 1..=options.max_attempts {
        if number > 1 {
            tokio::time::sleep(options.delay_before(number)).await;
        }
        let started = Instant::now();
        let (status, judgement) =
            send_once(client, url.clone(), notification, options.answer_timeout).await;
        let attempt = Attempt {
            number,
            status,
            judgement,
            latency: started.elapsed(),
        };
        on_attempt(&attempt);
        let success = attempt.judgement.success;
        attempts.push(attempt);
        if success {
            return Ok(Delivery {
                acknowledged: true,
                attempts,
            });
        }
    }
    Ok(Delivery {
        acknowledged: false,
        attempts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wxpay_shared::answer::{v2_fail, V2_SUCCESS};

    #[test]
    fn schedule_is_wechats_and_scaled() {
        let o = DeliveryOptions {
            time_scale: 0.001,
            ..DeliveryOptions::default()
        };
        assert_eq!(o.delay_before(2), Duration::from_millis(15));
        assert_eq!(o.delay_before(4), Duration::from_millis(30));
        assert_eq!(o.delay_before(5), Duration::from_millis(180));
        assert_eq!(o.delay_before(16), Duration::from_millis(21_600));
        assert_eq!(o.delay_before(40), Duration::from_millis(21_600));
        assert_eq!(WECHAT_MAX_ATTEMPTS, 16);
        let total: u64 = WECHAT_RESEND_SCHEDULE_SECS.iter().sum();
        assert_eq!(total, 86_640, "about 24 h of re-sends");
    }

    #[test]
    fn options_are_validated() {
        let bad = |time_scale, max_attempts| {
            DeliveryOptions {
                time_scale,
                max_attempts,
                ..DeliveryOptions::default()
            }
            .validate()
            .is_err()
        };
        assert!(bad(-1.0, 3));
        assert!(bad(f64::NAN, 3));
        assert!(bad(1.0, 0));
        assert!(!bad(0.0, 1));
    }

    #[test]
    fn v2_judgement() {
        assert!(judge_v2(200, V2_SUCCESS.as_bytes()).success);
        let plain = judge_v2(200, b"success");
        assert!(!plain.success);
        assert!(
            plain.reason.contains("not the v2 XML answer"),
            "{}",
            plain.reason
        );
        let fail = judge_v2(200, v2_fail("busy").as_bytes());
        assert!(!fail.success);
        assert!(fail.reason.contains("FAIL") && fail.reason.contains("busy"));
        assert!(!judge_v2(500, V2_SUCCESS.as_bytes()).success);
        assert!(judge_v2(200, b"<xml><return_msg>x</return_msg></xml>")
            .reason
            .contains("without return_code"));
    }

    #[test]
    fn v3_judgement() {
        assert!(judge_v3(204, b"").success);
        assert!(judge_v3(200, b"").success);
        let j = judge_v3(500, br#"{"code":"FAIL","message":"broker"}"#);
        assert!(!j.success);
        assert!(j.reason.contains("code FAIL") && j.reason.contains("broker"));
        assert!(!judge_v3(401, b"nope").success);
    }

    #[test]
    fn excerpt_is_bounded_and_escaped() {
        let long = "a\n".repeat(100);
        let e = excerpt(long.as_bytes());
        assert!(e.ends_with('…'));
        assert!(!e.contains('\n'));
    }
}
