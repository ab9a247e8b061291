//! Metrics: names kept in one place, counters and gauges as atomics behind
//! cached handles, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Messages per group, route and outcome.
pub const MESSAGES_TOTAL: &str = "vedgate_messages_total";
/// Deliveries in progress (read and not final).
pub const IN_FLIGHT: &str = "vedgate_in_flight_messages";
/// Delivery attempts per route and result (`ok`, `retryable`, `permanent`).
pub const DELIVERY_ATTEMPTS_TOTAL: &str = "vedgate_delivery_attempts_total";
/// Config reloads by result.
pub const CONFIG_RELOADS_TOTAL: &str = "vedgate_config_reloads_total";
/// Sink call latency per route (histogram, seconds).
pub const SINK_LATENCY_SECONDS: &str = "vedgate_sink_latency_seconds";
/// From the Kafka record timestamp to the final outcome (histogram, seconds).
pub const END_TO_END_LATENCY_SECONDS: &str = "vedgate_end_to_end_latency_seconds";
/// High watermark minus committed offset, per assigned partition (from librdkafka statistics).
pub const CONSUMER_LAG: &str = "vedgate_consumer_lag";
/// 1 when the consumer's connection to a broker is up.
pub const BROKER_UP: &str = "vedgate_broker_up";
/// Unix time of the loaded configuration.
pub const CONFIG_LOADED_AT: &str = "vedgate_config_loaded_timestamp_seconds";
/// Partitions with unfinished messages and no progress for `stall_timeout_ms`.
pub const STALLED_PARTITIONS: &str = "vedgate_stalled_partitions";
/// Deliveries stopped on a message that can be neither delivered nor dead-lettered.
pub const BLOCKED_PARTITIONS: &str = "vedgate_blocked_partitions";
/// Mirror copies by route, the primary's outcome and the mirror's outcome class.
pub const MIRROR_TOTAL: &str = "vedgate_mirror_total";
/// Kafka client errors per group.
pub const KAFKA_ERRORS_TOTAL: &str = "vedgate_kafka_errors_total";
/// Partitions paused because their lane stayed full (backpressure).
pub const PARTITION_PAUSES_TOTAL: &str = "vedgate_partition_pauses_total";

/// Outcome labels of [`MESSAGES_TOTAL`].
pub mod outcome {
    pub const CONSUMED: &str = "consumed";
    pub const DELIVERED: &str = "delivered";
    pub const RETRIED: &str = "retried";
    pub const DEAD_LETTERED: &str = "dead_lettered";
    pub const SKIPPED: &str = "skipped";
}

/// Route label of messages no route claims, and of messages that are not JSON.
pub const UNMATCHED_ROUTE: &str = "_unmatched";
pub const INVALID_ROUTE: &str = "_invalid";

type Key = (&'static str, Vec<(&'static str, String)>);

/// Bucket bounds of every latency histogram, in seconds.
pub const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A cumulative histogram: counts per bucket, sum in microseconds.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<Key, Arc<AtomicU64>>>,
    gauges: Mutex<BTreeMap<Key, Arc<AtomicI64>>>,
    histograms: Mutex<BTreeMap<Key, Arc<Histogram>>>,
}

impl Metrics {
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Arc<AtomicU64> {
        let key = (name, labels.iter().map(|(k, v)| (*k, v.to_string())).collect());
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone()
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Arc<AtomicI64> {
        let key = (name, labels.iter().map(|(k, v)| (*k, v.to_string())).collect());
        self.gauges.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone()
    }

    /// Current value of a counter, 0 when it was never touched.
    pub fn get(&self, name: &'static str, labels: &[(&'static str, &str)]) -> u64 {
        let key: Key = (name, labels.iter().map(|(k, v)| (*k, v.to_string())).collect());
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).get(&key).map(|c| c.load(Ordering::Relaxed)).unwrap_or(0)
    }

    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Arc<Histogram> {
        let key = (name, labels.iter().map(|(k, v)| (*k, v.to_string())).collect());
        self.histograms.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone()
    }

    /// Forgets a gauge (a partition no longer assigned).
    pub fn remove_gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        let key: Key = (name, labels.iter().map(|(k, v)| (*k, v.to_string())).collect());
        self.gauges.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), v) in self.counters.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {}", render_labels(labels), v.load(Ordering::Relaxed));
        }
        for ((name, labels), v) in self.gauges.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} gauge");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {}", render_labels(labels), v.load(Ordering::Relaxed));
        }
        for ((name, labels), h) in self.histograms.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} histogram");
                last = name;
            }
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += h.buckets[i].load(Ordering::Relaxed);
                let mut l = labels.clone();
                l.push(("le", bound.to_string()));
                let _ = writeln!(out, "{name}_bucket{} {cumulative}", render_labels(&l));
            }
            let count = h.count.load(Ordering::Relaxed);
            let mut l = labels.clone();
            l.push(("le", "+Inf".to_string()));
            let _ = writeln!(out, "{name}_bucket{} {count}", render_labels(&l));
            let _ = writeln!(out, "{name}_sum{} {}", render_labels(labels), h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
            let _ = writeln!(out, "{name}_count{} {count}", render_labels(labels));
        }
        out
    }
}

fn render_labels(labels: &[(&'static str, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// The counters of one route, resolved once.
#[derive(Clone)]
pub struct RouteCounters {
    pub consumed: Arc<AtomicU64>,
    pub delivered: Arc<AtomicU64>,
    pub retried: Arc<AtomicU64>,
    pub dead_lettered: Arc<AtomicU64>,
    pub skipped: Arc<AtomicU64>,
    pub sink_latency: Arc<Histogram>,
    pub end_to_end: Arc<Histogram>,
}

impl RouteCounters {
    pub fn new(m: &Metrics, group: &str, route: &str) -> Self {
        let c = |o| m.counter(MESSAGES_TOTAL, &[("group", group), ("route", route), ("outcome", o)]);
        RouteCounters {
            consumed: c(outcome::CONSUMED),
            delivered: c(outcome::DELIVERED),
            retried: c(outcome::RETRIED),
            dead_lettered: c(outcome::DEAD_LETTERED),
            skipped: c(outcome::SKIPPED),
            sink_latency: m.histogram(SINK_LATENCY_SECONDS, &[("group", group), ("route", route)]),
            end_to_end: m.histogram(END_TO_END_LATENCY_SECONDS, &[("group", group), ("route", route)]),
        }
    }
}

/// Time since a Kafka record timestamp (milliseconds since the epoch).
pub fn since_record(timestamp_ms: Option<i64>) -> Option<std::time::Duration> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
    let ms = now - timestamp_ms?;
    (ms >= 0).then(|| std::time::Duration::from_millis(ms as u64))
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
