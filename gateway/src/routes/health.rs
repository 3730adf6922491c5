//! `GET /healthz` (the process answers), `GET /readyz` (the broker link is up and not
//! blocked: otherwise every notification would be answered FAIL, so take the pod out of the
//! Service), and
//! `GET /metrics` (Prometheus text format).

use actix_web::{web, HttpResponse};
use wxpay_runtime::telemetry::metrics_handle;

use super::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("ok")
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.publisher.is_blocked() {
        // Every notification would be shed: let the load balancer try another pod.
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain; charset=utf-8")
            .body("broker blocked the connection")
    } else if state.publisher.is_connected() {
        HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body("ready")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain; charset=utf-8")
            .body("broker disconnected")
    }
}

pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics_handle().render())
}
