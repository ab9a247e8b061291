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
/// Sum of sink call latency per route, in microseconds, and the call count.
pub const SINK_LATENCY_SUM_MICROS: &str = "vedgate_sink_latency_micros_sum";
pub const SINK_LATENCY_COUNT: &str = "vedgate_sink_latency_micros_count";
/// Partitions with unfinished messages and no progress for `stall_timeout_ms`.
pub const STALLED_PARTITIONS: &str = "vedgate_stalled_partitions";
/// Deliveries stopped on a message that can be neither delivered nor dead-lettered.
pub const BLOCKED_PARTITIONS: &str = "vedgate_blocked_partitions";
/// Kafka client errors per group.
pub const KAFKA_ERRORS_TOTAL: &str = "vedgate_kafka_errors_total";

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

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<Key, Arc<AtomicU64>>>,
    gauges: Mutex<BTreeMap<Key, Arc<AtomicI64>>>,
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

    /// Adds one sink call's latency to the route's sum and count.
    pub fn observe_latency(&self, group: &str, route: &str, d: std::time::Duration) {
        let labels = [("group", group), ("route", route)];
        self.counter(SINK_LATENCY_SUM_MICROS, &labels).fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.counter(SINK_LATENCY_COUNT, &labels).fetch_add(1, Ordering::Relaxed);
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
        }
    }
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
