//! `wxpay-worker doctor`: why notifications do not arrive, one line per check.
//!
//! Each check prints `ok <what>` or `FAIL <what>: <what to do>`. The rules on the
//! configuration (the public URL's shape, key lengths, key expiry) are pure functions; the
//! checks of the environment (WeChat Pay's clock, RabbitMQ, PostgreSQL, Redis, the route from
//! outside) are bounded by timeouts, so a black-holed address costs seconds, not a hang.
//! Every line goes through [`Redactor`]: nothing printed carries a secret.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use diesel::sql_types::{Bool, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ExchangeKind};
use reqwest::Url;
use secrecy::ExposeSecret;
use wxpay_runtime::config::{
    ConfigFiles, DatabaseSettings, MerchantSettings, RabbitmqSettings, RedisSettings, Settings,
    WechatpaySettings, WorkerSettings,
};
use wxpay_runtime::platform_keys;
use wxpay_shared::answer;
use wxpay_shared::v3::keys::{certificate_not_after, certificate_serial_hex};
use wxpay_shared::v3::{
    decrypt_each, load_private_key_pem, load_public_key_pem, KeyError, MAX_CLOCK_SKEW_SECS,
};

use crate::broker::{self, BrokerError};
use crate::db::with_connect_timeout;
use crate::migrate::MIGRATIONS;

/// The gateway's `public_message(RejectReason::Malformed)` (gateway/src/answer.rs): its v2
/// answer to a body without `mch_id` is what tells this gateway apart from anything else.
pub const MALFORMED_MESSAGE: &str = "malformed notification";
/// The route probe: well-formed XML without `mch_id`, so the gateway rejects it as malformed
/// before looking up a merchant, and nothing is published.
pub const PROBE_BODY: &str = "<xml><doctor>wxpay-worker doctor route probe</doctor></xml>";
/// The notify route probed under `gateway.public_url`.
pub const PROBE_PATH: &str = "/notify/v2/pay";
/// Bound on the route probe (WeChat Pay itself gives up after a few seconds).
const ROUTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers larger than this are not the gateway's FAIL XML; not read further.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Ok(String),
    Fail { what: String, todo: String },
}

impl Check {
    pub fn ok(what: impl Into<String>) -> Check {
        Check::Ok(what.into())
    }

    pub fn fail(what: impl Into<String>, todo: impl Into<String>) -> Check {
        Check::Fail {
            what: what.into(),
            todo: todo.into(),
        }
    }

    pub fn is_fail(&self) -> bool {
        matches!(self, Check::Fail { .. })
    }

    fn redacted(self, redactor: &Redactor) -> Check {
        match self {
            Check::Ok(what) => Check::Ok(redactor.apply(&what)),
            Check::Fail { what, todo } => Check::Fail {
                what: redactor.apply(&what),
                todo: redactor.apply(&todo),
            },
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Ok(what) => write!(f, "ok {what}"),
            Check::Fail { what, todo } => write!(f, "FAIL {what}: {todo}"),
        }
    }
}

/// Command-line options of `doctor`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Accept an `http`, IP-address or explicit-port `public_url` (local setups), so that the
    /// route is still probed. A query string or fragment stays a FAIL.
    pub allow_insecure_public_url: bool,
}

