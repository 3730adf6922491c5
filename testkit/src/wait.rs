//! Waiting in tests: a condition polled until it holds, and a service task stopped by its
//! cancellation token.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(50);

/// Polls `check` until it holds; fails the test naming `what` once `limit` has passed.
pub async fn eventually(limit: Duration, what: impl Display, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A task that runs until its token is cancelled (a worker's `run`, a reconciler's loop).
pub struct Background {
    shutdown: CancellationToken,
    handle: JoinHandle<()>,
}

impl Background {
    /// Spawns `run` with the token [`Background::stop`] cancels.
    pub fn spawn<F>(run: impl FnOnce(CancellationToken) -> F) -> Background
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(run(shutdown.clone()));
        Background { shutdown, handle }
    }

    /// Cancels the token and waits for the task to end by itself (a graceful stop), at
    /// most 20 s.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("stops in time")
            .expect("task ends without a panic");
    }
}
