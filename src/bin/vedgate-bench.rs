//! `vedgate-bench`: the pieces `scripts/bench` puts side by side: a fast
//! producer (bulk or paced), a minimal librdkafka consumer (the limit of the
//! gateway's own librdkafka build), a fast HTTP receiver (optionally slow,
//! optionally recording arrival times), a plain HTTP load loop against that
//! receiver, a watcher that turns the gateway's /metrics into rates, CPU
//! time and latency, and small /proc helpers.
//!
//! Every subcommand prints one JSON object on stdout (progress on stderr),
//! so the script can assemble `target/bench/summary.json` with `jq`.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use clap::{Parser, Subcommand};
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::json;

#[derive(Parser)]
#[command(name = "vedgate-bench", about = "Benchmark driver for vedgate (used by scripts/bench)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Produce contract messages: the realistic mix, or DOP rate updates only.
    Produce {
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
        /// Messages to produce (bulk mode), or the cap in paced mode.
        #[arg(long, default_value_t = 100_000)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// `mix` (Traffic::mix, every kind of the contract) or `rates` (DOP rate updates, 3 rows each, unique validFrom).
        #[arg(long, default_value = "mix")]
        kind: String,
        /// Paced mode: messages per second (0: as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Paced mode: stop after this many seconds.
        #[arg(long, default_value_t = 0.0)]
        duration_s: f64,
        /// Write "partition offset timestamp_ms" per acknowledged record here.
        #[arg(long)]
        sent_out: Option<String>,
    },
    /// A minimal consumer on the gateway's librdkafka: fresh group, read N messages, discard.
    RawConsume {
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
        /// Read with the gateway's async StreamConsumer and its full consumer
        /// configuration (still discarding): isolates librdkafka + tokio.
        #[arg(long)]
        stream: bool,
        /// With --stream: also parse every message as the gateway does.
        #[arg(long)]
        parse: bool,
    },
    /// Time lines on stdin (e.g. kcat output): first line to the COUNT-th.
    CountLines {
        #[arg(long)]
        count: u64,
    },
    /// A fast HTTP receiver: answers 200 to anything, counts, optionally records arrivals.
    Receive {
        #[arg(long, default_value = "127.0.0.1:18181")]
        listen: String,
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Keep (partition, offset, arrival) from X-Kafka-Partition/X-Kafka-Offset for `latency`.
        #[arg(long)]
        record: bool,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// A plain HTTP client loop on the receiver: same client library (reqwest),
    /// same bodies and headers, the same concurrency the gateway gets.
    LoadLoop {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 6)]
        concurrency: usize,
        #[arg(long, default_value_t = 5.0)]
        duration_s: f64,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Watch a gateway's /metrics until TARGET messages are final (or MAX_S):
    /// rate, CPU of the given processes, peak RSS, latency histogram quantiles.
    Watch {
        #[arg(long)]
        metrics: String,
        /// Final messages (delivered + skipped + dead-lettered) to wait for.
        #[arg(long)]
        target: u64,
        #[arg(long, default_value_t = 120.0)]
        max_s: f64,
        /// Ignore the first seconds after the first message (ramp-up), for windowed rates.
        #[arg(long, default_value_t = 0.0)]
        warmup_s: f64,
        /// `final` (every finished message) or `delivered` (sink deliveries only).
        #[arg(long, default_value = "final")]
        count: String,
        /// The gateway's PID: CPU seconds and VmHWM.
        #[arg(long)]
        pid: Option<u32>,
        /// NAME=PID (or NAME=PID,PID,...) whose CPU time over the window is reported too.
        #[arg(long)]
        also: Vec<String>,
    },
    /// Join the producer's sent file with the receiver's arrivals: delivery latency quantiles.
    Latency {
        #[arg(long)]
        sent: String,
        /// The receiver's base URL (its /_arrivals is read).
        #[arg(long)]
        receiver: String,
        /// Ignore records sent in the first seconds (gateway warm-up).
        #[arg(long, default_value_t = 1.0)]
        skip_s: f64,
    },
    /// VmRSS and VmHWM (peak RSS since start) of a process, in MB.
    Rss {
        #[arg(long)]
        pid: u32,
    },
    /// utime+stime of processes, in seconds.
    Cpu {
        pids: Vec<u32>,
    },
    /// Delete the benchmark's topics (their groups expire on their own).
    DeleteTopics {
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        topics: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Receive { listen, delay_ms, record, threads } => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build()?;
            rt.block_on(receive(listen, delay_ms, record))
        }
        Command::LoadLoop { url, concurrency, duration_s, threads } => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build()?;
            rt.block_on(load_loop(url, concurrency, duration_s))
        }
        other => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(run(other))
        }
    }
}

async fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Produce { brokers, topic, count, seed, kind, rate, duration_s, sent_out } => produce(brokers, topic, count, seed, kind, rate, duration_s, sent_out).await,
        Command::RawConsume { brokers, topic, group, count, timeout_s, stream: true, parse } => stream_consume(brokers, topic, group, count, timeout_s, parse).await,
        Command::RawConsume { brokers, topic, group, count, timeout_s, stream: false, .. } => tokio::task::spawn_blocking(move || raw_consume(brokers, topic, group, count, timeout_s)).await?,
        Command::CountLines { count } => tokio::task::spawn_blocking(move || count_lines(count)).await?,
        Command::Watch { metrics, target, max_s, warmup_s, count, pid, also } => watch(metrics, target, max_s, warmup_s, count, pid, also).await,
        Command::Latency { sent, receiver, skip_s } => latency(sent, receiver, skip_s).await,
        Command::Rss { pid } => {
            let (rss, hwm) = rss_mb(pid).ok_or_else(|| anyhow::anyhow!("no process {pid}"))?;
            println!("{}", json!({"pid": pid, "rss_mb": rss, "hwm_mb": hwm}));
            Ok(())
        }
        Command::Cpu { pids } => {
            println!("{}", json!({"cpu_s": cpu_s(&pids)}));
            Ok(())
        }
        Command::DeleteTopics { brokers, topics } => {
            use rdkafka::admin::{AdminClient, AdminOptions};
            let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
            let r = admin.delete_topics(&names, &opts).await?;
            let failed: Vec<String> = r.into_iter().filter_map(|x| x.err().map(|(t, c)| format!("{t}: {c:?}"))).collect();
            println!("{}", json!({"deleted": names.len() - failed.len(), "failed": failed}));
            Ok(())
        }
        Command::Receive { .. } | Command::LoadLoop { .. } => unreachable!(),
    }
}

// ---------------------------------------------------------------- /proc helpers

/// utime + stime of the processes, in seconds (clock ticks of 1/100 s, Linux's USER_HZ).
fn cpu_s(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            // Fields after the ")" that closes the command name: state is field 3; utime 14, stime 15.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?) as f64 / 100.0)
        })
        .sum()
}

fn self_cpu_s() -> f64 {
    cpu_s(&[std::process::id()])
}

/// (VmRSS, VmHWM) in MB.
fn rss_mb(pid: u32) -> Option<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = s.lines().find(|l| l.starts_with(name))?;
        Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn now_ms() -> i64 {
    (now_us() / 1000) as i64
}

// ---------------------------------------------------------------- producing

/// DOP rate updates in the contract's shape, each with its own validFrom, so
/// the upserts insert (rates are published for new periods).
struct Rates {
    n: u64,
    seed: u64,
}