/// Every check for the configuration in `files` (with the process's `WXPAY__…` overrides),
/// in a fixed order, redacted.
pub async fn run(files: &ConfigFiles, options: Options) -> Vec<Check> {
    let what = format!("configuration {files}");
    let settings = match Settings::read_with_env(files.clone(), std::env::vars()) {
        Ok(settings) => settings,
        Err(error) => {
            return vec![Check::fail(
                what,
                format!("{error}: fix it first, nothing else can be checked"),
            )]
        }
    };
    let redactor = Redactor::from_settings(&settings);
    let mut checks = vec![match settings.validate() {
        Ok(()) => Check::ok(format!("{what} loads and validates")),
        Err(error) => Check::fail(
            what,
            format!("{error}: the gateway and the worker refuse to start with it"),
        ),
    }];
    let public_url = settings.gateway.public_url.as_deref();
    let url_checks = public_url_checks(public_url, options);
    let url_ok = !url_checks.iter().any(Check::is_fail);
    checks.extend(url_checks);
    if settings.merchants.is_empty() {
        checks.push(Check::fail(
            "merchants",
            "none configured: add a [[merchants]] entry",
        ));
    }
    let now = SystemTime::now();
    for merchant in &settings.merchants {
        checks.extend(merchant_checks(merchant, now));
    }
    let route = async {
        match (public_url.and_then(|url| Url::parse(url).ok()), url_ok) {
            (Some(base), true) => route_check(&base).await,
            (None, _) => Check::fail(
                format!("route from outside (POST <public_url>{PROBE_PATH})"),
                "skipped: set gateway.public_url first",
            ),
            (Some(_), false) => Check::fail(
                format!("route from outside (POST <public_url>{PROBE_PATH})"),
                "skipped: fix the URL first",
            ),
        }
    };
    let (clock, rabbitmq, postgres, redis, route) = tokio::join!(
        clock_check(&settings.wechatpay),
        rabbitmq_checks(&settings.rabbitmq, &settings.worker, &settings.merchants),
        postgres_checks(&settings.database),
        redis_check(&settings.redis),
        route,
    );
    checks.push(clock);
    checks.extend(rabbitmq);
    checks.extend(postgres);
    checks.push(redis);
    checks.push(route);
    checks
        .into_iter()
        .map(|check| check.redacted(&redactor))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The public URL

/// The rules WeChat Pay puts on `notify_url`, each on its own line: `https`, the default
/// port, no query string, no fragment, a host name rather than an IP address. `None` (not
/// configured) is one FAIL: the route check needs it.
pub fn public_url_checks(public_url: Option<&str>, options: Options) -> Vec<Check> {
    const KEY: &str = "gateway.public_url";
    let Some(text) = public_url else {
        return vec![Check::fail(
            format!("{KEY} is not set"),
            "set it to the public notify base URL WeChat Pay calls (e.g. https://pay.example.com); \
             the route check needs it",
        )];
    };
    let url = match Url::parse(text) {
        Ok(url) => url,
        Err(error) => {
            return vec![Check::fail(
                format!("{KEY} {text:?} is not a URL ({error})"),
                "write it as https://<host name>[/<path>]",
            )]
        }
    };
    let insecure =
        |what: String| Check::ok(format!("{what} (allowed by --allow-insecure-public-url)"));
    let mut checks = Vec::with_capacity(5);
    checks.push(match url.scheme() {
        "https" => Check::ok(format!("{KEY} scheme is https")),
        "http" if options.allow_insecure_public_url => insecure(format!("{KEY} scheme is http")),
        scheme => Check::fail(
            format!("{KEY} scheme is {scheme}, not https"),
            "WeChat Pay calls https notify URLs only: terminate TLS at the ingress and use https://",
        ),
    });
    checks.push(match url.port() {
        None => Check::ok(format!("{KEY} uses the default port")),
        Some(port) if options.allow_insecure_public_url => {
            insecure(format!("{KEY} has explicit port {port}"))
        }
        Some(port) => Check::fail(
            format!("{KEY} has explicit port {port}"),
            "WeChat Pay calls the default port (443) only: publish the gateway on 443 and drop the port",
        ),
    });
    checks.push(match url.query() {
        None => Check::ok(format!("{KEY} has no query string")),
        Some(_) => Check::fail(
            format!("{KEY} has a query string"),
            "notify URLs must not carry parameters: remove everything from '?'",
        ),
    });
    checks.push(match url.fragment() {
        None => Check::ok(format!("{KEY} has no fragment")),
        Some(_) => Check::fail(
            format!("{KEY} has a fragment"),
            "notify URLs must not carry a fragment: remove everything from '#'",
        ),
    });
    let host = url.host_str().unwrap_or_default();
    let is_ip = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok();
    checks.push(if host.is_empty() {
        Check::fail(format!("{KEY} has no host"), "write it as https://<host name>")
    } else if !is_ip {
        Check::ok(format!("{KEY} host {host} is a host name"))
    } else if options.allow_insecure_public_url {
        insecure(format!("{KEY} host {host} is an IP address"))
    } else {
        Check::fail(
            format!("{KEY} host {host} is an IP address"),
            "WeChat Pay needs a domain name: point a DNS name at the ingress, with a certificate for it",
        )
    });
    checks
}

// ---------------------------------------------------------------------------------------
// Merchants

/// The keys of one merchant: API v2 key, APIv3 key, platform keys (loadable, keyed by their
/// own serial, certificates not expired at `now`), the reconciler's private key and serial.
pub fn merchant_checks(merchant: &MerchantSettings, now: SystemTime) -> Vec<Check> {
    let who = format!("merchant {}", merchant.mch_id);
    // v3 as soon as anything v3 is configured: then every v3 piece must be there.
    let v3 = merchant.api_v3_key.is_some()
        || !merchant.platform_public_keys.is_empty()
        || merchant.merchant_private_key_pem.is_some();
    let mut checks = vec![v2_key_check(&who, merchant.api_v2_key.expose_secret())];
    checks.push(match &merchant.api_v3_key {
        Some(key) => v3_key_check(&who, key.expose_secret()),
        None if v3 => Check::fail(
            format!("{who} api_v3_key is not set"),
            "set the APIv3 key (32 bytes): v3 notifications cannot be decrypted without it",
        ),
        None => Check::ok(format!("{who} api_v3_key is not set (API v2 merchant)")),
    });
    for (serial, pem) in &merchant.platform_public_keys {
        checks.push(platform_key_check(&who, serial, pem, now));
    }
    let serials = &merchant.platform_public_keys;
    // Downloaded certificates live in the broker's stream, not in this file: the stream is
    // read by every service, and a merchant that downloads may have no key of its own.
    let downloaded = if merchant.download_platform_certificates {
        " and the platform certificates the reconciler downloads (GET /v3/certificates)"
    } else {
        ""
    };
    checks.push(if !serials.is_empty() {
        let names: Vec<&str> = serials.keys().map(String::as_str).collect();
        Check::ok(format!(
            "{who} platform keys cover {} serial(s): {}{downloaded}",
            names.len(),
            names.join(", ")
        ))
    } else if merchant.download_platform_certificates {
        Check::ok(format!(
            "{who} platform keys: none in the file; the platform certificates the reconciler \
             downloads (GET /v3/certificates), counted in the stream below"
        ))
    } else if v3 {
        Check::fail(
            format!("{who} has no platform key"),
            "add the WeChat Pay public key (PUB_KEY_ID_…) or platform certificate under its serial \
             in [merchants.platform_public_keys]: v3 notifications cannot be verified without one",
        )
    } else {
        Check::ok(format!("{who} has no platform key (API v2 merchant)"))
    });
    checks.push(signer_check(&who, merchant));
    checks
}

fn v2_key_check(who: &str, key: &str) -> Check {
    const WHY: &str = "refunds made by hand in the merchant platform are notified in v2 XML, \
                       even to v3 merchants";
    if key.is_empty() {
        Check::fail(
            format!("{who} api_v2_key is not set"),
            format!("set the API v2 key (32 characters): {WHY}"),
        )
    } else if key.len() != 32 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        Check::fail(
            format!("{who} api_v2_key has {} characters", key.chars().count()),
            format!("it must be the 32-character API v2 key of the merchant platform: {WHY}"),
        )
    } else {
        Check::ok(format!("{who} api_v2_key is set (32 characters)"))
    }
}

