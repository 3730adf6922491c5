//! # wxpay-shared — the WeChat Pay notification protocol, pure
//!
//! Everything the gateway, the worker and the simulator must agree on lives here, once:
//!
//! - [`v2`]: the XML notifications of API v2 (支付结果通知, 退款结果通知): parsing, MD5 /
//!   HMAC-SHA256 signatures, the AES-256-ECB `req_info` of refunds.
//! - [`v3`]: the JSON notifications of API v3: the `Wechatpay-*` headers, RSA-SHA256
//!   signatures, AEAD_AES_256_GCM resources, and the `Authorization` of API calls.
//! - [`answer`]: what WeChat Pay must read back (v2 XML, v3 status + JSON).
//! - [`message`]: the queue message between gateway and worker.
//! - [`state`]: trade and refund states on the wire, and the worker's state columns.
//! - [`config`]: the one TOML configuration, with `WXPAY__SECTION__KEY` overrides.
//! - [`telemetry`]: JSON logs with a `step` field, and the Prometheus recorder.
//!
//! No network and no I/O happens in this crate: it is pure and tested with official and
//! independently computed vectors.

pub mod answer;
pub mod config;
pub mod message;
pub mod state;
pub mod telemetry;
pub mod v2;
pub mod v3;