impl Rates {
    fn next(&mut self, topic: &str) -> vedgate::tools::traffic::Record {
        self.n += 1;
        let n = self.n;
        // Unique per (seed % 100, n): minutes after 2020-01-01, about two years apart per seed.
        let base = chrono::DateTime::parse_from_rfc3339("2020-01-01T00:00:00+05:00").expect("fixed date");
        let valid = (base + chrono::Duration::minutes((n + (self.seed % 100) * 1_000_000) as i64)).to_rfc3339();
        let mut rates = Vec::new();
        for (cur, b) in [("USD", 512u64), ("EUR", 545), ("RUB", 6)] {
            rates.push(json!({"currency": cur, "rateType": "DOP", "buy": format!("{}.{:02}", b, n % 100), "sell": format!("{}.{:02}", b + 6, (n * 7) % 100), "validFrom": valid}));
        }
        let v = json!({"operationCode": "COLVIR.DOP_RATE_UPDATE", "messageId": format!("bench-{}-{n}", self.seed), "createdAt": valid, "payload": {"rates": rates}});
        vedgate::tools::traffic::Record { topic: topic.into(), key: None, payload: Some(serde_json::to_vec(&v).unwrap_or_default()), kind: "COLVIR.DOP_RATE_UPDATE".into() }
    }
}

fn bench_producer(brokers: &str, paced: bool) -> anyhow::Result<FutureProducer> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("acks", "1")
        .set("compression.type", "none")
        .set("message.timeout.ms", "60000")
        .set("queue.buffering.max.messages", "500000")
        .set("queue.buffering.max.kbytes", "524288");
    if paced {
        c.set("linger.ms", "1");
    } else {
        c.set("linger.ms", "20").set("batch.size", "1000000");
    }
    Ok(c.create()?)
}

#[allow(clippy::too_many_arguments)]
async fn produce(brokers: String, topic: String, count: usize, seed: u64, kind: String, rate: f64, duration_s: f64, sent_out: Option<String>) -> anyhow::Result<()> {
    let producer = bench_producer(&brokers, rate > 0.0)?;
    let mut traffic = vedgate::tools::traffic::Traffic::new(seed, &topic, &topic);
    let mut rates = Rates { n: 0, seed };
    let mut buf: std::collections::VecDeque<vedgate::tools::traffic::Record> = Default::default();
    let mut next = move || {
        if kind == "rates" {
            return rates.next(&topic);
        }
        if buf.is_empty() {
            buf.extend(traffic.mix(12_000));
        }
        buf.pop_front().expect("refilled")
    };
    let sent: Arc<Mutex<Vec<(i32, i64, i64)>>> = Default::default();
    let mut pending = FuturesUnordered::new();
    let start = Instant::now();
    let mut produced = 0usize;
    let mut bytes = 0u64;
    let mut failed = 0u64;
    let deadline = (duration_s > 0.0).then(|| start + Duration::from_secs_f64(duration_s));
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let window = if rate > 0.0 { 1_000_000 } else { 200_000 };
    while produced < count {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let due = if rate > 0.0 {
            tick.tick().await;
            ((start.elapsed().as_secs_f64() * rate) as usize).min(count)
        } else {
            count
        };
        while produced < due {
            let r = next();
            let payload = r.payload.unwrap_or_default();
            bytes += payload.len() as u64;
            let ts = now_ms();
            let mut rec = FutureRecord::<[u8], [u8]>::to(&r.topic).payload(&payload).timestamp(ts);
            if let Some(k) = &r.key {
                rec = rec.key(k.as_bytes());
            }
            match producer.send_result(rec) {
                Ok(f) => {
                    produced += 1;
                    let sent = sent.clone();
                    pending.push(async move {
                        match f.await {
                            Ok(Ok(d)) => {
                                sent.lock().unwrap().push((d.partition, d.offset, ts));
                                true
                            }
                            _ => false,
                        }
                    });
                }
                Err((e, _)) => {
                    // Queue full: let deliveries drain, then try the next record.
                    tracing_free_log(&format!("produce: {e}; draining"));
                    if let Some(ok) = pending.next().await {
                        failed += u64::from(!ok);
                    }
                    continue;
                }
            }
            while pending.len() >= window {
                if let Some(ok) = pending.next().await {
                    failed += u64::from(!ok);
                }
            }
            if rate > 0.0 {
                // Poll acknowledgements without blocking the pace.
                while let Some(Some(ok)) = futures::FutureExt::now_or_never(pending.next()) {
                    failed += u64::from(!ok);
                }
            }
        }
    }
    let send_secs = start.elapsed().as_secs_f64();
    while let Some(ok) = pending.next().await {
        failed += u64::from(!ok);
    }
    producer.flush(Duration::from_secs(30))?;
    let secs = start.elapsed().as_secs_f64();
    if let Some(path) = sent_out {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for (p, o, ts) in sent.lock().unwrap().iter() {
            writeln!(f, "{p} {o} {ts}")?;
        }
    }
    let avg = if produced > 0 { bytes as f64 / produced as f64 } else { 0.0 };
    println!("{}", json!({"produced": produced, "failed": failed, "secs": secs, "send_secs": send_secs, "msgs_per_s": produced as f64 / secs, "avg_bytes": avg}));
    anyhow::ensure!(failed == 0, "{failed} records were not acknowledged");
    Ok(())
}

