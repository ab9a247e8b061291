//! Test harness: real broker, real database, real HTTP receivers on 127.0.0.1.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;
use vedgate::config::{self, Env, LoadOptions};
use vedgate::consumer::Shutdown;
use vedgate::tools::traffic::Record;

pub fn brokers() -> String {
    std::env::var("VEDGATE_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn pg_admin_url() -> String {
    std::env::var("VEDGATE_TEST_PG").unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A name unique to this test run.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    format!("{prefix}-{}-{t}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Creates `name` with `partitions`. A busy broker may answer a transient
/// error (request timed out, controller moving); ask again for up to 30 s.
/// A topic that already exists (an earlier attempt did create it) is fine.
pub async fn create_topic(name: &str, partitions: i32) {
    let start = Instant::now();
    loop {
        match vedgate::tools::create_topics(&brokers(), &[(name, partitions)]).await {
            Ok(()) => return,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                eprintln!("create topic {name}: {e}; asking again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("create topic {name}: {e}"),
        }
    }
}

pub async fn produce(records: &[Record]) {
    let p = vedgate::tools::producer(&brokers()).unwrap();
    vedgate::tools::produce_all(&p, records, 1000).await.expect("produce");
}

pub fn record(topic: &str, key: Option<&str>, payload: &[u8]) -> Record {
    Record { topic: topic.into(), key: key.map(Into::into), payload: Some(payload.to_vec()), kind: String::new() }
}

/// Committed offset per partition of `topic` for `group` (-1001 when none).
pub fn committed(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers()).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    // The broker may answer NotCoordinator / CoordinatorLoadInProgress while the group
    // changes hands: those are transient, so ask again (as any Kafka client would).
    let start = Instant::now();
    let got = loop {
        match c.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(got) => break got,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                eprintln!("committed offsets of {group}: {e}; asking again");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("committed offsets of {group}: {e}"),
        }
    };
    (0..partitions)
        .map(|p| got.find_partition(topic, p).map(|e| e.offset().to_raw().unwrap_or(-1001)).unwrap_or(-1001))
        .collect()
}

/// Commits `offsets` synchronously with `c`, asking again for up to 30 s when
/// the broker answers a transient error (NotCoordinator,
/// CoordinatorLoadInProgress, a timeout), as `committed` does. Committing the
/// same offsets again is harmless. An empty list is not committed at all.
pub fn commit_sync<C: Consumer>(c: &C, offsets: &TopicPartitionList) {
    if offsets.count() == 0 {
        return;
    }
    let start = Instant::now();
    loop {
        match c.commit(offsets, rdkafka::consumer::CommitMode::Sync) {
            Ok(()) => return,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                eprintln!("commit {:?}: {e}; trying again", offsets.to_topic_map());
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("commit {:?}: {e}", offsets.to_topic_map()),
        }
    }
}

/// High watermark per partition.
pub fn end_offsets(topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    (0..partitions)
        .map(|p| {
            let start = Instant::now();
            loop {
                match c.fetch_watermarks(topic, p, Duration::from_secs(10)) {
                    Ok((_, high)) => break high,
                    Err(e) if start.elapsed() < Duration::from_secs(30) => {
                        eprintln!("end offset of {topic}/{p}: {e}; asking again");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => panic!("end offset of {topic}/{p}: {e}"),
                }
            }
        })
        .collect()
}

/// Polls `f` every 100 ms until it holds; panics after `timeout`.
///
/// `f` may block (`committed`, `end_offsets` ask the broker and retry for up
/// to 30 s): on a multi-thread runtime (every tokio test here) it runs in
/// `block_in_place`, so a runtime worker that calls this does not hold up the
/// tasks queued on it (in-process gateways, receivers) while `f` blocks.
/// `block_in_place` panics on a current-thread runtime, where `f` is called
/// directly instead.
pub async fn wait_until<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    let multi_thread = tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread;
    let start = Instant::now();
    loop {
        let holds = if multi_thread { tokio::task::block_in_place(&mut f) } else { f() };
        if holds {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A fresh database with the contract's tables.
pub async fn fresh_db() -> (String, tokio_postgres::Client) {
    let name = unique("ved_test").replace('-', "_");
    let (admin, conn) = tokio_postgres::connect(&pg_admin_url(), tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(conn);
    admin.execute(&format!("CREATE DATABASE {name}"), &[]).await.unwrap();
    let url = pg_admin_url().rsplit_once('/').map(|(base, _)| format!("{base}/{name}")).unwrap();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let ddl = std::fs::read_to_string(repo().join("schemas/sql/ved.sql")).unwrap();
    client.batch_execute(&ddl).await.unwrap();
    client.batch_execute(&ddl).await.expect("DDL applies twice");
    (url, client)
}

/// One request as a receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path as sent, percent-encoding kept.
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Bytes,
    /// When the request reached the receiver (before its body was read):
    /// compare these rather than when a test noticed the request.
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

/// How a receiver answers.
#[derive(Debug, Clone)]
pub enum Answer {
    Ok,
    /// Never answers a request whose body contains the marker; others get 200.
    StallOn(String),
    /// Answers with the given status the first `n` times a marker is seen.
    FailFirst(String, u16, usize),
    /// Answers the first `n` requests (counted by this answer) with the
    /// status and optional Retry-After seconds, then 200.
    StatusFirst(u16, Option<u64>, usize),
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Received>>>,
    pub answer: Arc<Mutex<Answer>>,
    seen: Arc<Mutex<HashMap<String, usize>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let r = Receiver { url, got: Default::default(), answer: Arc::new(Mutex::new(Answer::Ok)), seen: Default::default() };
        let app = axum::Router::new().fallback(handle).with_state(r.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        r
    }

    pub fn set(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }

    pub fn requests(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Time from the first arrival to the last among the requests `which`
    /// selects (zero when fewer than two).
    pub fn span(&self, which: impl Fn(&Received) -> bool) -> Duration {
        let got = self.got.lock().unwrap();
        let times: Vec<Instant> = got.iter().filter(|r| which(r)).map(|r| r.at).collect();
        match (times.iter().min(), times.iter().max()) {
            (Some(first), Some(last)) => *last - *first,
            _ => Duration::ZERO,
        }
    }
}

async fn handle(State(r): State<Receiver>, req: Request) -> Response {
    let at = Instant::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let headers = req.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let body = axum::body::to_bytes(req.into_body(), 64 << 20).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body).to_string();
    let answer = r.answer.lock().unwrap().clone();
    r.got.lock().unwrap().push(Received { method, path, headers, body, at });
    match answer {
        Answer::Ok => StatusCode::OK.into_response(),
        Answer::StatusFirst(s, retry_after, n) => {
            let mut seen = r.seen.lock().unwrap();
            let c = seen.entry(String::from("\0status-first")).or_default();
            *c += 1;
            if *c <= n {
                status_response(s, retry_after)
            } else {
                StatusCode::OK.into_response()
            }
        }
        Answer::StallOn(marker) if text.contains(&marker) => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Answer::StallOn(_) => StatusCode::OK.into_response(),
        Answer::FailFirst(marker, status, n) if text.contains(&marker) => {
            let mut seen = r.seen.lock().unwrap();
            let c = seen.entry(marker).or_default();
            *c += 1;
            if *c <= n {
                StatusCode::from_u16(status).unwrap().into_response()
            } else {
                StatusCode::OK.into_response()
            }
        }
        Answer::FailFirst(..) => StatusCode::OK.into_response(),
    }
}

fn status_response(status: u16, retry_after: Option<u64>) -> Response {
    let mut resp = StatusCode::from_u16(status).unwrap().into_response();
    if let Some(ra) = retry_after {
        resp.headers_mut().insert("retry-after", ra.to_string().parse().unwrap());
    }
    resp
}

/// Environment for a gateway under test: local broker, no admin server,
/// fast retries and commits.
pub fn base_env() -> Env {
    Env::from_pairs([("BROKERS", brokers()), ("VEDGATE_ADMIN_ADDR", String::new())])
}

pub fn test_gateway_toml(dir: &Path) -> PathBuf {
    let p = dir.join("gateway.toml");
    std::fs::write(
        &p,
        r#"[defaults]
channels = 2
retry_initial_delay_ms = 100
retry_max_delay_ms = 1000
commit_interval_ms = 200
shutdown_grace_ms = 3000
session_timeout_ms = 15000
max_message_bytes = 500000
admin_addr = ""

[profile.local]
brokers = ["127.0.0.1:9092"]
"#,
    )
    .unwrap();
    p
}

/// A gateway running inside the test process.
pub struct Gateway {
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), vedgate::gateway::GatewayError>>,
    pub metrics: Arc<vedgate::metrics::Metrics>,
}

impl Gateway {
    pub fn start(config_path: &Path, routes: &Path, env: Env) -> Gateway {
        Self::start_with(config_path, routes, env, false)
    }

    /// With `reload`, the gateway watches its files as `vedgate run` does.
    pub fn start_with(config_path: &Path, routes: &Path, env: Env, reload: bool) -> Gateway {
        // VEDGATE_TEST_LOG=debug shows the in-process gateways' logs.
        if let Ok(f) = std::env::var("VEDGATE_TEST_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(f)).with_test_writer().try_init();
        }
        let opts = LoadOptions { config_path: config_path.to_path_buf(), routes_path: routes.to_path_buf(), profile: Some("local".into()), env };
        let (cfg, _warnings) = config::load(&opts).unwrap_or_else(|d| panic!("config does not load:\n{d}"));
        let shutdown = Shutdown::default();
        let metrics = Arc::new(vedgate::metrics::Metrics::default());
        let task = tokio::spawn(vedgate::gateway::run(cfg, metrics.clone(), shutdown.clone(), reload.then_some(opts)));
        Gateway { shutdown, task, metrics }
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(self) {
        self.shutdown.stop.cancel();
        let abort = self.shutdown.abort.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            abort.cancel();
        });
        tokio::time::timeout(Duration::from_secs(15), self.task).await.expect("gateway stops in time").unwrap().unwrap();
    }
}

/// A `vedgate` child process that is killed when dropped, so a failing test
/// does not leave a gateway running (consuming the group, holding ports).
/// Derefs to the `Child`.
pub struct ChildGuard(std::process::Child);

impl std::ops::Deref for ChildGuard {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The gateway binary as a child process, its log in `log`.
pub fn spawn_binary_logged(config: &Path, routes: &Path, env: &[(&str, String)], log: &Path) -> ChildGuard {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vedgate"));
    cmd.arg("run").arg("--config").arg(config).arg("--routes").arg(routes).arg("--env").arg("local");
    cmd.env("BROKERS", brokers()).env("VEDGATE_ADMIN_ADDR", "").env("VEDGATE_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let f = std::fs::File::create(log).unwrap();
    cmd.stdout(std::process::Stdio::null()).stderr(f);
    ChildGuard(cmd.spawn().expect("spawn vedgate"))
}

/// Sends SIGTERM and returns the exit status and how long the exit took.
pub async fn terminate(child: &mut std::process::Child) -> (std::process::ExitStatus, Duration) {
    let t0 = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return (s, t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("gateway ignored SIGTERM for 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The gateway binary as a child process.
pub fn spawn_binary(config: &Path, routes: &Path, env: &[(&str, String)]) -> ChildGuard {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vedgate"));
    cmd.arg("run").arg("--config").arg(config).arg("--routes").arg(routes).arg("--env").arg("local");
    // VEDGATE_TEST_LOG=debug shows the child gateways' logs too.
    let log = std::env::var("VEDGATE_TEST_LOG").ok();
    cmd.env("BROKERS", brokers()).env("VEDGATE_ADMIN_ADDR", "").env("VEDGATE_LOG", log.clone().unwrap_or_else(|| "warn".into()));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let stderr = if log.is_some() { std::process::Stdio::inherit() } else { std::process::Stdio::null() };
    cmd.stdout(std::process::Stdio::null()).stderr(stderr);
    ChildGuard(cmd.spawn().expect("spawn vedgate"))
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct ReadBack {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

/// Reads every record of `topic` (all partitions, from the beginning) until
/// `want(records)` holds or the timeout passes.
pub fn read_topic(topic: &str, timeout: Duration, want: impl Fn(&[ReadBack]) -> bool) -> Vec<ReadBack> {
    use rdkafka::message::{Headers, Message};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // A topic the gateway creates (dead letters) may appear after the
        // subscription: see it within a second, not librdkafka's 5 minutes.
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    while start.elapsed() < timeout && !want(&out) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let mut headers = HashMap::new();
            if let Some(h) = m.headers() {
                for hd in h.iter() {
                    headers.insert(hd.key.to_string(), String::from_utf8_lossy(hd.value.unwrap_or_default()).to_string());
                }
            }
            out.push(ReadBack { partition: m.partition(), key: m.key().map(<[u8]>::to_vec), value: m.payload().map(<[u8]>::to_vec), headers });
        }
    }
    out
}

/// A route file (in `dir/routes`) sending every message that has an `id` to
/// `url` at `/in/{id}`, body unchanged. `sub_extra` and `route_extra` add
/// lines to the subscription and the route.
pub fn id_routes(dir: &Path, topic: &str, group: &str, url: &str, sub_extra: &str, route_extra: &str) -> PathBuf {
    let routes = dir.join("routes");
    std::fs::create_dir_all(&routes).unwrap();
    std::fs::write(
        routes.join("test.toml"),
        format!(
            r#"[[subscription]]
name = "s"
topic = "{topic}"
group = "{group}"
{sub_extra}

[sink.r]
type = "http"
url = "{url}"
timeout_ms = 60000

[[route]]
name = "all"
subscription = "s"
when = [{{ path = "$.id", exists = true }}]
sink = "r"
http = {{ path = "/in/{{$.id}}" }}
{route_extra}
"#
        ),
    )
    .unwrap();
    routes
}

/// Records `{"id": "m{i}"}` for i in `range`, keyed by `key(i)`.
pub fn id_msgs(topic: &str, range: std::ops::Range<usize>, key: impl Fn(usize) -> String) -> Vec<vedgate::tools::traffic::Record> {
    range.map(|i| record(topic, Some(&key(i)), format!(r#"{{"id": "m{i}"}}"#).as_bytes())).collect()
}

/// The ids a receiver got at `/in/{id}`, in arrival order.
pub fn received_ids(r: &Receiver) -> Vec<String> {
    r.requests().iter().map(|x| x.path.trim_start_matches("/in/").to_string()).collect()
}
