//! The real services the tests talk to, on loopback (scripts/services starts them): never
//! mocked. Each test isolates itself by names ([`crate::env::TestEnv`]), not by servers.

use std::fmt::Display;

/// PostgreSQL's address (trust authentication, user `postgres`).
pub const POSTGRES: &str = "127.0.0.1:5432";
/// RabbitMQ's AMQP address (user `guest`).
pub const BROKER: &str = "127.0.0.1:5672";
/// Redis's address.
pub const REDIS: &str = "127.0.0.1:6379";

/// PostgreSQL's URL without a database: `{PG_BASE}/{database}`.
pub const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432";
/// RabbitMQ's URL (the default vhost).
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Redis's URL.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The URL of `database` on the PostgreSQL at `address` (a proxy's, or [`POSTGRES`]).
pub fn postgres_url(address: impl Display, database: &str) -> String {
    format!("postgres://postgres@{address}/{database}")
}

/// The AMQP URL of the broker at `address` (a proxy's, or [`BROKER`]).
pub fn amqp_url(address: impl Display) -> String {
    format!("amqp://guest:guest@{address}/%2f")
}

/// A port free at the time of the call (bound to port 0, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local address").port()
}

/// `scheme://127.0.0.1:<port>` of a port nothing listens on: a service that is down.
pub fn closed_port_url(scheme: &str) -> String {
    format!("{scheme}://127.0.0.1:{}", free_port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_urls_name_the_addresses() {
        assert_eq!(postgres_url(POSTGRES, "x"), format!("{PG_BASE}/x"));
        assert_eq!(amqp_url(BROKER), AMQP_URL);
        assert_eq!(format!("redis://{REDIS}"), REDIS_URL);
    }
}