fn tracing_free_log(s: &str) {
    eprintln!("vedgate-bench: {s}");
}

// ---------------------------------------------------------------- raw consumer

fn raw_consume(brokers: String, topic: String, group: String, count: u64, timeout_s: u64) -> anyhow::Result<()> {
    // The gateway's fetch settings; nothing else: no parsing, no offsets stored.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("queued.max.messages.kbytes", "8192")
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.wait.max.ms", "10")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(timeout_s);
    let mut n = 0u64;
    let mut bytes = 0u64;
    let mut first: Option<(Instant, f64)> = None;
    let mut errors = 0u64;
    while n < count && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if first.is_none() {
                    first = Some((Instant::now(), self_cpu_s()));
                }
                bytes += m.payload().map_or(0, |p| p.len() as u64);
                n += 1;
            }
            Some(Err(e)) => {
                errors += 1;
                if errors <= 3 {
                    tracing_free_log(&format!("raw-consume: {e}"));
                }
            }
            None => {}
        }
    }
    let (t0, c0) = first.ok_or_else(|| anyhow::anyhow!("no message within {timeout_s}s"))?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = self_cpu_s() - c0;
    println!(
        "{}",
        json!({"messages": n, "bytes": bytes, "secs": secs, "msgs_per_s": n as f64 / secs, "cpu_s": cpu, "cpu_s_per_million": cpu * 1e6 / n.max(1) as f64, "join_s": (t0 - started).as_secs_f64(), "errors": errors, "complete": n >= count})
    );
    Ok(())
}

async fn stream_consume(brokers: String, topic: String, group: String, count: u64, timeout_s: u64, parse: bool) -> anyhow::Result<()> {
    use futures::StreamExt;
    let kafka = vedgate::config::KafkaSettings { profile: "bench".into(), brokers: vec![brokers], properties: Default::default() };
    let settings = vedgate::config::Settings::default();
    let consumer: rdkafka::consumer::StreamConsumer = vedgate::consumer::consumer_config(&kafka, &settings, &group).create()?;
    consumer.subscribe(&[&topic])?;
    let started = Instant::now();
    let mut n = 0u64;
    let mut bytes = 0u64;
    let mut first: Option<(Instant, f64)> = None;
    let mut stream = consumer.stream();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_s);
    while n < count {
        let Ok(Some(m)) = tokio::time::timeout_at(deadline, stream.next()).await else { break };
        let Ok(m) = m else { continue };
        if first.is_none() {
            first = Some((Instant::now(), self_cpu_s()));
        }
        bytes += m.payload().map_or(0, |p| p.len() as u64);
        if parse {
            let _ = std::hint::black_box(vedgate::message::decode(m.payload(), vedgate::message::Limits { max_bytes: 1 << 20, max_depth: 64 }));
        }
        n += 1;
    }
    let (t0, c0) = first.ok_or_else(|| anyhow::anyhow!("no message within {timeout_s}s"))?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = self_cpu_s() - c0;
    println!("{}", json!({"messages": n, "bytes": bytes, "secs": secs, "msgs_per_s": n as f64 / secs, "cpu_s": cpu, "cpu_s_per_million": cpu * 1e6 / n.max(1) as f64, "join_s": (t0 - started).as_secs_f64(), "complete": n >= count}));
    Ok(())
}