fn v3_key_check(who: &str, key: &str) -> Check {
    if key.len() == 32 {
        Check::ok(format!("{who} api_v3_key is set (32 bytes)"))
    } else {
        Check::fail(
            format!("{who} api_v3_key has {} bytes, not 32", key.len()),
            "copy the APIv3 key again from the merchant platform: v3 resources cannot be decrypted",
        )
    }
}

fn platform_key_check(who: &str, serial: &str, pem: &str, now: SystemTime) -> Check {
    let what = format!("{who} platform key {serial}");
    if let Err(error) = load_public_key_pem(pem) {
        return Check::fail(
            format!("{what} does not load ({error})"),
            "paste the PEM of the WeChat Pay public key (PUBLIC KEY) or platform certificate (CERTIFICATE)",
        );
    }
    match certificate_not_after(pem) {
        Err(KeyError::UnsupportedLabel(_)) => Check::ok(format!(
            "{what} is a WeChat Pay public key (public keys have no expiry)"
        )),
        Err(error) => Check::fail(
            format!("{what} is not a readable certificate ({error})"),
            "paste the platform certificate's PEM again",
        ),
        Ok(not_after) => {
            let until = DateTime::<Utc>::from(not_after).format("%Y-%m-%d %H:%M UTC");
            match certificate_serial_hex(pem) {
                Ok(actual) if !actual.eq_ignore_ascii_case(serial) => {
                    return Check::fail(
                        format!("{what} is a certificate with serial {actual}"),
                        "key it by its own serial: WeChat Pay names the key in Wechatpay-Serial",
                    )
                }
                _ => {}
            }
            if not_after <= now {
                Check::fail(
                    format!("{what} is a certificate that expired on {until}"),
                    "add the current platform certificate (GET /v3/certificates) or the WeChat Pay \
                     public key: notifications signed with the new one are refused",
                )
            } else {
                Check::ok(format!("{what} is a certificate valid until {until}"))
            }
        }
    }
}

