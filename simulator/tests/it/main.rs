//! Integration tests of the simulator: one binary, one file per concern.

mod build;
mod build_kinds;
mod e2e_certificates;
mod e2e_combine;
mod e2e_flows;
mod e2e_kinds;
mod e2e_load;
mod e2e_partner;
mod e2e_reconcile;
mod e2e_support;
mod helpers;
mod init;
mod load;
mod notify;
mod serve;
