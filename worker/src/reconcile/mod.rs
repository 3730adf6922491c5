//! `wxpay-worker reconcile [--once]`: the active query (查询订单 / 查询退款) for
//! notifications that never came.
//!
//! WeChat Pay asks merchants to query orders whose result notification did not arrive
//! ("商户后台未收到异步支付结果通知…应调用查询订单接口确认订单状态",
//! <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_2>): a firewall, a wrong
//! `notify_url` or an outage on our side would otherwise lose the payment for good.
//!
//! A round, for every configured merchant at once (a failing merchant does not hold up the
//! others):
//! 1. pages through its `NOTPAY` orders older than `reconciler.min_age_secs` and younger
//!    than `reconciler.horizon_secs`, then its `PROCESSING` refunds older than
//!    `min_age_secs`, oldest first, `reconciler.batch_size` rows per page (a round sweeps the
//!    whole window, so the oldest rows never starve the newer ones);
//! 2. queries WeChat Pay for each ([`query`]: v2 or v3, answers verified, paced at
//!    `reconciler.rate_per_merchant` per second, retried on 5xx / 429);
//! 3. acts on the verified answer:
//!    - paid (`SUCCESS`, `REFUND`) or a finished refund: the raw answer is **published** to
//!      the notification queue as `query.pay` / `query.refund` with publisher confirms
//!      ([`publish`]); the worker applies it through the one apply path, and the business
//!      dedupe key (`pay:{mch_id}:{transaction_id}`) makes a notification arriving at the
//!      same time harmless. Found while our row is still unpaid / processing, it counts in
//!      `wxpay_reconciler_recovered_total{kind}`: a lost notification;
//!    - `CLOSED` / `PAYERROR` / `REVOKED`: the order is closed directly with a guarded
//!      `UPDATE … WHERE state = 'NOTPAY'` when `reconciler.close_unpaid` (it moves no money);
//!    - `NOTPAY` / `USERPAYING` / refund `PROCESSING`: asked again next round.
//!
//! Beside the rounds, the platform certificates of the merchants that download them are
//! refreshed on their own schedule ([`certificates`]).
//!
//! A merchant whose API keeps failing (three queries in a row unavailable after their
//! retries) is left for the rest of the round.

pub mod certificates;
pub mod lock;
pub mod metrics;
pub mod publish;
pub mod query;
pub mod rate;
pub mod store;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::{join_all, BoxFuture};
use tokio_util::sync::CancellationToken;
use wxpay_runtime::config::{Merchant, ReconcilerSettings, Settings};
use wxpay_runtime::reload::MerchantsHandle;
use wxpay_runtime::telemetry::{self, metric, step};
use wxpay_shared::message::{NotifyKind, NotifyMessage};
use wxpay_shared::state::{RefundStatus, TradeState};
use wxpay_shared::v3::CombineTransaction;

use self::metrics::reason;
use self::publish::Publisher;
use self::query::{Answer, Api, Found, OrderOf, QueryClient, QueryError, Record};
use self::rate::RateLimiter;
use self::store::StoreError;
use crate::broker::BrokerError;
use crate::db::{self, DbPool};
use crate::http::{self, Readiness};
use crate::StartError;

/// Queries in a row that found the API unavailable before a merchant is left for the rest
/// of the round.
const MAX_CONSECUTIVE_UNAVAILABLE: u32 = 3;
/// Connections the reconciler needs: one per merchant task at a time, bounded.
const MAX_POOL_SIZE: usize = 8;

/// Why a round could not run (the `--once` exit status).
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    #[error("cannot publish to the broker: {0}")]
    Broker(#[from] BrokerError),
    #[error("cannot read due orders/refunds of {failed} merchant(s): {first}")]
    Database { failed: usize, first: StoreError },
    #[error("cannot take the round lock: {0}")]
    Lock(StoreError),
}

/// What one round did (also in the logs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoundReport {
    /// Orders and refunds queried.
    pub checked: u64,
    /// Answers published to the queue (payments and finished refunds).
    pub published: u64,
    /// Payments found only by the query.
    pub recovered_payments: u64,
    /// Refund results found only by the query.
    pub recovered_refunds: u64,
    /// Unpaid orders closed.
    pub closed: u64,
    /// Errors counted in `wxpay_reconciler_errors_total`.
    pub errors: u64,
    /// Merchants left for the rest of the round (API unavailable).
    pub merchants_skipped: u64,
    /// Another replica held the round lock: this round did nothing.
    pub skipped: bool,
}

