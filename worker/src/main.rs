//! `wxpay-worker`: `run`, `migrate`, `reconcile [--once]`, `dlq list`, `dlq replay [--all | --id ID]`,
//! `anomaly list`, `anomaly resolve --id N --action reapply|dismiss --note TEXT`, `doctor`.
//! `run` and `reconcile` reload the merchants on SIGHUP and when the configuration file or
//! the merchants file (`--merchants`, `WXPAY_MERCHANTS_FILE`) changes (`wxpay_runtime::reload`).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use wxpay_runtime::config::{ConfigFileArgs, ConfigFiles, Settings};
use wxpay_runtime::reload::{self, MerchantsHandle, Reloader};
use wxpay_runtime::telemetry::{self, step};
use wxpay_worker::anomaly::{self, Action};
use wxpay_worker::retry::{self, ReplaySelection};
use wxpay_worker::{db, doctor, http, migrate, schema_check, Worker};

#[derive(Parser)]
#[command(
    name = "wxpay-worker",
    version,
    about = "Applies WeChat Pay notifications exactly once"
)]
struct Cli {
    #[command(flatten)]
    files: ConfigFileArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the notification queue (never migrates: refuses a schema that is not this
    /// binary's; see `migrate`).
    Run,
    /// Create the database if missing and run the migrations (a step of its own, with the
    /// DDL role, before `run` and `reconcile` start).
    Migrate,
    /// Query WeChat Pay for orders/refunds whose notification never came, every
    /// reconciler.interval_secs (serves /healthz /readyz /metrics on reconciler.metrics_listen).
    Reconcile {
        /// One round, then exit (non-zero if the round could not run).
        #[arg(long)]
        once: bool,
    },
    /// Check configuration, keys, services and the route from outside: one line per check,
    /// `ok` or `FAIL` with what to do; exits non-zero on any FAIL.
    Doctor {
        /// Accept an http, IP-address or explicit-port gateway.public_url (local setups), so
        /// that the route is still probed.
        #[arg(long)]
        allow_insecure_public_url: bool,
    },
    /// The parking (dead-letter) queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Notifications that disagreed with their order (outcome ANOMALY).
    Anomaly {
        #[command(subcommand)]
        command: AnomalyCommand,
    },
}

#[derive(Subcommand)]
enum AnomalyCommand {
    /// The open anomalies, one line each: id, merchant, order, reason, detail, received.
    List,
    /// Close an anomaly, recorded with who, when and why.
    Resolve {
        /// The anomaly's id (first column of `anomaly list`).
        #[arg(long)]
        id: i64,
        /// `reapply`: apply the original notification again (after correcting the order);
        /// `dismiss`: close it without applying.
        #[arg(long)]
        action: Action,
        /// Why (kept in the audit table).
        #[arg(long)]
        note: String,
        /// Who (default: $USER, else "cli").
        #[arg(long)]
        actor: Option<String>,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List parked messages (id, kind, mch_id, attempt, reason, received_at; never bodies).
    List,
    /// Move parked messages back to the main queue.
    Replay {
        /// Every parked message.
        #[arg(long, conflicts_with = "id", required_unless_present = "id")]
        all: bool,
        /// The parked message with this message id.
        #[arg(long, value_name = "ID")]
        id: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging("worker");
    match wxpay_runtime::process::block_on(dispatch(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            ExitCode::FAILURE
        }
        Ok(Err(error)) => {
            tracing::error!(step = step::SHUTDOWN, error = %format!("{error:#}"), "exiting with an error");
            eprintln!("wxpay-worker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let files = cli.files.files();
    if let Command::Doctor {
        allow_insecure_public_url,
    } = cli.command
    {
        // Before the configuration is loaded: doctor reports every problem of a
        // configuration that loading would refuse at the first.
        return run_doctor(
            &files,
            doctor::Options {
                allow_insecure_public_url,
            },
        )
        .await;
    }
    let (settings, merchants) = MerchantsHandle::load(files)?;
    let connect_timeout = Duration::from_millis(settings.database.connect_timeout_ms);
    match cli.command {
        Command::Migrate => {
            let ran =
                migrate::migrate(settings.database.url.expose_secret(), connect_timeout).await?;
            println!("migrations applied: {ran}");
            Ok(())
        }
        Command::Run => run(settings, merchants).await,
        Command::Reconcile { once } => {
            let _reloader = (!once).then(|| reload_on_sighup(&merchants)).flatten();
            schema_check::check(settings.database.url.expose_secret(), connect_timeout).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(watch_signals(shutdown.clone()));
            Ok(wxpay_worker::reconcile::run(&settings, merchants, once, shutdown).await?)
        }
        Command::Doctor { .. } => {
            unreachable!("doctor is dispatched before the configuration is loaded")
        }
        Command::Anomaly { command } => anomaly_command(&settings, &merchants, command).await,
        Command::Dlq {
            command: DlqCommand::List,
        } => {
            let parked = retry::dlq_list(&settings).await?;
            println!("id\tkind\tmch_id\tattempt\treason\treceived_at");
            for message in &parked {
                println!("{message}");
            }
            eprintln!("{} parked message(s)", parked.len());
            Ok(())
        }
        Command::Dlq {
            command: DlqCommand::Replay { all, id },
        } => {
            let selection = match (all, id) {
                (_, Some(id)) => ReplaySelection::Id(id),
                (true, None) => ReplaySelection::All,
                (false, None) => anyhow::bail!("dlq replay needs --all or --id ID"),
            };
            let moved = retry::dlq_replay(&settings, &selection).await?;
            println!("replayed: {moved}");
            if moved == 0 {
                if let ReplaySelection::Id(id) = selection {
                    anyhow::bail!("no parked message with id {id}");
                }
            }
            Ok(())
        }
    }
}

async fn anomaly_command(
    settings: &Settings,
    merchants: &MerchantsHandle,
    command: AnomalyCommand,
) -> anyhow::Result<()> {
    let url = settings.database.url.expose_secret();
    let connect_timeout = Duration::from_millis(settings.database.connect_timeout_ms);
    schema_check::check(url, connect_timeout).await?;
    let pool = db::build_pool(
        url,
        1,
        connect_timeout,
        Duration::from_millis(settings.database.pool_wait_timeout_ms),
    )?;
    match command {
        AnomalyCommand::List => {
            let open = anomaly::list(&pool).await?;
            println!("id\tmch_id\torder\treason\tdetail\treceived_at");
            for anomaly in &open {
                println!("{anomaly}");
            }
            eprintln!(
                "{} open anomal{}",
                open.len(),
                if open.len() == 1 { "y" } else { "ies" }
            );
            Ok(())
        }
        AnomalyCommand::Resolve {
            id,
            action,
            note,
            actor,
        } => {
            let actor = actor
                .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
                .unwrap_or_else(|| "cli".to_owned());
            let resolution =
                anomaly::resolve(&pool, &merchants.current(), id, action, &actor, &note).await?;
            println!("{resolution}");
            Ok(())
        }
    }
}

async fn run_doctor(files: &ConfigFiles, options: doctor::Options) -> anyhow::Result<()> {
    let checks = doctor::run(files, options).await;
    for check in &checks {
        println!("{check}");
    }
    match checks.iter().filter(|check| check.is_fail()).count() {
        0 => Ok(()),
        failed => anyhow::bail!("doctor: {failed} check(s) failed"),
    }
}

async fn run(settings: Settings, merchants: MerchantsHandle) -> anyhow::Result<()> {
    let _reloader = reload_on_sighup(&merchants);
    let prometheus = telemetry::metrics_handle();
    let connect_timeout = Duration::from_millis(settings.database.connect_timeout_ms);
    schema_check::check(settings.database.url.expose_secret(), connect_timeout).await?;
    let worker = Worker::with_merchants(settings, merchants)?;
    let (server, address) = http::serve(
        &worker.settings().worker.metrics_listen,
        worker.clone(),
        prometheus,
    )?;
    let server_handle = server.handle();
    let server_task = tokio::spawn(server);
    tracing::info!(step = step::STARTUP, %address, "health and metrics listening");

    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    worker.run(shutdown).await;
    server_handle.stop(true).await;
    let _ = server_task.await;
    tracing::info!(step = step::SHUTDOWN, "worker stopped");
    Ok(())
}

/// Reloads the merchants on SIGHUP and when either configuration file changes, for as long as
/// the returned reloader lives. Installed first thing: SIGHUP's default would end the process.
fn reload_on_sighup(merchants: &MerchantsHandle) -> Option<Reloader> {
    Reloader::spawn(merchants.clone(), Some(reload::FILE_POLL_INTERVAL))
        .map_err(|error| {
            tracing::error!(step = step::STARTUP, %error, "cannot watch SIGHUP: merchants change only with a restart");
        })
        .ok()
}

/// SIGTERM or SIGINT: graceful shutdown.
async fn watch_signals(shutdown: CancellationToken) {
    wxpay_runtime::signals::terminate_or_interrupt().await;
    tracing::info!(
        step = step::SHUTDOWN,
        "signal received: finishing in-flight work"
    );
    shutdown.cancel();
}
