//! `wxpay-sim`: plays WeChat Pay. See the library docs for what each subcommand does.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use chrono::Utc;
use clap::{Args, Parser, Subcommand};
use secrecy::ExposeSecret as _;
use wxpay_shared::state::{RefundStatus, TradeState};
use wxpay_shared::v2::SignType;

use wxpay_simulator::build::{self, Kind, Payment, Refund, V2Signing, Variant};
use wxpay_simulator::build_kinds::{OtherKind, OtherNotice};
use wxpay_simulator::combine::{self, CombinePayment, SubOrderArg};
use wxpay_simulator::init::{self, InitOptions, InitOutcome};
use wxpay_simulator::load::{self, plan, LoadOptions};
use wxpay_simulator::notify::{self, DeliveryOptions};
use wxpay_simulator::orders::{OrderBookFile, OrderRecord, RefundRecord};
use wxpay_simulator::secrets::{SimMerchant, DEFAULT_SIM_CONFIG};
use wxpay_simulator::serve;

/// Plays WeChat Pay: test merchants, signed notifications with re-sends, the query API, load.
#[derive(Parser)]
#[command(name = "wxpay-sim", version)]
struct Cli {
    /// The simulator's secrets file (written by `init`).
    #[arg(long, global = true, env = "WXPAY_SIM_CONFIG", default_value = DEFAULT_SIM_CONFIG)]
    sim_config: PathBuf,
    /// The services' configuration (`load` reads database.url from it when
    /// --database-url is not given); else $WXPAY_CONFIG, else config/wxpay.toml.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the test merchant: config/example.toml and config/simulator.toml.
    Init(InitArgs),
    /// Send one signed notification, re-sending on WeChat Pay's schedule until acknowledged.
    Notify(NotifyArgs),
    /// Serve the WeChat Pay query API (v2 orderquery/refundquery, v3 queries) from the order book.
    Serve(ServeArgs),
    /// Stage an order in the order book (e.g. paid but never notified).
    Order(OrderArgs),
    /// Open-loop load with duplicates, forgeries and tampering, then audit PostgreSQL.
    Load(LoadArgs),
}

#[derive(Args)]
struct InitArgs {
    /// Directory of the two files.
    #[arg(long, default_value = "config")]
    dir: PathBuf,
    /// Overwrite existing files with a new merchant.
    #[arg(long)]
    force: bool,
    #[arg(long, default_value = "1900000109")]
    mch_id: String,
    #[arg(long, default_value = "wxd930ea5d5a258f4f")]
    appid: String,
    /// Written as wechatpay.api_base: where `wxpay-sim serve` listens.
    #[arg(long, default_value = init::DEFAULT_SERVE_URL)]
    api_base: String,
    /// RSA key size, 2048 to 4096 bits (WeChat Pay uses 2048).
    #[arg(long, default_value_t = 2048)]
    key_bits: usize,
    /// A service provider (服务商) with two sub-merchants, 1900000201 (with a sub_appid of its
    /// own) and 1900000202, instead of a direct merchant.
    #[arg(long)]
    partner: bool,
}

/// `--sub-mch-id`: act as the service provider for one of its sub-merchants.
#[derive(Args)]
struct SubMerchantArg {
    /// Partner mode: the sub-merchant of the provider (`init --partner`) the order belongs
    /// to; its orders have a book of their own.
    #[arg(long)]
    sub_mch_id: Option<String>,
}

