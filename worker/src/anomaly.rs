//! Anomalies a person repairs: list the open ones, then close each with `reapply` (run the
//! original notification through the normal decode and apply path once the order was
//! corrected) or `dismiss` (nothing to do). Both are recorded in `anomaly_resolutions`
//! (who, when, why, with what result) in the transaction that acts.
//!
//! The CLI (`wxpay-worker anomaly list | resolve`) calls [`list`] and [`resolve`]; anything
//! else that can hand over a pool and the merchants (a web console) calls the same.

use std::fmt;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use wxpay_runtime::config::Merchants;
use wxpay_shared::message::{NotifyKind, NotifyMessage};
use wxpay_shared::state::NotificationOutcome;
use wxpay_shared::v3::WechatpayHeaders;

use crate::apply::{self, ApplyError, Confirmation, Verdict};
use crate::db::models::{DbOutcome, DbUuid};
use crate::db::schema::{anomaly_resolutions, notifications};
use crate::db::{pool_error_text, DbPool};
use crate::decode::{self, DecodeError};

/// What a person decided about an anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Apply the original notification again (after correcting the order).
    Reapply,
    /// Close it: the notification stays unapplied, its business key taken.
    Dismiss,
}

impl Action {
    /// The spelling of the CLI and of `anomaly_resolutions.action`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Reapply => "reapply",
            Action::Dismiss => "dismiss",
        }
    }
}

impl std::str::FromStr for Action {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "reapply" => Ok(Action::Reapply),
            "dismiss" => Ok(Action::Dismiss),
            other => Err(format!("unknown action {other:?}: reapply or dismiss")),
        }
    }
}

/// Why an anomaly could not be resolved. Nothing was changed in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum AnomalyError {
    #[error("{0}")]
    Pool(String),
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("no notification {0}")]
    NotFound(i64),
    #[error("notification {id} is not an anomaly (outcome {outcome})")]
    NotAnAnomaly {
        id: i64,
        outcome: NotificationOutcome,
    },
    #[error("anomaly {id} was resolved already at {at}")]
    AlreadyResolved { id: i64, at: DateTime<Utc> },
    #[error("a resolution needs a note saying why")]
    EmptyNote,
    #[error("anomaly {id}: the stored notification cannot be read back: {reason}")]
    Unreadable { id: i64, reason: String },
    #[error("anomaly {id}: the stored notification does not verify: {error}")]
    Undecodable { id: i64, error: DecodeError },
    #[error("anomaly {id} not reapplied, nothing changed: {error}")]
    NotApplied { id: i64, error: ApplyError },
}

/// One open anomaly (`anomaly list`).
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = notifications, check_for_backend(diesel::pg::Pg))]
pub struct OpenAnomaly {
    pub id: i64,
    pub mch_id: String,
    pub out_trade_no: Option<String>,
    pub out_refund_no: Option<String>,
    pub anomaly_reason: Option<String>,
    pub anomaly_detail: Option<String>,
    pub received_at: DateTime<Utc>,
}

impl fmt::Display for OpenAnomaly {
    /// `id  merchant  order[/refund]  reason  detail  received`, tab-separated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let order = self.out_trade_no.as_deref().unwrap_or("-");
        let order = match &self.out_refund_no {
            Some(refund) => format!("{order}/{refund}"),
            None => order.to_owned(),
        };
        write!(
            f,
            "{}\t{}\t{}\t{}\t{}\t{}",
            self.id,
            self.mch_id,
            order,
            self.anomaly_reason.as_deref().unwrap_or("-"),
            self.anomaly_detail
                .as_deref()
                .unwrap_or("-")
                .replace('\t', " "),
            self.received_at.to_rfc3339()
        )
    }
}

/// What a resolution did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Dismissed,
    /// The notification went through the apply path again; `notification_id` is the row
    /// it wrote (`None` for a duplicate, which writes nothing). A `Verdict::Anomaly` means
    /// the order still disagrees: that new anomaly is open, with this id.
    Reapplied {
        verdict: Verdict,
        notification_id: Option<i64>,
    },
}

/// A recorded resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// `anomaly_resolutions.id`.
    pub id: i64,
    pub anomaly_id: i64,
    pub action: Action,
    pub effect: Effect,
}

