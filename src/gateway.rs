//! The running gateway: builds sinks, starts one consumer per subscription
//! and the admin server, reloads the configuration on SIGHUP or when its
//! files change, and shuts everything down through one path.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tokio::task::JoinSet;

use crate::config::{self, Config, LoadOptions};
use crate::consumer::{dead_letter_producer, start_subscription, DeadLetterProducer, Shutdown, SubView, SubscriptionHandle};
use crate::metrics::{inc, Metrics, CONFIG_RELOADS_TOTAL};
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

/// What the admin endpoints read; replaced on every successful reload.
pub struct Status {
    pub config: RwLock<Arc<Config>>,
    pub metrics: Arc<Metrics>,
    pub joined: RwLock<Vec<Arc<AtomicBool>>>,
    pub loaded_at: RwLock<SystemTime>,
    pub sinks: RwLock<Arc<Vec<Sink>>>,
    /// `VEDGATE_ADMIN_TOKEN`: required as a bearer token by endpoints that change state.
    admin_token: Option<String>,
    reload_tx: tokio::sync::mpsc::Sender<()>,
}

impl Status {
    pub fn ready(&self) -> bool {
        self.joined.read().unwrap_or_else(|e| e.into_inner()).iter().all(|j| j.load(Ordering::Relaxed))
    }
}

/// What makes a subscription the same across reloads: a change here
/// restarts its consumer; anything else is swapped in place.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct SubKey {
    topic: String,
    group: String,
    dead_letter_topic: Option<String>,
    cluster: String,
}

fn key(config: &Config, i: usize) -> SubKey {
    let s = &config.subscriptions[i];
    SubKey {
        topic: s.topic.clone(),
        group: s.group.clone(),
        dead_letter_topic: s.dead_letter_topic.clone(),
        cluster: {
            // A hash, so the key can be printed without the credentials in it.
            let mut h = std::collections::hash_map::DefaultHasher::new();
            config.kafka.brokers.hash(&mut h);
            config.kafka.properties.hash(&mut h);
            format!("{:016x}", h.finish())
        },
    }
}

struct Running {
    handle: SubscriptionHandle,
    joined: Arc<AtomicBool>,
}

struct Gateway {
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    status: Arc<Status>,
    running: BTreeMap<SubKey, Running>,
    tasks: JoinSet<(String, Result<(), rdkafka::error::KafkaError>)>,
    producer: Option<DeadLetterProducer>,
    config: Arc<Config>,
}

impl Gateway {
    fn start(&mut self, config: &Arc<Config>, sinks: &Arc<Vec<Sink>>, i: usize) -> Result<(), GatewayError> {
        let k = key(config, i);
        if config.subscriptions[i].dead_letter_topic.is_some() && self.producer.is_none() {
            self.producer = Some(dead_letter_producer(&config.kafka).map_err(|source| GatewayError::Kafka { group: "(dead letters)".into(), source })?);
        }
        let joined = Arc::new(AtomicBool::new(false));
        let view = SubView::new(config.clone(), i, sinks.clone(), &self.metrics);
        let (handle, fut) = start_subscription(view, self.metrics.clone(), &self.shutdown, joined.clone(), self.producer.clone());
        let group = k.group.clone();
        self.tasks.spawn(async move { (group, fut.await) });
        self.running.insert(k, Running { handle, joined });
        Ok(())
    }

    fn publish(&self) {
        *self.status.config.write().unwrap_or_else(|e| e.into_inner()) = self.config.clone();
        *self.status.joined.write().unwrap_or_else(|e| e.into_inner()) = self.running.values().map(|r| r.joined.clone()).collect();
        *self.status.loaded_at.write().unwrap_or_else(|e| e.into_inner()) = SystemTime::now();
    }

