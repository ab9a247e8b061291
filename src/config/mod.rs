//! Configuration: `gateway.toml` (settings and environment profiles) and the
//! route files, parsed (`raw`), checked and compiled (`load`) with every
//! problem reported as `path:line:col: message`.

pub mod diag;
pub mod env;
pub mod lint;
pub mod load;
pub mod raw;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use diag::{Diagnostic, Diagnostics, Severity, SourceFile};
pub use env::Env;
pub use load::{load, LoadOptions};

use crate::routing::RouteTable;
use crate::shape::sql::SqlShape;
use crate::shape::{HttpShape, RecordMeta, Request, ShapeError};

/// The environment profiles of the contract.
pub const PROFILES: [&str; 5] = ["local", "dev", "test", "prod-current", "prod-new"];

/// Runtime settings after defaults and environment overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub channels: usize,
    pub queue_capacity: usize,
    pub retry_initial_delay: Duration,
    pub retry_max_delay: Duration,
    pub commit_interval: Duration,
    pub shutdown_grace: Duration,
    pub admin_addr: Option<SocketAddr>,
    pub session_timeout_ms: u32,
    pub http_timeout: Duration,
    /// Default retry policy of routes.
    pub retry: RetryPolicy,
    pub max_message_bytes: usize,
    pub max_json_depth: usize,
    pub stall_timeout: Duration,
}

/// How long a route keeps trying a message before it is dead-lettered.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// `None`: unlimited.
    pub max_attempts: Option<u32>,
    /// `None`: unlimited.
    pub max_duration: Option<Duration>,
}

impl RetryPolicy {
    /// Whether a message that failed `attempts` times since `first` is out of tries.
    pub fn exhausted(&self, attempts: u32, elapsed: Duration) -> bool {
        self.max_attempts.is_some_and(|m| attempts >= m) || self.max_duration.is_some_and(|d| elapsed >= d)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            channels: 2,
            queue_capacity: 1024,
            retry_initial_delay: Duration::from_millis(500),
            retry_max_delay: Duration::from_secs(30),
            commit_interval: Duration::from_millis(1000),
            shutdown_grace: Duration::from_secs(7),
            admin_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9898))),
            session_timeout_ms: 10_000,
            http_timeout: Duration::from_secs(10),
            retry: RetryPolicy {
                initial_delay: Duration::from_millis(500),
                max_delay: Duration::from_secs(30),
                max_attempts: None,
                max_duration: None,
            },
            max_message_bytes: 1 << 20,
            max_json_depth: 64,
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// The chosen cluster.
#[derive(Clone, PartialEq)]
pub struct KafkaSettings {
    pub profile: String,
    pub brokers: Vec<String>,
    /// Extra librdkafka properties of the profile.
    pub properties: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaSettings {
    /// Credentials never reach a log line, even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let props: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret_property(k) { "[redacted]" } else { v.as_str() }))
            .collect();
        f.debug_struct("KafkaSettings").field("profile", &self.profile).field("brokers", &self.brokers).field("properties", &props).finish()
    }
}

/// librdkafka properties that hold credentials.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k.ends_with(".pem") || k.contains("key.pem") || k == "sasl.oauthbearer.config"
}

/// A loaded, checked configuration: what `run` executes.
#[derive(Debug)]
pub struct Config {
    pub settings: Settings,
    pub kafka: KafkaSettings,
    pub subscriptions: Vec<Subscription>,
    pub sinks: Vec<SinkSpec>,
    /// Hash of every file's text, to tell configs apart.
    pub hash: String,
    pub files: Vec<PathBuf>,
}

/// One (topic, group): one consumer.
#[derive(Debug)]
pub struct Subscription {
    pub topic: String,
    pub group: String,
    /// In precedence order: the first match wins.
    pub routes: Vec<Route>,
    pub table: RouteTable,
    /// Where messages that cannot be delivered go; `None` stops the partition instead.
    pub dead_letter_topic: Option<String>,
}

