//! vedgate: a declarative Kafka routing gateway.
//!
//! Route files say "messages of topic T read by group G whose field F
//! matches V go to sink S, shaped like this"; one consumer core executes
//! every route file, delivers at least once and commits only what is final.
//!
//! Module map:
//! - [`check`]: deploy preflight and group inspection against the cluster.
//! - [`config`]: `gateway.toml` and route files: serde model, environment
//!   expansion, checks with `path:line:col` diagnostics, compiled routes.
//! - [`routing`]: compiled JSONPaths and the per-subscription route table
//!   (indexed on the matched value). Pure, no I/O.
//! - [`routetest`]: route test cases beside the route files (`vedgate test`).
//! - [`shape`]: from a matched message to the exact HTTP request or SQL
//!   rows (URL templates, JSON templates, named SQL params, exact decimals).
//! - [`sinks`]: HTTP (reqwest), SQL (PostgreSQL) and blackhole delivery,
//!   with retryable and permanent errors.
//! - [`message`]: decoding record values: limits, strict JSON, exact numbers.
//! - [`consumer`]: the consumer core: dispatcher, workers, retries, offset
//!   tracking and commits.
//! - [`dryrun`]: which route takes a message and what exactly would be sent, no I/O.
//! - [`gateway`]: starts everything, admin endpoints, one shutdown path.
//! - [`metrics`]: metric names and the Prometheus registry.
//! - [`tools`]: operator tooling (topic creation, demo traffic).

pub mod check;
pub mod config;
pub mod consumer;
pub mod dryrun;
pub mod gateway;
pub mod message;
pub mod metrics;
pub mod routetest;
pub mod routing;
pub mod shape;
pub mod sinks;
pub mod tools;
