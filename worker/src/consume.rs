//! The consumer: manual acks, prefetch-bounded concurrency, ack only after the outcome is
//! settled (committed in PostgreSQL, or safely re-published to a retry tier or the parking
//! queue with a confirm). Reconnects on its own; on shutdown it cancels the consumer,
//! finishes and acks the in-flight work, and closes.
//!
//! Acks are batched where that costs no latency (`Acks`): deliveries settled together
//! that are the channel's oldest unsettled ones go in one `basic.ack(multiple)`. On a quorum
//! queue every ack is a Raft command, so this is broker CPU saved per notification.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::Acker;
use lapin::Channel;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{Id, JoinError, JoinSet};
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
    let mut acks = Acks::default();
    let result = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                if let Err(error) = broker::bounded(consume.basic_cancel(tag.as_str().into(), BasicCancelOptions::default())).await {
                    tracing::warn!(step = step::SHUTDOWN, %error, "cancelling the consumer failed");
                }
                break Ok(());
            }
            Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let mut finished = vec![joined];
                // Whatever else has finished meanwhile is acked with it.
                while let Some(more) = tasks.try_join_next_with_id() {
                    finished.push(more);
                }
                acks.settle(worker, finished).await;
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let Ok(permit) = semaphore.clone().acquire_owned().await else {
                        break Err(BrokerError::ConsumerEnded);
                    };
                    let tag = delivery.delivery_tag;
                    let task = tasks.spawn(handle(worker.clone(), publish.clone(), consume.clone(), delivery, permit));
                    acks.received(task.id(), tag);
                }
                Some(Err(error)) => break Err(BrokerError::from(error)),
                None => break Err(BrokerError::ConsumerEnded),
            }
        }
    };

    // Finish and settle what is in flight (bounded); what was prefetched but not started
    // goes back to the queue when the channel closes.
    let drain = async {
        while let Some(joined) = tasks.join_next_with_id().await {
            acks.settle(worker, vec![joined]).await;
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

/// Processes one delivery; returns its acker when the delivery is to be acked (the
/// consumer loop acks, see [`Acks`]), `None` when it was given back or left unacked.
async fn handle(
    worker: Worker,
    publish: Channel,
    consume: Channel,
    delivery: Delivery,
    _permit: OwnedSemaphorePermit,
) -> Option<Acker> {
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
    let ack = settle(
        &worker,
        &publish,
        &consume,
        &delivery,
        attempt,
        &outcome,
        &request_id,
    )
    .await;
    ack.then_some(delivery.acker)
}

/// Makes the outcome safe (re-published to a retry tier or parked, with a confirm); `true`
/// when the delivery may now be acked.
async fn settle(
    worker: &Worker,
    publish: &Channel,
    consume: &Channel,
    delivery: &Delivery,
    attempt: u32,
    outcome: &Disposition,
    request_id: &str,
) -> bool {
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
                Err(error) => {
                    requeue_later(delivery, request_id, &error).await;
                    return false;
                }
            }
        }
        Disposition::Park { reason } => {
            if let Err(error) = retry::park(publish, settings, delivery, reason).await {
                requeue_later(delivery, request_id, &error).await;
                return false;
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
                return false;
            }
        }
    }
    true
}

/// The consumer channel's unsettled deliveries, and the acks of those that are settled.
///
/// A `basic.ack(multiple)` with tag T acks every unacked delivery of the channel up to T, so
/// it may only be sent when every delivery below T is settled: acked already, or given
/// back with a nack. Deliveries are registered here in the order the broker numbered them,
/// before their task starts, so no older delivery can be missing from `unsettled`. A
/// settled delivery still behind an older unsettled one is acked alone at once: a slow
/// message never delays other acks (nor holds the prefetch window).
#[derive(Default)]
struct Acks {
    unsettled: BTreeSet<u64>,
    tags: HashMap<Id, u64>,
}

/// What to send for a group of settled deliveries.
#[derive(Debug, Default, PartialEq)]
struct AckPlan<A> {
    /// `basic.ack(multiple)` with this delivery's acker (the highest of the oldest ones).
    multiple: Option<A>,
    /// Covered by `multiple`, besides its own.
    covered: usize,
    /// Acked one by one (`multiple = false`).
    single: Vec<A>,
}

impl Acks {
    fn received(&mut self, task: Id, tag: u64) {
        self.unsettled.insert(tag);
        self.tags.insert(task, tag);
    }

