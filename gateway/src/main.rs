//! `wxpay-gateway`: serves the notify routes. `--config PATH`, else `WXPAY_CONFIG`, else
//! `config/wxpay.toml`; merchants also from `--merchants PATH`, else `WXPAY_MERCHANTS_FILE`.
//! Exit codes: 0 after a graceful shutdown (SIGTERM/SIGINT), 2 for a configuration error, 1
//! for any other start-up or server error. SIGHUP, or a change of either file, reloads the
//! merchants (`wxpay_runtime::reload`).

use std::process::ExitCode;

use clap::Parser;
use tracing::{error, info};
use wxpay_gateway::Application;
use wxpay_runtime::config::{ConfigFileArgs, Settings};
use wxpay_runtime::reload::{self, MerchantsHandle, Reloader};
use wxpay_runtime::telemetry::{init_logging, step};

#[derive(Debug, Parser)]
#[command(
    name = "wxpay-gateway",
    about = "Verifies WeChat Pay notifications and queues them with confirms"
)]
struct Cli {
    #[command(flatten)]
    files: ConfigFileArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let files = cli.files.files();
    let (settings, merchants) = match MerchantsHandle::load(files) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("wxpay-gateway: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging("gateway");
    match wxpay_runtime::process::block_on(serve(settings, merchants)) {
        Ok(code) => code,
        Err(error) => {
            error!(step = step::STARTUP, %error, "cannot start the tokio runtime");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings, merchants: MerchantsHandle) -> ExitCode {
    // Installed before anything else, so a SIGTERM during start-up (e.g. while the broker
    // is being reached) is not lost: it stops the application as soon as it is built. The
    // same for SIGHUP, whose default would end the process.
    let signals = Signals::install();
    let _reloader = match Reloader::spawn(merchants.clone(), Some(reload::FILE_POLL_INTERVAL)) {
        Ok(reloader) => Some(reloader),
        Err(error) => {
            error!(step = step::STARTUP, %error, "cannot watch SIGHUP: merchants change only with a restart");
            None
        }
    };
    let application = match Application::build_with(settings, merchants).await {
        Ok(application) => application,
        Err(error @ wxpay_gateway::StartError::Config(_)) => {
            error!(step = step::STARTUP, %error, "invalid configuration");
            return ExitCode::from(2);
        }
        Err(error) => {
            error!(step = step::STARTUP, %error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = application.shutdown_handle();
    tokio::spawn(async move {
        let signal = signals.recv().await;
        info!(step = step::SHUTDOWN, signal, "signal received");
        shutdown.shutdown();
    });
    match application.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!(step = step::SHUTDOWN, %error, "server error");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (Kubernetes) and SIGINT (Ctrl-C). If the handlers cannot be installed, the
/// gateway runs without graceful shutdown rather than not at all (and says so).
struct Signals {
    terminate: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        if terminate.is_err() || interrupt.is_err() {
            error!(step = step::STARTUP, "cannot install signal handlers");
        }
        Signals {
            terminate: terminate.ok(),
            interrupt: interrupt.ok(),
        }
    }

    async fn recv(mut self) -> &'static str {
        async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.terminate) => "SIGTERM",
            _ = next(&mut self.interrupt) => "SIGINT",
        }
    }
}
