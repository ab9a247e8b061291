//! `vedgate-sim`: stand-ins for the world around the gateway, for the demo
//! and benchmarks: realistic VED traffic, recording HTTP receivers standing
//! in for the Go services, and a wait for consumer groups to catch up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use clap::{Parser, Subcommand};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;

#[derive(Parser)]
#[command(name = "vedgate-sim", about = "Demo traffic, stand-in HTTP receivers and lag waits for vedgate")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Produce a realistic mix of contract messages (and some no route claims).
    Produce {
        #[arg(long, env = "BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long, default_value_t = 1200)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "kz-bcc-colvir")]
        colvir_topic: String,
        #[arg(long, default_value = "bcc.business.fea.process.events")]
        fea_topic: String,
    },
    /// Record HTTP requests on each NAME=ADDR; GET /_stats answers the counts per path.
    Receive {
        /// e.g. foreign-contracts=127.0.0.1:8081
        #[arg(required = true)]
        listen: Vec<String>,
        /// Answer after this many milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// Wait until GROUP has committed TOPIC up to its end.
    Wait {
        #[arg(long, env = "BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long, required = true)]
        group: Vec<String>,
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Produce { brokers, count, seed, colvir_topic, fea_topic } => {
            let mut t = vedgate::tools::traffic::Traffic::new(seed, &colvir_topic, &fea_topic);
            let records = t.mix(count);
            let p = vedgate::tools::producer(&brokers)?;
            let start = Instant::now();
            vedgate::tools::produce_all(&p, &records, 2000).await?;
            let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
            for r in &records {
                *kinds.entry(r.kind.as_str()).or_default() += 1;
            }
            println!("produced {} messages in {:.1}s:", records.len(), start.elapsed().as_secs_f64());
            for (k, n) in kinds {
                println!("  {n:>6}  {k}");
            }
        }
        Command::Receive { listen, delay_ms } => {
            let mut tasks = Vec::new();
            for spec in listen {
                let (name, addr) = spec.split_once('=').ok_or_else(|| anyhow::anyhow!("expected NAME=ADDR, got {spec}"))?;
                let listener = tokio::net::TcpListener::bind(addr).await?;
                let stats = Arc::new(Stats { name: name.to_string(), ..Default::default() });
                eprintln!("receiver {name} listening on http://{addr}");
                let app = axum::Router::new()
                    .route("/_stats", axum::routing::get(stats_handler))
                    .fallback(record)
                    .with_state((stats, delay_ms));
                tasks.push(tokio::spawn(async move { axum::serve(listener, app).await }));
            }
            tokio::signal::ctrl_c().await.ok();
            for t in tasks {
                t.abort();
            }
        }
        Command::Wait { brokers, topic, group, timeout_s } => {
            let start = Instant::now();
            loop {
                let mut lag_total = 0;
                for g in &group {
                    lag_total += lag(&brokers, &topic, g)?;
                }
                if lag_total == 0 {
                    println!("{topic}: all groups caught up in {:.1}s", start.elapsed().as_secs_f64());
                    break;
                }
                if start.elapsed() > Duration::from_secs(timeout_s) {
                    anyhow::bail!("{topic}: still {lag_total} messages behind after {timeout_s}s");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Ok(())
}

#[derive(Default)]
struct Stats {
    name: String,
    total: AtomicU64,
    by_path: Mutex<BTreeMap<String, u64>>,
}

async fn record(State((stats, delay_ms)): State<(Arc<Stats>, u64)>, req: Request) -> &'static str {
    let path = req.uri().path().to_string();
    // Ids in paths vary: count by route shape.
    let shape = path.split('/').map(|seg| if seg.starts_with("RR") { "{id}" } else { seg }).collect::<Vec<_>>().join("/");
    let key = format!("{} {}", req.method(), shape);
    let _ = axum::body::to_bytes(req.into_body(), 64 << 20).await;
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    stats.total.fetch_add(1, Ordering::Relaxed);
    *stats.by_path.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default() += 1;
    "ok"
}

async fn stats_handler(State((stats, _)): State<(Arc<Stats>, u64)>) -> axum::Json<serde_json::Value> {
    let by_path = stats.by_path.lock().unwrap_or_else(|e| e.into_inner()).clone();
    axum::Json(serde_json::json!({"name": stats.name, "requests": stats.total.load(Ordering::Relaxed), "by_path": by_path}))
}

fn lag(brokers: &str, topic: &str, group: &str) -> anyhow::Result<i64> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", group).create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let parts = md.topics().first().map(|t| t.partitions().len()).unwrap_or(0) as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10))?;
    let mut lag = 0;
    for p in 0..parts {
        let (_, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        let done = committed.find_partition(topic, p).and_then(|e| e.offset().to_raw()).filter(|o| *o >= 0).unwrap_or(0);
        lag += (high - done).max(0);
    }
    Ok(lag)
}