fn count_lines(count: u64) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let mut r = std::io::BufReader::with_capacity(1 << 20, stdin.lock());
    let mut line = Vec::new();
    let mut n = 0u64;
    let mut first: Option<Instant> = None;
    while n < count {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        n += 1;
    }
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    println!("{}", json!({"messages": n, "secs": secs, "msgs_per_s": if secs > 0.0 { n as f64 / secs } else { 0.0 }, "complete": n >= count}));
    Ok(())
}

// ---------------------------------------------------------------- receiver

#[derive(Default)]
struct Recv {
    requests: AtomicU64,
    bytes: AtomicU64,
    record: bool,
    arrivals: Mutex<Vec<(i32, i64, u64)>>,
}

async fn receive(listen: String, delay_ms: u64, record: bool) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let state = Arc::new(Recv { record, ..Default::default() });
    let app = axum::Router::new()
        .route("/_stats", axum::routing::get(|State((s, _)): State<(Arc<Recv>, u64)>| async move {
            axum::Json(json!({"requests": s.requests.load(Ordering::Relaxed), "bytes": s.bytes.load(Ordering::Relaxed)}))
        }))
        .route("/_arrivals", axum::routing::get(|State((s, _)): State<(Arc<Recv>, u64)>| async move {
            let a = s.arrivals.lock().unwrap();
            let mut out = String::with_capacity(a.len() * 24);
            for (p, o, t) in a.iter() {
                out.push_str(&format!("{p} {o} {t}\n"));
            }
            out
        }))
        .fallback(handle)
        .with_state((state, delay_ms));
    eprintln!("vedgate-bench receiver on http://{listen} (delay {delay_ms} ms)");
    let serve = axum::serve(listener, app);
    tokio::select! {
        r = serve => r?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

async fn handle(State((s, delay_ms)): State<(Arc<Recv>, u64)>, req: Request) -> &'static str {
    let arrived = now_us();
    let po = if s.record {
        let h = req.headers();
        let hdr = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i64>().ok());
        hdr("x-kafka-partition").zip(hdr("x-kafka-offset"))
    } else {
        None
    };
    let body = axum::body::to_bytes(req.into_body(), 16 << 20).await.map(|b| b.len()).unwrap_or(0);
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    if let Some((p, o)) = po {
        let t = if delay_ms > 0 { now_us() } else { arrived };
        s.arrivals.lock().unwrap().push((p as i32, o, t));
    }
    s.requests.fetch_add(1, Ordering::Relaxed);
    s.bytes.fetch_add(body as u64, Ordering::Relaxed);
    "ok"
}

// ---------------------------------------------------------------- load loop

async fn load_loop(url: String, concurrency: usize, duration_s: f64) -> anyhow::Result<()> {
    // Same client library and configuration style as the gateway's HTTP sink.
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let mut t = vedgate::tools::traffic::Traffic::new(7, "bench", "bench");
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(t.mix(1200).into_iter().filter_map(|r| r.payload.map(bytes::Bytes::from)).collect());
    let avg = bodies.iter().map(|b| b.len()).sum::<usize>() as f64 / bodies.len() as f64;
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let c0 = self_cpu_s();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(duration_s);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (client, url, bodies, done, errors) = (client.clone(), url.clone(), bodies.clone(), done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            let mut offset = 0u64;
            while Instant::now() < end {
                let body = bodies[i % bodies.len()].clone();
                i += concurrency;
                offset += 1;
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-kafka-topic", "bench")
                    .header("x-kafka-partition", (w % 6).to_string())
                    .header("x-kafka-offset", offset.to_string())
                    .header("x-kafka-key", "FC-2026-000123")
                    .header("idempotency-key", format!("bench-{w}-{offset}"))
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let cpu = self_cpu_s() - c0;
    println!(
        "{}",
        json!({"requests": n, "errors": errors.load(Ordering::Relaxed), "secs": secs, "req_per_s": n as f64 / secs, "concurrency": concurrency, "avg_body_bytes": avg, "cpu_s": cpu, "cpu_s_per_million": cpu * 1e6 / n.max(1) as f64})
    );
    Ok(())
}

// ---------------------------------------------------------------- gateway watcher

#[derive(Default, Clone)]
struct Scrape {
    delivered: u64,
    finished: u64,
    /// Latency histogram summed over routes: cumulative counts per upper bound.
    hist: Vec<(f64, u64)>,
}

fn parse_metrics(text: &str) -> Scrape {
    let mut s = Scrape::default();
    let mut hist: std::collections::BTreeMap<u64, (f64, u64)> = Default::default();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name_labels, value)) = line.rsplit_once(' ') else { continue };
        let Ok(v) = value.parse::<f64>() else { continue };
        if name_labels.starts_with("vedgate_messages_total{") {
            if name_labels.contains("outcome=\"delivered\"") {
                s.delivered += v as u64;
                s.finished += v as u64;
            } else if name_labels.contains("outcome=\"skipped\"") || name_labels.contains("outcome=\"dead_lettered\"") {
                s.finished += v as u64;
            }
        } else if name_labels.starts_with("vedgate_end_to_end_latency_seconds_bucket{") {
            if let Some(le) = name_labels.split("le=\"").nth(1).and_then(|r| r.split('"').next()) {
                let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
                let e = hist.entry(bound.to_bits()).or_insert((bound, 0));
                e.1 += v as u64;
            }
        }
    }
    let mut h: Vec<(f64, u64)> = hist.into_values().collect();
    h.sort_by(|a, b| a.0.total_cmp(&b.0));
    s.hist = h;
    s
}