    /// Loads, checks and swaps in a new configuration; an invalid one changes nothing.
    fn reload(&mut self, opts: &LoadOptions, why: &str) {
        let error = || inc(&self.metrics.counter(CONFIG_RELOADS_TOTAL, &[("result", "error")]));
        let (cfg, warnings) = match config::load(opts) {
            Ok(x) => x,
            Err(diags) => {
                for d in diags.errors() {
                    tracing::error!("{d}");
                }
                tracing::error!(trigger = why, errors = diags.errors().count(), "configuration not reloaded: the running one stays in force");
                error();
                return;
            }
        };
        if cfg.hash == self.config.hash {
            return;
        }
        for w in warnings.warnings() {
            tracing::warn!("{w}");
        }
        let sinks = match cfg.sinks.iter().map(Sink::build).collect::<Result<Vec<_>, _>>() {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!(trigger = why, error = %e, "configuration not reloaded: a sink cannot be built");
                error();
                return;
            }
        };
        let cfg = Arc::new(cfg);
        let mut keep = Vec::new();
        let (mut started, mut swapped) = (0, 0);
        for i in 0..cfg.subscriptions.len() {
            let k = key(&cfg, i);
            match self.running.get(&k) {
                Some(r) => {
                    r.handle.swap(SubView::new(cfg.clone(), i, sinks.clone(), &self.metrics));
                    swapped += 1;
                }
                None => {
                    if let Err(e) = self.start(&cfg, &sinks, i) {
                        tracing::error!(error = %e, group = %k.group, "cannot start subscription");
                        continue;
                    }
                    started += 1;
                }
            }
            keep.push(k);
        }
        let gone: Vec<SubKey> = self.running.keys().filter(|k| !keep.contains(k)).cloned().collect();
        for k in &gone {
            if let Some(r) = self.running.remove(k) {
                // Drains its in-flight messages, commits and leaves the group.
                r.handle.stop.cancel();
            }
        }
        self.config = cfg;
        *self.status.sinks.write().unwrap_or_else(|e| e.into_inner()) = sinks;
        self.publish();
        inc(&self.metrics.counter(CONFIG_RELOADS_TOTAL, &[("result", "success")]));
        tracing::info!(trigger = why, hash = %self.config.hash, swapped, started, stopped = gone.len(), "configuration reloaded");
    }
}

/// A cheap fingerprint of the config files (names, sizes, modification times).
fn fingerprint(opts: &LoadOptions) -> u64 {
    let mut files: Vec<PathBuf> = vec![opts.config_path.clone()];
    if opts.routes_path.is_dir() {
        if let Ok(d) = std::fs::read_dir(&opts.routes_path) {
            files.extend(d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "toml")));
        }
    } else {
        files.push(opts.routes_path.clone());
    }
    files.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        if let Ok(m) = std::fs::metadata(&f) {
            m.len().hash(&mut h);
            m.modified().ok().hash(&mut h);
        }
    }
    h.finish()
}

