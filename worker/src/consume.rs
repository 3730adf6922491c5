//! The consumer: manual acks, prefetch-bounded concurrency, ack only after the outcome is
//! settled (committed in PostgreSQL, or safely re-published to a retry tier or the parking
//! queue with a confirm). Reconnects on its own; on shutdown it cancels the consumer,
//! finishes and acks the in-flight work, and closes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wxpay_runtime::amqp::{message_id_text, AmqpMessage};
use wxpay_runtime::telemetry::{metric, step};
use wxpay_shared::message::NotifyMessage;

use crate::broker::{self, BrokerError};
use crate::retry::{self, Scheduled};
use crate::{Disposition, Worker};

/// Consumes until `shutdown`, reconnecting with a capped backoff.
pub(crate) async fn run(worker: Worker, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(250);
    while !shutdown.is_cancelled() {
        match session(&worker, &shutdown).await {
            Ok(()) => break,
            Err((error, was_connected)) => {
                set_connected(&worker, false);
                if was_connected {
                    backoff = Duration::from_millis(250);
                }
                tracing::warn!(step = step::CONSUME, %error, retry_in_ms = backoff.as_millis() as u64, "broker session ended");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    set_connected(&worker, false);
    tracing::info!(step = step::SHUTDOWN, "consumer stopped");
}

fn set_connected(worker: &Worker, connected: bool) {
    worker
        .inner
        .broker_connected
        .store(connected, Ordering::Relaxed);
    metrics::gauge!(metric::WORKER_BROKER_CONNECTED).set(if connected { 1.0 } else { 0.0 });
}

/// One broker connection's life. `Err((error, was_connected))`.
async fn session(worker: &Worker, shutdown: &CancellationToken) -> Result<(), (BrokerError, bool)> {
    let settings = worker.settings();
    let setup = async {
        let connection = broker::connect(&settings.rabbitmq).await?;
        let publish = broker::confirm_channel(&connection).await?;
        broker::declare_topology(&publish, &settings.rabbitmq, &settings.worker).await?;
        let consume = broker::bounded(connection.create_channel()).await?;
        broker::bounded(consume.basic_qos(settings.worker.prefetch, BasicQosOptions::default()))
            .await?;
        let tag = format!("wxpay-worker-{}", uuid::Uuid::now_v7());
        let consumer = broker::bounded(consume.basic_consume(
            settings.rabbitmq.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await?;
        Ok::<_, BrokerError>((connection, publish, consume, tag, consumer))
    };
    let (connection, publish, consume, tag, mut consumer) = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        setup = setup => setup.map_err(|e| (e, false))?,
    };
    set_connected(worker, true);
    tracing::info!(
        step = step::CONSUME,
        queue = settings.rabbitmq.queue.as_str(),
        prefetch = settings.worker.prefetch,
        "consuming"
    );

    let semaphore = Arc::new(Semaphore::new(usize::from(settings.worker.prefetch.max(1))));
    let mut tasks = JoinSet::new();
    let result = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                if let Err(error) = broker::bounded(consume.basic_cancel(tag.as_str().into(), BasicCancelOptions::default())).await {
                    tracing::warn!(step = step::SHUTDOWN, %error, "cancelling the consumer failed");
                }
                break Ok(());
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(error) = joined {
                    tracing::error!(step = step::CONSUME, %error, "delivery task failed");
                }
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let Ok(permit) = semaphore.clone().acquire_owned().await else {
                        break Err(BrokerError::ConsumerEnded);
                    };
                    tasks.spawn(handle(worker.clone(), publish.clone(), consume.clone(), delivery, permit));
                }
                Some(Err(error)) => break Err(BrokerError::from(error)),
                None => break Err(BrokerError::ConsumerEnded),
            }
        }
    };

    // Finish and settle what is in flight (bounded); what was prefetched but not started
    // goes back to the queue when the channel closes.
    let drain = async {
        while let Some(joined) = tasks.join_next().await {
            if let Err(error) = joined {
                tracing::error!(step = step::SHUTDOWN, %error, "delivery task failed");
            }
        }
    };
    let limit = Duration::from_millis(settings.worker.shutdown_timeout_ms.max(1));
    if tokio::time::timeout(limit, drain).await.is_err() {
        tracing::warn!(
            step = step::SHUTDOWN,
            in_flight = tasks.len(),
            "in-flight work not finished in time; it will be redelivered"
        );
        // Not aborted: a transaction is never cancelled mid-commit. The deliveries stay
        // unacked and come back; dedupe makes that harmless.
        tasks.detach_all();
    }
    broker::close(&connection, &[&consume, &publish], "worker stopping").await;
    result.map_err(|e| (e, true))
}