fn signer_check(who: &str, merchant: &MerchantSettings) -> Check {
    let what = format!("{who} merchant private key and serial");
    match (&merchant.merchant_private_key_pem, &merchant.merchant_serial) {
        (Some(pem), Some(serial)) => match load_private_key_pem(pem.expose_secret()) {
            Ok(_) => Check::ok(format!(
                "{what} (serial {serial}) load for the reconciler"
            )),
            Err(error) => Check::fail(
                format!("{what}: merchant_private_key_pem does not load ({error})"),
                "paste apiclient_key.pem (PRIVATE KEY) as issued with the merchant API certificate",
            ),
        },
        (Some(_), None) => Check::fail(
            format!("{what}: merchant_serial is not set"),
            "set the serial of the merchant API certificate: the reconciler names it in its signatures",
        ),
        (None, Some(_)) => Check::fail(
            format!("{what}: merchant_private_key_pem is not set"),
            "set apiclient_key.pem: the reconciler signs its API v3 queries with it",
        ),
        (None, None) if merchant.api_v3_key.is_some() => Check::fail(
            format!("{what} are not set"),
            "set merchant_private_key_pem and merchant_serial: without them the reconciler cannot \
             query this v3 merchant through API v3",
        ),
        (None, None) => Check::ok(format!(
            "{what} are not set (the reconciler queries this merchant through API v2)"
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Outside: the route and WeChat Pay's clock

/// Why an HTTP request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Dns,
    Tls,
    Timeout,
    Refused,
    Other,
}

impl Cause {
    /// Reads the cause from the text of an error and its sources (hyper and rustls do not
    /// expose typed kinds through reqwest).
    pub fn classify(chain: &str, timed_out: bool) -> Cause {
        let chain = chain.to_ascii_lowercase();
        let any = |needles: &[&str]| needles.iter().any(|needle| chain.contains(needle));
        if timed_out || any(&["timed out", "deadline has elapsed"]) {
            Cause::Timeout
        } else if any(&[
            "dns error",
            "failed to lookup address",
            "name or service not known",
        ]) {
            Cause::Dns
        } else if any(&["certificate", "tls", "handshake", "corrupt message"]) {
            Cause::Tls
        } else if any(&["connection refused"]) {
            Cause::Refused
        } else {
            Cause::Other
        }
    }

    fn of(error: &reqwest::Error) -> Cause {
        let mut chain = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(inner) = source {
            chain.push_str(": ");
            chain.push_str(&inner.to_string());
            source = inner.source();
        }
        Cause::classify(&chain, error.is_timeout())
    }

    fn as_str(self) -> &'static str {
        match self {
            Cause::Dns => "DNS",
            Cause::Tls => "TLS",
            Cause::Timeout => "timeout",
            Cause::Refused => "connection refused",
            Cause::Other => "connection failed",
        }
    }
}

/// The gateway's answer to [`PROBE_BODY`], byte for byte.
pub fn expected_route_answer() -> String {
    answer::v2_fail(MALFORMED_MESSAGE)
}

/// Whether an answer to the route probe came from this gateway; otherwise the likely cause.
pub fn judge_route_answer(status: u16, body: &[u8]) -> Result<(), String> {
    if status == 200 && body == expected_route_answer().as_bytes() {
        return Ok(());
    }
    Err(match status {
        300..=399 => format!(
            "redirected (HTTP {status}): WeChat Pay does not follow redirects; set public_url to the final https URL"
        ),
        404 => "HTTP 404: the ingress does not route /notify/ to the gateway (check its host and path rules)".into(),
        401 | 403 => format!(
            "HTTP {status}: something in front of the gateway (WAF, authentication, IP allow-list) refuses it; WeChat Pay calls from the internet"
        ),
        502..=504 => format!(
            "HTTP {status}: the ingress answers but cannot reach the gateway (pods not ready, wrong Service or port)"
        ),
        _ => format!(
            "HTTP {status} with an answer that is not this gateway's: DNS or the ingress points somewhere else"
        ),
    })
}

fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        // A redirect is an answer to judge, not to follow: WeChat Pay does not follow it.
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

async fn route_check(base: &Url) -> Check {
    let target = format!("{}{PROBE_PATH}", base.as_str().trim_end_matches('/'));
    let what = format!("route from outside: POST {target}");
    let host = base.host_str().unwrap_or_default().to_owned();
    let client = match http_client(ROUTE_TIMEOUT) {
        Ok(client) => client,
        Err(error) => return Check::fail(what, format!("cannot build an HTTP client: {error}")),
    };
    let sent = client
        .post(&target)
        .header(reqwest::header::CONTENT_TYPE, "text/xml")
        .body(PROBE_BODY)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(error) => return Check::fail(what, route_failure(Cause::of(&error), &host)),
    };
    let status = response.status().as_u16();
    let body = match read_limited(response).await {
        Ok(body) => body,
        Err(error) => {
            return Check::fail(
                what,
                format!("the answer broke off ({error}): check the ingress"),
            )
        }
    };
    match judge_route_answer(status, &body) {
        Ok(()) => Check::ok(format!("{what} answered by this gateway")),
        Err(cause) => Check::fail(what, cause),
    }
}

fn route_failure(cause: Cause, host: &str) -> String {
    const FIREWALL: &str = "a firewall or security group silently dropping WeChat Pay's callers \
                            (they come from the internet) is a common cause";
    match cause {
        Cause::Dns => format!(
            "DNS: {host} does not resolve: create its public DNS record (WeChat Pay resolves it from the internet)"
        ),
        Cause::Tls => format!(
            "TLS handshake failed: the ingress must serve a certificate for {host} from a public CA on 443"
        ),
        Cause::Timeout => format!(
            "no answer within {} s: {FIREWALL}; else the load balancer or ingress does not forward",
            ROUTE_TIMEOUT.as_secs()
        ),
        Cause::Refused => format!(
            "connection refused: nothing listens there; check the ingress or load balancer ({FIREWALL})"
        ),
        Cause::Other => format!("no answer: check DNS, TLS, the ingress and the firewall ({FIREWALL})"),
    }
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ANSWER_BYTES {
            break;
        }
    }
    Ok(body)
}

/// `skew_secs`: our clock minus WeChat Pay's.
pub fn skew_check(what: &str, skew_secs: i64) -> Check {
    if skew_secs.abs() > MAX_CLOCK_SKEW_SECS {
        let direction = if skew_secs > 0 { "ahead of" } else { "behind" };
        Check::fail(
            format!(
                "{what}: this host is {} s {direction} WeChat Pay",
                skew_secs.abs()
            ),
            "sync the clock (NTP, chrony): v3 signatures more than 5 minutes off are rejected",
        )
    } else {
        Check::ok(format!("{what} within {} s", skew_secs.abs()))
    }
}

