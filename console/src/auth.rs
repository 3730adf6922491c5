//! Who may do what: users from `[[console.users]]` (argon2id), server-side sessions with a
//! CSRF token each, the login rate limit, and the proxies whose headers are believed.
//!
//! Sessions live in memory, keyed by a random token: they end when the process restarts
//! (users log in again), and a console runs as one replica.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2};
use rand::RngCore;
use secrecy::ExposeSecret;
use wxpay_runtime::config::{Cidr, ConsoleRole, ConsoleSettings};

/// Why the `[console]` section cannot be used. Names the user or the entry, never a hash.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("console user {user}: password_hash is not an argon2id PHC string ($argon2id$v=19$m=…,t=…,p=…$salt$hash)")]
    BadHash { user: String },
    #[error("cannot hash a password: {0}")]
    Hash(String),
    #[error("console.trusted_proxies: {entry} is not a CIDR (e.g. 10.0.0.0/8) or an address")]
    BadProxy { entry: String },
}

/// A random 256-bit token, hex: session ids and CSRF tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Compares tokens without an early exit on the first differing byte.
pub fn tokens_match(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

struct User {
    role: ConsoleRole,
    /// The PHC string, checked to parse at start-up.
    hash: Option<String>,
}

/// The configured users.
pub struct Users {
    users: HashMap<String, User>,
    /// Verified against when the name is unknown, so that an unknown user costs as much
    /// time as a wrong password (no user enumeration by timing).
    decoy: String,
}

impl Users {
    pub fn from_settings(settings: &ConsoleSettings) -> Result<Users, AuthConfigError> {
        let mut users = HashMap::new();
        for user in &settings.users {
            let hash = match &user.password_hash {
                Some(secret) => {
                    let phc = secret.expose_secret();
                    let parsed = PasswordHash::new(phc).map_err(|_| AuthConfigError::BadHash {
                        user: user.name.clone(),
                    })?;
                    if parsed.algorithm != Algorithm::Argon2id.ident() {
                        return Err(AuthConfigError::BadHash {
                            user: user.name.clone(),
                        });
                    }
                    Some(phc.to_owned())
                }
                None => None,
            };
            users.insert(
                user.name.clone(),
                User {
                    role: user.role,
                    hash,
                },
            );
        }
        Ok(Users {
            users,
            decoy: hash_password(&random_token())?,
        })
    }

    /// The role of a configured user (the trusted proxy's header names one).
    pub fn role(&self, name: &str) -> Option<ConsoleRole> {
        self.users.get(name).map(|user| user.role)
    }

    /// The user's role when the password matches. Slow on purpose (argon2id): call it off
    /// the async threads.
    pub fn verify(&self, name: &str, password: &str) -> Option<ConsoleRole> {
        let user = self.users.get(name);
        let phc = user
            .and_then(|user| user.hash.as_deref())
            .unwrap_or(&self.decoy);
        let parsed = PasswordHash::new(phc).ok()?;
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        match user {
            Some(user) if matches && user.hash.is_some() => Some(user.role),
            _ => None,
        }
    }
}

/// An argon2id PHC string of `password` with the crate's default cost (what
/// `wxpay-console hash-password` prints).
pub fn hash_password(password: &str) -> Result<String, AuthConfigError> {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    let hash_error = |error: argon2::password_hash::Error| AuthConfigError::Hash(error.to_string());
    let salt = SaltString::encode_b64(&salt).map_err(hash_error)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(hash_error)
}

/// One logged-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: ConsoleRole,
    /// Every state-changing form carries it; compared with [`tokens_match`].
    pub csrf: String,
    /// Logged in through the trusted proxy's header rather than the form.
    pub via_proxy: bool,
    expires: Instant,
}

/// The sessions, in memory.
pub struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
    ttl: Duration,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            sessions: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// A new session: its token (the cookie's value) and the session.
    pub fn create(&self, user: &str, role: ConsoleRole, via_proxy: bool) -> (String, Session) {
        let token = random_token();
        let session = Session {
            user: user.to_owned(),
            role,
            csrf: random_token(),
            via_proxy,
            expires: Instant::now() + self.ttl,
        };
        if let Ok(mut sessions) = self.sessions.lock() {
            let now = Instant::now();
            sessions.retain(|_, s| s.expires > now);
            sessions.insert(token.clone(), session.clone());
        }
        (token, session)
    }

    /// The live session of `token`, its idle timeout restarted.
    pub fn get(&self, token: &str) -> Option<Session> {
        let mut sessions = self.sessions.lock().ok()?;
        let now = Instant::now();
        match sessions.get_mut(token) {
            Some(session) if session.expires > now => {
                session.expires = now + self.ttl;
                Some(session.clone())
            }
            Some(_) => {
                sessions.remove(token);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, token: &str) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove(token);
        }
    }
}