/// Processes one delivery and settles it.
async fn handle(
    worker: Worker,
    publish: Channel,
    consume: Channel,
    delivery: Delivery,
    _permit: OwnedSemaphorePermit,
) {
    let (outcome, attempt, request_id) = match NotifyMessage::from_amqp(
        &delivery.properties,
        delivery.data.clone(),
    ) {
        Ok(message) => {
            let lag_ms = chrono::Utc::now()
                .timestamp_millis()
                .saturating_sub(message.received_at_ms);
            metrics::histogram!(metric::WORKER_LAG_SECONDS).record(lag_ms.max(0) as f64 / 1000.0);
            tracing::debug!(step = step::CONSUME, request_id = %message.message_id, mch_id = message.mch_id.as_str(), kind = message.kind.as_str(), attempt = message.attempt, "consumed");
            let outcome = worker.process_one(&message).await;
            (outcome, message.attempt, message.message_id.to_string())
        }
        Err(error) => {
            let request_id = message_id_text(&delivery.properties).unwrap_or_default();
            tracing::warn!(step = step::DECODE, request_id, %error, "undecodable queue message");
            metrics::counter!(metric::WORKER_MESSAGES_TOTAL, "kind" => "unknown", "outcome" => "parked").increment(1);
            worker.inner.stats.parked.fetch_add(1, Ordering::Relaxed);
            (
                Disposition::Park {
                    reason: format!("undecodable: {error}"),
                },
                1,
                request_id.to_owned(),
            )
        }
    };
    settle(
        &worker,
        &publish,
        &consume,
        &delivery,
        attempt,
        &outcome,
        &request_id,
    )
    .await;
}

async fn settle(
    worker: &Worker,
    publish: &Channel,
    consume: &Channel,
    delivery: &Delivery,
    attempt: u32,
    outcome: &Disposition,
    request_id: &str,
) {
    let settings = worker.settings();
    match outcome {
        Disposition::Retry { reason } => {
            match retry::schedule(publish, settings, delivery, attempt, reason).await {
                Ok(Scheduled::Retry { tier }) => {
                    tracing::info!(
                        step = step::RETRY,
                        request_id,
                        attempt,
                        tier,
                        reason = reason.as_str(),
                        "scheduled for retry"
                    );
                }
                Ok(Scheduled::Parked) => {
                    worker.inner.stats.parked.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        step = step::PARK,
                        request_id,
                        attempt,
                        reason = reason.as_str(),
                        "retries exhausted: parked"
                    );
                }
                Err(error) => return requeue_later(delivery, request_id, &error).await,
            }
        }
        Disposition::Park { reason } => {
            if let Err(error) = retry::park(publish, settings, delivery, reason).await {
                return requeue_later(delivery, request_id, &error).await;
            }
            tracing::warn!(
                step = step::PARK,
                request_id,
                reason = reason.as_str(),
                "parked"
            );
        }
        _ => {
            let crash = &worker.inner.hooks.crash_after_commit;
            if crash
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                tracing::warn!(
                    step = step::CONSUME,
                    request_id,
                    "test hook: dropping the channel after commit, before ack"
                );
                let _ = consume.close(320, "simulated crash".into()).await;
                return;
            }
        }
    }
    match broker::settle(delivery.acker.ack(BasicAckOptions::default())).await {
        Ok(()) => {
            worker.inner.stats.acked.fetch_add(1, Ordering::Relaxed);
        }
        Err(error) => {
            // The delivery comes back on another channel; dedupe makes that harmless.
            tracing::warn!(step = step::CONSUME, request_id, %error, "ack failed");
        }
    }
}

/// The retry or park copy could not be confirmed (broker trouble): give the delivery back,
/// after a pause so that a persistent failure is not a hot loop.
async fn requeue_later(delivery: &Delivery, request_id: &str, error: &BrokerError) {
    tracing::warn!(step = step::RETRY, request_id, %error, "could not re-publish; returning the message to the queue");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let requeue = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(error) = broker::settle(delivery.acker.nack(requeue)).await {
        tracing::warn!(step = step::RETRY, request_id, %error, "nack failed; the broker will redeliver");
    }
}
