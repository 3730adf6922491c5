//! A [`Settings`] written as the configuration file the binaries read (README,
//! Configuration): every key of every section, so that the file means exactly the settings.

use std::io::Write;

use secrecy::ExposeSecret;
use toml::{Table, Value};
use wxpay_runtime::config::{MerchantSettings, Settings};

/// The TOML of `settings`.
pub fn config_toml(settings: &Settings) -> String {
    let mut file = Table::new();
    let g = &settings.gateway;
    let mut gateway = section([
        ("listen", text(&g.listen)),
        ("body_limit_bytes", int(g.body_limit_bytes)),
        ("publish_timeout_ms", int(g.publish_timeout_ms)),
        ("publish_channels", int(g.publish_channels)),
        ("shutdown_timeout_ms", int(g.shutdown_timeout_ms)),
        ("http_workers", int(g.http_workers)),
        ("answer_deadline_ms", int(g.answer_deadline_ms)),
        ("body_read_timeout_ms", int(g.body_read_timeout_ms)),
        ("header_read_timeout_ms", int(g.header_read_timeout_ms)),
        ("max_in_flight", int(g.max_in_flight)),
        ("rate_limit_per_second", int(g.rate_limit_per_second)),
        ("rate_limit_burst", int(g.rate_limit_burst)),
        ("allow_sources", texts(&g.allow_sources)),
        ("trusted_proxies", texts(&g.trusted_proxies)),
    ]);
    optional(&mut gateway, "public_url", g.public_url.as_deref());
    file.insert("gateway".into(), Value::Table(gateway));
    let w = &settings.worker;
    file.insert(
        "worker".into(),
        Value::Table(section([
            ("metrics_listen", text(&w.metrics_listen)),
            ("prefetch", int(w.prefetch)),
            (
                "retry_delays_ms",
                Value::Array(w.retry_delays_ms.iter().map(|d| int(*d)).collect()),
            ),
            ("claim_ttl_ms", int(w.claim_ttl_ms)),
            ("done_ttl_secs", int(w.done_ttl_secs)),
            ("db_pool_size", int(w.db_pool_size)),
            ("outbox_poll_ms", int(w.outbox_poll_ms)),
            ("shutdown_timeout_ms", int(w.shutdown_timeout_ms)),
            ("unknown_order_grace_secs", int(w.unknown_order_grace_secs)),
        ])),
    );
    let r = &settings.rabbitmq;
    file.insert(
        "rabbitmq".into(),
        Value::Table(section([
            ("url", text(r.url.expose_secret())),
            ("queue", text(&r.queue)),
            ("events_exchange", text(&r.events_exchange)),
            ("connect_timeout_ms", int(r.connect_timeout_ms)),
        ])),
    );
    let redis = &settings.redis;
    file.insert(
        "redis".into(),
        Value::Table(section([
            ("url", text(redis.url.expose_secret())),
            ("key_prefix", text(&redis.key_prefix)),
            ("response_timeout_ms", int(redis.response_timeout_ms)),
            ("connect_timeout_ms", int(redis.connect_timeout_ms)),
        ])),
    );
    let d = &settings.database;
    file.insert(
        "database".into(),
        Value::Table(section([
            ("url", text(d.url.expose_secret())),
            ("connect_timeout_ms", int(d.connect_timeout_ms)),
            ("pool_wait_timeout_ms", int(d.pool_wait_timeout_ms)),
        ])),
    );
    let api = &settings.wechatpay;
    file.insert(
        "wechatpay".into(),
        Value::Table(section([
            ("api_base", text(&api.api_base)),
            ("request_timeout_ms", int(api.request_timeout_ms)),
        ])),
    );
    let rc = &settings.reconciler;
    file.insert(
        "reconciler".into(),
        Value::Table(section([
            ("interval_secs", int(rc.interval_secs)),
            ("min_age_secs", int(rc.min_age_secs)),
            ("horizon_secs", int(rc.horizon_secs)),
            ("batch_size", Value::Integer(rc.batch_size)),
            ("rate_per_merchant", int(rc.rate_per_merchant)),
            ("close_unpaid", Value::Boolean(rc.close_unpaid)),
            ("metrics_listen", text(&rc.metrics_listen)),
        ])),
    );
    let c = &settings.console;
    let mut console = section([
        ("listen", text(&c.listen)),
        ("db_pool_size", int(c.db_pool_size)),
        ("session_ttl_secs", int(c.session_ttl_secs)),
        ("login_max_failures", int(c.login_max_failures)),
        ("login_window_secs", int(c.login_window_secs)),
        ("secure_cookies", Value::Boolean(c.secure_cookies)),
        ("trusted_proxies", texts(&c.trusted_proxies)),
    ]);
    optional(&mut console, "auth_header", c.auth_header.as_deref());
    let users = c.users.iter().map(|user| {
        let mut entry = section([
            ("name", text(&user.name)),
            ("role", text(user.role.as_str())),
        ]);
        let hash = user.password_hash.as_ref().map(|h| h.expose_secret());
        optional(&mut entry, "password_hash", hash);
        Value::Table(entry)
    });
    console.insert("users".into(), Value::Array(users.collect()));
    file.insert("console".into(), Value::Table(console));
    let merchants = settings.merchants.iter().map(merchant).map(Value::Table);
    file.insert("merchants".into(), Value::Array(merchants.collect()));
    toml::to_string(&file).expect("settings serialise")
}

/// [`config_toml`] of `settings` in a temporary file (removed when dropped), for a
/// binary's `--config`.
pub fn config_file(settings: &Settings) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temporary file");
    file.write_all(config_toml(settings).as_bytes())
        .expect("configuration written");
    file
}

fn merchant(m: &MerchantSettings) -> Table {
    let mut entry = section([
        ("mch_id", text(&m.mch_id)),
        ("appids", texts(&m.appids)),
        ("api_v2_key", text(m.api_v2_key.expose_secret())),
    ]);
    let v3_key = m.api_v3_key.as_ref().map(|k| k.expose_secret());
    optional(&mut entry, "api_v3_key", v3_key);
    let private_key = m
        .merchant_private_key_pem
        .as_ref()
        .map(|k| k.expose_secret());
    optional(&mut entry, "merchant_private_key_pem", private_key);
    optional(&mut entry, "merchant_serial", m.merchant_serial.as_deref());
    let keys = m
        .platform_public_keys
        .iter()
        .map(|(serial, pem)| (serial.clone(), text(pem)));
    entry.insert("platform_public_keys".into(), Value::Table(keys.collect()));
    entry
}

fn section<const N: usize>(pairs: [(&str, Value); N]) -> Table {
    pairs
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
}

fn optional(table: &mut Table, key: &str, value: Option<&str>) {
    if let Some(value) = value {
        table.insert(key.to_owned(), text(value));
    }
}

fn text(value: &str) -> Value {
    Value::String(value.to_owned())
}

fn texts(values: &[String]) -> Value {
    Value::Array(values.iter().map(|v| text(v)).collect())
}

fn int(value: impl TryInto<i64>) -> Value {
    Value::Integer(value.try_into().ok().expect("fits a TOML integer"))
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