impl Resolution {
    /// `anomaly_resolutions.result`: `DISMISSED`, or the verdict of the reapply (`APPLIED`,
    /// `NOOP`, `RECORDED`, `DUPLICATE`, `ANOMALY <reason>`).
    pub fn result_text(&self) -> String {
        match &self.effect {
            Effect::Dismissed => "DISMISSED".to_owned(),
            Effect::Reapplied { verdict, .. } => verdict_text(verdict),
        }
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "anomaly {} {}: {}",
            self.anomaly_id,
            self.action.as_str(),
            self.result_text()
        )?;
        if let Effect::Reapplied {
            verdict: Verdict::Anomaly { detail, .. },
            notification_id,
        } = &self.effect
        {
            let id = notification_id.map_or_else(|| "?".to_owned(), |id| id.to_string());
            write!(
                f,
                " (the order still disagrees: new anomaly {id}, {detail})"
            )?;
        }
        Ok(())
    }
}

fn verdict_text(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Applied => "APPLIED".to_owned(),
        Verdict::Noop => "NOOP".to_owned(),
        Verdict::Recorded => "RECORDED".to_owned(),
        Verdict::Duplicate => "DUPLICATE".to_owned(),
        Verdict::Forwarded => "FORWARDED".to_owned(),
        Verdict::Anomaly { reason, .. } => format!("ANOMALY {reason}"),
    }
}

/// The stored notification, as much as a reapply needs.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = notifications, check_for_backend(diesel::pg::Pg))]
struct Stored {
    dedupe_key: String,
    message_id: DbUuid,
    kind: String,
    mch_id: String,
    raw_body: Vec<u8>,
    #[diesel(deserialize_as = DbOutcome)]
    outcome: NotificationOutcome,
    received_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
    wechatpay_headers: Option<serde_json::Value>,
}

impl Stored {
    /// The queue message the worker applied, rebuilt from the row.
    fn message(&self, id: i64) -> Result<NotifyMessage, AnomalyError> {
        let unreadable = |reason: String| AnomalyError::Unreadable { id, reason };
        let kind = NotifyKind::parse(&self.kind)
            .ok_or_else(|| unreadable(format!("unknown kind {:?}", self.kind)))?;
        let wechatpay = match &self.wechatpay_headers {
            None => None,
            Some(headers) => Some(
                WechatpayHeaders::from_lookup(|name| {
                    headers
                        .as_object()?
                        .iter()
                        .find(|(key, _)| key.eq_ignore_ascii_case(name))
                        .and_then(|(_, value)| value.as_str())
                })
                .map_err(|error| unreadable(format!("wechatpay_headers: {error}")))?,
            ),
        };
        Ok(NotifyMessage {
            message_id: self.message_id.0,
            kind,
            mch_id: self.mch_id.clone(),
            received_at_ms: self.received_at.timestamp_millis(),
            content_type: None,
            wechatpay,
            attempt: 1,
            park_reason: None,
            // A query answer's sub-merchant: read with the row by `reapply` when needed.
            sub_mch_id: None,
            body: self.raw_body.clone(),
        })
    }
}

async fn connection(pool: &DbPool) -> Result<crate::db::DbConn, AnomalyError> {
    pool.get()
        .await
        .map_err(|error| AnomalyError::Pool(pool_error_text(&error)))
}

/// The open anomalies, oldest first.
pub async fn list(pool: &DbPool) -> Result<Vec<OpenAnomaly>, AnomalyError> {
    let mut conn = connection(pool).await?;
    Ok(notifications::table
        .filter(notifications::outcome.eq(DbOutcome(NotificationOutcome::Anomaly)))
        .filter(notifications::resolved_at.is_null())
        .order(notifications::id)
        .select(OpenAnomaly::as_select())
        .load(&mut conn)
        .await?)
}

