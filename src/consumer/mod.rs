//! The consumer core: one Kafka consumer per subscription, a dispatcher that
//! parses and routes each message once, `channels` delivery workers, and an
//! offset tracker that stores only offsets whose messages are final.
//!
//! Order is kept within a partition: a partition always goes to the same
//! worker, which delivers one message at a time and retries before moving on.

pub mod offsets;
mod retry;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, TopicPartitionList};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, KafkaSettings, Settings};
use crate::metrics::{inc, Metrics, RouteCounters, INVALID_ROUTE, UNMATCHED_ROUTE};
use crate::shape::RecordMeta;
use crate::sinks::Sink;
pub use offsets::OffsetTracker;
pub use retry::Backoff;

/// Shutdown in two steps: `stop` ends fetching and backoff waits; `abort`
/// (after the grace period) cuts deliveries still running.
#[derive(Clone, Default)]
pub struct Shutdown {
    pub stop: CancellationToken,
    pub abort: CancellationToken,
}

/// librdkafka properties for a consumer of `group`.
pub fn consumer_config(kafka: &KafkaSettings, settings: &Settings, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", kafka.brokers.join(","))
        .set("group.id", group)
        .set("client.id", format!("vedgate-{group}"))
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", settings.commit_interval.as_millis().to_string())
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", settings.session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", (settings.session_timeout_ms / 4).max(500).to_string())
        .set("allow.auto.create.topics", "false")
        .set("topic.metadata.refresh.interval.ms", "10000")
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.wait.max.ms", "100");
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    c
}

/// Rebalance hooks: keep the tracker in step with the assignment.
pub struct CoreContext {
    group: String,
    tracker: Arc<Mutex<OffsetTracker>>,
    /// Set once the group has given this consumer an assignment.
    joined: Arc<std::sync::atomic::AtomicBool>,
}

impl ClientContext for CoreContext {}

