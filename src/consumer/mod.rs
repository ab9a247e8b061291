//! The consumer core: one Kafka consumer per subscription, a dispatcher that
//! parses and routes each message once, `channels` delivery workers, and an
//! offset tracker that stores only offsets whose messages are final.
//!
//! Order is kept within a partition: a partition always goes to the same
//! worker, which delivers one message at a time and retries before moving on.

pub mod dead_letter;
mod lanes;
pub mod offsets;
mod retry;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use futures::{FutureExt, StreamExt};
use rdkafka::{ClientContext, TopicPartitionList};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, KafkaSettings, Settings};
use crate::metrics::{inc, Metrics, RouteCounters, INVALID_ROUTE, UNMATCHED_ROUTE};
use crate::shape::RecordMeta;
use crate::sinks::Sink;
use crate::message::{decode, Invalid, Limits};
use dead_letter::{DeadLetterWriter, ErrorClass};
pub use offsets::OffsetTracker;
pub use retry::Backoff;

/// Shutdown in two steps: `stop` ends fetching and backoff waits; `abort`
/// (after the grace period) cuts deliveries still running.
#[derive(Clone, Default)]
pub struct Shutdown {
    pub stop: CancellationToken,
    pub abort: CancellationToken,
}

/// librdkafka properties every client of the profile shares (brokers, security).
pub fn client_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", kafka.brokers.join(","));
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    c
}

/// The producer of dead letters: acknowledged by all in-sync replicas, idempotent.
pub fn dead_letter_producer(kafka: &KafkaSettings) -> Result<DeadLetterProducer, KafkaError> {
    client_config(kafka)
        .set("client.id", "vedgate-dead-letters")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create_with_context(QuietContext::new("dead-letter producer"))
}

pub type DeadLetterProducer = rdkafka::producer::FutureProducer<QuietContext>;

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
        // The prefetch buffer: up to 8 MiB in all (bounds memory under overload). When it is full librdkafka
        // backs the partition's next fetch off by `fetch.queue.backoff.ms`,
        // 1 s by default: long enough for the gateway to empty the buffer and
        // then sit idle (measured: 85k msg/s instead of 300k+). 10 ms keeps
        // the buffer topped up without polling the broker in a loop.
        .set("queued.max.messages.kbytes", "8192")
        .set("fetch.queue.backoff.ms", "10")
        // How long the broker may hold a fetch when there is nothing new: the
        // floor of end-to-end latency once caught up (100 ms gave a 116 ms
        // p99 tail in the benchmark, 10 ms 58 ms), at the cost of ~100 empty
        // fetches a second per idle consumer. A profile's `kafka` table overrides it.
        .set("fetch.wait.max.ms", "10")
        .set("statistics.interval.ms", "5000");
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
    quiet: QuietContext,
    metrics: Arc<Metrics>,
    /// An authentication or TLS failure before the group was joined: the
    /// credentials are wrong, retrying cannot help, and the start must fail.
    fatal: Mutex<Option<String>>,
}