#[derive(Args)]
struct NotifyArgs {
    #[command(flatten)]
    sub: SubMerchantArg,
    /// The gateway's base URL, e.g. http://127.0.0.1:8080 (the route is appended).
    #[arg(long)]
    target: String,
    /// v2-pay | v2-refund | v3-pay | v3-refund | v3-combine | v3-transfer | v3-transfer-batch
    /// | v3-profitsharing | v3-payscore
    #[arg(long, value_parser = parse_kind)]
    kind: Kind,
    /// Payment and refund kinds (required there); v3-combine: the combine payment's number
    /// (combine_out_trade_no).
    #[arg(long)]
    out_trade_no: Option<String>,
    /// The order's amount in fen (v3-combine: the sum of its --sub-order amounts, checked;
    /// other kinds: transferred, shared, or the pay score order's total).
    #[arg(long)]
    amount: i64,
    /// v3-combine, once per sub order: `OUT_TRADE_NO:AMOUNT[:MCHID]`, the order's number, its
    /// amount in fen and the merchant it belongs to (default: the simulator's merchant, which
    /// starts the combine payment). E.g. --out-trade-no C-1 --amount 2000 --sub-order A-1:1200
    /// --sub-order B-1:800.
    #[arg(long = "sub-order", value_parser = SubOrderArg::parse)]
    sub_orders: Vec<SubOrderArg>,
    /// v3-transfer: the bill's out_bill_no (default: a new one).
    #[arg(long)]
    out_bill_no: Option<String>,
    /// v3-transfer-batch: the batch's out_batch_no (default: a new one).
    #[arg(long)]
    out_batch_no: Option<String>,
    /// v3-profitsharing, v3-payscore: out_order_no (default: a new one).
    #[arg(long)]
    out_order_no: Option<String>,
    /// v3-transfer: the bill's state, ACCEPTED | PROCESSING | WAIT_USER_CONFIRM | TRANSFERING |
    /// SUCCESS | FAIL | CANCELING | CANCELLED (default SUCCESS).
    #[arg(long)]
    state: Option<String>,
    /// Other kinds: the event type within the kind's family (default: its first), e.g.
    /// MCHTRANSFER.BATCH.CLOSED, PROFITSHARING.RETURN, PAYSCORE.USER_PAID.
    #[arg(long)]
    event_type: Option<String>,
    /// v3-profitsharing: as some direct merchants receive it, event_type TRANSACTION.SUCCESS
    /// with original_type profitsharing.
    #[arg(long)]
    profitsharing_as_transaction: bool,
    /// v2 signature method: MD5 | HMAC-SHA256.
    #[arg(long, value_parser = parse_sign_type, default_value = "MD5")]
    sign_type: SignType,
    /// Leave sign_type out of a v2 body (WeChat Pay does): the length of sign tells the method.
    #[arg(long)]
    omit_sign_type: bool,
    /// Refund amount in fen (refund kinds; default: the whole amount).
    #[arg(long)]
    refund_fee: Option<i64>,
    /// Refund kinds; default: R + out_trade_no.
    #[arg(long)]
    out_refund_no: Option<String>,
    /// Default: the one in the order book, else a new one.
    #[arg(long)]
    transaction_id: Option<String>,
    /// Multiplies WeChat Pay's re-send schedule (0.001 = milliseconds).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Attempts in all (WeChat Pay: 16).
    #[arg(long, default_value_t = notify::WECHAT_MAX_ATTEMPTS)]
    max_attempts: u32,
    /// Sign (or encrypt) with a wrong key.
    #[arg(long, group = "bad")]
    forge: bool,
    /// Sign for 1 fen, then change the amount to --amount.
    #[arg(long, group = "bad")]
    tamper_amount: bool,
    /// v3: signature WECHATPAY/SIGNTEST/… (WeChat Pay's verification probe).
    #[arg(long, group = "bad")]
    probe: bool,
    /// v3: timestamp 10 minutes old.
    #[arg(long, group = "bad")]
    stale: bool,
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
}

#[derive(Args)]
struct OrderArgs {
    #[command(flatten)]
    sub: SubMerchantArg,
    #[arg(long)]
    out_trade_no: String,
    /// Fen.
    #[arg(long)]
    amount: i64,
    /// SUCCESS | REFUND | NOTPAY | CLOSED | REVOKED | USERPAYING | PAYERROR
    #[arg(long, default_value_t = TradeState::Success)]
    state: TradeState,
    #[arg(long)]
    transaction_id: Option<String>,
}

