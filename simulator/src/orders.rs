//! The simulator's order book: what "WeChat Pay" knows was paid or refunded.
//!
//! `notify`, `order` and `load` write it; `serve` answers the order / refund queries from it.
//! It is a JSON file beside the secrets (`config/sim-orders.json`) so that separate processes
//! share it, and so that "paid but never notified" can be staged for the reconciler. Writers
//! take a lock file and replace the book atomically (write + rename); readers never see a
//! half-written file.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use wxpay_shared::state::{RefundStatus, TradeState};

use crate::combine::CombinePayment;

/// How long a writer waits for the lock before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// A lock file older than this was left by a crashed writer and is broken.
const STALE_LOCK: Duration = Duration::from_secs(30);

/// Refund states of the book, in v2's words (the v3 query answers normalise them):
/// SUCCESS, REFUNDCLOSE (v3 CLOSED), PROCESSING, CHANGE (v3 ABNORMAL).
pub const REFUND_STATES: &[RefundStatus] = &[
    RefundStatus::Success,
    RefundStatus::RefundClose,
    RefundStatus::Processing,
    RefundStatus::Change,
];

/// One order as WeChat Pay knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub out_trade_no: String,
    /// Absent until paid.
    #[serde(default)]
    pub transaction_id: Option<String>,
    /// Fen.
    pub amount: i64,
    pub state: TradeState,
    #[serde(default)]
    pub paid_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub openid: Option<String>,
}

/// One refund as WeChat Pay knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRecord {
    pub out_refund_no: String,
    pub out_trade_no: String,
    pub transaction_id: String,
    pub refund_id: String,
    /// Fen: the order's amount.
    pub total_fee: i64,
    /// Fen.
    pub refund_fee: i64,
    /// One of [`REFUND_STATES`].
    pub status: RefundStatus,
    #[serde(default)]
    pub succeeded_at: Option<DateTime<Utc>>,
}

/// The whole book.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderBook {
    #[serde(default)]
    pub orders: BTreeMap<String, OrderRecord>,
    #[serde(default)]
    pub refunds: BTreeMap<String, RefundRecord>,
    /// Combine payments by `combine_out_trade_no`; their sub orders are not in `orders`
    /// (WeChat Pay answers them through the combine query only).
    #[serde(default)]
    pub combines: BTreeMap<String, CombinePayment>,
}

impl OrderBook {
    pub fn upsert_order(&mut self, order: OrderRecord) {
        self.orders.insert(order.out_trade_no.clone(), order);
    }

    pub fn upsert_combine(&mut self, combine: CombinePayment) {
        self.combines
            .insert(combine.combine_out_trade_no.clone(), combine);
    }

    /// Records a refund and moves its order to `REFUND` when it succeeded.
    pub fn upsert_refund(&mut self, refund: RefundRecord) {
        if refund.status == RefundStatus::Success {
            if let Some(order) = self.orders.get_mut(&refund.out_trade_no) {
                order.state = TradeState::Refund;
            }
        }
        self.refunds.insert(refund.out_refund_no.clone(), refund);
    }

    /// The order by `out_trade_no`, or else by `transaction_id`.
    pub fn find_order(
        &self,
        out_trade_no: Option<&str>,
        transaction_id: Option<&str>,
    ) -> Option<&OrderRecord> {
        if let Some(o) = out_trade_no.and_then(|no| self.orders.get(no)) {
            return Some(o);
        }
        let tid = transaction_id?;
        self.orders
            .values()
            .find(|o| o.transaction_id.as_deref() == Some(tid))
    }

    /// The refunds of an order, in `out_refund_no` order.
    pub fn refunds_of(&self, out_trade_no: &str) -> Vec<&RefundRecord> {
        self.refunds
            .values()
            .filter(|r| r.out_trade_no == out_trade_no)
            .collect()
    }
}

/// Why the book cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OrderBookError {
    #[error("order book {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("order book {path} is not valid JSON: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("order book {path} is locked by another writer ({lock} exists for {waited_ms} ms)")]
    Locked {
        path: PathBuf,
        lock: PathBuf,
        waited_ms: u128,
    },
}

/// The book on disk.
#[derive(Debug, Clone)]
pub struct OrderBookFile {
    path: PathBuf,
}

impl OrderBookFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, e: impl std::fmt::Display) -> OrderBookError {
        OrderBookError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// The book; empty when the file does not exist yet.
    pub fn read(&self) -> Result<OrderBook, OrderBookError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| OrderBookError::Corrupt {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(OrderBook::default()),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Modification time of the file (`None` when absent), for readers that cache the book.
    pub fn modified(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
    }

    /// Reads, changes and atomically rewrites the book under the lock.
    pub fn update<T>(&self, change: impl FnOnce(&mut OrderBook) -> T) -> Result<T, OrderBookError> {
        let _lock = self.lock()?;
        let mut book = self.read()?;
        let out = change(&mut book);
        let json = serde_json::to_vec_pretty(&book).map_err(|e| self.io(e))?;
        let tmp = self
            .path
            .with_extension(format!("json.tmp.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.io(e)
        })?;
        Ok(out)
    }

    fn lock(&self) -> Result<LockGuard, OrderBookError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        }
        let lock = self.path.with_extension("json.lock");
        let started = Instant::now();
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
            {
                Ok(_) => return Ok(LockGuard(lock)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(&lock)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > STALE_LOCK);
                    if stale {
                        let _ = std::fs::remove_file(&lock);
                        continue;
                    }
                    if started.elapsed() > LOCK_WAIT {
                        return Err(OrderBookError::Locked {
                            path: self.path.clone(),
                            lock,
                            waited_ms: started.elapsed().as_millis(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(self.io(e)),
            }
        }
    }
}

/// Removes the lock file when the writer is done (or fails).
struct LockGuard(PathBuf);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(no: &str, state: TradeState) -> OrderRecord {
        OrderRecord {
            out_trade_no: no.into(),
            transaction_id: Some(format!("T{no}")),
            amount: 100,
            state,
            paid_at: None,
            openid: None,
        }
    }

    #[test]
    fn update_round_trips_and_refund_moves_order_to_refund() {
        let dir = tempfile::tempdir().unwrap();
        let file = OrderBookFile::new(dir.path().join("sub/orders.json"));
        assert_eq!(file.read().unwrap(), OrderBook::default());
        file.update(|b| b.upsert_order(order("A", TradeState::Success)))
            .unwrap();
        file.update(|b| {
            b.upsert_refund(RefundRecord {
                out_refund_no: "R1".into(),
                out_trade_no: "A".into(),
                transaction_id: "TA".into(),
                refund_id: "5030".into(),
                total_fee: 100,
                refund_fee: 40,
                status: RefundStatus::Success,
                succeeded_at: None,
            })
        })
        .unwrap();
        let book = file.read().unwrap();
        assert_eq!(book.orders["A"].state, TradeState::Refund);
        assert_eq!(book.refunds_of("A").len(), 1);
        assert_eq!(
            book.find_order(None, Some("TA")).map(|o| o.amount),
            Some(100)
        );
        assert!(book.find_order(Some("B"), None).is_none());
        assert!(!dir.path().join("sub/orders.json.lock").exists());
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orders.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = OrderBookFile::new(&path).read().unwrap_err();
        assert!(matches!(err, OrderBookError::Corrupt { .. }), "{err}");
    }
}
