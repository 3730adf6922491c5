//! # wxpay-gateway — verify, publish with confirm, answer
//!
//! The front door (docs/ARCHITECTURE.md, "The data's path"): receives WeChat Pay notifications,
//! verifies them with `wxpay-shared`, publishes the raw body to a RabbitMQ quorum queue
//! with publisher confirms, and answers SUCCESS only after the broker's confirm. No
//! database and no Redis: it stays thin and scales on CPU alone.
//!
//! - [`routes`]: the HTTP routes (`/notify/v2/pay`, `/notify/v2/refund`,
//!   `/notify/v3/{mch_id}`, `/healthz`, `/readyz`, `/metrics`).
//! - [`verify`]: request → verified queue message, or a rejection with its reason.
//! - [`publish`]: confirm channels and supervision of the broker link.
//! - [`answer`]: the answers, in each route's format.
//! - [`admission`]: per-source limits (off by default) and load shedding.
//!
//! [`Application`] builds the whole service (zero-to-production style) so tests and
//! benches run it in-process on port 0.

pub mod admission;
pub mod answer;
pub mod publish;
pub mod routes;
pub mod verify;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wxpay_runtime::config::Settings;
use wxpay_runtime::reload::{self, MerchantsHandle};
use wxpay_runtime::telemetry::{metric, metrics_handle, step};

use admission::{Admission, Shed};
use publish::{PublishError, Publisher, PublisherConfig};
use routes::{outcome, AppState, Limits};
use verify::{verify_v2_pay, verify_v2_refund, RejectReason, Route};

/// Describes every gateway metric and touches each with a first label set, so `/metrics`
/// lists all of them before any traffic (dashboards and alert rules rely on the names).
pub fn register_metrics() {
    let _ = metrics_handle();
    metrics::describe_counter!(
        metric::GATEWAY_REQUESTS_TOTAL,
        "Notify requests by route and outcome (accepted | rejected | failed), with the reason"
    );
    metrics::describe_histogram!(
        metric::GATEWAY_REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time from request to answer, by route"
    );
    metrics::describe_histogram!(
        metric::GATEWAY_PUBLISH_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time from publish to the broker's confirm"
    );
    metrics::describe_gauge!(
        metric::GATEWAY_BROKER_CONNECTED,
        "1 when the broker link (connection, confirm channels, declared queue) is up"
    );
    for route in Route::ALL {
        let name = route.as_str();
        metrics::counter!(metric::GATEWAY_REQUESTS_TOTAL, "route" => name, "outcome" => outcome::ACCEPTED)
            .increment(0);
        for reason in RejectReason::ALL {
            metrics::counter!(metric::GATEWAY_REQUESTS_TOTAL, "route" => name, "outcome" => outcome::REJECTED, "reason" => reason.code())
                .increment(0);
        }
        for reason in PublishError::CODES {
            metrics::counter!(metric::GATEWAY_REQUESTS_TOTAL, "route" => name, "outcome" => outcome::FAILED, "reason" => reason)
                .increment(0);
        }
        for shed in Shed::ALL {
            metrics::counter!(metric::GATEWAY_REQUESTS_TOTAL, "route" => name, "outcome" => outcome::SHED, "reason" => shed.code())
                .increment(0);
        }
        let _ = metrics::histogram!(metric::GATEWAY_REQUEST_DURATION_SECONDS, "route" => name);
    }
    let _ = metrics::histogram!(metric::GATEWAY_PUBLISH_DURATION_SECONDS);
    metrics::describe_counter!(
        metric::GATEWAY_SHED_TOTAL,
        "Notify requests answered FAIL at once without publishing, by reason"
    );
    for shed in Shed::ALL {
        metrics::counter!(metric::GATEWAY_SHED_TOTAL, "reason" => shed.code()).increment(0);
    }
    reload::register_metrics();
}

/// Triggers a graceful shutdown of a running [`Application`] (signals, tests).
#[derive(Debug, Clone)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Stop accepting, drain in-flight requests and their confirms, close the broker link.
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

/// Why the gateway cannot start (or its server stopped with an error).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(#[from] wxpay_runtime::config::ConfigError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("http server: {0}")]
    Server(std::io::Error),
}

/// The gateway, bound and ready to run.
pub struct Application {
    port: u16,
    server: Server,
    publisher: Publisher,
    stop: CancellationToken,
    shutdown_timeout: Duration,
}