impl RoundReport {
    fn merge(&mut self, other: &RoundReport) {
        self.checked += other.checked;
        self.published += other.published;
        self.recovered_payments += other.recovered_payments;
        self.recovered_refunds += other.recovered_refunds;
        self.closed += other.closed;
        self.errors += other.errors;
        self.merchants_skipped += other.merchants_skipped;
    }

    fn error(&mut self, label: &'static str) {
        metrics::error(label);
        self.errors += 1;
    }
}

/// What an order's `trade_state` asks of us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// `SUCCESS`, or `REFUND` (转入退款: paid, then refunded): publish it.
    Paid,
    /// `CLOSED`, `PAYERROR`, `REVOKED`: will never be paid.
    Closed,
    /// `NOTPAY`, `USERPAYING`: ask again later.
    Pending,
}

fn trade_state(wire: &str) -> Option<Next> {
    Some(match TradeState::parse(wire)? {
        TradeState::Success | TradeState::Refund => Next::Paid,
        TradeState::Closed | TradeState::PayError | TradeState::Revoked => Next::Closed,
        TradeState::NotPay | TradeState::UserPaying => Next::Pending,
    })
}

/// What a verified answer asks of us, for an order or a refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Paid, or a finished refund: publish the answer.
    Publish,
    /// Will never be paid, and `reconciler.close_unpaid`: close the order here.
    Close,
    /// Not settled yet: ask again next round.
    Wait,
    /// A state we do not know: counted as an error.
    Unknown,
}

/// The record a check is about: what differs between checking an order and a refund.
struct Subject<'r> {
    record: Record,
    /// `out_trade_no` or `out_refund_no`.
    number: &'r str,
    of: OrderOf<'r>,
    /// The order's `out_trade_no` (the refunded order's, for a refund).
    out_trade_no: &'r str,
}

/// Whether a refund status (v2 or v3 spelling) is final: `Some(true)` finished (published),
/// `Some(false)` still processing.
fn refund_finished(wire: &str) -> Option<bool> {
    RefundStatus::parse(wire).map(|status| status.normalised().is_final())
}

struct Inner {
    settings: ReconcilerSettings,
    rabbitmq: wxpay_runtime::config::RabbitmqSettings,
    /// Read once per round: a reload applies from the next round on.
    merchants: MerchantsHandle,
    pool: DbPool,
    client: QueryClient,
    /// Kept across rounds while connected.
    publisher: tokio::sync::Mutex<Option<Arc<Publisher>>>,
    broker_connected: AtomicBool,
}

/// The reconciler: cheap to clone.
#[derive(Clone)]
pub struct Reconciler {
    inner: Arc<Inner>,
}

/// The reconciler has no consumer: it is ready when its publisher's connection is up.
impl Readiness for Reconciler {
    fn broker(&self) -> bool {
        self.broker_connected()
    }

    fn database(&self) -> &DbPool {
        self.pool()
    }
}

impl Reconciler {
    /// Validates the merchants and builds the (lazy) database pool and the HTTP client.
    /// Must be called within a Tokio runtime.
    pub fn new(settings: &Settings) -> Result<Reconciler, StartError> {
        let merchants = MerchantsHandle::fixed(settings.merchants()?);
        Self::with_merchants(settings, merchants)
    }

    /// As [`Reconciler::new`], querying for `merchants` (`wxpay-worker reconcile` reloads
    /// them on SIGHUP and when the configuration file changes).
    pub fn with_merchants(
        settings: &Settings,
        merchants: MerchantsHandle,
    ) -> Result<Reconciler, StartError> {
        metrics::register();
        let pool = db::build_pool(
            secrecy::ExposeSecret::expose_secret(&settings.database.url),
            settings.worker.db_pool_size.min(MAX_POOL_SIZE),
            Duration::from_millis(settings.database.connect_timeout_ms),
            Duration::from_millis(settings.database.pool_wait_timeout_ms),
        )?;
        let client = QueryClient::new(&settings.wechatpay)?;
        Ok(Reconciler {
            inner: Arc::new(Inner {
                settings: settings.reconciler.clone(),
                rabbitmq: settings.rabbitmq.clone(),
                merchants,
                pool,
                client,
                publisher: tokio::sync::Mutex::new(None),
                broker_connected: AtomicBool::new(false),
            }),
        })
    }

