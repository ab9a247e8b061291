//! Partition lanes: each assigned partition has its own task and bounded
//! queue, so a message retrying in one partition never holds back another.
//! `CHANNELS_COUNT` bounds concurrent sink calls across the lanes.
//!
//! When a lane's queue is full the partition is paused in librdkafka and the
//! messages already fetched wait in a parked queue; once they are handed over
//! the partition resumes. Overload turns into lag, not memory.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rdkafka::consumer::Consumer;
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinHandle;

use super::dead_letter::{DeadLetter, ErrorClass};
use super::{lock, Backoff, Job, Shared, Work};
use crate::metrics::inc;
use crate::sinks::DeliveryError;

struct Parked {
    jobs: VecDeque<Job>,
    /// Set by the drainer when it emptied the queue: later jobs go to the lane.
    closed: bool,
}

struct Lane {
    tx: mpsc::Sender<Job>,
    parked: Option<(u64, Arc<Mutex<Parked>>)>,
}

/// How long the dispatcher waits for room in a full lane before pausing the
/// partition. A pause makes librdkafka drop the partition's fetched buffer
/// and fetch it again, so a lane that drains in microseconds (a burst of one
/// partition, as librdkafka hands them over) must not pause; but while the
/// dispatcher waits no other partition is read, so a slow lane (measured:
/// 50 ms here throttled every partition to one slow webhook's pace) must
/// pause quickly and let the others run.
const PAUSE_AFTER: std::time::Duration = std::time::Duration::from_millis(2);

/// A lane: a partition, and a slot within it when a route orders by key.
type LaneId = (i32, u32);

pub(super) struct Lanes {
    shared: Arc<Shared>,
    lanes: HashMap<LaneId, Lane>,
    tasks: Vec<JoinHandle<()>>,
    resume_tx: mpsc::Sender<(LaneId, u64)>,
    resume_rx: mpsc::Receiver<(LaneId, u64)>,
    epochs: u64,
}

