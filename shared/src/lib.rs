//! # wxpay-shared — the WeChat Pay notification protocol, pure
//!
//! Everything the gateway, the worker and the simulator must agree on lives here, once:
//!
//! - [`v2`]: the XML notifications of API v2 (支付结果通知, 退款结果通知): parsing, MD5 /
//!   HMAC-SHA256 signatures, the AES-256-ECB `req_info` of refunds.
//! - [`v3`]: the JSON notifications of API v3: the `Wechatpay-*` headers, RSA-SHA256
//!   signatures, AEAD_AES_256_GCM resources, and the `Authorization` of API calls.
//! - [`answer`]: what WeChat Pay must read back (v2 XML, v3 status + JSON).
//! - [`message`]: the queue message between gateway and worker: its fields, kinds and header
//!   names (their AMQP encoding is in `wxpay-runtime`).
//! - [`state`]: trade and refund states on the wire, and the worker's state columns.
//! - [`names!`]: families of string constants (steps, metrics, headers, labels), each
//!   spelled once and listed in `ALL`.
//!
//! No network, no I/O and no process-wide state in this crate: it is pure and tested with
//! official and independently computed vectors. Configuration loading, telemetry and the
//! broker live in `wxpay-runtime`.

pub mod answer;
pub mod message;
mod names;
pub mod state;
pub mod v2;
pub mod v3;