    pub fn pool(&self) -> &DbPool {
        &self.inner.pool
    }

    /// Whether the publisher's broker connection is up (between rounds too: a broker lost
    /// after the last round shows at once). While a round is (re)connecting, the outcome of
    /// the last attempt.
    pub fn broker_connected(&self) -> bool {
        match self.inner.publisher.try_lock() {
            Ok(slot) => slot
                .as_ref()
                .is_some_and(|publisher| publisher.is_connected()),
            Err(_) => self.inner.broker_connected.load(Ordering::Relaxed),
        }
    }

    /// The publisher, connecting again if the last connection was lost.
    async fn publisher(&self) -> Result<Arc<Publisher>, BrokerError> {
        let mut slot = self.inner.publisher.lock().await;
        if let Some(publisher) = slot.as_ref() {
            if publisher.is_connected() {
                return Ok(publisher.clone());
            }
        }
        *slot = None;
        self.inner.broker_connected.store(false, Ordering::Relaxed);
        let publisher = Arc::new(Publisher::connect(&self.inner.rabbitmq).await?);
        *slot = Some(publisher.clone());
        self.inner.broker_connected.store(true, Ordering::Relaxed);
        Ok(publisher)
    }

    /// Closes the broker connection (end of `--once`, shutdown).
    pub async fn close(&self) {
        if let Some(publisher) = self.inner.publisher.lock().await.take() {
            publisher.close().await;
        }
        self.inner.broker_connected.store(false, Ordering::Relaxed);
    }

    /// Runs one round over every merchant. `Err` when the round could not run (broker
    /// unreachable, due rows unreadable); query failures are counted, not fatal.
    pub async fn round(&self, shutdown: &CancellationToken) -> Result<RoundReport, RoundError> {
        let started = Instant::now();
        // Held until the end of the round (dropped on every return below).
        let _lock = match lock::try_acquire(&self.inner.pool).await {
            Ok(Some(held)) => held,
            Ok(None) => {
                metrics::round_skipped();
                tracing::warn!(
                    step = step::RECONCILE,
                    "another reconciler holds the round lock: round skipped (is more than one running?)"
                );
                return Ok(RoundReport {
                    skipped: true,
                    ..RoundReport::default()
                });
            }
            Err(error) => {
                metrics::error(reason::DATABASE);
                return Err(RoundError::Lock(error));
            }
        };
        let publisher = match self.publisher().await {
            Ok(publisher) => publisher,
            Err(error) => {
                metrics::error(reason::BROKER);
                return Err(RoundError::Broker(error));
            }
        };
        let settings = &self.inner.settings;
        let now = Utc::now();
        let window = Window {
            older_than: ago(now, settings.min_age_secs),
            newer_than: ago(now, settings.horizon_secs),
        };
        let merchants = self.inner.merchants.current();
        let rounds = merchants
            .iter()
            .map(|merchant| self.merchant_round(merchant, &publisher, &window, shutdown));
        let mut report = RoundReport::default();
        let mut failures = Vec::new();
        for (result, merchant) in join_all(rounds).await.into_iter().zip(merchants.iter()) {
            let (merchant_report, failure) = result;
            report.merge(&merchant_report);
            if let Some(error) = failure {
                tracing::error!(step = step::RECONCILE, mch_id = merchant.mch_id.as_str(), %error, "cannot read due orders/refunds");
                failures.push(error);
            }
        }
        if !failures.is_empty() {
            let failed = failures.len();
            let first = failures.swap_remove(0);
            return Err(RoundError::Database { failed, first });
        }
        let elapsed = started.elapsed();
        ::metrics::histogram!(metric::RECONCILER_ROUND_DURATION_SECONDS)
            .record(elapsed.as_secs_f64());
        tracing::info!(
            step = step::RECONCILE,
            checked = report.checked,
            published = report.published,
            recovered_payments = report.recovered_payments,
            recovered_refunds = report.recovered_refunds,
            closed = report.closed,
            errors = report.errors,
            merchants_skipped = report.merchants_skipped,
            elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            "round finished"
        );
        Ok(report)
    }

