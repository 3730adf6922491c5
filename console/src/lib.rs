//! # wxpay-console — the operations console
//!
//! Server-rendered pages over what the worker stores and parks: [`pages`] (overview,
//! search with each order's story, anomalies, parked messages with replay), behind [`auth`]
//! (argon2id users, server-side sessions, CSRF, login rate limit, trusted proxy), reading
//! through [`data`] (the worker's schema, models and pool; queue depths) and writing every
//! action to the `console_audit` table. `/healthz`, `/readyz` and `/metrics` are the
//! worker's probes, mounted on the same port.

pub mod auth;
pub mod data;
pub mod html;
pub mod pages;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use secrecy::ExposeSecret;
use wxpay_runtime::config::{ConfigError, Settings};
use wxpay_worker::db::{self, DbPool, PoolBuildError};
use wxpay_worker::http::{Probes, Readiness};

use crate::auth::{AuthConfigError, LoginLimiter, Proxies, Sessions, Users};

/// Why the console cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    #[error(transparent)]
    Pool(#[from] PoolBuildError),
}

pub(crate) struct State {
    pub settings: Settings,
    pub pool: DbPool,
    pub users: Users,
    pub sessions: Sessions,
    pub limiter: LoginLimiter,
    pub proxies: Proxies,
}

/// The console: cheap to clone.
#[derive(Clone)]
pub struct Console {
    state: Arc<State>,
}

/// Ready when PostgreSQL answers: RabbitMQ is reached per page (queue depths, parked
/// messages), and a broker outage shows on those pages rather than taking every page away.
impl Readiness for Console {
    fn broker(&self) -> bool {
        true
    }

    fn database(&self) -> &DbPool {
        &self.state.pool
    }
}

impl Console {
    /// Validates the `[console]` section (PHC strings, proxy CIDRs) and builds the pool
    /// (lazily connecting). Must be called within a Tokio runtime.
    pub fn new(settings: Settings) -> Result<Console, StartError> {
        settings.validate()?;
        let console = &settings.console;
        let users = Users::from_settings(console)?;
        let proxies = Proxies::from_settings(console)?;
        let pool = db::build_pool(
            settings.database.url.expose_secret(),
            console.db_pool_size,
            Duration::from_millis(settings.database.connect_timeout_ms),
            Duration::from_millis(settings.database.pool_wait_timeout_ms),
        )?;
        let sessions = Sessions::new(Duration::from_secs(console.session_ttl_secs));
        let limiter = LoginLimiter::new(
            console.login_max_failures,
            Duration::from_secs(console.login_window_secs),
        );
        Ok(Console {
            state: Arc::new(State {
                settings,
                pool,
                users,
                sessions,
                limiter,
                proxies,
            }),
        })
    }

    /// Binds `listen` (e.g. `[console] listen`) and returns the server and its address.
    pub fn serve(&self, listen: &str) -> std::io::Result<(Server, SocketAddr)> {
        let probes = Probes::new(self.clone(), wxpay_runtime::telemetry::metrics_handle());
        let state = web::Data::from(self.state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::FormConfig::default().limit(16 * 1024))
                .configure(|config| probes.configure(config))
                .configure(pages::routes)
        })
        .workers(2)
        .disable_signals()
        .shutdown_timeout(5)
        .bind(listen)?;
        let address = wxpay_worker::http::bound_address(server.addrs())?;
        Ok((server.run(), address))
    }
}
