//! The outbox relay: publishes the events committed with the state changes to the topic
//! exchange `rabbitmq.events_exchange` (routing key = event type, AMQP `message_id` = the
//! outbox id, stable across re-publishes so consumers can dedupe), with confirms, and marks
//! them published. Rows are picked with `FOR UPDATE SKIP LOCKED`, so several replicas relay
//! side by side without publishing the same batch at once. Delivery is at least once: a
//! crash between the confirm and the commit re-publishes the batch with the same ids.
//! Publishes are `mandatory` and the exchange has an alternate exchange
//! (`<events_exchange>.unrouted`), so an event is never confirmed into the void.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use tokio_util::sync::CancellationToken;
use wxpay_runtime::telemetry::{metric, step};

use crate::broker::{self, BrokerError};
use crate::db::models::{DbUuid, OutboxRow};
use crate::db::schema::outbox;
use crate::db::{pool_error_text, DbPool};
use crate::WorkerInner;

/// Events per relay transaction.
pub const BATCH: i64 = 500;
/// After a wake-up by a commit, the relay waits this long for more commits to join the
/// round: one transaction and one confirm wait for many events instead of a round per
/// event at peaks (fewer PostgreSQL commits and broker round trips per notification), for
/// at most this much added event latency.
pub const GATHER: Duration = Duration::from_millis(20);

/// Why a relay round failed; the round is retried after a pause.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{0}")]
    Pool(String),
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Publishes one batch of unpublished events and marks them; returns how many.
pub async fn relay_batch(
    pool: &DbPool,
    channel: &Channel,
    exchange: &str,
) -> Result<usize, RelayError> {
    let mut conn = pool
        .get()
        .await
        .map_err(|e| RelayError::Pool(pool_error_text(&e)))?;
    conn.transaction::<_, RelayError, _>(async |conn| {
        let rows: Vec<OutboxRow> = outbox::table
            .filter(outbox::published_at.is_null())
            .order(outbox::created_at)
            .limit(BATCH)
            .select(OutboxRow::as_select())
            .for_update()
            .skip_locked()
            .load(conn)
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut confirms = Vec::with_capacity(rows.len());
        for row in &rows {
            let body = serde_json::to_vec(&serde_json::json!({
                "id": row.id.0.to_string(),
                "type": row.event_type,
                "mch_id": row.mch_id,
                "aggregate_key": row.aggregate_key,
                "occurred_at": row.created_at.to_rfc3339(),
                "data": row.payload,
            }))
            .unwrap_or_default();
            let properties = BasicProperties::default()
                .with_message_id(ShortString::from(row.id.0.to_string()))
                .with_type(ShortString::from(row.event_type.as_str()))
                .with_content_type(ShortString::from("application/json"))
                .with_delivery_mode(wxpay_runtime::amqp::PERSISTENT)
                .with_timestamp(u64::try_from(row.created_at.timestamp()).unwrap_or(0));
            // Mandatory: with the alternate exchange an event no subscriber takes is kept in
            // `<exchange>.unrouted`; should even that fail (its queue deleted), the broker
            // returns it and the batch is not marked published.
            let confirm = broker::bounded(channel.basic_publish(
                exchange.into(),
                row.event_type.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                properties,
            ))
            .await?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            broker::check_confirmation(broker::bounded(confirm).await?)?;
        }
        let ids: Vec<DbUuid> = rows.iter().map(|row| row.id).collect();
        diesel::update(outbox::table.filter(outbox::id.eq_any(&ids)))
            .set(outbox::published_at.eq(Some(Utc::now())))
            .execute(conn)
            .await?;
        metrics::counter!(metric::OUTBOX_PUBLISHED_TOTAL).increment(rows.len() as u64);
        Ok(rows.len())
    })
    .await
}

/// Unpublished events, for the `wxpay_outbox_pending` gauge.
pub async fn pending(pool: &DbPool) -> Result<i64, RelayError> {
    let mut conn = pool
        .get()
        .await
        .map_err(|e| RelayError::Pool(pool_error_text(&e)))?;
    Ok(outbox::table
        .filter(outbox::published_at.is_null())
        .count()
        .get_result(&mut conn)
        .await?)
}

/// Runs the relay until `shutdown`: reconnects to the broker on its own.
pub(crate) async fn run(inner: Arc<WorkerInner>, shutdown: CancellationToken) {
    let poll = Duration::from_millis(inner.settings.worker.outbox_poll_ms.max(10));
    let mut last_gauge = Instant::now() - Duration::from_secs(60);
    while !shutdown.is_cancelled() {
        let session = async {
            let connection = broker::connect(&inner.settings.rabbitmq).await?;
            let channel = broker::confirm_channel(&connection).await?;
            broker::declare_topology(&channel, &inner.settings.rabbitmq, &inner.settings.worker)
                .await?;
            Ok::<_, BrokerError>((connection, channel))
        };
        let (connection, channel) = tokio::select! {
            _ = shutdown.cancelled() => return,
            session = session => match session {
                Ok(session) => session,
                Err(error) => {
                    tracing::warn!(step = step::OUTBOX, %error, "outbox relay cannot reach the broker");
                    pause(&shutdown, Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if last_gauge.elapsed() >= Duration::from_secs(1) {
                if let Ok(n) = pending(&inner.pool).await {
                    metrics::gauge!(metric::OUTBOX_PENDING).set(n as f64);
                }
                last_gauge = Instant::now();
            }
            // Never cancelled mid-transaction: only the pauses race the shutdown.
            match relay_batch(
                &inner.pool,
                &channel,
                &inner.settings.rabbitmq.events_exchange,
            )
            .await
            {
                Ok(n) if n as i64 >= BATCH => continue,
                Ok(_) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = inner.outbox_wakeup.notified() => pause(&shutdown, GATHER).await,
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
                Err(RelayError::Broker(error)) => {
                    tracing::warn!(step = step::OUTBOX, %error, "outbox relay lost the broker");
                    break;
                }
                Err(error) => {
                    tracing::warn!(step = step::OUTBOX, %error, "outbox relay round failed");
                    pause(&shutdown, Duration::from_secs(1)).await;
                }
            }
        }
        broker::close(&connection, &[&channel], "relay stopping").await;
        if !shutdown.is_cancelled() {
            pause(&shutdown, Duration::from_millis(500)).await;
        }
    }
}

async fn pause(shutdown: &CancellationToken, duration: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(duration) => {}
    }
}