    /// Rounds every `reconciler.interval_secs` until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) {
        let interval = seconds_std(self.inner.settings.interval_secs);
        loop {
            if let Err(error) = self.round(&shutdown).await {
                tracing::error!(step = step::RECONCILE, %error, "round could not run; trying again next interval");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
        self.close().await;
    }

    /// One merchant's part of a round: its report, and the database error that cut it
    /// short, if any.
    async fn merchant_round(
        &self,
        merchant: &Arc<Merchant>,
        publisher: &Publisher,
        window: &Window,
        shutdown: &CancellationToken,
    ) -> (RoundReport, Option<StoreError>) {
        let mut work = MerchantWork {
            reconciler: self,
            merchant,
            publisher,
            limiter: RateLimiter::per_second(self.inner.settings.rate_per_merchant),
            report: RoundReport::default(),
            unavailable_in_a_row: 0,
            combines_asked: HashSet::new(),
        };
        let result = work.sweep(window, shutdown).await;
        if let Err(error) = &result {
            if matches!(error, SweepStop::Database(_)) {
                work.report.error(reason::DATABASE);
            }
        }
        match result {
            Ok(()) => (work.report, None),
            Err(SweepStop::Unavailable) => {
                work.report.merchants_skipped += 1;
                tracing::warn!(
                    step = step::RECONCILE,
                    mch_id = merchant.mch_id.as_str(),
                    "WeChat Pay API unavailable for this merchant: left for the rest of the round"
                );
                (work.report, None)
            }
            Err(SweepStop::Shutdown) => (work.report, None),
            Err(SweepStop::Database(error)) => (work.report, Some(error)),
        }
    }
}

/// The created-at window of due orders.
struct Window {
    older_than: chrono::DateTime<Utc>,
    newer_than: chrono::DateTime<Utc>,
}

/// `now - secs`, saturating at the earliest representable time.
fn ago(now: chrono::DateTime<Utc>, secs: u64) -> chrono::DateTime<Utc> {
    i64::try_from(secs)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .and_then(|delta| now.checked_sub_signed(delta))
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC)
}

fn seconds_std(secs: u64) -> Duration {
    Duration::from_secs(secs.max(1))
}

/// Why a merchant's sweep ended early.
enum SweepStop {
    Shutdown,
    Unavailable,
    Database(StoreError),
}

impl From<StoreError> for SweepStop {
    fn from(error: StoreError) -> Self {
        SweepStop::Database(error)
    }
}

/// One merchant's sweep: sequential (the rate limit is per merchant), one limiter.
struct MerchantWork<'a> {
    reconciler: &'a Reconciler,
    merchant: &'a Arc<Merchant>,
    publisher: &'a Publisher,
    limiter: RateLimiter,
    report: RoundReport,
    unavailable_in_a_row: u32,
    /// The combine payments asked about this round: one answer covers all their sub orders.
    combines_asked: HashSet<String>,
}

impl<'a> MerchantWork<'a> {
    fn mch_id(&self) -> &str {
        &self.merchant.mch_id
    }

    async fn sweep(
        &mut self,
        window: &Window,
        shutdown: &CancellationToken,
    ) -> Result<(), SweepStop> {
        let reconciler = self.reconciler;
        let inner = &reconciler.inner;
        let batch = inner.settings.batch_size.max(1);
        let merchant = self.merchant;
        let mch_id = merchant.mch_id.as_str();
        let page = move |cursor| store::Page {
            mch_id,
            cursor,
            limit: batch,
        };
        self.sweep_pages(
            shutdown,
            batch,
            |cursor| async move {
                let window = (window.newer_than, window.older_than);
                store::due_orders(&inner.pool, page(cursor), window).await
            },
            |work, order| Box::pin(work.check_order(order)),
        )
        .await?;
        self.sweep_pages(
            shutdown,
            batch,
            |cursor| async move {
                store::due_refunds(&inner.pool, page(cursor), window.older_than).await
            },
            |work, refund| Box::pin(work.check_refund(refund)),
        )
        .await
    }

