//! # wxpay-simulator — plays WeChat Pay for tests, demos and load
//!
//! - [`init`]: a test merchant, its keys, `config/example.toml` for gateway and worker and
//!   the simulator's own secrets (`config/simulator.toml`, with the platform PRIVATE key).
//! - [`build`]: the notifications WeChat Pay sends (v2 pay / refund XML, v3 JSON), genuine
//!   and bad (forged, tampered, probe, stale), signed and encrypted only through
//!   `wxpay-shared`.
//! - [`build_kinds`]: the other v3 notifications (merchant transfer, profit sharing, pay
//!   score), in the same envelope.
//! - [`combine`]: combine payments (合单支付): their notification's resource and the book's
//!   record that `serve` answers the combine query from.
//! - [`notify`]: sends one notification with WeChat Pay's re-send schedule and judges each
//!   answer as WeChat Pay does.
//! - [`serve`]: the order / refund query API (v2 and v3), with fault injection.
//! - [`orders`]: the order book shared by `notify`, `order`, `load` and `serve`.
//! - [`load`]: open-loop load with duplicates, forgeries and tampering, then an audit of
//!   PostgreSQL (exactly once, never a forgery).
//! - [`secrets`]: the simulator's secrets file.

pub mod build;
pub mod build_kinds;
pub mod combine;
pub mod init;
pub mod load;
pub mod notify;
pub mod orders;
pub mod secrets;
pub mod serve;