/// Resolves the open anomaly `id` with `action`, recorded under `actor` with `note`, in one
/// transaction. `reapply` renames the anomaly's dedupe key to `<key>#released:<id>` (so the
/// business key is free) and applies the stored notification on the normal path; if that
/// fails (the order is still missing, the database is down), nothing changes.
pub async fn resolve(
    pool: &DbPool,
    merchants: &Merchants,
    id: i64,
    action: Action,
    actor: &str,
    note: &str,
) -> Result<Resolution, AnomalyError> {
    if note.trim().is_empty() {
        return Err(AnomalyError::EmptyNote);
    }
    let mut conn = connection(pool).await?;
    conn.transaction::<_, AnomalyError, _>(async |conn| {
        let stored: Stored = notifications::table
            .find(id)
            .select(Stored::as_select())
            .for_update()
            .first(conn)
            .await
            .optional()?
            .ok_or(AnomalyError::NotFound(id))?;
        if stored.outcome != NotificationOutcome::Anomaly {
            return Err(AnomalyError::NotAnAnomaly {
                id,
                outcome: stored.outcome,
            });
        }
        if let Some(at) = stored.resolved_at {
            return Err(AnomalyError::AlreadyResolved { id, at });
        }
        let effect = match action {
            Action::Dismiss => {
                close(conn, id, None).await?;
                Effect::Dismissed
            }
            Action::Reapply => reapply(conn, merchants, id, &stored).await?,
        };
        let mut resolution = Resolution {
            id: 0,
            anomaly_id: id,
            action,
            effect,
        };
        let new_notification_id = match &resolution.effect {
            Effect::Reapplied {
                notification_id, ..
            } => *notification_id,
            Effect::Dismissed => None,
        };
        resolution.id = diesel::insert_into(anomaly_resolutions::table)
            .values((
                anomaly_resolutions::anomaly_id.eq(id),
                anomaly_resolutions::action.eq(action.as_str()),
                anomaly_resolutions::actor.eq(actor),
                anomaly_resolutions::note.eq(note),
                anomaly_resolutions::result.eq(resolution.result_text()),
                anomaly_resolutions::new_notification_id.eq(new_notification_id),
            ))
            .returning(anomaly_resolutions::id)
            .get_result(conn)
            .await?;
        Ok(resolution)
    })
    .await
}

/// Marks the anomaly resolved; with `released_key`, also frees its dedupe key.
async fn close(
    conn: &mut AsyncPgConnection,
    id: i64,
    released_key: Option<&str>,
) -> Result<(), diesel::result::Error> {
    let row = notifications::table.find(id);
    match released_key {
        Some(key) => {
            diesel::update(row)
                .set((
                    notifications::resolved_at.eq(Some(Utc::now())),
                    notifications::dedupe_key.eq(key),
                ))
                .execute(conn)
                .await?
        }
        None => {
            diesel::update(row)
                .set(notifications::resolved_at.eq(Some(Utc::now())))
                .execute(conn)
                .await?
        }
    };
    Ok(())
}

/// The sub-merchant a recorded query answer was about (`notifications.sub_mch_id`, outside
/// the diesel schema: worker/src/db/schema.rs says why); `None` for a direct merchant's.
async fn asked_sub_mch_id(
    conn: &mut AsyncPgConnection,
    id: i64,
) -> Result<Option<String>, diesel::result::Error> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        sub_mch_id: String,
    }
    let row: Row = diesel::sql_query("SELECT sub_mch_id FROM notifications WHERE id = $1")
        .bind::<diesel::sql_types::BigInt, _>(id)
        .get_result(conn)
        .await?;
    Ok(Some(row.sub_mch_id).filter(|sub| !sub.is_empty()))
}

async fn reapply(
    conn: &mut AsyncPgConnection,
    merchants: &Merchants,
    id: i64,
    stored: &Stored,
) -> Result<Effect, AnomalyError> {
    let mut message = stored.message(id)?;
    if message.kind.is_query() {
        message.sub_mch_id = asked_sub_mch_id(conn, id).await?;
    }
    let (merchant, decoded) = decode::merchant_of(&message, merchants)
        .and_then(|merchant| Ok((merchant, decode::decode_recorded(&message, merchants)?)))
        .map_err(|error| AnomalyError::Undecodable { id, error })?;
    let key = decoded.dedupe_key(&message.body);
    close(
        conn,
        id,
        Some(&format!("{}#released:{id}", stored.dedupe_key)),
    )
    .await?;
    // A person decided: no order query (and none may run inside this transaction).
    let applying = apply::Applying {
        message: &message,
        decoded: &decoded,
        dedupe_key: &key,
        confirmation: &Confirmation::NotRequired,
        sub_merchants: &merchant.sub_merchants,
    };
    let verdict = apply::apply_in(conn, &applying)
        .await
        .map_err(|error| AnomalyError::NotApplied { id, error })?;
    let notification_id = match verdict {
        Verdict::Duplicate => None,
        _ => notifications::table
            .filter(notifications::dedupe_key.eq(&key))
            .select(notifications::id)
            .first(conn)
            .await
            .optional()?,
    };
    Ok(Effect::Reapplied {
        verdict,
        notification_id,
    })
}
