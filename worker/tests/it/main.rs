//! Integration tests of the worker against real PostgreSQL, RabbitMQ and Redis on loopback.
//! Each test has its own database, queues, events exchange and Redis key prefix.

mod builders;
mod cli;
mod helpers;

mod anomalies;
mod confirm_by_query;
mod db;
mod doctor;
mod events;
mod forward;
mod migrations;
mod money;
mod partner;
mod pay;
mod pipeline;
mod query;
mod reconcile;
mod refund;
mod reload;
mod topology;
mod unknown_order;
