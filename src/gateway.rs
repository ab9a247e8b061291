//! The running gateway: builds sinks, starts one consumer per subscription
//! and the admin server, and shuts everything down through one path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::json;

use crate::config::Config;
use crate::consumer::{run_subscription, Shutdown};
use crate::metrics::Metrics;
use crate::sinks::{BuildError, Sink};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Sink(#[from] BuildError),
    #[error("Kafka client for group {group}: {source}")]
    Kafka { group: String, source: rdkafka::error::KafkaError },
    #[error("admin server on {addr}: {source}")]
    Admin { addr: std::net::SocketAddr, source: std::io::Error },
}

/// What the admin endpoints read.
pub struct Status {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub joined: Vec<Arc<AtomicBool>>,
    pub loaded_at: SystemTime,
}

impl Status {
    pub fn ready(&self) -> bool {
        self.joined.iter().all(|j| j.load(Ordering::Relaxed))
    }
}

/// Runs until `shutdown.stop` is cancelled and everything has drained.
/// The caller cancels `stop` on a signal and `abort` when the grace ends.
pub async fn run(config: Config, metrics: Arc<Metrics>, shutdown: Shutdown) -> Result<(), GatewayError> {
    let config = Arc::new(config);
    let sinks = config.sinks.iter().map(Sink::build).collect::<Result<Vec<_>, _>>()?;
    let sinks = Arc::new(sinks);
    let joined: Vec<Arc<AtomicBool>> = config.subscriptions.iter().map(|_| Arc::new(AtomicBool::new(false))).collect();
    let status = Arc::new(Status { config: config.clone(), metrics: metrics.clone(), joined: joined.clone(), loaded_at: SystemTime::now() });

    let admin = match config.settings.admin_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| GatewayError::Admin { addr, source })?;
            tracing::info!(%addr, "admin server listening (/healthz /readyz /metrics /routes)");
            let stop = shutdown.stop.clone();
            Some(tokio::spawn(async move {
                let app = admin_router(status);
                let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
            }))
        }
        None => None,
    };

    let producer = if config.subscriptions.iter().any(|s| s.dead_letter_topic.is_some()) {
        Some(crate::consumer::dead_letter_producer(&config.kafka).map_err(|source| GatewayError::Kafka { group: "(dead letters)".into(), source })?)
    } else {
        None
    };
    let mut tasks = Vec::new();
    for (i, sub) in config.subscriptions.iter().enumerate() {
        let fut = run_subscription(config.clone(), i, sinks.clone(), metrics.clone(), shutdown.clone(), joined[i].clone(), producer.clone());
        let group = sub.group.clone();
        tasks.push(tokio::spawn(async move { fut.await.map_err(|source| GatewayError::Kafka { group, source }) }));
    }
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // One subscription failing to start stops them all: a half-running gateway hides lag.
                shutdown.stop.cancel();
                first_error.get_or_insert(e);
            }
            Err(join) => tracing::error!(error = %join, "subscription task panicked"),
        }
    }
    shutdown.stop.cancel();
    if let Some(a) = admin {
        let _ = tokio::time::timeout(Duration::from_secs(1), a).await;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn admin_router(status: Arc<Status>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/routes", get(routes))
        .with_state(status)
}

async fn readyz(State(s): State<Arc<Status>>) -> impl IntoResponse {
    if s.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "consumers have not joined their groups yet\n")
    }
}

async fn metrics(State(s): State<Arc<Status>>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], s.metrics.render())
}

async fn routes(State(s): State<Arc<Status>>) -> impl IntoResponse {
    let subs: Vec<_> = s
        .config
        .subscriptions
        .iter()
        .map(|sub| {
            json!({
                "topic": sub.topic,
                "group": sub.group,
                "routes": sub.routes.iter().map(|r| json!({
                    "name": r.name,
                    "file": r.file.display().to_string(),
                    "sink": s.config.sinks[r.sink].id,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let loaded = s.loaded_at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    axum::Json(json!({"config_hash": s.config.hash, "loaded_at_unix": loaded, "profile": s.config.kafka.profile, "subscriptions": subs}))
}