/// Quantile from a cumulative histogram difference, linear within a bucket.
fn hist_quantile(h1: &[(f64, u64)], h0: &[(f64, u64)], q: f64) -> Option<f64> {
    let before: HashMap<u64, u64> = h0.iter().map(|(b, c)| (b.to_bits(), *c)).collect();
    let d: Vec<(f64, u64)> = h1.iter().map(|(b, c)| (*b, c.saturating_sub(*before.get(&b.to_bits()).unwrap_or(&0)))).collect();
    let total = d.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut prev = (0.0, 0u64);
    for (b, c) in &d {
        if *c as f64 >= rank {
            if b.is_infinite() {
                return Some(prev.0);
            }
            let frac = if *c > prev.1 { (rank - prev.1 as f64) / (*c - prev.1) as f64 } else { 1.0 };
            return Some(prev.0 + (b - prev.0) * frac);
        }
        prev = (*b, *c);
    }
    None
}

async fn scrape(client: &reqwest::Client, url: &str) -> Option<Scrape> {
    let r = client.get(url).send().await.ok()?;
    Some(parse_metrics(&r.text().await.ok()?))
}

fn parse_also(also: &[String]) -> Vec<(String, Vec<u32>)> {
    also.iter()
        .filter_map(|a| {
            let (n, p) = a.split_once('=')?;
            Some((n.to_string(), p.split(',').filter_map(|x| x.trim().parse().ok()).collect()))
        })
        .collect()
}

