//! Shared fixtures: a fresh test merchant per test, in its own temporary directory, and an
//! HTTP server on loopback playing the gateway.

use std::path::PathBuf;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, Handler, HttpRequest, HttpServer, Responder};
use tempfile::TempDir;
use wxpay_simulator::init::{init, InitOptions};
use wxpay_simulator::orders::{OrderBook, OrderBookFile};
use wxpay_simulator::secrets::SimMerchant;

/// A merchant written by `init` into a temporary directory (removed on drop).
pub struct Fixture {
    pub dir: TempDir,
    pub merchant: SimMerchant,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = InitOptions {
            dir: dir.path().to_path_buf(),
            ..InitOptions::default()
        };
        init(&options).expect("init");
        let merchant = SimMerchant::load(&dir.path().join("simulator.toml")).expect("load secrets");
        Self { dir, merchant }
    }

    pub fn sim_config(&self) -> PathBuf {
        self.dir.path().join("simulator.toml")
    }

    /// The orders the simulator recorded (what `serve` answers about).
    pub fn order_book(&self) -> OrderBook {
        OrderBookFile::new(&self.merchant.orders_path)
            .read()
            .expect("order book")
    }
}

/// A server on a free loopback port answering every request with `handler(request, body)`,
/// on `workers` threads; its URL and handle.
pub fn serve_on_loopback<F>(workers: usize, handler: F) -> (String, ServerHandle)
where
    F: Handler<(HttpRequest, web::Bytes)> + Clone + Send + 'static,
    F::Output: Responder + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let server = HttpServer::new(move || App::new().default_service(web::to(handler.clone())))
        .workers(workers)
        .listen(listener)
        .expect("listen")
        .run();
    let handle = server.handle();
    tokio::spawn(server);
    (url, handle)
}
