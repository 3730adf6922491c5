//! A [`Settings`] written as the configuration file the binaries read (README,
//! Configuration): every key of every section, so that the file means exactly the settings.

use std::io::Write;

use secrecy::{ExposeSecret, SecretString};
use toml::{Table, Value};
use wxpay_runtime::config::Settings;

/// `[section]` as a table: each `field` of `$section` converted by `$conv` (a function of
/// the field's reference to `Option<Value>`; `None` leaves the key out).
macro_rules! table {
    ($section:expr; $($field:ident: $conv:ident),+ $(,)?) => {{
        let section = &$section;
        let pairs = [$((stringify!($field), $conv(&section.$field))),+];
        pairs
            .into_iter()
            .filter_map(|(key, value)| Some((key.to_owned(), value?)))
            .collect::<Table>()
    }};
}

/// The TOML of `settings`.
pub fn config_toml(settings: &Settings) -> String {
    let mut console = table!(settings.console;
        listen: text, db_pool_size: int, session_ttl_secs: int, login_max_failures: int,
        login_window_secs: int, secure_cookies: flag, auth_header: maybe, trusted_proxies: texts);
    let users = settings.console.users.iter().map(|user| {
        let role = user.role.as_str();
        let mut entry = table!(user; name: text, password_hash: maybe_secret);
        entry.insert("role".into(), Value::String(role.to_owned()));
        Value::Table(entry)
    });
    console.insert("users".into(), Value::Array(users.collect()));
    let merchants = settings.merchants.iter().map(|merchant| {
        let mut entry = table!(merchant;
            mch_id: text, appids: texts, sub_mch_ids: texts, api_v2_key: secret, api_v3_key: maybe_secret,
            merchant_private_key_pem: maybe_secret, merchant_serial: maybe,
            confirm_by_query_min_fen: maybe_int, download_platform_certificates: flag);
        let keys = merchant.platform_public_keys.iter();
        let keys = keys.map(|(serial, pem)| (serial.clone(), Value::String(pem.clone())));
        entry.insert("platform_public_keys".into(), Value::Table(keys.collect()));
        Value::Table(entry)
    });
    let file: Table = [
        (
            "gateway",
            table!(settings.gateway;
                listen: text, body_limit_bytes: int, publish_timeout_ms: int,
                publish_channels: int, shutdown_timeout_ms: int, http_workers: int,
                public_url: maybe, answer_deadline_ms: int, body_read_timeout_ms: int,
                header_read_timeout_ms: int, max_in_flight: int, rate_limit_per_second: int,
                rate_limit_burst: int, allow_sources: texts, trusted_proxies: texts),
        ),
        (
            "worker",
            table!(settings.worker;
                metrics_listen: text, prefetch: int, retry_delays_ms: ints, claim_ttl_ms: int,
                done_ttl_secs: int, db_pool_size: int, outbox_poll_ms: int,
                shutdown_timeout_ms: int, unknown_order_grace_secs: int),
        ),
        (
            "rabbitmq",
            table!(settings.rabbitmq;
                url: secret, queue: text, events_exchange: text, connect_timeout_ms: int),
        ),
        (
            "redis",
            table!(settings.redis;
                url: secret, key_prefix: text, response_timeout_ms: int, connect_timeout_ms: int),
        ),
        (
            "database",
            table!(settings.database;
                url: secret, connect_timeout_ms: int, pool_wait_timeout_ms: int),
        ),
        (
            "wechatpay",
            table!(settings.wechatpay; api_base: text, request_timeout_ms: int),
        ),
        (
            "reconciler",
            table!(settings.reconciler;
                interval_secs: int, min_age_secs: int, horizon_secs: int, batch_size: int,
                rate_per_merchant: int, close_unpaid: flag, metrics_listen: text,
                platform_certificates_refresh_secs: int),
        ),
        ("console", console),
    ]
    .into_iter()
    .map(|(name, section)| (name.to_owned(), Value::Table(section)))
    .collect();
    // The merchants last, each with its platform keys last, so that a test may add a key to
    // the last merchant by appending a line (as an operator edits the file).
    let merchants: Table = [("merchants".to_owned(), Value::Array(merchants.collect()))]
        .into_iter()
        .collect();
    let sections = toml::to_string(&file).expect("settings serialise");
    let merchants = toml::to_string(&merchants).expect("merchants serialise");
    format!("{sections}\n{merchants}")
}

