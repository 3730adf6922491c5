//! The console against real PostgreSQL and RabbitMQ on loopback (each test its own database
//! and queues, from wxpay-testkit), over HTTP and in a real browser.

mod support;

mod browser;
mod partner;
mod security;
