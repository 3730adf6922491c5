//! `wxpay-console [serve]`: the operations console on `[console] listen`;
//! `wxpay-console hash-password`: an argon2id PHC string for `[[console.users]]`, of the
//! password read from stdin.

use std::io::BufRead;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use wxpay_console::{auth, Console};
use wxpay_runtime::config::{ConfigFileArgs, ConfigFiles, Settings};
use wxpay_runtime::telemetry::{self, step};
use wxpay_worker::schema_check;

#[derive(Parser)]
#[command(
    name = "wxpay-console",
    version,
    about = "Operations console: payments and their story, anomalies, parked messages"
)]
struct Cli {
    #[command(flatten)]
    files: ConfigFileArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the console (the default).
    Serve,
    /// Print the argon2id PHC string of the password on stdin's first line.
    HashPassword,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::HashPassword) = cli.command {
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line).is_err() || line.trim_end().is_empty() {
            eprintln!("wxpay-console hash-password: give the password on stdin");
            return ExitCode::FAILURE;
        }
        return match auth::hash_password(line.trim_end_matches(['\r', '\n'])) {
            Ok(phc) => {
                println!("{phc}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("wxpay-console hash-password: {error}");
                ExitCode::FAILURE
            }
        };
    }
    telemetry::init_logging("wxpay-console");
    let files = cli.files.files();
    match serve(files).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(step = step::STARTUP, %error, "wxpay-console stopped");
            eprintln!("wxpay-console: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(files: ConfigFiles) -> anyhow::Result<()> {
    let settings = Settings::load(files)?;
    let listen = settings.console.listen.clone();
    let users = settings.console.users.len();
    let (database_url, connect_timeout) = (
        settings.database.url.expose_secret().to_owned(),
        Duration::from_millis(settings.database.connect_timeout_ms),
    );
    // Users and proxies first: a bad entry is a one-line error before any connection.
    let console = Console::new(settings)?;
    // The audit table is a migration's: refuse a database `wxpay-worker migrate` has not
    // brought to this binary's schema.
    schema_check::check(&database_url, connect_timeout).await?;
    let (server, address) = console.serve(&listen)?;
    tracing::info!(step = step::STARTUP, %address, users, "console listening (sessions end when it restarts)");
    let handle = server.handle();
    let running = tokio::spawn(server);
    wxpay_runtime::signals::terminate_or_interrupt().await;
    tracing::info!(step = step::SHUTDOWN, "signal received: stopping");
    handle.stop(true).await;
    let _ = running.await;
    Ok(())
}