/// [`config_toml`] of `settings` in a temporary file (removed when dropped), for a
/// binary's `--config`.
pub fn config_file(settings: &Settings) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temporary file");
    file.write_all(config_toml(settings).as_bytes())
        .expect("configuration written");
    file
}

fn text(value: &str) -> Option<Value> {
    Some(Value::String(value.to_owned()))
}

fn maybe(value: &Option<String>) -> Option<Value> {
    value.as_deref().and_then(text)
}

fn secret(value: &SecretString) -> Option<Value> {
    Some(Value::String(value.expose_secret().to_owned()))
}

fn maybe_secret(value: &Option<SecretString>) -> Option<Value> {
    value.as_ref().and_then(secret)
}

fn texts(values: &[String]) -> Option<Value> {
    Some(Value::Array(
        values.iter().filter_map(|v| text(v)).collect(),
    ))
}

fn int<T: Copy + TryInto<i64>>(value: &T) -> Option<Value> {
    let value = (*value).try_into().ok().expect("fits a TOML integer");
    Some(Value::Integer(value))
}

fn maybe_int(value: &Option<i64>) -> Option<Value> {
    value.as_ref().and_then(int)
}

fn ints(values: &[u64]) -> Option<Value> {
    Some(Value::Array(values.iter().filter_map(int).collect()))
}

fn flag(value: &bool) -> Option<Value> {
    Some(Value::Boolean(*value))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use secrecy::SecretString;
    use wxpay_runtime::config::{ConsoleRole, ConsoleUser};

    use super::*;
    use crate::env::default_settings;
    use crate::merchants::V3_MERCHANT;

    #[test]
    fn the_file_reads_back_as_the_same_settings() {
        let mut settings = default_settings();
        settings.gateway.public_url = Some("https://pay.example.com".into());
        settings.gateway.trusted_proxies = vec!["10.0.0.0/8".into()];
        settings.worker.retry_delays_ms = vec![200, 400];
        settings.reconciler.close_unpaid = false;
        settings.console.users = vec![ConsoleUser {
            name: "olivia".into(),
            password_hash: None,
            role: ConsoleRole::Operator,
        }];
        let mut second = V3_MERCHANT.settings();
        second.merchant_serial = Some("5157F09EFDC096DE15EBE81A47057A7232F1B8E1".into());
        second.merchant_private_key_pem =
            Some(SecretString::from(crate::merchants::OTHER_PRIVATE_PEM));
        settings.merchants.push(second);

        let file = config_file(&settings);
        let read = Settings::load_with_env(file.path(), Vec::new()).expect("loads and validates");
        // Debug shows every field but the secrets; the secrets are compared one by one.
        assert_eq!(format!("{read:?}"), format!("{settings:?}"));
        let secrets = |s: &Settings| {
            let mut all = BTreeMap::new();
            all.insert("rabbitmq", s.rabbitmq.url.expose_secret().to_owned());
            all.insert("redis", s.redis.url.expose_secret().to_owned());
            all.insert("database", s.database.url.expose_secret().to_owned());
            for (n, m) in s.merchants.iter().enumerate() {
                let key =
                    |k: &Option<SecretString>| k.as_ref().map(|k| k.expose_secret().to_owned());
                all.insert(
                    ["m0", "m1"][n],
                    format!(
                        "{} {:?} {:?}",
                        m.api_v2_key.expose_secret(),
                        key(&m.api_v3_key),
                        key(&m.merchant_private_key_pem)
                    ),
                );
            }
            all
        };
        assert_eq!(secrets(&read), secrets(&settings));
    }
}
