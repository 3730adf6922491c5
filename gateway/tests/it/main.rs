//! Integration tests of wxpay-gateway against the real RabbitMQ (one queue per test).

mod accepted;
mod broker;
mod edge;
mod helpers;
mod partner;
mod rejected;
mod reload;
mod service;
mod shutdown;
