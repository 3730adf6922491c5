//! `/healthz`, `/readyz` and `/metrics` of `wxpay-worker reconcile` on
//! `reconciler.metrics_listen`.
//!
//! The worker's [`crate::http`] serves the same routes for a [`crate::Worker`] (its
//! readiness is the consumer's broker connection); the reconciler has no consumer, so its
//! readiness is its publisher's connection and PostgreSQL.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};
use diesel_async::RunQueryDsl;
use metrics_exporter_prometheus::PrometheusHandle;

use super::Reconciler;

struct State {
    reconciler: Reconciler,
    prometheus: PrometheusHandle,
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

async fn readyz(state: web::Data<State>) -> HttpResponse {
    let broker = state.reconciler.broker_connected();
    let database = database_ready(&state.reconciler).await;
    let body = serde_json::json!({ "broker": broker, "database": database }).to_string();
    let mut answer = if broker && database {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    answer.content_type("application/json").body(body)
}

/// `SELECT 1`, bounded (a read: safe to cancel).
async fn database_ready(reconciler: &Reconciler) -> bool {
    let check = async {
        let mut conn = reconciler.pool().get().await.ok()?;
        diesel::sql_query("SELECT 1").execute(&mut conn).await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Some(_))
    )
}

async fn metrics(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.prometheus.render())
}

/// Binds `listen`; returns the server (to spawn, then stop) and the bound address.
pub(super) fn serve(
    listen: &str,
    reconciler: Reconciler,
    prometheus: PrometheusHandle,
) -> std::io::Result<(Server, SocketAddr)> {
    let state = web::Data::new(State {
        reconciler,
        prometheus,
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .bind(listen)?;
    let address = server
        .addrs()
        .into_iter()
        .next()
        .ok_or_else(|| std::io::Error::other("no address bound"))?;
    Ok((server.run(), address))
}