    /// Pages through due rows oldest first, `batch` at a time, checking each; a short page
    /// is the last.
    async fn sweep_pages<Row, Fetch, Page>(
        &mut self,
        shutdown: &CancellationToken,
        batch: i64,
        fetch: Fetch,
        check: for<'b> fn(
            &'b mut MerchantWork<'a>,
            &'b Row,
        ) -> BoxFuture<'b, Result<(), SweepStop>>,
    ) -> Result<(), SweepStop>
    where
        Row: store::Due,
        Fetch: Fn(Option<store::Cursor>) -> Page,
        Page: std::future::Future<Output = Result<Vec<Row>, StoreError>>,
    {
        let mut cursor = None;
        loop {
            let page = fetch(cursor.take()).await?;
            for row in &page {
                if shutdown.is_cancelled() {
                    return Err(SweepStop::Shutdown);
                }
                check(self, row).await?;
            }
            match page.last() {
                Some(last) if i64::try_from(page.len()).unwrap_or(i64::MAX) >= batch => {
                    cursor = Some(last.cursor());
                }
                _ => return Ok(()),
            }
        }
    }

    /// Counts a query failure; stops the merchant's sweep after
    /// [`MAX_CONSECUTIVE_UNAVAILABLE`] unavailable answers in a row.
    fn query_failed(
        &mut self,
        error: &QueryError,
        number: &str,
        what: &str,
    ) -> Result<(), SweepStop> {
        tracing::warn!(
            step = step::RECONCILE,
            mch_id = self.mch_id(),
            api = Api::for_merchant(self.merchant).as_str(),
            what,
            number,
            reason = error.code(),
            %error,
            "query failed"
        );
        self.report.error(error.code());
        if error.is_unavailable() {
            self.unavailable_in_a_row += 1;
            if self.unavailable_in_a_row >= MAX_CONSECUTIVE_UNAVAILABLE {
                return Err(SweepStop::Unavailable);
            }
        }
        Ok(())
    }

    async fn check_order(&mut self, order: &store::DueOrder) -> Result<(), SweepStop> {
        if let Some(combine_out_trade_no) = &order.combine_out_trade_no {
            return self.check_combine(order, combine_out_trade_no).await;
        }
        let of = OrderOf {
            appid: &order.appid,
            sub_mch_id: &order.sub_mch_id,
        };
        let subject = Subject {
            record: Record::Order,
            number: &order.out_trade_no,
            of,
            out_trade_no: &order.out_trade_no,
        };
        let Some(answer) = self.ask(&subject).await? else {
            return Ok(());
        };
        let verdict = match trade_state(&answer.state) {
            Some(Next::Paid) => Verdict::Publish,
            Some(Next::Closed) if self.reconciler.inner.settings.close_unpaid => Verdict::Close,
            Some(Next::Closed) | Some(Next::Pending) => Verdict::Wait,
            None => Verdict::Unknown,
        };
        self.act(&subject, answer, verdict).await;
        Ok(())
    }

    async fn check_refund(&mut self, refund: &store::DueRefund) -> Result<(), SweepStop> {
        let out_refund_no = refund.out_refund_no.as_str();
        let Some(appid) = refund
            .appid
            .as_deref()
            .or_else(|| self.merchant.appids.first().map(String::as_str))
        else {
            tracing::warn!(
                step = step::RECONCILE,
                mch_id = self.mch_id(),
                out_refund_no,
                "no appid to query the refund with"
            );
            self.report.error(reason::CLIENT);
            return Ok(());
        };
        let of = OrderOf {
            appid,
            sub_mch_id: &refund.sub_mch_id,
        };
        let subject = Subject {
            record: Record::Refund,
            number: out_refund_no,
            of,
            out_trade_no: &refund.out_trade_no,
        };
        let Some(answer) = self.ask(&subject).await? else {
            return Ok(());
        };
        let verdict = match refund_finished(&answer.state) {
            Some(true) => Verdict::Publish,
            Some(false) => Verdict::Wait,
            None => Verdict::Unknown,
        };
        self.act(&subject, answer, verdict).await;
        Ok(())
    }

    /// A sub order of a combine payment (合单支付): WeChat Pay answers for the whole combine
    /// payment only, so the combine query is asked once per combine payment and round, and
    /// its answer is published when any sub order is paid (the worker books each sub order
    /// under its own payment key). Sub orders of this merchant that WeChat Pay closed are
    /// closed as plain orders are.
    async fn check_combine(
        &mut self,
        order: &store::DueOrder,
        combine_out_trade_no: &str,
    ) -> Result<(), SweepStop> {
        if !self.combines_asked.insert(combine_out_trade_no.to_owned()) {
            return Ok(());
        }
        let order_subject = Subject {
            record: Record::Order,
            number: &order.out_trade_no,
            of: OrderOf {
                appid: &order.appid,
                sub_mch_id: &order.sub_mch_id,
            },
            out_trade_no: &order.out_trade_no,
        };
        let found = self
            .reconciler
            .inner
            .client
            .query_combine(self.merchant, combine_out_trade_no, &self.limiter)
            .await;
        let combine_subject = Subject {
            number: combine_out_trade_no,
            ..order_subject
        };
        let Some(answer) = self.answered(&combine_subject, found)? else {
            return Ok(());
        };
        // Verified and parsed by the query already.
        let Ok(combine) = CombineTransaction::parse(&answer.body) else {
            self.report.error(reason::MALFORMED);
            return Ok(());
        };
        let nexts: Vec<Option<Next>> = combine
            .sub_orders
            .iter()
            .map(|sub| trade_state(&sub.trade_state))
            .collect();
        let close = self.reconciler.inner.settings.close_unpaid;
        let closed: Vec<_> = combine
            .sub_orders
            .iter()
            .zip(&nexts)
            .filter(|(sub, next)| {
                close && **next == Some(Next::Closed) && sub.mchid == self.merchant.mch_id
            })
            .map(|(sub, _)| sub)
            .collect();
        let paid = nexts.contains(&Some(Next::Paid));
        for sub in &closed {
            let subject = Subject {
                number: &sub.out_trade_no,
                of: OrderOf {
                    appid: sub.paid_appid(&combine.combine_appid),
                    sub_mch_id: &sub.sub_mchid,
                },
                out_trade_no: &sub.out_trade_no,
                ..order_subject
            };
            self.act(&subject, answer.clone(), Verdict::Close).await;
        }
        let verdict = if paid {
            Verdict::Publish
        } else if nexts.contains(&None) {
            Verdict::Unknown
        } else if closed.is_empty() {
            Verdict::Wait
        } else {
            return Ok(());
        };
        self.act(&order_subject, answer, verdict).await;
        Ok(())
    }

    /// Queries WeChat Pay about `subject`: its answer, or `None` when there is nothing to
    /// act on (the query failed, or WeChat Pay does not know the record; both logged and
    /// counted here).
    async fn ask(&mut self, subject: &Subject<'_>) -> Result<Option<Answer>, SweepStop> {
        let found = self
            .reconciler
            .inner
            .client
            .query(
                subject.record,
                self.merchant,
                subject.of,
                subject.number,
                &self.limiter,
            )
            .await;
        self.answered(subject, found)
    }

    /// What WeChat Pay `found` about `subject`: counted as checked; its answer, or `None`
    /// when there is nothing to act on (as [`Self::ask`]).
    fn answered(
        &mut self,
        subject: &Subject<'_>,
        found: Result<Found, QueryError>,
    ) -> Result<Option<Answer>, SweepStop> {
        self.report.checked += 1;
        metrics::checked();
        let found = match found {
            Err(error) => {
                return self
                    .query_failed(&error, subject.number, subject.record.as_str())
                    .map(|()| None)
            }
            Ok(found) => found,
        };
        self.unavailable_in_a_row = 0;
        let Found::Answer(answer) = found else {
            match subject.record {
                // The user never opened the payment: WeChat Pay has no such order yet.
                Record::Order => tracing::debug!(
                    step = step::RECONCILE,
                    mch_id = self.mch_id(),
                    out_trade_no = subject.number,
                    "order unknown to WeChat Pay"
                ),
                // We started this refund: WeChat Pay must know it.
                Record::Refund => {
                    tracing::warn!(
                        step = step::RECONCILE,
                        mch_id = self.mch_id(),
                        out_refund_no = subject.number,
                        out_trade_no = subject.out_trade_no,
                        "refund processing here but unknown to WeChat Pay"
                    );
                    self.report.error(reason::NOT_FOUND);
                }
            }
            return Ok(None);
        };
        Ok(Some(answer))
    }

    /// Does what the verified `answer` about `subject` asks (`verdict`).
    async fn act(&mut self, subject: &Subject<'_>, answer: Answer, verdict: Verdict) {
        let (what, number) = (subject.record.as_str(), subject.number);
        let state = answer.state.clone();
        let key = (self.mch_id(), subject.of.sub_mch_id);
        let pool = &self.reconciler.inner.pool;
        match verdict {
            Verdict::Publish => {
                // Read before publishing: once published, the worker may apply it at once.
                let unsettled =
                    self.still(store::still_due(pool, subject.record, key, number).await);
                // The message kind, and the `kind` of `wxpay_reconciler_recovered_total`.
                let (kind, label) = match subject.record {
                    Record::Order => (NotifyKind::QueryPay, "pay"),
                    Record::Refund => (NotifyKind::QueryRefund, "refund"),
                };
                let published = self
                    .publish(kind, answer, (number, subject.of.sub_mch_id))
                    .await;
                if published && unsettled {
                    match subject.record {
                        Record::Order => self.report.recovered_payments += 1,
                        Record::Refund => self.report.recovered_refunds += 1,
                    }
                    metrics::recovered(label);
                    let lost = "found only by query: its notification was lost";
                    self.warn_answer(subject, &state, lost);
                }
            }
            Verdict::Close => match store::close_unpaid(pool, key, number).await {
                Ok(true) => {
                    self.report.closed += 1;
                    tracing::info!(
                        step = step::RECONCILE,
                        mch_id = self.mch_id(),
                        out_trade_no = number,
                        trade_state = state,
                        "unpaid order closed"
                    );
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(step = step::RECONCILE, mch_id = self.mch_id(), out_trade_no = number, %error, "cannot close the unpaid order");
                    self.report.error(reason::DATABASE);
                }
            },
            Verdict::Wait => {
                tracing::debug!(
                    step = step::RECONCILE,
                    mch_id = self.mch_id(),
                    number,
                    "{what} not settled yet: {state}"
                );
            }
            Verdict::Unknown => {
                self.warn_answer(subject, &state, "state unknown");
                self.report.error(reason::UNKNOWN_STATE);
            }
        }
    }

    /// Warns about the answer on `subject` in state `state`: the one form of every warning
    /// about an answer. The number is logged under the field every other line uses for it
    /// (`out_trade_no` or `out_refund_no`), so an operator's search finds these too.
    fn warn_answer(&self, subject: &Subject<'_>, state: &str, message: &str) {
        let (out_trade_no, out_refund_no) = match subject.record {
            Record::Order => (Some(subject.number), None),
            Record::Refund => (None, Some(subject.number)),
        };
        tracing::warn!(
            step = step::RECONCILE,
            mch_id = self.mch_id(),
            out_trade_no,
            out_refund_no,
            state,
            "{} {message}",
            subject.record.as_str()
        );
    }

    /// Whether the row is still due (for the recovered count only: on a database error the
    /// answer is still published, and counted as recovered).
    fn still(&mut self, due: Result<bool, StoreError>) -> bool {
        due.unwrap_or_else(|error| {
            tracing::warn!(step = step::RECONCILE, mch_id = self.mch_id(), %error, "cannot re-read the row's state");
            self.report.error(reason::DATABASE);
            true
        })
    }

    /// Publishes a verified answer about `number` of the sub-merchant `sub_mch_id` (empty:
    /// a direct merchant's); `true` once the broker confirmed it.
    async fn publish(
        &mut self,
        kind: NotifyKind,
        answer: Answer,
        (number, sub_mch_id): (&str, &str),
    ) -> bool {
        let mut message = NotifyMessage::new(
            kind,
            self.mch_id(),
            answer.body,
            answer.content_type,
            answer.wechatpay,
        );
        message.sub_mch_id = Some(sub_mch_id.to_owned()).filter(|sub| !sub.is_empty());
        match self.publisher.publish(&message).await {
            Ok(()) => {
                self.report.published += 1;
                tracing::info!(step = step::RECONCILE, request_id = %message.message_id, mch_id = self.mch_id(), kind = kind.as_str(), number, state = answer.state.as_str(), "query answer published");
                true
            }
            Err(error) => {
                tracing::warn!(step = step::RECONCILE, request_id = %message.message_id, mch_id = self.mch_id(), kind = kind.as_str(), number, %error, "cannot publish the query answer; next round asks again");
                self.report.error(reason::BROKER);
                false
            }
        }
    }
}