/// Runs until `shutdown.stop` is cancelled and everything has drained.
/// With `reload`, the configuration is reloaded on SIGHUP and when its files change.
pub async fn run(config: Config, metrics: Arc<Metrics>, shutdown: Shutdown, reload: Option<LoadOptions>) -> Result<(), GatewayError> {
    let config = Arc::new(config);
    let sinks = Arc::new(config.sinks.iter().map(Sink::build).collect::<Result<Vec<_>, _>>()?);
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<()>(4);
    let admin_token = reload.as_ref().and_then(|o| o.env.get("VEDGATE_ADMIN_TOKEN").map(str::to_string));
    let status = Arc::new(Status {
        config: RwLock::new(config.clone()),
        metrics: metrics.clone(),
        joined: RwLock::new(vec![]),
        loaded_at: RwLock::new(SystemTime::now()),
        sinks: RwLock::new(sinks.clone()),
        admin_token,
        reload_tx,
    });
    let mut gw = Gateway { metrics: metrics.clone(), shutdown: shutdown.clone(), status: status.clone(), running: BTreeMap::new(), tasks: JoinSet::new(), producer: None, config: config.clone() };
    for i in 0..config.subscriptions.len() {
        gw.start(&config, &sinks, i)?;
    }
    gw.publish();

    let admin = match config.settings.admin_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| GatewayError::Admin { addr, source })?;
            tracing::info!(%addr, "admin server listening (/healthz /readyz /metrics /routes, POST /reload)");
            let stop = shutdown.stop.clone();
            Some(tokio::spawn(async move {
                let _ = axum::serve(listener, admin_router(status)).with_graceful_shutdown(async move { stop.cancelled().await }).await;
            }))
        }
        None => None,
    };

    let mut hup = reload.as_ref().and_then(|_| tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok());
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut loaded_print = reload.as_ref().map(fingerprint);
    let mut seen_print = loaded_print;
    let mut first_error = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.stop.cancelled() => break,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                if let Some(opts) = &reload {
                    gw.reload(opts, "SIGHUP");
                    loaded_print = Some(fingerprint(opts));
                }
            }
            Some(()) = reload_rx.recv() => {
                if let Some(opts) = &reload {
                    gw.reload(opts, "POST /reload");
                    loaded_print = Some(fingerprint(opts));
                }
            }
            _ = tick.tick() => {
                // Debounced: reload once the files have stopped changing for one tick.
                if let Some(opts) = &reload {
                    let now = Some(fingerprint(opts));
                    if now != loaded_print && now == seen_print {
                        gw.reload(opts, "file change");
                        loaded_print = now;
                    }
                    seen_print = now;
                }
            }
            Some(done) = gw.tasks.join_next() => match done {
                Ok((_, Ok(()))) => {}
                Ok((group, Err(source))) => {
                    // A consumer that cannot even be created stops everything: a
                    // half-running gateway would hide lag.
                    first_error.get_or_insert(GatewayError::Kafka { group, source });
                    shutdown.stop.cancel();
                }
                Err(join) => tracing::error!(error = %join, "subscription task panicked"),
            },
        }
    }
    shutdown.stop.cancel();
    while let Some(done) = gw.tasks.join_next().await {
        if let Ok((group, Err(source))) = done {
            first_error.get_or_insert(GatewayError::Kafka { group, source });
        }
    }
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
        .route("/reload", axum::routing::post(reload_endpoint))
        .with_state(status)
}

/// `POST /reload` with `Authorization: Bearer $VEDGATE_ADMIN_TOKEN`.
async fn reload_endpoint(State(s): State<Arc<Status>>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let Some(token) = &s.admin_token else {
        return (StatusCode::FORBIDDEN, "POST /reload is disabled: set VEDGATE_ADMIN_TOKEN\n");
    };
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    // Compare in constant time: the token guards state changes.
    let same = given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if !same {
        return (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
    }
    match s.reload_tx.try_send(()) {
        Ok(()) => (StatusCode::ACCEPTED, "reload requested\n"),
        Err(_) => (StatusCode::ACCEPTED, "a reload is already pending\n"),
    }
}

async fn readyz(State(s): State<Arc<Status>>) -> impl IntoResponse {
    if !s.ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "consumers have not joined their groups yet\n".to_string());
    }
    let (sinks, config) = (s.sinks.read().unwrap_or_else(|e| e.into_inner()).clone(), s.config.read().unwrap_or_else(|e| e.into_inner()).clone());
    for (sink, spec) in sinks.iter().zip(&config.sinks) {
        if let Err(e) = sink.health().await {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("sink {} is not healthy: {e}\n", spec.id));
        }
    }
    (StatusCode::OK, "ready\n".to_string())
}

async fn metrics(State(s): State<Arc<Status>>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], s.metrics.render())
}

async fn routes(State(s): State<Arc<Status>>) -> impl IntoResponse {
    let config = s.config.read().unwrap_or_else(|e| e.into_inner()).clone();
    let subs: Vec<_> = config
        .subscriptions
        .iter()
        .map(|sub| {
            json!({
                "topic": sub.topic,
                "group": sub.group,
                "dead_letter_topic": sub.dead_letter_topic,
                "routes": sub.routes.iter().map(|r| json!({
                    "name": r.name,
                    "file": r.file.display().to_string(),
                    "sink": config.sinks[r.sink].id,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let loaded = s.loaded_at.read().unwrap_or_else(|e| e.into_inner()).duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    axum::Json(json!({"config_hash": config.hash, "loaded_at_unix": loaded, "profile": config.kafka.profile, "subscriptions": subs}))
}