impl ClientContext for CoreContext {
    /// Lag and broker state from librdkafka's statistics: lag only where both
    /// the committed offset and the high watermark are real offsets.
    fn stats(&self, stats: rdkafka::Statistics) {
        let assigned: std::collections::HashSet<i32> = lock(&self.tracker).partition_ids();
        for (topic, t) in &stats.topics {
            for (id, p) in &t.partitions {
                if *id < 0 {
                    continue;
                }
                let pid = id.to_string();
                let labels = [("group", self.group.as_str()), ("topic", topic.as_str()), ("partition", pid.as_str())];
                if assigned.contains(id) && p.committed_offset >= 0 && p.hi_offset >= 0 {
                    self.metrics.gauge(crate::metrics::CONSUMER_LAG, &labels).store((p.hi_offset - p.committed_offset).max(0), std::sync::atomic::Ordering::Relaxed);
                } else if !assigned.contains(id) {
                    self.metrics.remove_gauge(crate::metrics::CONSUMER_LAG, &labels);
                }
            }
        }
        for b in stats.brokers.values() {
            if b.nodeid < 0 {
                continue;
            }
            let up = i64::from(b.state == "UP");
            self.metrics.gauge(crate::metrics::BROKER_UP, &[("group", self.group.as_str()), ("broker", b.name.as_str())]).store(up, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.quiet.log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        let auth = matches!(error.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::Authentication | rdkafka::types::RDKafkaErrorCode::SaslAuthenticationFailed | rdkafka::types::RDKafkaErrorCode::SSL));
        if auth && !self.joined.load(std::sync::atomic::Ordering::Relaxed) {
            lock(&self.fatal).get_or_insert_with(|| format!("{error}: {reason}"));
        }
        self.quiet.error(error, reason);
    }
}

/// librdkafka repeats the same error (all brokers down) many times a
/// second: say each distinct error once per 30 s.
pub struct QuietContext {
    label: String,
    last: Mutex<Option<(String, Instant)>>,
}

impl QuietContext {
    pub fn new(label: impl Into<String>) -> Self {
        QuietContext { label: label.into(), last: Mutex::new(None) }
    }

    fn say(&self, text: String) {
        let mut last = lock(&self.last);
        if last.as_ref().is_some_and(|(t, at)| *t == text && at.elapsed() < Duration::from_secs(30)) {
            return;
        }
        if text.contains("AllBrokersDown") || text.contains("brokers are down") {
            tracing::warn!(client = %self.label, error = %text, "Kafka brokers are down or unreachable; still trying");
        } else {
            tracing::warn!(client = %self.label, error = %text, "Kafka client error; still trying");
        }
        *last = Some((text, Instant::now()));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.say(format!("{error}: {reason}"));
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => self.say(format!("{fac}: {message}")),
            L::Warning | L::Notice => tracing::debug!(client = %self.label, fac, "{message}"),
            L::Info | L::Debug => tracing::trace!(client = %self.label, fac, "{message}"),
        }
    }
}

impl ConsumerContext for QuietContext {}

impl ClientContext for QuietContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        QuietContext::log(self, level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        QuietContext::error(self, error, reason);
    }
}

