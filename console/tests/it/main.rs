//! The console against real PostgreSQL and RabbitMQ on loopback (each test its own database
//! and queues, the worker's test environment), over HTTP and in a real browser.

#[path = "../../../worker/tests/it/builders.rs"]
mod builders;
#[path = "../../../worker/tests/it/helpers.rs"]
mod helpers;

mod support;

mod browser;
mod security;
