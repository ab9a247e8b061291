//! `vedgate-chaos`: the checker of the fault suite (`scripts/chaos`).
//!
//! - `produce` writes keyed messages with unique ids (`{"id":"PREFIX-000123",..}`)
//!   at a steady rate and appends every id the broker acknowledged to a file.
//! - `receive` is a recording HTTP receiver that injects faults on a schedule
//!   (bursts of 500, 429 with Retry-After, an outage with the port closed,
//!   fixed latency) and appends `id idempotency-key status` per answered request.
//! - `wait` waits until a consumer group has committed a topic to its end.
//! - `report` follows every sent id to the receivers, a PostgreSQL table and
//!   the dead-letter topic, and prints sent / delivered / dead-lettered / lost /
//!   duplicated; it exits 1 when lost > 0 (or duplicated > 0 with `--no-dup`).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use clap::{Parser, Subcommand};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
#[command(name = "vedgate-chaos", about = "Fault-suite checker for vedgate: unique-id producer, faulty recording receiver, loss/duplicate report")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Produce COUNT keyed messages with unique ids PREFIX-NNNNNN; acknowledged ids go to --out.
    Produce {
        #[arg(long, env = "BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        prefix: String,
        /// Messages per second (0: as fast as the broker takes them).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// File the acknowledged ids are appended to, one per line.
        #[arg(long)]
        out: PathBuf,
        /// Bytes of padding per message.
        #[arg(long, default_value_t = 200)]
        pad: usize,
    },
    /// A recording HTTP receiver with scheduled faults.
    Receive {
        #[arg(long)]
        listen: String,
        /// Comma-separated windows KIND@START+DURATION[:ARG], seconds from the first request:
        /// 500@5+2 (every answer 500), 429@10+2:1 (429, Retry-After: 1), down@20+30 (port closed,
        /// open connections reset), slow@60+10:5000 (answer after 5000 ms).
        #[arg(long, default_value = "")]
        faults: String,
        /// Append `id idempotency-key status` per answered request.
        #[arg(long)]
        out: PathBuf,
    },
    /// Wait until every GROUP has committed TOPIC up to its end.
    Wait {
        #[arg(long, env = "BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long, required = true)]
        group: Vec<String>,
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
    /// Follow the sent ids to the sinks and the dead-letter topic.
    Report {
        #[arg(long, env = "BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Scenario name for the summary line.
        #[arg(long, default_value = "chaos")]
        scenario: String,
        /// The file `produce --out` wrote.
        #[arg(long)]
        ids: PathBuf,
        /// Files `receive --out` wrote.
        #[arg(long)]
        received: Vec<PathBuf>,
        /// Dead-letter topics to read from the beginning.
        #[arg(long)]
        dlq_topic: Vec<String>,
        /// PostgreSQL URL of a sink table (with --table).
        #[arg(long)]
        pg: Option<String>,
        /// Table with an `id` column, one row per delivery.
        #[arg(long)]
        table: Option<String>,
        /// Fail when any id was delivered more than once.
        #[arg(long)]
        no_dup: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Produce { brokers, topic, count, prefix, rate, out, pad } => produce(&brokers, &topic, count, &prefix, rate, &out, pad).await,
        Command::Receive { listen, faults, out } => receive(&listen, &faults, &out).await,
        Command::Wait { brokers, topic, group, timeout_s } => wait(&brokers, &topic, &group, timeout_s).await,
        Command::Report { brokers, scenario, ids, received, dlq_topic, pg, table, no_dup } => {
            let ok = report(&brokers, &scenario, &ids, &received, &dlq_topic, pg.as_deref(), table.as_deref(), no_dup).await?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

// ------------------------------------------------------------------ produce

async fn produce(brokers: &str, topic: &str, count: u64, prefix: &str, rate: u64, out: &Path, pad: usize) -> anyhow::Result<()> {
    // Idempotent, and patient: a broker restart must not turn into failed sends.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "300000")
        .create()?;
    let mut file = std::io::BufWriter::new(std::fs::OpenOptions::new().create(true).append(true).open(out)?);
    let padding = "x".repeat(pad);
    let tick = Duration::from_millis(100);
    let per_tick = if rate == 0 { 2000 } else { (rate / 10).max(1) };
    let start = Instant::now();
    let mut next = Instant::now();
    let mut seq = 0u64;
    let mut retried = 0u64;
    while seq < count {
        let end = (seq + per_tick).min(count);
        let batch: Vec<(String, Vec<u8>)> = (seq..end)
            .map(|i| {
                let id = format!("{prefix}-{i:07}");
                let body = serde_json::json!({"id": id, "seq": i, "kind": "chaos", "pad": padding});
                (id, serde_json::to_vec(&body).unwrap_or_default())
            })
            .collect();
        let sends = batch.iter().map(|(id, body)| {
            let producer = &producer;
            async move {
                // A send the producer gave up on is sent again (and may then exist twice in Kafka).
                for attempt in 0.. {
                    let rec = FutureRecord::to(topic).key(id.as_bytes()).payload(body.as_slice());
                    match producer.send(rec, Duration::from_secs(300)).await {
                        Ok(_) => return attempt,
                        Err((e, _)) => {
                            eprintln!("produce {id}: {e}; sending again");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                unreachable!()
            }
        });
        let attempts = futures::future::join_all(sends).await;
        retried += attempts.iter().filter(|a| **a > 0).count() as u64;
        for (id, _) in &batch {
            writeln!(file, "{id}")?;
        }
        file.flush()?;
        seq = end;
        if rate > 0 {
            next += tick;
            let now = Instant::now();
            if next > now {
                tokio::time::sleep(next - now).await;
            } else {
                next = now;
            }
        }
    }
    eprintln!("produced {count} messages to {topic} in {:.1}s ({retried} sent again)", start.elapsed().as_secs_f64());
    Ok(())
}

// ------------------------------------------------------------------ receive

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Status500,
    Status429 { retry_after: u64 },
    Down,
    Slow { ms: u64 },
}

#[derive(Debug, Clone)]
struct Window {
    fault: Fault,
    start: f64,
    end: f64,
}

fn parse_faults(spec: &str) -> anyhow::Result<Vec<Window>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let err = || anyhow::anyhow!("bad fault window {part:?}: expected KIND@START+DURATION[:ARG]");
        let (kind, rest) = part.split_once('@').ok_or_else(err)?;
        let (times, arg) = match rest.split_once(':') {
            Some((t, a)) => (t, Some(a)),
            None => (rest, None),
        };
        let (start, dur) = times.split_once('+').ok_or_else(err)?;
        let start: f64 = start.parse().map_err(|_| err())?;
        let dur: f64 = dur.parse().map_err(|_| err())?;
        let arg: Option<u64> = arg.map(|a| a.parse()).transpose().map_err(|_| err())?;
        let fault = match kind {
            "500" => Fault::Status500,
            "429" => Fault::Status429 { retry_after: arg.unwrap_or(1) },
            "down" => Fault::Down,
            "slow" => Fault::Slow { ms: arg.unwrap_or(5000) },
            _ => return Err(err()),
        };
        out.push(Window { fault, start, end: start + dur });
    }
    Ok(out)
}

struct Receiver {
    windows: Vec<Window>,
    /// Set by the first request: fault windows count from here.
    t0: OnceLock<Instant>,
    out: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl Receiver {
    fn fault_now(&self) -> Option<Fault> {
        let t = self.t0.get()?.elapsed().as_secs_f64();
        self.windows.iter().find(|w| w.start <= t && t < w.end).map(|w| w.fault)
    }

    fn down(&self) -> bool {
        self.fault_now() == Some(Fault::Down)
    }
}

/// A listener whose port is closed during `down` windows; connections open
/// when an outage starts fail on their next read.
struct FaultyListener {
    addr: std::net::SocketAddr,
    inner: Option<TcpListener>,
    rx: Arc<Receiver>,
}

impl axum::serve::Listener for FaultyListener {
    type Io = FaultyStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if self.rx.down() {
                if self.inner.take().is_some() {
                    eprintln!("receiver: outage starts, port {} closed", self.addr);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            if self.inner.is_none() {
                match TcpListener::bind(self.addr).await {
                    Ok(l) => {
                        eprintln!("receiver: outage over, port {} open", self.addr);
                        self.inner = Some(l);
                    }
                    Err(e) => {
                        eprintln!("receiver: rebind {}: {e}", self.addr);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            let l = self.inner.as_ref().expect("bound");
            tokio::select! {
                r = l.accept() => match r {
                    Ok((s, a)) => {
                        let _ = s.set_nodelay(true);
                        return (FaultyStream { inner: s, rx: self.rx.clone() }, a);
                    }
                    Err(e) => {
                        eprintln!("receiver: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

struct FaultyStream {
    inner: TcpStream,
    rx: Arc<Receiver>,
}

impl AsyncRead for FaultyStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.rx.down() {
            return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "outage")));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultyStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn receive(listen: &str, faults: &str, out: &Path) -> anyhow::Result<()> {
    let windows = parse_faults(faults)?;
    let file = std::fs::OpenOptions::new().create(true).append(true).open(out)?;
    let rx = Arc::new(Receiver { windows, t0: OnceLock::new(), out: Mutex::new(std::io::BufWriter::new(file)) });
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    eprintln!("receiver listening on http://{addr}, faults: {faults:?}");
    let flusher = {
        let rx = rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = rx.out.lock().unwrap_or_else(|e| e.into_inner()).flush();
            }
        })
    };
    let app = axum::Router::new().fallback(handle).with_state(rx.clone());
    let faulty = FaultyListener { addr, inner: Some(listener), rx: rx.clone() };
    let server = tokio::spawn(async move { axum::serve(faulty, app).await });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    server.abort();
    flusher.abort();
    rx.out.lock().unwrap_or_else(|e| e.into_inner()).flush()?;
    Ok(())
}

async fn handle(State(rx): State<Arc<Receiver>>, req: Request) -> Response {
    rx.t0.get_or_init(Instant::now);
    let idem = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
    let body = axum::body::to_bytes(req.into_body(), 16 << 20).await.unwrap_or_default();
    let id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("id").and_then(|i| i.as_str().map(str::to_string)))
        .unwrap_or_else(|| "-".into());
    let (status, retry_after) = match rx.fault_now() {
        Some(Fault::Down) => (StatusCode::SERVICE_UNAVAILABLE, None),
        Some(Fault::Status500) => (StatusCode::INTERNAL_SERVER_ERROR, None),
        Some(Fault::Status429 { retry_after }) => (StatusCode::TOO_MANY_REQUESTS, Some(retry_after)),
        Some(Fault::Slow { ms }) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (StatusCode::OK, None)
        }
        None => (StatusCode::OK, None),
    };
    {
        let mut out = rx.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "{id} {idem} {}", status.as_u16());
    }
    let mut resp = status.into_response();
    if let Some(ra) = retry_after {
        resp.headers_mut().insert("retry-after", ra.into());
    }
    resp
}

// ------------------------------------------------------------------ wait

fn behind(brokers: &str, topic: &str, group: &str) -> anyhow::Result<i64> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", group).create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let parts = md.topics().first().map(|t| t.partitions().len()).unwrap_or(0) as i32;
    anyhow::ensure!(parts > 0, "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10))?;
    let mut total = 0;
    for p in 0..parts {
        let (low, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        let done = committed.find_partition(topic, p).and_then(|e| e.offset().to_raw()).filter(|o| *o >= 0).unwrap_or(low);
        total += (high - done).max(0);
    }
    Ok(total)
}

async fn wait(brokers: &str, topic: &str, groups: &[String], timeout_s: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut said = Instant::now();
    loop {
        let mut total = 0;
        let mut err = None;
        for g in groups {
            match behind(brokers, topic, g) {
                Ok(n) => total += n,
                Err(e) => err = Some(e),
            }
        }
        if err.is_none() && total == 0 {
            eprintln!("{topic}: every group caught up after {:.1}s", start.elapsed().as_secs_f64());
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(timeout_s) {
            anyhow::bail!("{topic}: still {total} messages behind after {timeout_s}s ({err:?})");
        }
        if said.elapsed() > Duration::from_secs(15) {
            eprintln!("{topic}: {total} messages behind after {:.0}s", start.elapsed().as_secs_f64());
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ------------------------------------------------------------------ report

/// Values of a topic from the beginning to its current end.
fn read_topic_ids(brokers: &str, topic: &str) -> anyhow::Result<Vec<String>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("vedgate-chaos-reader-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()?;
    let md = match c.fetch_metadata(Some(topic), Duration::from_secs(10)) {
        Ok(md) => md,
        Err(_) => return Ok(Vec::new()),
    };
    let parts = md.topics().first().map(|t| t.partitions().len()).unwrap_or(0) as i32;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0i64;
    let mut ends = HashMap::new();
    for p in 0..parts {
        let (low, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
            remaining += high - low;
            ends.insert(p, high);
        }
    }
    let mut ids = Vec::new();
    if remaining == 0 {
        return Ok(ids);
    }
    c.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done: HashMap<i32, i64> = HashMap::new();
    while done.len() < ends.len() {
        anyhow::ensure!(Instant::now() < deadline, "reading {topic}: timed out");
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let id = m
                    .payload()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                    .and_then(|v| v.get("id").and_then(|i| i.as_str().map(str::to_string)))
                    .unwrap_or_else(|| "-".into());
                ids.push(id);
                if m.offset() + 1 >= ends[&m.partition()] {
                    done.insert(m.partition(), m.offset());
                }
            }
            Some(Err(e)) => eprintln!("reading {topic}: {e}"),
            None => {}
        }
    }
    Ok(ids)
}

#[allow(clippy::too_many_arguments)]
async fn report(
    brokers: &str,
    scenario: &str,
    ids: &Path,
    received: &[PathBuf],
    dlq_topics: &[String],
    pg: Option<&str>,
    table: Option<&str>,
    no_dup: bool,
) -> anyhow::Result<bool> {
    let sent: Vec<String> = std::io::BufReader::new(std::fs::File::open(ids)?).lines().collect::<Result<_, _>>()?;
    let sent_set: HashSet<&str> = sent.iter().map(String::as_str).collect();

    // Deliveries per id (2xx answers, SQL rows) and per (id, idempotency key).
    let mut delivered: HashMap<String, u64> = HashMap::new();
    let mut per_key: HashMap<(String, String), u64> = HashMap::new();
    let mut statuses: std::collections::BTreeMap<u16, u64> = Default::default();
    for f in received {
        for line in std::io::BufReader::new(std::fs::File::open(f)?).lines() {
            let line = line?;
            let mut it = line.split(' ');
            let (Some(id), Some(key), Some(status)) = (it.next(), it.next(), it.next()) else { continue };
            let status: u16 = status.parse().unwrap_or(0);
            *statuses.entry(status).or_default() += 1;
            if (200..300).contains(&status) {
                *delivered.entry(id.to_string()).or_default() += 1;
                *per_key.entry((id.to_string(), key.to_string())).or_default() += 1;
            }
        }
    }
    if let (Some(url), Some(table)) = (pg, table) {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        for row in client.query(&format!("SELECT id, partition_no::text, offset_no::text FROM {table}"), &[]).await? {
            let id: String = row.get(0);
            let key = format!("{}-{}", row.get::<_, String>(1), row.get::<_, String>(2));
            *delivered.entry(id.clone()).or_default() += 1;
            *per_key.entry((id, key)).or_default() += 1;
        }
    }
    let mut dead: HashMap<String, u64> = HashMap::new();
    for t in dlq_topics {
        for id in read_topic_ids(brokers, t)? {
            *dead.entry(id).or_default() += 1;
        }
    }

    let lost: Vec<&str> = sent.iter().map(String::as_str).filter(|id| !delivered.contains_key(*id) && !dead.contains_key(*id)).collect();
    let delivered_n = sent.iter().filter(|id| delivered.contains_key(id.as_str())).count();
    let dead_n = sent.iter().filter(|id| dead.contains_key(id.as_str())).count();
    // An id is duplicated when it reached its sinks more than once in total: twice delivered,
    // twice dead-lettered, or delivered and dead-lettered.
    let dup: Vec<&str> = sent
        .iter()
        .map(String::as_str)
        .filter(|id| delivered.get(*id).copied().unwrap_or(0) + dead.get(*id).copied().unwrap_or(0) > 1)
        .collect();
    let same_record = per_key.values().filter(|n| **n > 1).count();
    let unknown = delivered.keys().filter(|id| !sent_set.contains(id.as_str())).count();

    let pass = lost.is_empty() && (!no_dup || dup.is_empty());
    println!(
        "scenario={scenario} sent={} delivered={delivered_n} dead_lettered={dead_n} lost={} duplicated={} {}",
        sent.len(),
        lost.len(),
        dup.len(),
        if pass { "PASS" } else { "FAIL" }
    );
    let st: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}:{n}")).collect();
    eprintln!(
        "  detail: answers by status [{}]; ids redelivered with the same Idempotency-Key: {same_record}; ids not sent by this run: {unknown}; duplicate check: {}",
        st.join(" "),
        if no_dup { "required 0" } else { "reported only" }
    );
    if !lost.is_empty() {
        eprintln!("  lost ids (first 20): {:?}", &lost[..lost.len().min(20)]);
    }
    if !dup.is_empty() {
        eprintln!("  duplicated ids (first 10): {:?}", &dup[..dup.len().min(10)]);
    }
    Ok(pass)
}