impl Lanes {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        let (resume_tx, resume_rx) = mpsc::channel(64);
        Lanes { shared, lanes: HashMap::new(), tasks: Vec::new(), resume_tx, resume_rx, epochs: 0 }
    }

    /// A parked lane whose backlog has been handed over.
    pub(super) async fn resumed(&mut self) -> Option<(LaneId, u64)> {
        self.resume_rx.recv().await
    }

    /// Hands a job to its lane. A full lane is first given `PAUSE_AFTER` to
    /// make room (a burst of one partition, as librdkafka fetches them);
    /// only a lane still full after that pauses its partition. Returns
    /// false when the subscription is stopping.
    pub(super) async fn push(&mut self, job: Job) -> bool {
        let p = job.meta.partition;
        let id = (p, job.slot);
        let shared = &self.shared;
        let tasks = &mut self.tasks;
        let lane = self.lanes.entry(id).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(job.view.lane_capacity);
            tasks.push(tokio::spawn(lane_worker(shared.clone(), rx)));
            Lane { tx, parked: None }
        });
        if let Some((_, q)) = &lane.parked {
            let mut g = lock(q);
            if !g.closed {
                g.jobs.push_back(job);
                return true;
            }
            drop(g);
            lane.parked = None;
        }
        let job = match lane.tx.try_send(job) {
            Ok(()) => return true,
            Err(TrySendError::Closed(_)) => return true, // shutting down: left unfinished
            Err(TrySendError::Full(job)) => job,
        };
        let waited = tokio::select! {
            biased;
            _ = shared.shutdown.stop.cancelled() => return false,
            r = tokio::time::timeout(PAUSE_AFTER, lane.tx.reserve()) => r,
        };
        match waited {
            Ok(Ok(permit)) => {
                permit.send(job);
                return true;
            }
            Ok(Err(_)) => return true, // lane closed: shutting down
            Err(_) => {}                // still full: pause below
        }
        // Park: stop fetching this partition until its lane has room.
        self.epochs += 1;
        let epoch = self.epochs;
        let topic = job.meta.topic.clone();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, p);
        if let Err(e) = shared.consumer.pause(&tpl) {
            tracing::warn!(%topic, partition = p, error = %e, "cannot pause partition");
        }
        tracing::debug!(%topic, partition = p, "lane full: partition paused");
        inc(&shared.pauses);
        let q = Arc::new(Mutex::new(Parked { jobs: VecDeque::from([job]), closed: false }));
        lane.parked = Some((epoch, q.clone()));
        let tx = lane.tx.clone();
        let resume = self.resume_tx.clone();
        let stop = shared.shutdown.stop.clone();
        tokio::spawn(async move {
            loop {
                let permit = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = tx.reserve() => match r { Ok(p) => p, Err(_) => return },
                };
                let next = {
                    let mut g = lock(&q);
                    let j = g.jobs.pop_front();
                    if j.is_none() {
                        g.closed = true;
                    }
                    j
                };
                match next {
                    Some(j) => permit.send(j),
                    None => {
                        drop(permit);
                        // Resume only once the lane is half empty: resuming at the
                        // first free slot would pause again at once, and every pause
                        // makes librdkafka drop and re-fetch the partition's buffer.
                        let half = (tx.max_capacity() / 2).max(1);
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            r = tx.reserve_many(half) => drop(r),
                        }
                        let _ = resume.send((id, epoch)).await;
                        return;
                    }
                }
            }
        });
        true
    }

    pub(super) fn resume(&mut self, id: LaneId, epoch: u64) {
        let p = id.0;
        let Some(lane) = self.lanes.get_mut(&id) else { return };
        match &lane.parked {
            Some((e, _)) if *e != epoch => return, // parked again since: that drainer resumes
            _ => lane.parked = None,
        }
        // The partition resumes once none of its lanes is parked.
        if self.lanes.iter().any(|((lp, _), l)| *lp == p && l.parked.is_some()) {
            return;
        }
        let topic = &self.shared.topic;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, p);
        if let Err(e) = self.shared.consumer.resume(&tpl) {
            tracing::debug!(%topic, partition = p, error = %e, "cannot resume partition (no longer assigned?)");
        }
    }

    /// Closes every lane and waits for the workers to stop.
    pub(super) async fn close(self) {
        drop(self.lanes);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Delivers one partition's messages one at a time, in order.
async fn lane_worker(shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
    let mut next: Option<Job> = None;
    loop {
        let mut job = match next.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => break,
            },
        };
        if shared.shutdown.stop.is_cancelled() {
            continue; // not started: left unfinished, redelivered after restart
        }
        if !shared.owns(&job) {
            continue; // partition revoked since the message was read
        }
        if !classified(&shared, &mut job) {
            continue;
        }
        if let Some(batching) = batching_of(&job) {
            let (batch, rest) = collect_batch(&shared, job, &mut rx, batching).await;
            next = rest;
            deliver_batch(&shared, batch, batching).await;
            continue;
        }
        let done = match &job.work {
            Work::Deliver { route, value } => deliver(&shared, &job, *route, value).await,
            Work::DeadLetter { class, reason } => {
                dead_letter(&shared, &job, crate::metrics::INVALID_ROUTE, *class, reason, 0).await == DeadLetterResult::Written
            }
            Work::Undecoded => {
                // `classified` above replaced it; kept total so no input can panic a lane.
                tracing::error!(group = %shared.group, partition = job.meta.partition, offset = job.meta.offset, "message reached delivery unparsed; left unfinished");
                false
            }
        };
        if done {
            shared.finish(&job.meta, job.generation);
        }
    }
}

/// Parses and routes a job the dispatcher handed over undecoded. False when
/// it is skipped (already counted): it is finished here.
fn classified(shared: &Shared, job: &mut Job) -> bool {
    if !matches!(job.work, Work::Undecoded) {
        return true;
    }
    match shared.classify(&job.view, job.raw.as_deref(), &job.meta) {
        Some((work, _)) => {
            job.work = work;
            true
        }
        None => {
            shared.finish(&job.meta, job.generation);
            false
        }
    }
}

/// The batching of the job's sink, when it has one.
fn batching_of(job: &Job) -> Option<(usize, crate::config::Batching)> {
    let Work::Deliver { route, .. } = &job.work else { return None };
    let r = &job.view.subscription().routes[*route];
    if r.observe || r.mirror.is_some() {
        return None;
    }
    job.view.config.sinks[r.sink].batching().map(|b| (r.sink, b))
}

fn route_of(job: &Job) -> Option<usize> {
    match &job.work {
        Work::Deliver { route, .. } => Some(*route),
        Work::DeadLetter { .. } | Work::Undecoded => None,
    }
}

