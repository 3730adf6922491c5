//! `/healthz` (alive), `/readyz` (broker connected and PostgreSQL answering) and
//! `/metrics` (Prometheus) on `worker.metrics_listen`.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};
use diesel_async::RunQueryDsl;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::Worker;

struct State {
    worker: Worker,
    prometheus: PrometheusHandle,
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

async fn readyz(state: web::Data<State>) -> HttpResponse {
    let broker = state.worker.broker_connected();
    let database = database_ready(&state.worker).await;
    let body = serde_json::json!({ "broker": broker, "database": database }).to_string();
    if broker && database {
        HttpResponse::Ok()
            .content_type("application/json")
            .body(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("application/json")
            .body(body)
    }
}

/// `SELECT 1` on a pooled connection, bounded (a read, not a transaction: safe to cancel).
async fn database_ready(worker: &Worker) -> bool {
    let check = async {
        let mut conn = worker.pool().get().await.ok()?;
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

/// Binds `listen` and returns the server (to spawn and later stop) and the bound address.
pub fn serve(
    listen: &str,
    worker: Worker,
    prometheus: PrometheusHandle,
) -> std::io::Result<(Server, SocketAddr)> {
    let state = web::Data::new(State { worker, prometheus });
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