    /// Which acks to send for `ready` (tag, acker) and the deliveries that need none (given
    /// back, or left unacked on purpose): all of them are settled from now on.
    fn plan<A>(&mut self, mut ready: Vec<(u64, A)>, done: &[u64]) -> AckPlan<A> {
        for tag in ready.iter().map(|(tag, _)| tag).chain(done) {
            self.unsettled.remove(tag);
        }
        let oldest_unsettled = self.unsettled.first().copied().unwrap_or(u64::MAX);
        ready.sort_by_key(|(tag, _)| *tag);
        let behind = ready.partition_point(|(tag, _)| *tag < oldest_unsettled);
        let single: Vec<A> = ready.drain(behind..).map(|(_, a)| a).collect();
        let multiple = ready.pop().map(|(_, a)| a);
        AckPlan {
            covered: ready.len(),
            multiple,
            single,
        }
    }

    /// Acks what the finished delivery tasks settled.
    async fn settle(
        &mut self,
        worker: &Worker,
        finished: Vec<Result<(Id, Option<Acker>), JoinError>>,
    ) {
        let mut ready = Vec::new();
        let mut done = Vec::new();
        for joined in finished {
            let (id, acker) = match joined {
                Ok((id, acker)) => (id, acker),
                Err(error) => {
                    // Unacked: the broker redelivers it with the channel; dedupe makes that
                    // harmless. Settled here so that it does not hold back other acks.
                    tracing::error!(step = step::CONSUME, %error, "delivery task failed");
                    (error.id(), None)
                }
            };
            let Some(tag) = self.tags.remove(&id) else {
                continue;
            };
            match acker {
                Some(acker) => ready.push((tag, acker)),
                None => done.push(tag),
            }
        }
        let plan = self.plan(ready, &done);
        if let Some(acker) = plan.multiple {
            let multiple = BasicAckOptions { multiple: true };
            ack(worker, &acker, multiple, 1 + plan.covered).await;
        }
        for acker in plan.single {
            ack(worker, &acker, BasicAckOptions::default(), 1).await;
        }
    }
}

async fn ack(worker: &Worker, acker: &Acker, options: BasicAckOptions, deliveries: usize) {
    match broker::settle(acker.ack(options)).await {
        Ok(()) => {
            worker
                .inner
                .stats
                .acked
                .fetch_add(deliveries as u64, Ordering::Relaxed);
        }
        Err(error) => {
            // The deliveries come back on another channel; dedupe makes that harmless.
            tracing::warn!(step = step::CONSUME, %error, deliveries, "ack failed");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Acks planned for `ready` after `received` tags were registered (ackers are the tags).
    fn plan(received: &[u64], ready: &[u64], done: &[u64]) -> (Acks, AckPlan<u64>) {
        let mut acks = Acks::default();
        acks.unsettled.extend(received);
        let plan = acks.plan(ready.iter().map(|t| (*t, *t)).collect(), done);
        (acks, plan)
    }

    #[test]
    fn the_oldest_settled_deliveries_go_in_one_multiple_ack() {
        let (acks, p) = plan(&[1, 2, 3, 4, 5], &[3, 1, 2], &[]);
        assert_eq!(p.multiple, Some(3));
        assert_eq!(p.covered, 2);
        assert!(p.single.is_empty());
        assert_eq!(acks.unsettled, BTreeSet::from([4, 5]));
    }

    #[test]
    fn a_delivery_behind_an_unsettled_one_is_acked_alone_at_once() {
        // 2 is slow: 1 may go with multiple, 3 and 5 must not be covered by an ack of 2.
        let (acks, p) = plan(&[1, 2, 3, 4, 5], &[5, 1, 3], &[]);
        assert_eq!(p.multiple, Some(1));
        assert_eq!(p.covered, 0);
        assert_eq!(p.single, vec![3, 5]);
        assert_eq!(acks.unsettled, BTreeSet::from([2, 4]));
    }

    #[test]
    fn a_delivery_given_back_no_longer_holds_the_others() {
        // 1 was nacked (given back): the acks of 2 and 3 may cover it; the broker ignores
        // a tag it no longer holds as unacked.
        let (_, p) = plan(&[1, 2, 3], &[2, 3], &[1]);
        assert_eq!(p.multiple, Some(3));
        assert_eq!(p.covered, 1);
        assert!(p.single.is_empty());
    }

    #[test]
    fn nothing_ready_sends_nothing() {
        let (acks, p) = plan(&[7, 8], &[], &[7]);
        assert_eq!(p, AckPlan::default());
        assert_eq!(acks.unsettled, BTreeSet::from([8]));
    }
}