impl ConsumerContext for CoreContext {
    fn pre_rebalance(&self, consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Tell librdkafka the final positions of what it is about to commit and give away.
            let revoked: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            if let Some(e) = tpl.elements().first() {
                store_positions(consumer, e.topic(), &self.tracker, Some(&revoked));
            }
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

/// How often finished positions are handed to librdkafka for its next commit.
const STORE_INTERVAL: Duration = Duration::from_millis(100);
/// Messages taken from librdkafka per pass of the dispatcher loop.
const BURST: usize = 256;

/// What a lane does with a message.
enum Work {
    /// Not parsed yet: the lane classifies it first ([`Shared::classify`]).
    Undecoded,
    Deliver { route: usize, value: Value },
    DeadLetter { class: ErrorClass, reason: String },
}

/// What a subscription's routes are right now: swapped whole on reload.
pub struct SubView {
    pub config: Arc<Config>,
    pub sub: usize,
    pub sinks: Arc<Vec<Sink>>,
    counters: Vec<RouteCounters>,
    /// Some route orders by key: the lane of a message depends on its content.
    keyed: bool,
    /// Messages a lane holds: `queue_capacity`, or two of the largest batch.
    lane_capacity: usize,
}

impl SubView {
    pub fn new(config: Arc<Config>, sub: usize, sinks: Arc<Vec<Sink>>, metrics: &Metrics) -> Self {
        let s = &config.subscriptions[sub];
        let counters = s.routes.iter().map(|r| RouteCounters::new(metrics, &s.group, &r.name)).collect();
        let keyed = s.routes.iter().any(|r| r.order_key.is_some());
        let largest_batch = s.routes.iter().filter_map(|r| config.sinks[r.sink].batching()).map(|b| b.max_rows).max().unwrap_or(1);
        let lane_capacity = config.settings.queue_capacity.max(2 * largest_batch).max(1);
        SubView { config, sub, sinks, counters, keyed, lane_capacity }
    }

    pub fn subscription(&self) -> &crate::config::Subscription {
        &self.config.subscriptions[self.sub]
    }
}

/// A running subscription, as the gateway sees it: its routes can be
/// swapped, and it can be stopped on its own.
pub struct SubscriptionHandle {
    view: Arc<std::sync::RwLock<Arc<SubView>>>,
    pub stop: CancellationToken,
}

impl SubscriptionHandle {
    /// New routes apply from the next message read; in-flight ones keep theirs.
    pub fn swap(&self, view: SubView) {
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(view);
    }
}

/// A message handed to its partition's lane.
struct Job {
    /// The routes in force when the message was read.
    view: Arc<SubView>,
    work: Work,
    /// Lane within the partition: 0 in partition order, else by ordering key.
    slot: u32,
    meta: RecordMeta,
    /// `None` for a tombstone.
    raw: Option<Bytes>,
    generation: u64,
    read_at: Instant,
}

/// Everything a subscription's tasks share.
struct Shared {
    topic: String,
    group: String,
    /// Settings as they were when the subscription started.
    settings: Settings,
    view: Arc<std::sync::RwLock<Arc<SubView>>>,
    consumer: Arc<CoreConsumer>,
    tracker: Arc<Mutex<OffsetTracker>>,
    unmatched: RouteCounters,
    invalid: RouteCounters,
    shutdown: Shutdown,
    /// `CHANNELS_COUNT` delivery slots: held during a sink call, not while backing off.
    slots: tokio::sync::Semaphore,
    /// Mirror copies in flight; beyond this they are dropped and counted.
    mirror_slots: Arc<tokio::sync::Semaphore>,
    dead_letters: Option<DeadLetterWriter>,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// `vedgate_partition_pauses_total` of this group.
    pauses: Arc<std::sync::atomic::AtomicU64>,
}

impl Shared {
    fn current(&self) -> Arc<SubView> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the job's partition is still assigned as it was when the job was read.
    fn owns(&self, job: &Job) -> bool {
        lock(&self.tracker).generation(job.meta.partition) == Some(job.generation)
    }

    /// Parses a message and finds its route (and, for key order, its lane
    /// slot). `None`: skipped (no route claims it, or it is invalid and
    /// cannot be dead-lettered), counted and logged here; the caller finishes it.
    fn classify(&self, view: &SubView, raw: Option<&[u8]>, meta: &RecordMeta) -> Option<(Work, u32)> {
        match decode(raw, self.limits) {
            Ok(value) => match view.subscription().table.find(&value) {
                Some(route) => {
                    inc(&view.counters[route].consumed);
                    let slot = match &view.subscription().routes[route].order_key {
                        Some(k) => order_slot(k.resolve(&value, None, meta), self.settings.channels),
                        None => 0,
                    };
                    Some((Work::Deliver { route, value }, slot))
                }
                None => {
                    inc(&self.unmatched.consumed);
                    inc(&self.unmatched.skipped);
                    tracing::trace!(group = %self.group, partition = meta.partition, offset = meta.offset, "no route claims the message; skipped");
                    None
                }
            },
            Err(invalid) => {
                inc(&self.invalid.consumed);
                let reason = invalid.to_string();
                if invalid == Invalid::Tombstone || self.dead_letters.is_none() {
                    // A tombstone is a delete marker no route can take; without a
                    // dead-letter topic an invalid message cannot be kept anywhere.
                    inc(&self.invalid.skipped);
                    tracing::warn!(group = %self.group, topic = %meta.topic, partition = meta.partition, offset = meta.offset, %reason, "invalid message skipped");
                    return None;
                }
                Some((Work::DeadLetter { class: ErrorClass::InvalidMessage, reason }, 0))
            }
        }
    }

    /// Marks a message final. The grown finished prefix reaches librdkafka
    /// with the next [`store_positions`] (every 100 ms, on revoke, at stop).
    fn finish(&self, meta: &RecordMeta, generation: u64) {
        lock(&self.tracker).finish(meta.partition, meta.offset, generation);
    }
}

/// Stores in the consumer the positions that moved since the last call (of
/// `partitions`, or all), for its next commit: one call for many messages,
/// always from the task that polls the consumer, so never racing a rebalance.
fn store_positions<C: Consumer<X>, X: ConsumerContext>(consumer: &C, topic: &str, tracker: &Mutex<OffsetTracker>, partitions: Option<&[i32]>) {
    let positions = lock(tracker).take_positions(partitions);
    if positions.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::with_capacity(positions.len());
    for (p, next) in &positions {
        if let Err(e) = tpl.add_partition_offset(topic, *p, rdkafka::Offset::Offset(*next)) {
            tracing::warn!(%topic, partition = p, error = %e, "offset not stored");
        }
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        tracing::debug!(%topic, ?positions, error = %e, "offsets not stored (partition no longer assigned)");
    }
}

/// Prepares one subscription: returns its handle and the future that runs it
/// until the gateway stops or the handle's `stop` is cancelled.
pub fn start_subscription(
    view: SubView,
    metrics: Arc<Metrics>,
    shutdown: &Shutdown,
    joined: Arc<std::sync::atomic::AtomicBool>,
    producer: Option<DeadLetterProducer>,
) -> (SubscriptionHandle, futures::future::BoxFuture<'static, Result<(), KafkaError>>) {
    let view = Arc::new(std::sync::RwLock::new(Arc::new(view)));
    let own = Shutdown { stop: shutdown.stop.child_token(), abort: shutdown.abort.clone() };
    let handle = SubscriptionHandle { view: view.clone(), stop: own.stop.clone() };
    let task = Box::pin(run_subscription(view, metrics, own, joined, producer));
    (handle, task)
}

/// Runs one subscription until shutdown: consumes, delivers, commits.
async fn run_subscription(
    view: Arc<std::sync::RwLock<Arc<SubView>>>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    joined: Arc<std::sync::atomic::AtomicBool>,
    producer: Option<DeadLetterProducer>,
) -> Result<(), KafkaError> {
    let first = view.read().unwrap_or_else(|e| e.into_inner()).clone();
    let config = first.config.clone();
    let s = first.subscription();
    let (topic, group) = (s.topic.clone(), s.group.clone());
    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
    let context = CoreContext { group: group.clone(), tracker: tracker.clone(), joined, quiet: QuietContext::new(format!("consumer {group}")), metrics: metrics.clone(), fatal: Mutex::new(None) };
    let consumer: CoreConsumer = consumer_config(&config.kafka, &config.settings, &group).create_with_context(context)?;
    consumer.subscribe(&[&topic])?;
    let consumer = Arc::new(consumer);
    tracing::info!(%topic, %group, routes = s.routes.len(), dead_letter_topic = s.dead_letter_topic.as_deref().unwrap_or("none"), brokers = %config.kafka.brokers.join(","), "subscribed");

    let dead_letters = match (&s.dead_letter_topic, producer) {
        (Some(t), Some(p)) => {
            // Auto-creation is off on the broker: the gateway creates its dead-letter
            // topics, in the background so a broker that is down does not hold the start.
            let (topic_name, kafka, stop) = (t.clone(), config.kafka.clone(), shutdown.stop.clone());
            tokio::spawn(async move {
                let mut delay = Duration::from_millis(500);
                loop {
                    let list = [(topic_name.as_str(), 1)];
                    let create = crate::tools::create_topics_with(client_config(&kafka), &list);
                    let r = tokio::select! { _ = stop.cancelled() => return, r = tokio::time::timeout(Duration::from_secs(30), create) => r };
                    match r {
                        Ok(Ok(())) => return,
                        Ok(Err(e)) => tracing::warn!(topic = %topic_name, error = %e, "cannot create the dead-letter topic yet; retrying"),
                        Err(_) => tracing::warn!(topic = %topic_name, "dead-letter topic creation timed out; retrying"),
                    }
                    tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(delay) => {} }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            });
            Some(DeadLetterWriter::new(t.clone(), p))
        }
        _ => None,
    };

    let shared = Arc::new(Shared {
        unmatched: RouteCounters::new(&metrics, &group, UNMATCHED_ROUTE),
        invalid: RouteCounters::new(&metrics, &group, INVALID_ROUTE),
        topic: topic.clone(),
        group: group.clone(),
        settings: config.settings.clone(),
        view,
        consumer: consumer.clone(),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        slots: tokio::sync::Semaphore::new(config.settings.channels.max(1)),
        mirror_slots: Arc::new(tokio::sync::Semaphore::new(64)),
        dead_letters,
        metrics: metrics.clone(),
        limits: Limits { max_bytes: config.settings.max_message_bytes, max_depth: config.settings.max_json_depth },
        pauses: metrics.counter(crate::metrics::PARTITION_PAUSES_TOTAL, &[("group", &group)]),
    });
    let in_flight = metrics.gauge(crate::metrics::IN_FLIGHT, &[("group", &group)]);
    let kafka_errors = metrics.counter(crate::metrics::KAFKA_ERRORS_TOTAL, &[("group", &group)]);
    let topic_name: Arc<str> = Arc::from(topic.as_str());

    let mut lanes = lanes::Lanes::new(shared.clone());
    let stall_limit = config.settings.stall_timeout;
    let mut watchdog = tokio::time::interval((stall_limit / 2).max(Duration::from_millis(500)));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut store_tick = tokio::time::interval(STORE_INTERVAL);
    store_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error_log: Option<(String, Instant)> = None;
    let mut stream = consumer.stream();
    let mut burst: Vec<rdkafka::message::BorrowedMessage<'_>> = Vec::with_capacity(BURST);
    loop {
        let msg = tokio::select! {
            biased;
            _ = shutdown.stop.cancelled() => break,
            Some((p, epoch)) = lanes.resumed() => { lanes.resume(p, epoch); continue }
            _ = store_tick.tick() => {
                store_positions(consumer.as_ref(), &topic, &tracker, None);
                continue
            }
            _ = watchdog.tick() => {
                report_stalled(&shared, stall_limit);
                in_flight.store(lock(&tracker).in_flight() as i64, std::sync::atomic::Ordering::Relaxed);
                continue
            }
            m = stream.next() => match m {
                Some(m) => m,
                None => {
                    // rdkafka's stream does not end while the consumer lives; if it ever
                    // did, stop this subscription cleanly rather than spin or panic.
                    tracing::error!(%topic, %group, "Kafka message stream ended; stopping the subscription");
                    break;
                }
            },
        };
        let m = match msg {
            Ok(m) => m,
            Err(e) => {
                inc(&kafka_errors);
                if let Some(why) = lock(&consumer.context().fatal).clone() {
                    let user = config.kafka.properties.get("sasl.username").map(String::as_str).unwrap_or("-");
                    let mech = config.kafka.properties.get("sasl.mechanism").map(String::as_str).unwrap_or("-");
                    tracing::error!(%group, profile = %config.kafka.profile, mechanism = mech, user, reason = %why, "cannot authenticate to Kafka: check the profile's credentials and CA; stopping");
                    return Err(e);
                }
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
        // Take what else librdkafka already has, without waiting: one pass
        // of the loop (and its select) per burst, not per message.
        burst.push(m);
        while burst.len() < BURST {
            match stream.next().now_or_never() {
                Some(Some(Ok(m))) => burst.push(m),
                _ => break, // nothing ready, or an error: seen on the next recv
            }
        }
        for m in burst.drain(..) {
            let meta = RecordMeta {
                topic: topic_name.clone(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                timestamp_ms: m.timestamp().to_millis(),
                traceparent: traceparent(&m),
            };
            let Some(generation) = lock(&tracker).begin(meta.partition, meta.offset) else {
                continue; // already read in this assignment (re-fetch after a pause)
            };
            let raw = m.payload().map(Bytes::copy_from_slice);
            drop(m);
            let view = shared.current();
            let (work, slot) = if view.keyed {
                // The lane depends on the message's ordering key: decode it here.
                match shared.classify(&view, raw.as_deref(), &meta) {
                    Some(ws) => ws,
                    None => {
                        shared.finish(&meta, generation);
                        continue;
                    }
                }
            } else {
                // Partition order: the partition's lane decodes it, so the lanes
                // parse in parallel while this task keeps reading.
                (Work::Undecoded, 0)
            };
            if !lanes.push(Job { view, work, slot, meta, raw, generation, read_at: Instant::now() }).await {
                break;
            }
        }
    }
    drop(burst);
    drop(stream);

    lanes.close().await;
    store_positions(consumer.as_ref(), &topic, &tracker, None);
    let remaining = lock(&tracker).in_flight();
    if remaining > 0 {
        tracing::info!(%group, unfinished = remaining, "messages left unfinished at shutdown are not committed and will be redelivered");
    }
    in_flight.store(0, std::sync::atomic::Ordering::Relaxed);
    let c = consumer.clone();
    let g = group.clone();
    // The final commit and leaving the group block in librdkafka: keep them off the runtime.
    let closing = tokio::task::spawn_blocking(move || {
        // A coordinator that is moving or loading answers a transient error:
        // ask again (briefly) rather than leave the last positions uncommitted.
        for attempt in 1..=3 {
            match c.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => tracing::info!(group = %g, "final offsets committed"),
                Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
                Err(e) if attempt < 3 => {
                    tracing::debug!(group = %g, error = %e, attempt, "final commit failed; trying again");
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                Err(e) => tracing::warn!(group = %g, error = %e, "final commit failed; the last messages will be redelivered"),
            }
            break;
        }
        c.unsubscribe();
        drop(c);
    });
    if tokio::time::timeout(Duration::from_secs(3), closing).await.is_err() {
        tracing::warn!(%group, "closing the consumer took longer than 3 s; leaving it behind");
    }
    drop(shared);
    Ok(())
}

/// The lane of an ordering key: the same key always gets the same lane.
fn order_slot(key: Option<Value>, lanes: usize) -> u32 {
    use std::hash::{Hash, Hasher};
    let Some(k) = key else { return 0 };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match &k {
        Value::String(s) => s.hash(&mut h),
        other => other.to_string().hash(&mut h),
    }
    (h.finish() % lanes.max(1) as u64) as u32
}

/// A valid-looking W3C `traceparent` header of the record, if any.
fn traceparent(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<String> {
    use rdkafka::message::Headers;
    let h = m.headers()?;
    let v = h.iter().find(|x| x.key.eq_ignore_ascii_case("traceparent"))?.value?;
    let s = std::str::from_utf8(v).ok()?.trim();
    (s.len() == 55 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then(|| s.to_string())
}

/// The watchdog: partitions holding unfinished messages without progress.
fn report_stalled(shared: &Shared, limit: Duration) {
    let stalled = lock(&shared.tracker).stalled(limit);
    let gauge = shared.metrics.gauge(crate::metrics::STALLED_PARTITIONS, &[("group", &shared.group), ("topic", &shared.topic)]);
    gauge.store(stalled.len() as i64, std::sync::atomic::Ordering::Relaxed);
    for (partition, pending, since) in stalled {
        tracing::warn!(group = %shared.group, topic = %shared.topic, partition, pending, stalled_s = since.as_secs(), "partition has unfinished messages and no progress");
    }
}