/// `wxpay-worker reconcile [--once]`. With `once`, one round, then `Err` if it could not
/// run. Otherwise serves /healthz /readyz /metrics on `reconciler.metrics_listen` and
/// runs rounds every `reconciler.interval_secs` until `shutdown` (SIGTERM).
pub async fn run(
    settings: &Settings,
    merchants: MerchantsHandle,
    once: bool,
    shutdown: CancellationToken,
) -> Result<(), ReconcileError> {
    // The recorder first: metrics registered before it exists would be lost.
    let prometheus = telemetry::metrics_handle();
    let reconciler = Reconciler::with_merchants(settings, merchants)?;
    if once {
        reconciler.refresh_certificates().await;
        let result = reconciler.round(&shutdown).await;
        reconciler.close().await;
        result?;
        return Ok(());
    }
    let listen = &settings.reconciler.metrics_listen;
    let (server, address) =
        http::serve(listen, reconciler.clone(), prometheus).map_err(|error| {
            StartError::Listen {
                listen: listen.clone(),
                reason: error.to_string(),
            }
        })?;
    let server_handle = server.handle();
    let server_task = tokio::spawn(server);
    tracing::info!(step = step::STARTUP, %address, "reconciler health and metrics listening");
    let downloads = {
        let (reconciler, shutdown) = (reconciler.clone(), shutdown.clone());
        tokio::spawn(async move { reconciler.refresh_certificates_until(shutdown).await })
    };
    reconciler.run(shutdown).await;
    let _ = downloads.await;
    server_handle.stop(true).await;
    let _ = server_task.await;
    tracing::info!(step = step::SHUTDOWN, "reconciler stopped");
    Ok(())
}

