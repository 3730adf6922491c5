//! Integration tests of the simulator: one binary, one file per concern.

mod build;
mod helpers;
mod init;
mod load;
mod notify;
mod serve;