/// Failed logins per (user name, client address) in a sliding window.
pub struct LoginLimiter {
    failures: Mutex<HashMap<(String, IpAddr), (u32, Instant)>>,
    max: u32,
    window: Duration,
}

impl LoginLimiter {
    pub fn new(max: u32, window: Duration) -> LoginLimiter {
        LoginLimiter {
            failures: Mutex::new(HashMap::new()),
            max,
            window,
        }
    }

    /// Whether this pair has used up its attempts (checked before any password work).
    pub fn blocked(&self, user: &str, client: IpAddr) -> bool {
        let Ok(failures) = self.failures.lock() else {
            return true;
        };
        failures
            .get(&(user.to_owned(), client))
            .is_some_and(|(count, since)| *count >= self.max && since.elapsed() < self.window)
    }

    pub fn failed(&self, user: &str, client: IpAddr) {
        if let Ok(mut failures) = self.failures.lock() {
            let window = self.window;
            failures.retain(|_, (_, since)| since.elapsed() < window);
            let entry = failures
                .entry((user.to_owned(), client))
                .or_insert((0, Instant::now()));
            entry.0 += 1;
        }
    }

    pub fn succeeded(&self, user: &str, client: IpAddr) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(&(user.to_owned(), client));
        }
    }
}

/// The proxies whose `auth_header`, `X-Forwarded-Proto` and `X-Forwarded-For` count.
pub struct Proxies {
    nets: Vec<Cidr>,
    pub auth_header: Option<String>,
}

impl Proxies {
    pub fn from_settings(settings: &ConsoleSettings) -> Result<Proxies, AuthConfigError> {
        let nets = settings
            .trusted_proxies
            .iter()
            .map(|entry| {
                Cidr::parse(entry).ok_or_else(|| AuthConfigError::BadProxy {
                    entry: entry.clone(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Proxies {
            nets,
            auth_header: settings.auth_header.clone(),
        })
    }

    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(peer))
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;
    use wxpay_runtime::config::ConsoleUser;

    use super::*;

    fn settings(hash: &str) -> ConsoleSettings {
        ConsoleSettings {
            users: vec![ConsoleUser {
                name: "alice".into(),
                password_hash: Some(SecretString::from(hash)),
                role: ConsoleRole::Operator,
            }],
            ..ConsoleSettings::default()
        }
    }

    #[test]
    fn a_hashed_password_verifies_and_a_wrong_one_does_not() {
        let users = Users::from_settings(&settings(&hash_password("correct horse").expect("hash")))
            .expect("valid");
        assert_eq!(
            users.verify("alice", "correct horse"),
            Some(ConsoleRole::Operator)
        );
        assert_eq!(users.verify("alice", "wrong"), None);
        assert_eq!(users.verify("mallory", "correct horse"), None);
    }

    #[test]
    fn a_bad_hash_names_the_user_but_never_the_hash() {
        for bad in [
            "plaintext-password",
            "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
        ] {
            let error = Users::from_settings(&settings(bad))
                .err()
                .expect("refused")
                .to_string();
            assert!(error.contains("alice"), "{error}");
            assert!(!error.contains(bad), "{error}");
        }
    }

    #[test]
    fn the_limiter_blocks_after_max_failures_and_a_success_resets() {
        let limiter = LoginLimiter::new(2, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        limiter.failed("alice", ip);
        assert!(!limiter.blocked("alice", ip));
        limiter.failed("alice", ip);
        assert!(limiter.blocked("alice", ip));
        assert!(!limiter.blocked("alice", other));
        assert!(!limiter.blocked("bob", ip));
        limiter.succeeded("alice", ip);
        assert!(!limiter.blocked("alice", ip));
    }

    #[test]
    fn proxies_are_cidrs_or_addresses() {
        let mut s = ConsoleSettings {
            trusted_proxies: vec!["10.0.0.0/8".into(), "127.0.0.1".into()],
            ..ConsoleSettings::default()
        };
        let proxies = Proxies::from_settings(&s).expect("valid");
        assert!(proxies.trusts("10.1.2.3".parse().expect("ip")));
        assert!(proxies.trusts("127.0.0.1".parse().expect("ip")));
        assert!(!proxies.trusts("192.0.2.1".parse().expect("ip")));
        s.trusted_proxies = vec!["not-a-net".into()];
        assert!(Proxies::from_settings(&s).is_err());
    }
}