#[derive(Args)]
struct LoadArgs {
    #[command(flatten)]
    sub: SubMerchantArg,
    /// The gateway's base URL.
    #[arg(long)]
    target: String,
    /// Sends per second (open loop).
    #[arg(long)]
    rate: u32,
    /// e.g. 30s, 2m, 500ms.
    #[arg(long, value_parser = load::parse_duration)]
    duration: Duration,
    /// Share of sends that repeat an earlier genuine payment (same body, or the other channel).
    #[arg(long, default_value_t = 0.1)]
    dup_ratio: f64,
    /// Share of sends that are forged (wrong key), for orders never genuinely paid.
    #[arg(long, default_value_t = 0.02)]
    forged_ratio: f64,
    /// Share of sends that are tampered (amount changed after signing).
    #[arg(long, default_value_t = 0.02)]
    tampered_ratio: f64,
    /// Channels of genuine payments, e.g. v2:0.5,v3:0.5.
    #[arg(long, default_value = "v2:0.5,v3:0.5")]
    mix: String,
    /// PostgreSQL of the worker; default: database.url of --config, else the local default.
    #[arg(long, env = "WXPAY__DATABASE__URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Gateway answers only: no NOTPAY orders inserted, no database audit (wins over
    /// --database-url, which may come from the environment).
    #[arg(long)]
    no_db: bool,
    /// Seconds to wait for the worker to settle every genuine order.
    #[arg(long, default_value_t = 60)]
    drain_timeout: u64,
    /// In-flight requests at most.
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// Don't add the genuine payments to the simulator's order book.
    #[arg(long)]
    no_order_book: bool,
    /// Print one JSON object on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// Write PNG plots (answer latency, throughput, queue depth, lag, CPU per component) and
    /// summary.txt / summary.json into this directory.
    #[arg(long)]
    report: Option<PathBuf>,
    /// RabbitMQ of the pipeline, for the queue-depth plot; default: rabbitmq.url of --config.
    #[arg(long, env = "WXPAY__RABBITMQ__URL", hide_env_values = true)]
    amqp_url: Option<String>,
    /// The notification queue, for the queue-depth plot; default: rabbitmq.queue of --config.
    #[arg(long, env = "WXPAY__RABBITMQ__QUEUE")]
    queue: Option<String>,
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    Kind::parse(s).ok_or_else(|| {
        let others: Vec<&str> = OtherKind::ALL.iter().map(|k| k.as_str()).collect();
        format!(
            "expected v2-pay, v2-refund, v3-pay, v3-refund, v3-combine, {}",
            others.join(", ")
        )
    })
}

/// What `notify --kind <other>` sends: the number its own option gives (else a new one);
/// another kind's number is refused rather than ignored.
fn other_notice(
    kind: OtherKind,
    a: &NotifyArgs,
    transaction_id: &str,
) -> anyhow::Result<OtherNotice> {
    let given = [
        ("out_bill_no", &a.out_bill_no),
        ("out_batch_no", &a.out_batch_no),
        ("out_order_no", &a.out_order_no),
    ];
    let mut out_no = None;
    for (field, value) in given {
        match value {
            Some(no) if field == kind.out_no_field() => out_no = Some(no.clone()),
            Some(_) => bail!(
                "--{} does not apply to {}",
                field.replace('_', "-"),
                kind.as_str()
            ),
            None => {}
        }
    }
    let out_no = out_no.unwrap_or_else(|| format!("SIM{}", build::random_string(12)));
    Ok(OtherNotice {
        event_type: a.event_type.clone(),
        state: a.state.clone(),
        transaction_id: transaction_id.to_owned(),
        profitsharing_as_transaction: a.profitsharing_as_transaction,
        ..OtherNotice::new(kind, out_no, a.amount, Utc::now())
    })
}

