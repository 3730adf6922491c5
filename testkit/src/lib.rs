//! The one test kit of the workspace's integration tests and benchmarks (a dev-dependency
//! only, never shipped).
//!
//! - [`services`]: where the real PostgreSQL, RabbitMQ and Redis listen (loopback).
//! - [`mod@env`]: per-test isolation: a database, queue names, an events exchange and a Redis
//!   key prefix of the test's own, dropped at the end even when the test panicked.
//! - [`db`], [`amqp`]: what tests read and publish there.
//! - [`merchants`], [`notifications`]: test merchants with their keys, and notifications
//!   signed and encrypted through wxpay-shared exactly as WeChat Pay sends them.
//! - [`vectors`]: a service provider's notifications made outside this workspace (Python,
//!   OpenSSL), the independent check of the partner-mode rules.
//! - [`event_schemas`]: the JSON Schemas of the published events, to check every event seen.
//! - [`config`]: a [`Settings`](wxpay_runtime::config::Settings) as the file the binaries read.
//! - [`metrics`]: what a service's `/metrics` says.
//! - [`proxy`]: a TCP proxy that cuts, stalls and restores a link to a service.
//! - [`wait`]: polling until a condition holds, and a task stopped by a token.
//! - [`bins`]: the workspace's binaries, built when missing or stale.
//!
//! Each crate keeps its own application set-up (an in-process gateway, a running worker,
//! the console, the end-to-end stack) and takes from here only what isolates a test.

pub mod amqp;
pub mod bins;
pub mod config;
pub mod db;
pub mod env;
pub mod event_schemas;
pub mod merchants;
pub mod metrics;
pub mod notifications;
pub mod proxy;
pub mod services;
pub mod vectors;
pub mod wait;

pub use bins::{assert_success, bin_path, bin_path_async, clean_command};
pub use config::config_file;
pub use env::{default_settings, TestEnv};
pub use proxy::FaultProxy;
pub use wait::{eventually, Background};