impl Application {
    /// Validates the merchants, binds `gateway.listen` (port 0 picks a free port), starts
    /// the broker supervisor (waiting at most `rabbitmq.connect_timeout_ms` for a first
    /// link: without one the gateway still serves, answering FAIL and `/readyz` 503) and
    /// builds the HTTP server. Must be called inside a tokio runtime.
    pub async fn build(settings: Settings) -> Result<Application, StartError> {
        let merchants = MerchantsHandle::fixed(settings.merchants()?);
        Self::build_with(settings, merchants).await
    }

    /// As [`Application::build`], verifying with `merchants`: the binary's handle is
    /// reloaded on SIGHUP and when the configuration file changes.
    pub async fn build_with(
        settings: Settings,
        merchants: MerchantsHandle,
    ) -> Result<Application, StartError> {
        register_metrics();
        let address = settings.gateway.listen.clone();
        let listener = TcpListener::bind(&address).map_err(|source| StartError::Bind {
            address: address.clone(),
            source,
        })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                address: address.clone(),
                source,
            })?
            .port();
        let publisher = Publisher::start(PublisherConfig::from_settings(&settings));
        let connect_timeout = Duration::from_millis(settings.rabbitmq.connect_timeout_ms);
        if !publisher.wait_connected(connect_timeout).await {
            warn!(
                step = step::STARTUP,
                "broker not reachable yet: serving FAIL until it is"
            );
        }
        let state = web::Data::new(AppState {
            merchants: merchants.clone(),
            publisher: publisher.clone(),
            admission: Arc::new(Admission::from_settings(&settings.gateway)),
            limits: Limits::from_settings(&settings.gateway),
        });
        let header_timeout = Duration::from_millis(settings.gateway.header_read_timeout_ms);
        let shutdown_timeout = Duration::from_millis(settings.gateway.shutdown_timeout_ms);
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route(
                    "/notify/v2/pay",
                    web::post().to(routes::v2::notify(Route::V2Pay, verify_v2_pay)),
                )
                .route(
                    "/notify/v2/refund",
                    web::post().to(routes::v2::notify(Route::V2Refund, verify_v2_refund)),
                )
                .route("/notify/v3/{mch_id}", web::post().to(routes::v3::notify))
                .route("/healthz", web::get().to(routes::health::healthz))
                .route("/readyz", web::get().to(routes::health::readyz))
                .route("/metrics", web::get().to(routes::health::metrics))
        })
        .disable_signals()
        // Headers trickled slower than this: 408 and the connection is closed.
        .client_request_timeout(header_timeout)
        .shutdown_timeout(shutdown_timeout.as_secs().max(1));
        if settings.gateway.http_workers > 0 {
            server = server.workers(settings.gateway.http_workers);
        }
        let server = server
            .listen(listener)
            .map_err(|source| StartError::Bind {
                address: address.clone(),
                source,
            })?
            .run();
        info!(step = step::STARTUP, %address, port, merchants = merchants.current().len(), queue = %publisher.queue(), "gateway listening");
        Ok(Application {
            port,
            server,
            publisher,
            stop: CancellationToken::new(),
            shutdown_timeout,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle that stops the application gracefully.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.stop.clone())
    }

    /// Serves until the server stops or a shutdown is triggered; then stops accepting,
    /// finishes in-flight requests and their confirms (bounded by
    /// `gateway.shutdown_timeout_ms`) and closes the broker link.
    pub async fn run_until_stopped(self) -> Result<(), StartError> {
        let Application {
            server,
            publisher,
            stop,
            shutdown_timeout,
            ..
        } = self;
        let handle = server.handle();
        let mut running = tokio::spawn(server);
        let finished = tokio::select! {
            result = &mut running => Some(result),
            _ = stop.cancelled() => None,
        };
        let result = match finished {
            Some(result) => result,
            None => {
                info!(
                    step = step::SHUTDOWN,
                    "shutdown: no new connections, draining in-flight requests"
                );
                if tokio::time::timeout(shutdown_timeout, handle.stop(true))
                    .await
                    .is_err()
                {
                    warn!(
                        step = step::SHUTDOWN,
                        "drain exceeded gateway.shutdown_timeout_ms: stopping now"
                    );
                    handle.stop(false).await;
                }
                match tokio::time::timeout(shutdown_timeout, &mut running).await {
                    Ok(result) => result,
                    Err(_) => {
                        running.abort();
                        Ok(Ok(()))
                    }
                }
            }
        };
        publisher.close().await;
        info!(step = step::SHUTDOWN, "gateway stopped");
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(StartError::Server(error)),
            Err(join) => Err(StartError::Server(std::io::Error::other(join.to_string()))),
        }
    }
}
