//! Integration tests of the simulator: one binary, one file per concern.

mod build;
mod helpers;
mod init;
mod notify;
mod serve;
