//! The serde model of `gateway.toml` and of route files, field for field.
//! Unknown keys are errors; spans are kept where later checks need a position.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// `gateway.toml`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    /// Settings shared by every profile.
    #[serde(default)]
    pub defaults: RawDefaults,
    /// Environment profiles by name (`local`, `dev`, `test`, `prod-current`, `prod-new`).
    #[serde(default)]
    pub profile: BTreeMap<String, Spanned<RawProfile>>,
}

/// `[defaults]` of `gateway.toml`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// Profile used when neither `--env` nor `VEDGATE_ENV` names one.
    pub env: Option<String>,
    /// Delivery workers per subscription (`CHANNELS_COUNT` overrides).
    pub channels: Option<Spanned<i64>>,
    /// Jobs queued per worker before the consumer waits.
    pub queue_capacity: Option<Spanned<i64>>,
    /// First retry delay in milliseconds (`SLEEP_SECOND` overrides, in seconds).
    pub retry_initial_delay_ms: Option<Spanned<i64>>,
    /// Largest retry delay in milliseconds.
    pub retry_max_delay_ms: Option<Spanned<i64>>,
    /// How often stored offsets are committed, in milliseconds.
    pub commit_interval_ms: Option<Spanned<i64>>,
    /// Time given to in-flight deliveries at shutdown, in milliseconds.
    pub shutdown_grace_ms: Option<Spanned<i64>>,
    /// Admin server address (`/healthz`, `/readyz`, `/metrics`, `/routes`); empty disables it.
    pub admin_addr: Option<Spanned<String>>,
    /// Consumer session timeout in milliseconds.
    pub session_timeout_ms: Option<Spanned<i64>>,
    /// Default HTTP sink timeout in milliseconds.
    pub http_timeout_ms: Option<Spanned<i64>>,
    /// Attempts before a message is dead-lettered (0: unlimited).
    pub retry_max_attempts: Option<Spanned<i64>>,
    /// Time spent retrying before a message is dead-lettered, ms (0: unlimited).
    pub retry_max_duration_ms: Option<Spanned<i64>>,
    /// Larger message values are invalid (dead-lettered), in bytes.
    pub max_message_bytes: Option<Spanned<i64>>,
    /// JSON nested deeper than this is invalid (dead-lettered).
    pub max_json_depth: Option<Spanned<i64>>,
    /// A partition with unfinished messages and no progress for this long is reported, ms.
    pub stall_timeout_ms: Option<Spanned<i64>>,
}

/// `[profile.NAME]` of `gateway.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    /// Bootstrap brokers (`BROKERS` overrides, comma-separated).
    pub brokers: Vec<String>,
    /// The cluster's load balancer address, for reference and tooling.
    pub load_balancer: Option<String>,
    /// Extra librdkafka properties for every client of this profile. Not
    /// `Spanned` per value: toml cannot span a value written with a dotted
    /// key, and those are exactly what librdkafka names look like.
    #[serde(default)]
    pub kafka: BTreeMap<String, KafkaProp>,
}

/// A librdkafka property value as written. An unquoted dotted key
/// (`fetch.wait.max.ms = 10`) is a nested table in TOML: it is read back as
/// the dotted name. Numbers and booleans are passed on as text.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum KafkaProp {
    Text(String),
    Integer(i64),
    Bool(bool),
    Nested(BTreeMap<String, KafkaProp>),
    /// Anything else (array, float, date): refused with its position.
    Other(toml::Value),
}