impl Subscription {
    /// The route that takes this message, if any.
    pub fn find(&self, msg: &serde_json::Value) -> Option<&Route> {
        self.table.find(msg).map(|i| &self.routes[i])
    }
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub file: PathBuf,
    /// Index into [`Config::sinks`].
    pub sink: usize,
    pub shape: Shape,
    pub retry: RetryPolicy,
    pub schema: Option<MessageSchema>,
    /// `None`: partition order.
    pub order_key: Option<crate::shape::Source>,
    /// `mode = "observe"`: match and count, deliver nowhere.
    pub observe: bool,
    /// A second sink that gets a copy; its failures never hold back the primary.
    pub mirror: Option<Mirror>,
}

#[derive(Debug)]
pub struct Mirror {
    /// Index into [`Config::sinks`].
    pub sink: usize,
    pub shape: Shape,
}

impl Mirror {
    pub fn shape(&self, raw: &[u8], msg: &serde_json::Value, meta: &RecordMeta) -> Result<Request, ShapeError> {
        shape_request(&self.shape, raw, msg, meta)
    }
}

fn shape_request(shape: &Shape, raw: &[u8], msg: &serde_json::Value, meta: &RecordMeta) -> Result<Request, ShapeError> {
    Ok(match shape {
        Shape::Http(h) => Request::Http(h.shape(raw, msg, meta)?),
        Shape::Sql(s) => Request::Sql(s.shape(msg, meta)?),
        Shape::Discard => Request::Discard,
    })
}

/// A compiled JSON Schema a route requires of its messages.
#[derive(Clone)]
pub struct MessageSchema {
    pub path: PathBuf,
    pub validator: std::sync::Arc<jsonschema::Validator>,
    pub json: std::sync::Arc<serde_json::Value>,
}

impl std::fmt::Debug for MessageSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageSchema({})", self.path.display())
    }
}

impl MessageSchema {
    /// Whether every property a singular path names is declared along the
    /// schema's `properties`/`items` (unknown shapes count as declared).
    pub fn declares(&self, path: &crate::routing::JsonPath) -> bool {
        let Some(steps) = path.steps() else { return true };
        let mut node = self.json.as_ref();
        for step in steps {
            let next = match step {
                Some(name) => match node.get("properties") {
                    Some(props) => match props.get(name) {
                        Some(n) => n,
                        None => return false,
                    },
                    None => return true,
                },
                None => match node.get("items") {
                    Some(n) => n,
                    None => return true,
                },
            };
            node = next;
        }
        true
    }

    /// `Err` names the failing path: `schema doc-status.schema.json: at /payload/status: ...`.
    pub fn check(&self, msg: &serde_json::Value) -> Result<(), String> {
        match self.validator.iter_errors(msg).next() {
            None => Ok(()),
            Some(e) => {
                let at = e.instance_path.to_string();
                let file = self.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                Err(format!("schema {file}: at {}: {e}", if at.is_empty() { "/" } else { &at }))
            }
        }
    }
}

#[derive(Debug)]
pub enum Shape {
    Http(HttpShape),
    Sql(SqlShape),
    Discard,
}

impl Route {
    /// The exact request the route's sink would send for this message.
    pub fn shape(&self, raw: &[u8], msg: &serde_json::Value, meta: &RecordMeta) -> Result<Request, ShapeError> {
        shape_request(&self.shape, raw, msg, meta)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SinkSpec {
    /// `file-stem/name`: sinks are local to their route file.
    pub id: String,
    pub kind: SinkKind,
    pub flow: FlowControl,
}

/// Per-sink limits, shared by every route and partition using the sink.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FlowControl {
    pub rate_per_s: Option<u32>,
    pub max_in_flight: Option<usize>,
}

impl SinkSpec {
    /// Batching of an SQL sink; `None` when messages go one at a time.
    pub fn batching(&self) -> Option<Batching> {
        match &self.kind {
            SinkKind::Sql { batch, .. } | SinkKind::Http { batch, .. } if batch.max_rows > 1 => Some(*batch),
            _ => None,
        }
    }
}

/// TLS material of an HTTP sink (paths to PEM files).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpTls {
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// How many consecutive messages a sink may write together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Batching {
    pub max_rows: usize,
    pub linger: Duration,
    /// HTTP: how the bodies are joined; `None` for SQL (one transaction).
    pub format: Option<crate::shape::BatchFormat>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    Http { timeout: Duration, retryable_statuses: Option<Vec<u16>>, tls: HttpTls, batch: Batching },
    Sql { url: String, pool_size: usize, batch: Batching },
    Blackhole,
}