/// The combine payment `notify --kind v3-combine` sends: `--sub-order`s that add up to
/// `--amount`, for the merchant itself; the book's copy of the same combine payment keeps its
/// transactions (a re-send).
fn combine_payment(
    a: &NotifyArgs,
    combine_out_trade_no: &str,
    book: &OrderBookFile,
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<CombinePayment> {
    if a.sub.sub_mch_id.is_some() {
        bail!("v3-combine is sent for the merchant itself: leave out --sub-mch-id");
    }
    if a.sub_orders.is_empty() {
        bail!("v3-combine needs at least one --sub-order OUT_TRADE_NO:AMOUNT[:MCHID]");
    }
    let total: i64 = a.sub_orders.iter().map(|sub| sub.amount).sum();
    if total != a.amount {
        bail!(
            "the --sub-order amounts add up to {total} fen, --amount says {}",
            a.amount
        );
    }
    let known = book.read()?.combines.get(combine_out_trade_no).cloned();
    Ok(CombinePayment::paid(
        combine_out_trade_no,
        &a.sub_orders,
        known.as_ref(),
        now,
    ))
}

fn parse_sign_type(s: &str) -> Result<SignType, String> {
    s.parse::<SignType>()
        .map_err(|_| "expected MD5 or HMAC-SHA256".to_owned())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match wxpay_runtime::process::block_on(run(cli)) {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => ExitCode::FAILURE,
        Ok(Err(e)) => {
            eprintln!("wxpay-sim: error: {e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("wxpay-sim: error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok(false)`: ran, but the outcome is a failure (not acknowledged, verification failed).
async fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Init(a) => run_init(a),
        Command::Notify(a) => run_notify(&cli.sim_config, a).await,
        Command::Serve(a) => run_serve(&cli.sim_config, a).await,
        Command::Order(a) => run_order(&cli.sim_config, a),
        Command::Load(a) => run_load(&cli.sim_config, cli.config.as_deref(), a).await,
    }
}

fn run_init(a: InitArgs) -> anyhow::Result<bool> {
    let options = InitOptions {
        dir: a.dir,
        force: a.force,
        mch_id: a.mch_id,
        appid: a.appid,
        api_base: a.api_base,
        key_bits: a.key_bits,
        partner: a.partner,
    };
    match init::init(&options)? {
        InitOutcome::Written {
            example,
            simulator,
            mch_id,
            platform_serial,
        } => {
            println!(
                "wrote {} (gateway and worker configuration)",
                example.display()
            );
            println!(
                "wrote {} (simulator secrets: platform private key)",
                simulator.display()
            );
            println!("test merchant {mch_id}, platform key serial {platform_serial}");
            if options.partner {
                println!(
                    "a service provider: sub-merchants {} (notify, order and load take --sub-mch-id)",
                    init::PARTNER_SUB_MCH_IDS.join(", ")
                );
            }
        }
        InitOutcome::Kept { example, simulator } => {
            println!(
                "kept existing {} and {} (valid; use --force to replace them)",
                example.display(),
                simulator.display()
            );
        }
    }
    Ok(true)
}

fn load_merchant(path: &Path) -> anyhow::Result<SimMerchant> {
    Ok(SimMerchant::load(path)?)
}

/// The merchant of `path`, acting for the sub-merchant `sub` names, if any.
fn acting_merchant(path: &Path, sub: &SubMerchantArg) -> anyhow::Result<SimMerchant> {
    let merchant = load_merchant(path)?;
    match &sub.sub_mch_id {
        None => Ok(merchant),
        Some(sub_mch_id) => merchant
            .for_sub_merchant(sub_mch_id)
            .map_err(anyhow::Error::msg),
    }
}

async fn run_notify(sim_config: &Path, a: NotifyArgs) -> anyhow::Result<bool> {
    let m = acting_merchant(sim_config, &a.sub)?;
    let variant = if a.forge {
        Variant::Forge
    } else if a.tamper_amount {
        Variant::TamperAmount
    } else if a.probe {
        Variant::Probe
    } else if a.stale {
        Variant::Stale
    } else {
        Variant::Genuine
    };
    let options = DeliveryOptions {
        time_scale: a.time_scale,
        max_attempts: a.max_attempts,
        ..DeliveryOptions::default()
    };
    options.validate()?;
    let out_trade_no = match (a.kind, &a.out_trade_no) {
        (Kind::V3Other(_), _) => String::new(),
        (_, Some(no)) => no.clone(),
        (kind, None) => bail!("--out-trade-no is required for {}", kind.as_str()),
    };
    let book = OrderBookFile::new(&m.orders_path);
    let known = book.read()?.orders.get(&out_trade_no).cloned();
    let transaction_id = a
        .transaction_id
        .clone()
        .or_else(|| known.as_ref().and_then(|o| o.transaction_id.clone()))
        .unwrap_or_else(build::new_transaction_id);
    let now = Utc::now();
    let payment = Payment {
        out_trade_no: out_trade_no.clone(),
        transaction_id: transaction_id.clone(),
        amount: a.amount,
        openid: "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".into(),
        paid_at: known.as_ref().and_then(|o| o.paid_at).unwrap_or(now),
    };
    let refund = || Refund {
        out_trade_no: out_trade_no.clone(),
        transaction_id: transaction_id.clone(),
        out_refund_no: a
            .out_refund_no
            .clone()
            .unwrap_or_else(|| format!("R{out_trade_no}")),
        refund_id: build::new_refund_id(),
        total_fee: a.amount,
        refund_fee: a.refund_fee.unwrap_or(a.amount),
        succeeded_at: now,
    };
    let signing = V2Signing {
        sign_type: a.sign_type,
        omit_sign_type: a.omit_sign_type,
    };
    let notification = match a.kind {
        Kind::V2Pay => build::v2_pay(&m, &payment, signing, variant)?,
        Kind::V3Pay => build::v3_pay(&m, &payment, variant, now)?,
        Kind::V2Refund => build::v2_refund(&m, &refund(), variant)?,
        Kind::V3Refund => build::v3_refund(&m, &refund(), variant, now)?,
        Kind::V3Combine => {
            let combine = combine_payment(&a, &out_trade_no, &book, now)?;
            let notification = combine::v3_combine(&m, &combine, variant, now)?;
            // WeChat Pay knows about a payment before it notifies: genuine only.
            if variant == Variant::Genuine {
                book.update(|b| b.upsert_combine(combine.clone()))?;
            }
            let sub_orders: Vec<String> = combine
                .sub_orders
                .iter()
                .map(|sub| format!("{}={}", sub.out_trade_no, sub.transaction_id))
                .collect();
            println!(
                "{} {} combine_out_trade_no={out_trade_no} sub_orders={} -> {}{}",
                Kind::V3Combine.as_str(),
                variant.as_str(),
                sub_orders.join(","),
                a.target.trim_end_matches('/'),
                notification.route,
            );
            notification
        }
        Kind::V3Other(kind) => {
            let notice = other_notice(kind, &a, &transaction_id)?;
            let notification = notice.notification(&m, variant, now)?;
            println!(
                "{} {} {}={} -> {}{}",
                kind.as_str(),
                variant.as_str(),
                kind.out_no_field(),
                notice.out_no,
                a.target.trim_end_matches('/'),
                notification.route,
            );
            notification
        }
    };
    // WeChat Pay knows about a payment (or refund) before it notifies: record it, genuine only.
    if variant == Variant::Genuine {
        match a.kind {
            Kind::V2Pay | Kind::V3Pay => book.update(|b| {
                b.upsert_order(OrderRecord {
                    out_trade_no: payment.out_trade_no.clone(),
                    transaction_id: Some(transaction_id.clone()),
                    amount: payment.amount,
                    state: TradeState::Success,
                    paid_at: Some(payment.paid_at),
                    openid: Some(payment.openid.clone()),
                })
            })?,
            // About no order: nothing for the order book.
            Kind::V3Other(_) => {}
            // Recorded with its notification above.
            Kind::V3Combine => {}
            Kind::V2Refund | Kind::V3Refund => {
                let r = refund();
                book.update(|b| {
                    if !b.orders.contains_key(&r.out_trade_no) {
                        b.upsert_order(OrderRecord {
                            out_trade_no: r.out_trade_no.clone(),
                            transaction_id: Some(r.transaction_id.clone()),
                            amount: r.total_fee,
                            state: TradeState::Success,
                            paid_at: Some(now),
                            openid: None,
                        });
                    }
                    b.upsert_refund(RefundRecord {
                        out_refund_no: r.out_refund_no.clone(),
                        out_trade_no: r.out_trade_no.clone(),
                        transaction_id: r.transaction_id.clone(),
                        refund_id: r.refund_id.clone(),
                        total_fee: r.total_fee,
                        refund_fee: r.refund_fee,
                        status: RefundStatus::Success,
                        succeeded_at: Some(r.succeeded_at),
                    })
                })?
            }
        }
    }
    // The other kinds and combine payments said what they are about above.
    if !matches!(a.kind, Kind::V3Other(_) | Kind::V3Combine) {
        println!(
            "{} {} out_trade_no={}{} transaction_id={} -> {}{}",
            notification.kind.as_str(),
            variant.as_str(),
            notification.out_trade_no,
            notification
                .out_refund_no
                .as_deref()
                .map(|r| format!(" out_refund_no={r}"))
                .unwrap_or_default(),
            transaction_id,
            a.target.trim_end_matches('/'),
            notification.route
        );
    }
    let client = reqwest::Client::new();
    let delivery = notify::deliver(&client, &a.target, &notification, &options, |attempt| {
        println!(
            "attempt {}: {} in {} ms -> {}",
            attempt.number,
            attempt.judgement.reason,
            attempt.latency.as_millis(),
            if attempt.judgement.success {
                "acknowledged"
            } else if attempt.number < options.max_attempts {
                "failure, WeChat Pay re-sends"
            } else {
                "failure, no attempts left"
            }
        );
        if !attempt.judgement.success && attempt.number < options.max_attempts {
            println!(
                "  next attempt in {} ms",
                options.delay_before(attempt.number + 1).as_millis()
            );
        }
    })
    .await?;
    if delivery.acknowledged {
        println!("acknowledged after {} attempt(s)", delivery.attempts.len());
    } else {
        println!(
            "not acknowledged after {} attempt(s)",
            delivery.attempts.len()
        );
    }
    Ok(delivery.acknowledged)
}

async fn run_serve(sim_config: &Path, a: ServeArgs) -> anyhow::Result<bool> {
    wxpay_runtime::telemetry::init_logging("simulator");
    let m = load_merchant(sim_config)?;
    let orders = m.orders_path.clone();
    let (server, addr) =
        serve::bind(m, &a.listen).with_context(|| format!("cannot listen on {}", a.listen))?;
    eprintln!(
        "wxpay-sim serve: WeChat Pay query API on http://{addr} (order book {})",
        orders.display()
    );
    server.await.context("server failed")?;
    Ok(true)
}

fn run_order(sim_config: &Path, a: OrderArgs) -> anyhow::Result<bool> {
    let m = acting_merchant(sim_config, &a.sub)?;
    let record = serve::order_record(serve::OrderRequest {
        out_trade_no: a.out_trade_no,
        amount: a.amount,
        state: Some(a.state.to_string()),
        transaction_id: a.transaction_id,
    })
    .map_err(anyhow::Error::msg)?;
    let line = format!(
        "order {} {} fen {}{} in {}",
        record.out_trade_no,
        record.amount,
        record.state,
        record
            .transaction_id
            .as_deref()
            .map(|t| format!(" transaction_id={t}"))
            .unwrap_or_default(),
        m.orders_path.display()
    );
    OrderBookFile::new(&m.orders_path).update(|b| b.upsert_order(record))?;
    println!("{line}");
    Ok(true)
}

/// The services' database and broker settings: those of --config (or $WXPAY_CONFIG, or
/// config/wxpay.toml) when there is such a file, else the local defaults.
fn services(
    config: Option<&Path>,
) -> anyhow::Result<(
    wxpay_runtime::config::DatabaseSettings,
    wxpay_runtime::config::RabbitmqSettings,
)> {
    let path = wxpay_runtime::config::resolve_path(config);
    if config.is_some() || path.is_file() {
        let settings = wxpay_runtime::config::Settings::load(&path)?;
        return Ok((settings.database, settings.rabbitmq));
    }
    Ok(Default::default())
}

async fn run_load(sim_config: &Path, config: Option<&Path>, a: LoadArgs) -> anyhow::Result<bool> {
    let m = acting_merchant(sim_config, &a.sub)?;
    let v2_share = plan::parse_mix(&a.mix)?;
    let needs_services = (!a.no_db && a.database_url.is_none())
        || (a.report.is_some() && (a.amqp_url.is_none() || a.queue.is_none()));
    let (database, rabbitmq) = if needs_services {
        services(config)?
    } else {
        Default::default()
    };
    let database_url = (!a.no_db).then(|| {
        a.database_url
            .unwrap_or_else(|| database.url.expose_secret().to_owned())
    });
    let report = a.report.map(|dir| load::report::ReportOptions {
        dir,
        queue: Some(load::report::QueueProbe {
            amqp_url: a
                .amqp_url
                .unwrap_or_else(|| rabbitmq.url.expose_secret().to_owned()),
            queue: a.queue.unwrap_or(rabbitmq.queue),
        }),
    });
    if a.dup_ratio.is_nan() || a.forged_ratio.is_nan() || a.tampered_ratio.is_nan() {
        bail!("ratios must be numbers between 0 and 1");
    }
    let options = LoadOptions {
        target: a.target,
        rate: a.rate,
        duration: a.duration,
        ratios: plan::Ratios {
            v2_share,
            dup: a.dup_ratio,
            forged: a.forged_ratio,
            tampered: a.tampered_ratio,
        },
        database_url,
        drain_timeout: Duration::from_secs(a.drain_timeout),
        concurrency: a.concurrency,
        answer_timeout: notify::WECHAT_ANSWER_TIMEOUT,
        record_order_book: !a.no_order_book,
        report,
    };
    let report = load::run(&m, &options, |line| eprintln!("wxpay-sim load: {line}")).await?;
    if a.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.summary());
    }
    Ok(report.verified)
}
