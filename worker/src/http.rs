//! `/healthz` (alive), `/readyz` (broker connected and PostgreSQL answering) and
//! `/metrics` (Prometheus): one server for both processes of this binary, `wxpay-worker run`
//! on `worker.metrics_listen` and `wxpay-worker reconcile` on `reconciler.metrics_listen`.
//!
//! They differ only in which broker connection readiness follows, so that is what a
//! [`Readiness`] says; the routes, the database probe and the answers are the same.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};
use diesel_async::RunQueryDsl;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::db::DbPool;

/// What `/readyz` checks: a process is ready when its broker connection is up and its
/// PostgreSQL answers. Each process implements it beside its own type (the worker in the crate
/// root, the reconciler in `reconcile`), so this module depends on neither.
pub trait Readiness: Send + Sync + 'static {
    /// Whether the connection this process needs to do its work is up.
    fn broker(&self) -> bool;
    /// The pool `/readyz` probes with `SELECT 1`.
    fn database(&self) -> &DbPool;
}

struct State<R> {
    readiness: R,
    prometheus: PrometheusHandle,
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

/// 200 when ready, else 503; the body names what is down, e.g.
/// `{"broker":false,"database":true}`.
async fn readyz<R: Readiness>(state: web::Data<State<R>>) -> HttpResponse {
    let broker = state.readiness.broker();
    let database = database_ready(state.readiness.database()).await;
    let body = serde_json::json!({ "broker": broker, "database": database }).to_string();
    let mut answer = if broker && database {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    answer.content_type("application/json").body(body)
}

/// `SELECT 1` on a pooled connection, bounded (a read, not a transaction: safe to cancel).
async fn database_ready(pool: &DbPool) -> bool {
    let check = async {
        let mut conn = pool.get().await.ok()?;
        diesel::sql_query("SELECT 1").execute(&mut conn).await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Some(_))
    )
}

async fn metrics<R: Readiness>(state: web::Data<State<R>>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.prometheus.render())
}

/// The three routes with their state, to mount beside a service's own routes (the
/// console serves them on its one port).
pub struct Probes<R> {
    state: web::Data<State<R>>,
}

impl<R> Clone for Probes<R> {
    fn clone(&self) -> Self {
        Probes {
            state: self.state.clone(),
        }
    }
}

impl<R: Readiness> Probes<R> {
    /// `prometheus` is [`wxpay_runtime::telemetry::metrics_handle`], taken before any
    /// metric is registered.
    pub fn new(readiness: R, prometheus: PrometheusHandle) -> Self {
        Probes {
            state: web::Data::new(State {
                readiness,
                prometheus,
            }),
        }
    }

    /// Adds `/healthz`, `/readyz` and `/metrics` to an app.
    pub fn configure(&self, config: &mut web::ServiceConfig) {
        config
            .app_data(self.state.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz::<R>))
            .route("/metrics", web::get().to(metrics::<R>));
    }
}

/// The address a server bound (`listen` with port 0 picks a free port; tests read it here).
pub fn bound_address(addrs: Vec<SocketAddr>) -> std::io::Result<SocketAddr> {
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| std::io::Error::other("no address bound"))
}

/// Binds `listen` and returns the server (to spawn and later stop) and the bound address.
/// `prometheus` is [`wxpay_runtime::telemetry::metrics_handle`], taken before any metric is
/// registered.
pub fn serve<R: Readiness>(
    listen: &str,
    readiness: R,
    prometheus: PrometheusHandle,
) -> std::io::Result<(Server, SocketAddr)> {
    let probes = Probes::new(readiness, prometheus);
    let server = HttpServer::new(move || App::new().configure(|config| probes.configure(config)))
        .workers(1)
        .disable_signals()
        .shutdown_timeout(2)
        .bind(listen)?;
    let address = bound_address(server.addrs())?;
    Ok((server.run(), address))
}