/// Takes the consecutive jobs for the same sink (and configuration) that are
/// queued, waiting up to the linger time; returns the first job that does not
/// fit so it is handled next, in order.
async fn collect_batch(shared: &Shared, first: Job, rx: &mut mpsc::Receiver<Job>, (sink, b): (usize, crate::config::Batching)) -> (Vec<Job>, Option<Job>) {
    let deadline = tokio::time::Instant::now() + b.linger;
    let mut batch = vec![first];
    while batch.len() < b.max_rows {
        let mut j = match rx.try_recv() {
            Ok(j) => j,
            Err(_) if b.linger.is_zero() => break,
            Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(j)) => j,
                _ => break,
            },
        };
        if shared.owns(&j) && !classified(shared, &mut j) {
            continue; // skipped, and finished
        }
        // SQL batches may mix routes of one sink; an HTTP batch goes to one route's URL.
        let same_route = b.format.is_none() || route_of(&j) == route_of(&batch[0]);
        let fits = Arc::ptr_eq(&j.view, &batch[0].view) && batching_of(&j).is_some_and(|(s, _)| s == sink) && same_route;
        if !fits {
            return (batch, Some(j));
        }
        batch.push(j);
    }
    (batch, None)
}

/// Writes a batch in one transaction; when that fails, delivers its messages
/// one by one so only the bad one is retried or dead-lettered.
async fn deliver_batch(shared: &Shared, batch: Vec<Job>, (sink_idx, batching): (usize, crate::config::Batching)) {
    // One sink: its requests are all SQL or all HTTP.
    let (mut sql, mut http) = (Vec::new(), Vec::new());
    for job in &batch {
        let Work::Deliver { route, value } = &job.work else { break };
        let r = &job.view.subscription().routes[*route];
        if r.schema.as_ref().is_some_and(|s| s.check(value).is_err()) {
            break;
        }
        match r.shape(job.raw.as_deref().unwrap_or_default(), value, &job.meta) {
            Ok(crate::shape::Request::Sql(q)) => sql.push(q),
            Ok(crate::shape::Request::Http(h)) => http.push(h),
            _ => break,
        }
    }
    if sql.len() + http.len() == batch.len() && batch.len() > 1 {
        let view = &batch[0].view;
        let sink = &view.sinks[sink_idx];
        let started = Instant::now();
        let result = {
            let _slot = shared.slots.acquire().await;
            let send = async {
                match batching.format {
                    None => sink.deliver_batch(&sql.iter().collect::<Vec<_>>()).await,
                    Some(format) => {
                        let reqs: Vec<&crate::shape::HttpRequest> = http.iter().collect();
                        let first = &batch[0].meta;
                        let last = &batch[batch.len() - 1].meta;
                        let combined = crate::shape::combine_http(&reqs, format, first, last.offset);
                        sink.deliver(&crate::shape::Request::Http(combined)).await
                    }
                }
            };
            tokio::select! {
                biased;
                _ = shared.shutdown.abort.cancelled() => return,
                r = send => r,
            }
        };
        match result {
            Ok(()) => {
                for job in &batch {
                    let Work::Deliver { route, .. } = &job.work else { continue };
                    let counters = &job.view.counters[*route];
                    counters.sink_latency.observe(started.elapsed());
                    inc(&counters.delivered);
                    if let Some(d) = crate::metrics::since_record(job.meta.timestamp_ms) {
                        counters.end_to_end.observe(d);
                    }
                    shared.finish(&job.meta, job.generation);
                }
                return;
            }
            Err(e) => tracing::warn!(group = %shared.group, messages = batch.len(), error = %e, "batch failed; delivering its messages one by one"),
        }
    }
    for job in batch {
        if shared.shutdown.stop.is_cancelled() || !shared.owns(&job) {
            continue;
        }
        let Work::Deliver { route, value } = &job.work else { continue };
        if deliver(shared, &job, *route, value).await {
            shared.finish(&job.meta, job.generation);
        }
    }
}

#[derive(PartialEq, Eq)]
enum DeadLetterResult {
    Written,
    /// Shutdown came first.
    Stopped,
    /// The subscription has no dead-letter topic.
    NoTopic,
}

/// Shapes and delivers one message: retries what can be retried, dead-letters
/// what cannot. Returns whether the message is final.
/// How a message's delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    DeadLettered,
    /// Stopped, revoked or cut short: not final, redelivered later.
    Unfinished,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Unfinished => "unfinished",
        }
    }
}

/// Delivers one message by its route: observe-only routes just count, and a
/// mirror gets a copy that never holds back or retries the primary.
async fn deliver(shared: &Shared, job: &Job, route_idx: usize, value: &serde_json::Value) -> bool {
    let route = &job.view.subscription().routes[route_idx];
    if route.observe {
        inc(&job.view.counters[route_idx].skipped);
        return true;
    }
    let mirror = route.mirror.as_ref().map(|m| start_mirror(shared, job, route, m, value));
    let outcome = deliver_primary(shared, job, route_idx, value).await;
    if let Some(tx) = mirror {
        let _ = tx.send(outcome);
    }
    outcome != Outcome::Unfinished
}