async fn clock_check(wechatpay: &WechatpaySettings) -> Check {
    let base = wechatpay.api_base.as_str();
    let what = format!("clock against WeChat Pay's Date header ({base})");
    let timeout = Duration::from_millis(wechatpay.request_timeout_ms.clamp(1_000, 30_000));
    let client = match http_client(timeout) {
        Ok(client) => client,
        Err(error) => return Check::fail(what, format!("cannot build an HTTP client: {error}")),
    };
    let started = Instant::now();
    let sent_at = SystemTime::now();
    let response = match client.get(base).send().await {
        Ok(response) => response,
        Err(error) => {
            return Check::fail(
                what,
                format!(
                    "unreachable ({}): allow egress to wechatpay.api_base (the reconciler needs it too)",
                    Cause::of(&error).as_str()
                ),
            )
        }
    };
    // The Date header was written while the request was in flight: compare with the middle.
    let local = sent_at + started.elapsed() / 2;
    let date = response
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| DateTime::parse_from_rfc2822(value).ok());
    match date {
        Some(date) => {
            let skew = DateTime::<Utc>::from(local).timestamp() - date.timestamp();
            skew_check(&what, skew)
        }
        None => Check::fail(
            what,
            "the answer has no readable Date header: is wechatpay.api_base WeChat Pay's API?",
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Services

async fn rabbitmq_checks(
    rabbitmq: &RabbitmqSettings,
    worker: &WorkerSettings,
    merchants: &[MerchantSettings],
) -> Vec<Check> {
    let connection = match broker::connect(rabbitmq).await {
        Ok(connection) => connection,
        Err(error) => {
            return vec![Check::fail(
                "RabbitMQ reachable",
                format!("cannot connect ({error}): check rabbitmq.url and that the broker accepts connections from here"),
            )]
        }
    };
    const DECLARED_BY: &str =
        "the gateway and `wxpay-worker run` declare it at start-up: start one \
                               of them, or check that rabbitmq.queue matches theirs";
    let mut checks = vec![Check::ok("RabbitMQ reachable")];
    let mut queues = vec![rabbitmq.queue.clone(), rabbitmq.parked_queue()];
    queues.extend((0..worker.retry_delays_ms.len()).map(|tier| rabbitmq.retry_queue(tier)));
    queues.push(rabbitmq.unrouted_events());
    for name in queues {
        checks.push(match passive_queue(&connection, &name).await {
            Ok(()) => Check::ok(format!("RabbitMQ queue {name} is declared")),
            Err(error) => Check::fail(
                format!("RabbitMQ queue {name} is not declared ({error})"),
                DECLARED_BY,
            ),
        });
    }
    let exchange = &rabbitmq.events_exchange;
    checks.push(match passive_exchange(&connection, exchange).await {
        Ok(()) => Check::ok(format!("RabbitMQ exchange {exchange} is declared")),
        Err(error) => Check::fail(
            format!("RabbitMQ exchange {exchange} is not declared ({error})"),
            "`wxpay-worker run` declares it at start-up: start it, or check rabbitmq.events_exchange",
        ),
    });
    let downloading: Vec<&MerchantSettings> = merchants
        .iter()
        .filter(|merchant| merchant.download_platform_certificates)
        .collect();
    if !downloading.is_empty() {
        checks.extend(downloaded_certificate_checks(&connection, rabbitmq, &downloading).await);
    }
    broker::close(&connection, &[], "doctor done").await;
    checks
}

/// For each merchant that downloads its platform certificates: the certificates the
/// platform keys stream holds for it that decrypt with its APIv3 key and are valid now,
/// what every service adds to the merchant's keys (`wxpay_runtime::platform_keys`).
async fn downloaded_certificate_checks(
    connection: &Connection,
    rabbitmq: &RabbitmqSettings,
    merchants: &[&MerchantSettings],
) -> Vec<Check> {
    let stream = rabbitmq.platform_keys_stream();
    let messages =
        match platform_keys::retained(connection, rabbitmq, platform_keys::RETAINED_IDLE).await {
            Ok(messages) => messages,
            Err(error) => {
                return vec![Check::fail(
                format!("RabbitMQ stream {stream} cannot be read ({error})"),
                "the reconciler, the gateway and `wxpay-worker run` declare it while a merchant \
                 downloads its platform certificates: start `wxpay-worker reconcile`",
            )]
            }
        };
    let now = SystemTime::now();
    merchants
        .iter()
        .map(|merchant| {
            let who = format!("merchant {}", merchant.mch_id);
            let key = merchant
                .api_v3_key
                .as_ref()
                .map(|key| key.expose_secret().as_bytes().to_vec())
                .unwrap_or_default();
            let mut valid: Vec<(String, SystemTime)> = messages
                .iter()
                .filter(|message| message.mch_id == merchant.mch_id)
                .flat_map(|message| decrypt_each(&message.data, &key, now).0)
                .map(|certificate| (certificate.serial, certificate.not_after))
                .collect();
            valid.sort();
            valid.dedup();
            match valid.iter().map(|(_, not_after)| *not_after).max() {
                Some(latest) => {
                    let serials: Vec<&str> =
                        valid.iter().map(|(serial, _)| serial.as_str()).collect();
                    let until = DateTime::<Utc>::from(latest).format("%Y-%m-%d %H:%M UTC");
                    Check::ok(format!(
                        "{who} platform certificates in the stream {stream}: {} valid ({}), the \
                         latest until {until}",
                        serials.len(),
                        serials.join(", ")
                    ))
                }
                None => Check::fail(
                    format!("{who} has no valid platform certificate in the stream {stream}"),
                    "start `wxpay-worker reconcile` (it downloads at start) and read its \
                     `platform_keys` log lines; its APIv3 key must be this one",
                ),
            }
        })
        .collect()
}

/// A passive declare on a channel of its own: a missing queue closes the channel.
async fn passive_queue(connection: &Connection, queue: &str) -> Result<(), BrokerError> {
    let channel = broker::bounded(connection.create_channel()).await?;
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared =
        broker::bounded(channel.queue_declare(queue.into(), options, FieldTable::default())).await;
    if channel.status().connected() {
        let _ = broker::bounded(channel.close(200, "doctor".into())).await;
    }
    declared.map(|_| ())
}

async fn passive_exchange(connection: &Connection, exchange: &str) -> Result<(), BrokerError> {
    let channel = broker::bounded(connection.create_channel()).await?;
    let options = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    let declared = broker::bounded(channel.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        options,
        FieldTable::default(),
    ))
    .await;
    if channel.status().connected() {
        let _ = broker::bounded(channel.close(200, "doctor".into())).await;
    }
    declared
}

/// Compares the migrations applied in the database with those embedded in this binary.
pub fn schema_check(known: &BTreeSet<String>, applied: &BTreeSet<String>) -> Check {
    let pending: Vec<&str> = known.difference(applied).map(String::as_str).collect();
    let unknown: Vec<&str> = applied.difference(known).map(String::as_str).collect();
    if !unknown.is_empty() {
        Check::fail(
            format!(
                "PostgreSQL schema is newer than this binary (unknown migrations {})",
                unknown.join(", ")
            ),
            "run the wxpay-worker version that migrated it, or a newer one",
        )
    } else if !pending.is_empty() {
        Check::fail(
            format!(
                "PostgreSQL schema is not current ({} migration(s) pending: {})",
                pending.len(),
                pending.join(", ")
            ),
            "run `wxpay-worker migrate`",
        )
    } else {
        let version = known
            .iter()
            .next_back()
            .map(String::as_str)
            .unwrap_or("none");
        Check::ok(format!("PostgreSQL schema is current (version {version})"))
    }
}

fn known_migrations() -> Result<BTreeSet<String>, String> {
    use diesel::migration::MigrationSource;
    let migrations = MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map_err(|error| error.to_string())?;
    Ok(migrations
        .iter()
        .map(|migration| migration.name().version().to_string())
        .collect())
}

async fn postgres_checks(database: &DatabaseSettings) -> Vec<Check> {
    let timeout = Duration::from_millis(database.connect_timeout_ms.max(1_000));
    let url = with_connect_timeout(database.url.expose_secret(), timeout);
    let connected = tokio::time::timeout(timeout * 2, AsyncPgConnection::establish(&url)).await;
    let mut conn = match connected {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => {
            return vec![Check::fail(
                "PostgreSQL reachable",
                format!("cannot connect ({error}): check database.url; `wxpay-worker migrate` creates the database"),
            )]
        }
        Err(_) => {
            return vec![Check::fail(
                "PostgreSQL reachable",
                "connection timed out: check database.url and the network path (a firewall?)",
            )]
        }
    };
    let schema = tokio::time::timeout(timeout * 2, applied_migrations(&mut conn)).await;
    let schema = match (schema, known_migrations()) {
        (Ok(Ok(Some(applied))), Ok(known)) => schema_check(&known, &applied),
        (Ok(Ok(None)), _) => Check::fail(
            "PostgreSQL schema is not migrated",
            "run `wxpay-worker migrate`",
        ),
        (Ok(Err(error)), _) => Check::fail(
            "PostgreSQL schema cannot be read",
            format!("{error}: check the role's rights on __diesel_schema_migrations"),
        ),
        (Err(_), _) => Check::fail("PostgreSQL schema cannot be read", "the query timed out"),
        (_, Err(error)) => Check::fail(
            "PostgreSQL schema",
            format!("embedded migrations unreadable: {error}"),
        ),
    };
    vec![Check::ok("PostgreSQL reachable"), schema]
}

/// The applied migration versions; `None` when the database was never migrated. Read-only:
/// diesel's own harness would create its table.
async fn applied_migrations(
    conn: &mut AsyncPgConnection,
) -> Result<Option<BTreeSet<String>>, diesel::result::Error> {
    #[derive(QueryableByName)]
    struct Present {
        #[diesel(sql_type = Bool)]
        present: bool,
    }
    #[derive(QueryableByName)]
    struct Version {
        #[diesel(sql_type = Text)]
        version: String,
    }
    let table: Present = diesel::sql_query(
        "SELECT to_regclass('__diesel_schema_migrations') IS NOT NULL AS present",
    )
    .get_result(conn)
    .await?;
    if !table.present {
        return Ok(None);
    }
    let versions: Vec<Version> =
        diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
            .load(conn)
            .await?;
    Ok(Some(versions.into_iter().map(|row| row.version).collect()))
}

async fn redis_check(redis: &RedisSettings) -> Check {
    const WHAT: &str = "Redis reachable";
    const WHY: &str = "the worker still works without Redis, but every duplicate then costs a \
                       PostgreSQL transaction";
    let client = match redis::Client::open(redis.url.expose_secret()) {
        Ok(client) => client,
        Err(error) => return Check::fail(WHAT, format!("invalid redis.url ({error}); {WHY}")),
    };
    let timeout = Duration::from_millis(
        redis.connect_timeout_ms.max(1_000) + redis.response_timeout_ms.max(1_000),
    );
    let ping = tokio::time::timeout(timeout, async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    })
    .await;
    match ping {
        Ok(Ok(pong)) if pong == "PONG" => Check::ok(format!("{WHAT} (PING answered PONG)")),
        Ok(Ok(other)) => Check::fail(WHAT, format!("PING answered {other:?}; {WHY}")),
        Ok(Err(error)) => Check::fail(WHAT, format!("no PONG ({error}): check redis.url; {WHY}")),
        Err(_) => Check::fail(
            WHAT,
            format!("PING timed out: check redis.url and the network path; {WHY}"),
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Redaction

/// Replaces every configured secret (service URLs and their passwords, merchant keys) by
/// `***` in a line: error texts of libraries are not trusted to leave them out.
#[derive(Debug, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Shorter secrets would blank out ordinary words.
    const MIN_LEN: usize = 4;

    pub fn new(secrets: impl IntoIterator<Item = String>) -> Redactor {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .filter(|secret| secret.len() >= Self::MIN_LEN)
            .collect();
        // Longest first: a whole URL goes before the password inside it.
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    pub fn from_settings(settings: &Settings) -> Redactor {
        let mut secrets = Vec::new();
        for url in [
            &settings.rabbitmq.url,
            &settings.redis.url,
            &settings.database.url,
        ] {
            let url = url.expose_secret();
            if let Some(password) = Url::parse(url)
                .ok()
                .and_then(|u| u.password().map(str::to_owned))
            {
                secrets.push(password);
            }
            secrets.push(url.to_owned());
        }
        for merchant in &settings.merchants {
            secrets.push(merchant.api_v2_key.expose_secret().to_owned());
            if let Some(key) = &merchant.api_v3_key {
                secrets.push(key.expose_secret().to_owned());
            }
            if let Some(pem) = &merchant.merchant_private_key_pem {
                secrets.push(pem.expose_secret().to_owned());
            }
        }
        Redactor::new(secrets)
    }

    pub fn apply(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_owned(), |text, secret| {
            text.replace(secret.as_str(), "***")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fails(checks: &[Check]) -> Vec<String> {
        checks
            .iter()
            .filter(|c| c.is_fail())
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_good_public_url_passes_every_rule() {
        let checks = public_url_checks(Some("https://pay.example.com/wx"), Options::default());
        assert_eq!(checks.len(), 5);
        assert!(fails(&checks).is_empty(), "{checks:?}");
        // An explicit default port is the default port.
        let checks = public_url_checks(Some("https://pay.example.com:443"), Options::default());
        assert!(fails(&checks).is_empty(), "{checks:?}");
    }

    #[test]
    fn each_problem_of_the_public_url_is_its_own_line() {
        let checks = public_url_checks(
            Some("http://203.0.113.7:8080/notify?x=1"),
            Options::default(),
        );
        let failed = fails(&checks);
        assert_eq!(failed.len(), 4, "{failed:#?}");
        assert!(failed[0].starts_with("FAIL gateway.public_url scheme is http"));
        assert!(failed[1].contains("explicit port 8080"));
        assert!(failed[2].contains("query string"));
        assert!(failed[3].contains("203.0.113.7 is an IP address"));
        let fragment = public_url_checks(Some("https://pay.example.com/#x"), Options::default());
        assert_eq!(fails(&fragment).len(), 1);
        assert!(fails(&fragment)[0].contains("fragment"));
        let v6 = public_url_checks(Some("https://[2001:db8::1]/"), Options::default());
        assert!(fails(&v6)[0].contains("IP address"));
    }

    #[test]
    fn a_missing_or_unparseable_public_url_is_one_fail() {
        let missing = public_url_checks(None, Options::default());
        assert_eq!(missing.len(), 1);
        assert!(missing[0].to_string().contains("set it"));
        let garbage = public_url_checks(Some("pay.example.com"), Options::default());
        assert_eq!(fails(&garbage).len(), 1);
    }

    #[test]
    fn the_insecure_flag_allows_http_ip_and_port_but_not_a_query() {
        let options = Options {
            allow_insecure_public_url: true,
        };
        let local = public_url_checks(Some("http://127.0.0.1:8080"), options);
        assert!(fails(&local).is_empty(), "{local:?}");
        let query = public_url_checks(Some("http://127.0.0.1:8080/?x=1"), options);
        assert_eq!(fails(&query).len(), 1);
    }

    fn merchant(v3_key: Option<&str>) -> MerchantSettings {
        MerchantSettings {
            sub_mch_ids: Vec::new(),
            mch_id: "1900000109".into(),
            appids: vec!["wx1".into()],
            api_v2_key: "192006250b4c09247ec02edce69f6a2d".to_owned().into(),
            api_v3_key: v3_key.map(|key| key.to_owned().into()),
            platform_public_keys: Default::default(),
            merchant_private_key_pem: None,
            merchant_serial: None,
            confirm_by_query_min_fen: None,
            download_platform_certificates: false,
        }
    }

    #[test]
    fn key_lengths_are_checked_without_showing_the_keys() {
        let mut short = merchant(Some("0123456789abcdef0123456789ABCDE"));
        short.api_v2_key = "tooshortv2key".to_owned().into();
        let failed = fails(&merchant_checks(&short, SystemTime::now()));
        assert!(
            failed
                .iter()
                .any(|l| l.contains("api_v3_key has 31 bytes, not 32")),
            "{failed:#?}"
        );
        assert!(failed
            .iter()
            .any(|l| l.contains("api_v2_key has 13 characters")));
        assert!(!failed
            .iter()
            .any(|l| l.contains("0123456789abcdef") || l.contains("tooshort")));
        // A v3 merchant without platform key or reconciler key fails both.
        assert!(failed.iter().any(|l| l.contains("has no platform key")));
        assert!(failed
            .iter()
            .any(|l| l.contains("private key and serial are not set")));
    }

    #[test]
    fn a_v2_merchant_needs_no_v3_pieces() {
        let checks = merchant_checks(&merchant(None), SystemTime::now());
        assert!(fails(&checks).is_empty(), "{checks:?}");
    }

    #[test]
    fn a_merchant_that_downloads_its_certificates_needs_no_file_key() {
        let mut downloading = merchant(Some("0123456789abcdef0123456789ABCDEF"));
        let checks = merchant_checks(&downloading, SystemTime::now());
        assert!(
            fails(&checks)
                .iter()
                .any(|l| l.contains("has no platform key")),
            "{checks:?}"
        );
        downloading.download_platform_certificates = true;
        let checks = merchant_checks(&downloading, SystemTime::now());
        assert!(
            !fails(&checks).iter().any(|l| l.contains("platform key")),
            "{checks:?}"
        );
        assert!(checks
            .iter()
            .any(|c| c.to_string().contains("the reconciler downloads")));
    }

    #[test]
    fn unloadable_platform_key_and_half_signer_fail() {
        let mut bad = merchant(Some("0123456789abcdef0123456789ABCDEF"));
        bad.platform_public_keys
            .insert("PUB_KEY_ID_X".into(), "not a pem".into());
        bad.merchant_serial = Some("ABC".into());
        let failed = fails(&merchant_checks(&bad, SystemTime::now()));
        assert!(failed
            .iter()
            .any(|l| l.contains("platform key PUB_KEY_ID_X does not load")));
        assert!(failed
            .iter()
            .any(|l| l.contains("merchant_private_key_pem is not set")));
    }

    #[test]
    fn route_answer_must_be_the_gateways_malformed_fail() {
        assert_eq!(
            judge_route_answer(200, expected_route_answer().as_bytes()),
            Ok(())
        );
        assert!(judge_route_answer(200, answer::V2_SUCCESS.as_bytes()).is_err());
        assert!(judge_route_answer(200, answer::v2_fail("other").as_bytes()).is_err());
        assert!(judge_route_answer(404, b"")
            .unwrap_err()
            .contains("ingress"));
        assert!(judge_route_answer(301, b"")
            .unwrap_err()
            .contains("redirect"));
        assert!(judge_route_answer(502, b"")
            .unwrap_err()
            .contains("cannot reach the gateway"));
    }

    #[test]
    fn transport_causes_are_read_from_the_error_chain() {
        let dns = "error sending request: client error (Connect): dns error: failed to lookup address information: Name or service not known";
        assert_eq!(Cause::classify(dns, false), Cause::Dns);
        assert_eq!(
            Cause::classify("invalid peer certificate: UnknownIssuer", false),
            Cause::Tls
        );
        assert_eq!(
            Cause::classify(
                "tcp connect error: Connection refused (os error 111)",
                false
            ),
            Cause::Refused
        );
        assert_eq!(
            Cause::classify("operation timed out", false),
            Cause::Timeout
        );
        assert_eq!(Cause::classify("anything", true), Cause::Timeout);
        assert_eq!(Cause::classify("connection reset", false), Cause::Other);
        assert!(route_failure(Cause::Timeout, "pay.example.com").contains("firewall"));
    }

    #[test]
    fn clock_skew_beyond_five_minutes_fails() {
        assert!(!skew_check("clock", 300).is_fail());
        assert!(!skew_check("clock", -2).is_fail());
        let ahead = skew_check("clock", 301);
        assert!(ahead.to_string().contains("301 s ahead of"));
        assert!(skew_check("clock", -400)
            .to_string()
            .contains("400 s behind"));
    }

    #[test]
    fn schema_is_current_pending_or_newer() {
        let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert!(!schema_check(&set(&["1", "2"]), &set(&["1", "2"])).is_fail());
        assert!(schema_check(&set(&["1", "2"]), &set(&["1"]))
            .to_string()
            .contains("migrate"));
        assert!(schema_check(&set(&["1"]), &set(&["1", "3"]))
            .to_string()
            .contains("newer"));
    }

    #[test]
    fn redactor_hides_urls_passwords_and_keys() {
        let redactor = Redactor::new(vec![
            "amqp://user:s3cret@host/%2f".to_owned(),
            "s3cret".to_owned(),
            "ab".to_owned(),
        ]);
        assert_eq!(
            redactor.apply("connect amqp://user:s3cret@host/%2f failed, s3cret; ab"),
            "connect *** failed, ***; ab"
        );
    }
}
