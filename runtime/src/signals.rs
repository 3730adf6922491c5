//! The stop signals every service honours: SIGTERM (Kubernetes, docker) or SIGINT (Ctrl-C)
//! start a graceful drain. SIGHUP is the merchants' reload ([`crate::reload`]).

use crate::telemetry::step;

/// Resolves at the first SIGTERM or SIGINT. When SIGTERM cannot be watched (it can always be
/// on Linux), says so once and waits for SIGINT alone.
pub async fn terminate_or_interrupt() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(step = step::STARTUP, %error, "cannot watch SIGTERM");
                None
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(signal) => { signal.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}