/// Sends the mirror copy in the background, once, bounded by the
/// subscription's mirror slots; counts it beside the primary's outcome.
fn start_mirror(shared: &Shared, job: &Job, route: &crate::config::Route, m: &crate::config::Mirror, value: &serde_json::Value) -> tokio::sync::oneshot::Sender<Outcome> {
    let (tx, rx) = tokio::sync::oneshot::channel::<Outcome>();
    let metrics = shared.metrics.clone();
    let route_name = route.name.clone();
    let permit = shared.mirror_slots.clone().try_acquire_owned().ok();
    let request = m.shape(job.raw.as_deref().unwrap_or_default(), value, &job.meta);
    let view = job.view.clone();
    let sink_idx = m.sink;
    tokio::spawn(async move {
        let mirror = match (permit, request) {
            (None, _) => "dropped",
            (Some(_p), Err(_)) => "permanent_error",
            (Some(_p), Ok(req)) => match tokio::time::timeout(std::time::Duration::from_secs(30), view.sinks[sink_idx].deliver(&req)).await {
                Ok(Ok(())) => "delivered",
                Ok(Err(DeliveryError::Retryable { .. })) | Err(_) => "retryable_error",
                Ok(Err(DeliveryError::Permanent { .. })) => "permanent_error",
            },
        };
        let primary = rx.await.map(Outcome::label).unwrap_or("unfinished");
        inc(&metrics.counter(crate::metrics::MIRROR_TOTAL, &[("route", &route_name), ("primary", primary), ("mirror", mirror)]));
    });
    tx
}

async fn deliver_primary(shared: &Shared, job: &Job, route_idx: usize, value: &serde_json::Value) -> Outcome {
    let view = &job.view;
    let sub = view.subscription();
    let route = &sub.routes[route_idx];
    let counters = &view.counters[route_idx];
    if let Some(schema) = &route.schema {
        if let Err(reason) = schema.check(value) {
            return match dead_letter(shared, job, &route.name, ErrorClass::Schema, &reason, 0).await {
                DeadLetterResult::Written => {
                    inc(&counters.dead_lettered);
                    Outcome::DeadLettered
                }
                DeadLetterResult::Stopped => Outcome::Unfinished,
                DeadLetterResult::NoTopic => {
                    // Without a dead-letter topic a message that fails its schema is still delivered:
                    // the sink decides, and a sink error stops the partition as usual.
                    tracing::warn!(group = %sub.group, route = %route.name, partition = job.meta.partition, offset = job.meta.offset, %reason, "message fails its schema; no dead-letter topic, delivering anyway");
                    deliver_checked(shared, job, route_idx, value).await
                }
            };
        }
    }
    deliver_checked(shared, job, route_idx, value).await
}