async fn watch(url: String, target: u64, max_s: f64, warmup_s: f64, count: String, pid: Option<u32>, also: Vec<String>) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let also = parse_also(&also);
    let pick = |s: &Scrape| if count == "delivered" { s.delivered } else { s.finished };
    let cpus = |pid: Option<u32>| -> (f64, Vec<f64>) { (pid.map_or(0.0, |p| cpu_s(&[p])), also.iter().map(|(_, p)| cpu_s(p)).collect()) };
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(max_s);
    // Counters of a freshly started gateway start at zero: the target counts
    // from there even if it finished messages before the first scrape.
    while scrape(&client, &url).await.is_none() {
        anyhow::ensure!(Instant::now() < deadline, "no metrics at {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let base = Scrape::default();
    let base_n = pick(&base);
    // t0: the first scrape that saw progress (after the warm-up when asked).
    let mut first: Option<(Instant, Scrape, (f64, Vec<f64>))> = None;
    let mut moved_at: Option<Instant> = None;
    let mut last = (Instant::now(), base.clone(), cpus(pid));
    let mut peak_rss = 0.0f64;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Some(s) = scrape(&client, &url).await else { continue };
        let now = Instant::now();
        if let Some((rss, _)) = pid.and_then(rss_mb) {
            peak_rss = peak_rss.max(rss);
        }
        let n = pick(&s);
        if n > base_n && moved_at.is_none() {
            moved_at = Some(now);
        }
        if first.is_none() && moved_at.is_some_and(|m| now.duration_since(m).as_secs_f64() >= warmup_s) {
            first = Some((now, s.clone(), cpus(pid)));
        }
        let changed = n != pick(&last.1);
        if changed || first.as_ref().is_some_and(|f| f.0 == now) {
            last = (now, s.clone(), cpus(pid));
        }
        if n - base_n >= target || now >= deadline {
            break;
        }
    }
    let complete = pick(&last.1) - base_n >= target;
    let Some((t0, s0, c0)) = first else {
        println!("{}", json!({"messages": 0, "msgs_per_s": 0.0, "complete": false, "error": "no progress"}));
        return Ok(());
    };
    let (t1, s1, c1) = last;
    let secs = t1.duration_since(t0).as_secs_f64().max(1e-9);
    let n = pick(&s1) - pick(&s0);
    let delivered = s1.delivered - s0.delivered;
    let gw_cpu = c1.0 - c0.0;
    let mut others = serde_json::Map::new();
    for (i, (name, _)) in also.iter().enumerate() {
        let c = c1.1[i] - c0.1[i];
        others.insert(format!("{name}_cpu_s"), json!(c));
        others.insert(format!("{name}_cpu_s_per_million"), json!(c * 1e6 / n.max(1) as f64));
    }
    let (rss, hwm) = pid.and_then(rss_mb).unwrap_or((0.0, 0.0));
    let q = |x| hist_quantile(&s1.hist, &base.hist, x).map(|v| v * 1000.0);
    println!(
        "{}",
        json!({
            "messages": n, "delivered": delivered, "secs": secs, "msgs_per_s": n as f64 / secs, "delivered_per_s": delivered as f64 / secs,
            "total_final": pick(&s1) - base_n, "complete": complete,
            "gateway_cpu_s": gw_cpu, "gateway_cpu_s_per_million": gw_cpu * 1e6 / n.max(1) as f64,
            "gateway_cpu_util": gw_cpu / secs,
            "rss_mb": rss, "hwm_mb": hwm, "peak_rss_sampled_mb": peak_rss,
            "hist_p50_ms": q(0.5), "hist_p99_ms": q(0.99),
            "others": others,
        })
    );
    Ok(())
}

// ---------------------------------------------------------------- latency

async fn latency(sent: String, receiver: String, skip_s: f64) -> anyhow::Result<()> {
    let mut ts: HashMap<(i32, i64), i64> = HashMap::new();
    let mut t_min = i64::MAX;
    for line in std::io::BufReader::new(std::fs::File::open(&sent)?).lines() {
        let line = line?;
        let f: Vec<i64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if f.len() == 3 {
            ts.insert((f[0] as i32, f[1]), f[2]);
            t_min = t_min.min(f[2]);
        }
    }
    let text = reqwest::get(format!("{receiver}/_arrivals")).await?.text().await?;
    let cutoff = t_min + (skip_s * 1000.0) as i64;
    let mut lat: Vec<f64> = Vec::new();
    let mut unmatched = 0u64;
    for line in text.lines() {
        let f: Vec<i64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if f.len() != 3 {
            continue;
        }
        match ts.get(&(f[0] as i32, f[1])) {
            Some(&t) if t >= cutoff => lat.push((f[2] as f64 / 1000.0) - t as f64),
            Some(_) => {}
            None => unmatched += 1,
        }
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| if lat.is_empty() { None } else { Some(lat[((lat.len() - 1) as f64 * p).round() as usize]) };
    println!(
        "{}",
        json!({"samples": lat.len(), "sent": ts.len(), "unmatched": unmatched, "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "p999_ms": q(0.999), "max_ms": q(1.0)})
    );
    Ok(())
}