/// Why `wxpay-worker reconcile` failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("round failed: {0}")]
    Round(#[from] RoundError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trade_states() {
        assert_eq!(trade_state(TradeState::Success.as_str()), Some(Next::Paid));
        assert_eq!(trade_state(TradeState::Refund.as_str()), Some(Next::Paid));
        for closed in [
            TradeState::Closed,
            TradeState::PayError,
            TradeState::Revoked,
        ] {
            assert_eq!(trade_state(closed.as_str()), Some(Next::Closed));
        }
        assert_eq!(
            trade_state(TradeState::NotPay.as_str()),
            Some(Next::Pending)
        );
        assert_eq!(
            trade_state(TradeState::UserPaying.as_str()),
            Some(Next::Pending)
        );
        assert_eq!(trade_state("success"), None);
        assert_eq!(trade_state(""), None);
    }

    #[test]
    fn refund_statuses() {
        for status in RefundStatus::ALL {
            let finished = *status != RefundStatus::Processing;
            assert_eq!(refund_finished(status.as_str()), Some(finished), "{status}");
        }
        assert_eq!(refund_finished("DONE"), None);
    }

    #[test]
    fn window_arithmetic_does_not_overflow() {
        let now = Utc::now();
        assert_eq!(ago(now, 60), now - chrono::Duration::seconds(60));
        assert_eq!(ago(now, 0), now);
        // A huge horizon saturates instead of panicking.
        assert_eq!(ago(now, u64::MAX), chrono::DateTime::<Utc>::MIN_UTC);
        assert_eq!(ago(now, i64::MAX as u64), chrono::DateTime::<Utc>::MIN_UTC);
        assert_eq!(seconds_std(0), Duration::from_secs(1));
    }
}