/// One route file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRouteFile {
    /// What the file reads: `[[subscription]]`.
    #[serde(default)]
    pub subscription: Vec<Spanned<RawSubscription>>,
    /// Where it delivers: `[sink.NAME]`.
    #[serde(default)]
    pub sink: BTreeMap<String, Spanned<RawSink>>,
    /// What goes where: `[[route]]`, tried in file order.
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubscription {
    /// Name routes use to refer to this subscription.
    pub name: Spanned<String>,
    /// Kafka topic, `${VAR:-default}` allowed.
    pub topic: Spanned<String>,
    /// Consumer group, `${VAR:-default}` allowed.
    pub group: Spanned<String>,
    /// Dead-letter topic; default `{group}.dlq`.
    pub dead_letter_topic: Option<Spanned<String>>,
    /// `false`: no dead-letter topic; a message that cannot be delivered stops its partition.
    pub dead_letter: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// `http`, `sql` or `blackhole`.
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    /// HTTP: base URL that route paths are appended to. SQL: the PostgreSQL URL.
    pub url: Option<Spanned<String>>,
    /// HTTP: request timeout in milliseconds.
    pub timeout_ms: Option<Spanned<i64>>,
    /// HTTP: headers sent with every request; values may use `${VAR}`.
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    /// Requests (or SQL batches) per second at most, across all routes using the sink.
    pub rate_limit_per_s: Option<Spanned<i64>>,
    /// Requests in flight at most, across all routes using the sink.
    pub max_in_flight: Option<Spanned<i64>>,
    /// SQL: connections in the pool.
    pub pool_size: Option<Spanned<i64>>,
    /// SQL: consecutive messages of a partition written in one transaction (default 1).
    pub batch_max_rows: Option<Spanned<i64>>,
    /// HTTP: consecutive messages of a partition sent in one request (default 1).
    pub batch_max_messages: Option<Spanned<i64>>,
    /// HTTP: `json-array` (default) or `ndjson`.
    pub batch_format: Option<Spanned<String>>,
    /// SQL: how long a batch waits to fill, ms (default 0: take what is queued).
    pub batch_linger_ms: Option<Spanned<i64>>,
    /// HTTP: PEM file of the CA that signs the target's certificate (besides the system roots).
    pub ca_file: Option<Spanned<String>>,
    /// HTTP: PEM client certificate for mutual TLS (with `client_key_file`).
    pub client_cert_file: Option<Spanned<String>>,
    /// HTTP: PEM (PKCS#8) private key of the client certificate.
    pub client_key_file: Option<Spanned<String>>,
    /// HTTP: statuses worth retrying (default 408, 429 and 5xx); other non-2xx are permanent.
    pub retryable_statuses: Option<Spanned<Vec<i64>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Route name, unique within its consumer group; a metrics label.
    pub name: Spanned<String>,
    /// Name of a `[[subscription]]` of this file.
    pub subscription: Spanned<String>,
    /// Predicates, all of which must hold.
    #[serde(default)]
    pub when: Vec<Spanned<RawPredicate>>,
    /// Name of a `[sink.NAME]` of this file.
    pub sink: Spanned<String>,
    /// `false` turns the route off: its messages count as unmatched.
    pub enabled: Option<bool>,
    /// HTTP request shape (for `http` sinks).
    pub http: Option<Spanned<RawHttpRequest>>,
    /// SQL statement shape (for `sql` sinks).
    pub sql: Option<Spanned<RawSqlRequest>>,
    /// Retry policy; defaults come from `gateway.toml`.
    pub retry: Option<Spanned<RawRetry>>,
    /// JSON Schema file (relative to this route file) every message must pass.
    pub schema: Option<Spanned<String>>,
    /// Ordering key (`$.payload.ordId`, `kafka.key`): messages with different keys
    /// of one partition are delivered concurrently, the same key in order.
    /// Default: the whole partition in order.
    pub order_key: Option<Spanned<String>>,
    /// `deliver` (default) or `observe`: match and count, deliver nowhere.
    pub mode: Option<Spanned<String>>,
    /// Name of a second sink of this file (same kind) that gets a copy of every
    /// delivery; its failures never block the commit or retry the primary.
    pub mirror: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// First delay, ms.
    pub initial_delay_ms: Option<i64>,
    /// Largest delay, ms.
    pub max_delay_ms: Option<i64>,
    /// Attempts before dead-lettering (0: unlimited).
    pub max_attempts: Option<i64>,
    /// Time before dead-lettering, ms (0: unlimited).
    pub max_duration_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPredicate {
    /// JSONPath of the value tested.
    pub path: Spanned<String>,
    /// The value equals this.
    pub equals: Option<Spanned<toml::Value>>,
    /// The value equals one of these.
    pub one_of: Option<Spanned<Vec<toml::Value>>>,
    /// The path selects something (`true`) or nothing (`false`).
    pub exists: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpRequest {
    /// HTTP method, default `POST`.
    pub method: Option<Spanned<String>>,
    /// Path appended to the sink URL; `{$.json.path}` and `{kafka.partition}`
    /// placeholders are percent-encoded as one path segment.
    pub path: Spanned<String>,
    /// Extra headers for this route; values may use `${VAR}`.
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    /// Body: `{ original = true }`, `{ select = "$.payload" }` or `{ template = {...} }`.
    pub body: Option<RawBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBody {
    /// The message bytes, unchanged.
    pub original: Option<bool>,
    /// The JSON value a JSONPath selects.
    pub select: Option<Spanned<String>>,
    /// A JSON object whose `"$..."` and `"kafka.*"` strings are filled from the message.
    pub template: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSqlRequest {
    /// The statement, with `:name` parameters.
    pub statement: Spanned<String>,
    /// JSONPath of an array: one row per element; `@.field` params read the element.
    pub for_each: Option<Spanned<String>>,
    /// Parameter sources: `$.path`, `@.path` (the `for_each` element) or `kafka.*`.
    #[serde(default)]
    pub params: BTreeMap<String, Spanned<String>>,
}
