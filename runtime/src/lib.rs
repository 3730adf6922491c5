//! # wxpay-runtime — what a running service needs around the protocol
//!
//! The protocol crate (`wxpay-shared`) is pure: no I/O, no globals, no broker client. What
//! the gateway, the worker and the simulator share *as running processes* lives here:
//!
//! - [`config`]: the one TOML configuration, read from a file with `WXPAY__SECTION__KEY`
//!   environment overrides, validated at start-up (merchant keys parsed through the protocol
//!   crate).
//! - [`telemetry`]: JSON logs on stderr with a `step` field, the process-wide Prometheus
//!   recorder, and the metric names of every service.
//! - [`amqp`]: the queue message in and out of AMQP properties, and the queue declaration
//!   every service must make identically.
//! - [`reload`]: the merchants in use, replaced while the service runs (SIGHUP, or the
//!   configuration file changing) after the same validation as at start-up.
//! - [`process`]: the tokio runtime each binary's `main` runs its work on.

pub mod amqp;
pub mod config;
pub mod process;
pub mod reload;
pub mod signals;
pub mod telemetry;
