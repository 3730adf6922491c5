//! The start of every binary's `main`: the services and the simulator all run their work on
//! one multi-threaded tokio runtime, built the same way.

use std::future::Future;

/// Runs `work` to its end on a new multi-threaded tokio runtime (all drivers enabled).
///
/// `Err` when the runtime cannot be built (no threads, no I/O driver): nothing has run
/// then, and each binary reports it its own way (stderr, or a log line) before exiting.
pub fn block_on<F: Future>(work: F) -> std::io::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(work))
}