impl ConsumerContext for CoreContext {
    fn pre_rebalance(&self, _c: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut t = lock(&self.tracker);
            for e in tpl.elements() {
                tracing::info!(group = %self.group, topic = e.topic(), partition = e.partition(), pending = t.pending_in(e.partition()), "partition revoked; its unfinished messages will be redelivered to the new owner");
                t.revoke(e.partition());
            }
        }
    }

    fn post_rebalance(&self, _c: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.joined.store(true, std::sync::atomic::Ordering::Relaxed);
                let mut t = lock(&self.tracker);
                for e in tpl.elements() {
                    tracing::info!(group = %self.group, topic = e.topic(), partition = e.partition(), "partition assigned");
                    t.assign(e.partition());
                }
            }
            Rebalance::Error(e) => tracing::warn!(group = %self.group, error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(group = %self.group, offsets = ?offsets.to_topic_map(), "offsets committed"),
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(group = %self.group, error = %e, "offset commit failed; it is retried on the next interval"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type CoreConsumer = StreamConsumer<CoreContext>;

/// A message routed to a worker.
struct Job {
    route: usize,
    meta: RecordMeta,
    raw: Bytes,
    value: Value,
    generation: u64,
    read_at: Instant,
}

/// Everything a subscription's tasks share.
struct Shared {
    config: Arc<Config>,
    sub: usize,
    sinks: Arc<Vec<Sink>>,
    consumer: Arc<CoreConsumer>,
    tracker: Arc<Mutex<OffsetTracker>>,
    counters: Vec<RouteCounters>,
    unmatched: RouteCounters,
    invalid: RouteCounters,
    shutdown: Shutdown,
}

impl Shared {
    fn subscription(&self) -> &crate::config::Subscription {
        &self.config.subscriptions[self.sub]
    }

    /// Marks a message final and stores the offset when the finished prefix grew.
    fn finish(&self, meta: &RecordMeta, generation: u64) {
        let store = lock(&self.tracker).finish(meta.partition, meta.offset, generation);
        if let Some(offset) = store {
            if let Err(e) = self.consumer.store_offset(&meta.topic, meta.partition, offset) {
                tracing::debug!(topic = %meta.topic, partition = meta.partition, offset, error = %e, "offset not stored (partition no longer assigned)");
            }
        }
    }
}

/// Runs one subscription until shutdown: consumes, delivers, commits.
pub async fn run_subscription(
    config: Arc<Config>,
    sub: usize,
    sinks: Arc<Vec<Sink>>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    joined: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), KafkaError> {
    let s = &config.subscriptions[sub];
    let (topic, group) = (s.topic.clone(), s.group.clone());
    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
    let context = CoreContext { group: group.clone(), tracker: tracker.clone(), joined };
    let consumer: CoreConsumer = consumer_config(&config.kafka, &config.settings, &group).create_with_context(context)?;
    consumer.subscribe(&[&topic])?;
    let consumer = Arc::new(consumer);
    tracing::info!(%topic, %group, routes = s.routes.len(), brokers = %config.kafka.brokers.join(","), "subscribed");

    let counters = s.routes.iter().map(|r| RouteCounters::new(&metrics, &group, &r.name)).collect();
    let shared = Arc::new(Shared {
        unmatched: RouteCounters::new(&metrics, &group, UNMATCHED_ROUTE),
        invalid: RouteCounters::new(&metrics, &group, INVALID_ROUTE),
        counters,
        config: config.clone(),
        sub,
        sinks,
        consumer: consumer.clone(),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
    });
    let in_flight = metrics.gauge(crate::metrics::IN_FLIGHT, &[("group", &group)]);
    let kafka_errors = metrics.counter(crate::metrics::KAFKA_ERRORS_TOTAL, &[("group", &group)]);

    let channels = config.settings.channels.max(1);
    let mut lanes = Vec::with_capacity(channels);
    let mut workers = Vec::with_capacity(channels);
    for _ in 0..channels {
        let (tx, rx) = mpsc::channel::<Job>(config.settings.queue_capacity);
        lanes.push(tx);
        workers.push(tokio::spawn(worker(shared.clone(), rx)));
    }

    let mut last_error_log: Option<(String, Instant)> = None;
    loop {
        let msg = tokio::select! {
            biased;
            _ = shutdown.stop.cancelled() => break,
            m = consumer.recv() => m,
        };
        let m = match msg {
            Ok(m) => m,
            Err(e) => {
                inc(&kafka_errors);
                let text = e.to_string();
                // The same error (topic missing, broker down) repeats: say it every 30 s.
                let quiet = last_error_log.as_ref().is_some_and(|(t, at)| *t == text && at.elapsed() < Duration::from_secs(30));
                if !quiet {
                    if text.contains("UnknownTopic") || text.contains("Unknown topic") {
                        tracing::warn!(%topic, %group, error = %e, "topic does not exist yet; waiting for it to be created");
                    } else {
                        tracing::warn!(%topic, %group, error = %e, "Kafka consumer error; still trying");
                    }
                    last_error_log = Some((text, Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let meta = RecordMeta {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            timestamp_ms: m.timestamp().to_millis(),
        };
        let raw = Bytes::copy_from_slice(m.payload().unwrap_or_default());
        let tombstone = m.payload().is_none();
        drop(m);
        let generation = lock(&tracker).begin(meta.partition, meta.offset);
        in_flight.store(lock(&tracker).in_flight() as i64, std::sync::atomic::Ordering::Relaxed);

        match classify(&shared, &meta, &raw, tombstone) {
            Classified::Skip => shared.finish(&meta, generation),
            Classified::Route(route, value) => {
                inc(&shared.counters[route].consumed);
                let job = Job { route, meta, raw, value, generation, read_at: Instant::now() };
                let lane = &lanes[job.meta.partition.unsigned_abs() as usize % channels];
                // A full lane makes the consumer wait: memory stays bounded and
                // the backlog stays in Kafka as lag.
                tokio::select! {
                    biased;
                    _ = shutdown.stop.cancelled() => break,
                    r = lane.send(job) => if r.is_err() { break },
                }
            }
        }
    }

    drop(lanes);
    for w in workers {
        let _ = w.await;
    }
    let remaining = lock(&tracker).in_flight();
    if remaining > 0 {
        tracing::info!(%group, unfinished = remaining, "messages left unfinished at shutdown are not committed and will be redelivered");
    }
    in_flight.store(0, std::sync::atomic::Ordering::Relaxed);
    let c = consumer.clone();
    let g = group.clone();
    // The final commit and leaving the group block in librdkafka: keep them off the runtime.
    let closing = tokio::task::spawn_blocking(move || {
        match c.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!(group = %g, "final offsets committed"),
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(group = %g, error = %e, "final commit failed"),
        }
        c.unsubscribe();
        drop(c);
    });
    if tokio::time::timeout(Duration::from_secs(2), closing).await.is_err() {
        tracing::warn!(%group, "closing the consumer took longer than 2 s; leaving it behind");
    }
    drop(shared);
    Ok(())
}

enum Classified {
    Skip,
    Route(usize, Value),
}

/// Parses once and finds the route. Messages no route can take are final at once.
fn classify(shared: &Shared, meta: &RecordMeta, raw: &[u8], tombstone: bool) -> Classified {
    let group = &shared.subscription().group;
    let reason = if tombstone {
        "null value (tombstone)".to_string()
    } else if raw.is_empty() {
        "empty value".to_string()
    } else {
        match serde_json::from_slice::<Value>(raw) {
            Ok(value) => {
                return match shared.subscription().table.find(&value) {
                    Some(i) => Classified::Route(i, value),
                    None => {
                        inc(&shared.unmatched.consumed);
                        inc(&shared.unmatched.skipped);
                        tracing::trace!(%group, partition = meta.partition, offset = meta.offset, "no route claims the message; skipped");
                        Classified::Skip
                    }
                };
            }
            Err(e) => format!("not JSON: {e}"),
        }
    };
    inc(&shared.invalid.consumed);
    inc(&shared.invalid.skipped);
    tracing::warn!(%group, topic = %meta.topic, partition = meta.partition, offset = meta.offset, %reason, "invalid message skipped");
    Classified::Skip
}

/// Delivers the jobs of its partitions one at a time, in order.
async fn worker(shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
    while let Some(job) = rx.recv().await {
        if shared.shutdown.stop.is_cancelled() {
            // Not started: left unfinished, so it is redelivered after restart.
            continue;
        }
        if lock(&shared.tracker).generation(job.meta.partition) != Some(job.generation) {
            continue; // partition revoked since the message was read
        }
        if deliver(&shared, &job).await {
            shared.finish(&job.meta, job.generation);
        }
    }
}

/// Shapes and delivers one message, retrying until it is delivered or
/// shutdown stops it. Returns whether the message is final.
async fn deliver(shared: &Shared, job: &Job) -> bool {
    let sub = shared.subscription();
    let route = &sub.routes[job.route];
    let counters = &shared.counters[job.route];
    let settings = &shared.config.settings;
    let sink = &shared.sinks[route.sink];
    let mut backoff = Backoff::new(settings.retry_initial_delay, settings.retry_max_delay);
    let request = route.shape(&job.raw, &job.value, &job.meta);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result = match &request {
            Ok(req) => {
                tokio::select! {
                    biased;
                    _ = shared.shutdown.abort.cancelled() => {
                        tracing::warn!(group = %sub.group, route = %route.name, partition = job.meta.partition, offset = job.meta.offset, "grace period over: delivery cut short; the message will be redelivered");
                        return false;
                    }
                    r = sink.deliver(req) => r,
                }
            }
            Err(e) => Err(crate::sinks::DeliveryError::permanent(format!("cannot shape the request: {e}"))),
        };
        let delay = match result {
            Ok(()) => {
                inc(&counters.delivered);
                tracing::debug!(group = %sub.group, route = %route.name, partition = job.meta.partition, offset = job.meta.offset, attempt, latency_ms = job.read_at.elapsed().as_millis() as u64, "delivered");
                return true;
            }
            Err(crate::sinks::DeliveryError::Retryable { reason, retry_after }) => {
                inc(&counters.retried);
                let d = backoff.next(retry_after);
                tracing::warn!(group = %sub.group, route = %route.name, partition = job.meta.partition, offset = job.meta.offset, attempt, retry_in_ms = d.as_millis() as u64, %reason, "delivery failed; retrying");
                d
            }
            Err(crate::sinks::DeliveryError::Permanent { reason }) => {
                inc(&counters.retried);
                let d = settings.retry_max_delay;
                tracing::error!(group = %sub.group, route = %route.name, partition = job.meta.partition, offset = job.meta.offset, attempt, retry_in_ms = d.as_millis() as u64, %reason, "delivery failed permanently; the partition waits and retries at the maximum delay (no dead-letter topic)");
                d
            }
        };
        tokio::select! {
            biased;
            _ = shared.shutdown.stop.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