async fn deliver_checked(shared: &Shared, job: &Job, route_idx: usize, value: &serde_json::Value) -> Outcome {
    // The message finishes under the configuration it started with.
    let view = &job.view;
    let sub = view.subscription();
    let route = &sub.routes[route_idx];
    let counters = &view.counters[route_idx];
    let sink = &view.sinks[route.sink];
    let policy = &route.retry;
    let raw = job.raw.as_deref().unwrap_or_default();
    let request = route.shape(raw, value, &job.meta);
    let started = Instant::now();
    let mut backoff = Backoff::new(policy.initial_delay, policy.max_delay);
    let mut attempt = 0u32;
    let mut blocked: Option<Arc<std::sync::atomic::AtomicI64>> = None;
    loop {
        attempt += 1;
        if attempt > 1 && !shared.owns(job) {
            // Revoked while retrying: the new owner delivers it; sending it
            // again from here would arrive late and out of order.
            tracing::info!(group = %sub.group, route = %route.name, partition = job.meta.partition, offset = job.meta.offset, "partition revoked during retries; message left to its new owner");
            return Outcome::Unfinished;
        }
        let result = match &request {
            Ok(req) => {
                let _slot = shared.slots.acquire().await;
                let t0 = Instant::now();
                let r = tokio::select! {
                    biased;
                    _ = shared.shutdown.abort.cancelled() => {
                        tracing::warn!(group = %sub.group, route = %route.name, partition = job.meta.partition, offset = job.meta.offset, "grace period over: delivery cut short; the message will be redelivered");
                        return Outcome::Unfinished;
                    }
                    r = sink.deliver(req) => r,
                };
                counters.sink_latency.observe(t0.elapsed());
                r
            }
            Err(e) => Err(DeliveryError::permanent(format!("cannot shape the request: {e}"))),
        };
        let (class, reason) = match result {
            Ok(()) => {
                inc(&counters.delivered);
                if let Some(d) = crate::metrics::since_record(job.meta.timestamp_ms) {
                    counters.end_to_end.observe(d);
                }
                if let Some(b) = blocked {
                    b.fetch_sub(1, Ordering::Relaxed);
                }
                tracing::debug!(group = %sub.group, route = %route.name, partition = job.meta.partition, offset = job.meta.offset, attempt, latency_ms = job.read_at.elapsed().as_millis() as u64, traceparent = job.meta.traceparent.as_deref().unwrap_or(""), "delivered");
                return Outcome::Delivered;
            }
            Err(DeliveryError::Retryable { reason, retry_after }) => {
                if !policy.exhausted(attempt, started.elapsed()) {
                    inc(&counters.retried);
                    let d = backoff.next(retry_after);
                    tracing::warn!(group = %sub.group, route = %route.name, partition = job.meta.partition, offset = job.meta.offset, attempt, retry_in_ms = d.as_millis() as u64, %reason, traceparent = job.meta.traceparent.as_deref().unwrap_or(""), "delivery failed; retrying");
                    if !sleep_or_stop(shared, d).await {
                        return Outcome::Unfinished;
                    }
                    continue;
                }
                (ErrorClass::RetriesExhausted, reason)
            }
            Err(DeliveryError::Permanent { reason }) => (ErrorClass::Permanent, reason),
        };
        match dead_letter(shared, job, &route.name, class, &reason, attempt).await {
            DeadLetterResult::Written => {
                inc(&counters.dead_lettered);
                if let Some(b) = blocked {
                    b.fetch_sub(1, Ordering::Relaxed);
                }
                return Outcome::DeadLettered;
            }
            DeadLetterResult::Stopped => return Outcome::Unfinished,
            DeadLetterResult::NoTopic => {
                // Nowhere to put it and it must not be skipped: the partition stops here.
                inc(&counters.retried);
                if blocked.is_none() {
                    let g = shared.metrics.gauge(crate::metrics::BLOCKED_PARTITIONS, &[("group", &sub.group), ("topic", &sub.topic)]);
                    g.fetch_add(1, Ordering::Relaxed);
                    blocked = Some(g);
                }
                let d = policy.max_delay;
                tracing::error!(group = %sub.group, route = %route.name, partition = job.meta.partition, offset = job.meta.offset, attempt, class = class.as_str(), retry_in_ms = d.as_millis() as u64, %reason, "cannot deliver and no dead-letter topic: the partition waits on this message");
                if !sleep_or_stop(shared, d).await {
                    return Outcome::Unfinished;
                }
            }
        }
    }
}

async fn sleep_or_stop(shared: &Shared, d: std::time::Duration) -> bool {
    tokio::select! {
        biased;
        _ = shared.shutdown.stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Writes the dead letter, retrying the write until it is acknowledged.
async fn dead_letter(shared: &Shared, job: &Job, route: &str, class: ErrorClass, reason: &str, attempts: u32) -> DeadLetterResult {
    let Some(writer) = &shared.dead_letters else { return DeadLetterResult::NoTopic };
    let sub = job.view.subscription();
    let letter = DeadLetter { meta: &job.meta, value: job.raw.as_deref(), group: &sub.group, route, class, reason, attempts };
    let settings = &shared.settings;
    let mut backoff = Backoff::new(settings.retry_initial_delay, settings.retry_max_delay);
    loop {
        if !shared.owns(job) {
            return DeadLetterResult::Stopped;
        }
        match writer.write(&letter).await {
            Ok(()) => {
                tracing::error!(group = %sub.group, %route, partition = job.meta.partition, offset = job.meta.offset, class = class.as_str(), attempts, %reason, dead_letter_topic = %writer.topic, traceparent = job.meta.traceparent.as_deref().unwrap_or(""), "message dead-lettered");
                return DeadLetterResult::Written;
            }
            Err(e) => {
                let d = backoff.next(None);
                tracing::warn!(group = %sub.group, %route, partition = job.meta.partition, offset = job.meta.offset, error = %e, retry_in_ms = d.as_millis() as u64, "dead-letter write failed; the offset waits");
                if !sleep_or_stop(shared, d).await {
                    return DeadLetterResult::Stopped;
                }
            }
        }
    }
}
