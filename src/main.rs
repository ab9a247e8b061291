//! `vedgate` command line: parse arguments, set up logging, call the library,
//! map errors to exit codes (bad config 64, runtime failure 1).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use vedgate::config::{self, Env, LoadOptions};
use vedgate::consumer::Shutdown;

/// Jobs are allocated by the dispatcher and freed by lane tasks on the other
/// core: glibc's malloc made those cross-thread frees wait on arena locks
/// (measured in BENCHMARKS.md); mimalloc frees across threads without one.
/// Rust allocations only (librdkafka keeps the system allocator), and without
/// transparent huge pages (feature `no_thp`), which doubled idle RSS.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "vedgate", version, about = "Declarative Kafka routing gateway for the VED backend")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_parser = ["human", "json"], default_value = "human")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArgs {
    /// Gateway settings and environment profiles.
    #[arg(long, default_value = "gateway.toml")]
    config: PathBuf,
    /// Route files: a directory of *.toml or one file.
    #[arg(long, default_value = "routes")]
    routes: PathBuf,
    /// Environment profile (local, dev, test, prod-current, prod-new); default VEDGATE_ENV or local.
    #[arg(long = "env")]
    profile: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume and deliver until SIGTERM or SIGINT.
    Run(ConfigArgs),
    /// Check gateway.toml and the route files; print every problem as path:line:col.
    Validate {
        #[command(flatten)]
        args: ConfigArgs,
        /// Treat warnings as errors.
        #[arg(long)]
        deny_warnings: bool,
        /// Skip the checks that read the environment (unset variables).
        #[arg(long)]
        offline: bool,
    },
    /// Show which route takes each message and the exact request, with no I/O.
    DryRun {
        #[command(flatten)]
        args: ConfigArgs,
        /// Topic the messages come from.
        #[arg(long)]
        topic: String,
        /// Only this consumer group (default: every group reading the topic).
        #[arg(long)]
        group: Option<String>,
        /// The whole input is one message (default: one message per line).
        #[arg(long)]
        raw: bool,
        /// Indented output for people.
        #[arg(long)]
        pretty: bool,
        /// Kafka key given to every message.
        #[arg(long)]
        key: Option<String>,
        /// Messages: a file, or - for standard input.
        #[arg(default_value = "-")]
        input: PathBuf,
    },
    /// Run the route test cases (default: ROUTES/tests/*.toml).
    Test {
        #[command(flatten)]
        args: ConfigArgs,
        /// A case file or a directory of them.
        path: Option<PathBuf>,
    },
    /// Deploy preflight: brokers, topics, groups, committed offsets and lag.
    Check {
        #[command(flatten)]
        args: ConfigArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Taking a group over from a Go service.
    Migrate {
        #[command(subcommand)]
        command: MigrateCommand,
    },
    /// Create topics that do not exist yet (auto-creation is off on the broker).
    Topics {
        /// Broker list; defaults to the profile's brokers.
        #[arg(long, env = "BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        /// Topic names.
        #[arg(required = true)]
        topics: Vec<String>,
    },
}

#[derive(Subcommand)]
enum MigrateCommand {
    /// The group's state, members, committed offsets and lag per partition.
    Status {
        #[command(flatten)]
        args: ConfigArgs,
        /// Consumer group.
        #[arg(long)]
        group: String,
        /// Topic (default: the topics the routes read in this group).
        #[arg(long)]
        topic: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    match cli.command {
        Command::Validate { args, deny_warnings, offline } => validate(&args, deny_warnings, offline),
        Command::Run(args) => run(&args),
        Command::Migrate { command: MigrateCommand::Status { args, group, topic, json } } => migrate_status(&args, &group, topic, json),
        Command::Check { args, json } => {
            let cfg = match load(&args) {
                Ok((cfg, _)) => cfg,
                Err(diags) => {
                    eprint!("{diags}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let report = vedgate::check::check(&cfg);
            if json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print!("{}", vedgate::check::render(&report));
            }
            if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Test { args, path } => route_tests(&args, path),
        Command::DryRun { args, topic, group, raw, pretty, key, input } => dry_run(&args, &topic, group.as_deref(), raw, pretty, key, &input),
        Command::Topics { brokers, partitions, topics } => {
            let rt = runtime();
            let list: Vec<(&str, i32)> = topics.iter().map(|t| (t.as_str(), partitions)).collect();
            match rt.block_on(vedgate::tools::create_topics(&brokers, &list)) {
                Ok(()) => {
                    println!("topics ready: {}", topics.join(", "));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: cannot create topics: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_tracing(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("VEDGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            // Threads or file descriptors exhausted: nothing can run; say so and exit.
            eprintln!("vedgate: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

fn load(args: &ConfigArgs) -> Result<(config::Config, config::Diagnostics), config::Diagnostics> {
    config::load(&LoadOptions {
        config_path: args.config.clone(),
        routes_path: args.routes.clone(),
        profile: args.profile.clone(),
        env: Env::from_process(),
    })
}

fn validate(args: &ConfigArgs, deny_warnings: bool, offline: bool) -> ExitCode {
    match load(args) {
        Ok((cfg, mut diags)) => {
            let files: Vec<&std::path::Path> = cfg.files.iter().map(|p| p.as_path()).collect();
            diags.0.extend(config::lint::lint(&files, &Env::from_process(), offline).0);
            print!("{diags}");
            let warnings = diags.warnings().count();
            let routes: usize = cfg.subscriptions.iter().map(|s| s.routes.len()).sum();
            if deny_warnings && warnings > 0 {
                eprintln!("{warnings} warning(s), denied");
                return ExitCode::from(EXIT_CONFIG);
            }
            println!(
                "ok: {} subscription(s), {} route(s), {} sink(s), profile {} ({} warning(s))",
                cfg.subscriptions.len(),
                routes,
                cfg.sinks.len(),
                cfg.kafka.profile,
                warnings
            );
            ExitCode::SUCCESS
        }
        Err(diags) => {
            print!("{diags}");
            eprintln!("{} error(s)", diags.errors().count());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn dry_run(args: &ConfigArgs, topic: &str, group: Option<&str>, raw: bool, pretty: bool, key: Option<String>, input: &std::path::Path) -> ExitCode {
    let cfg = match load(args) {
        Ok((cfg, _)) => cfg,
        Err(diags) => {
            eprint!("{diags}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if !cfg.subscriptions.iter().any(|s| s.topic == topic && group.is_none_or(|g| g == s.group)) {
        eprintln!("error: no subscription reads topic {topic:?}{}", group.map(|g| format!(" in group {g:?}")).unwrap_or_default());
        return ExitCode::from(EXIT_CONFIG);
    }
    let data = if input.as_os_str() == "-" {
        let mut b = Vec::new();
        if let Err(e) = std::io::Read::read_to_end(&mut std::io::stdin(), &mut b) {
            eprintln!("error: reading standard input: {e}");
            return ExitCode::FAILURE;
        }
        b
    } else {
        match std::fs::read(input) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: {}: {e}", input.display());
                return ExitCode::FAILURE;
            }
        }
    };
    // A single JSON document spread over several lines is one message.
    let one_document = data.iter().filter(|b| **b == b'\n').count() > 1 && serde_json::from_slice::<serde::de::IgnoredAny>(&data).is_ok();
    let messages: Vec<&[u8]> = if raw || one_document {
        vec![&data[..]]
    } else {
        data.split(|b| *b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)).collect()
    };
    for (i, m) in messages.iter().enumerate() {
        let meta = vedgate::shape::RecordMeta { topic: topic.into(), partition: 0, offset: i as i64, key: key.clone().map(String::into_bytes), timestamp_ms: None, traceparent: None };
        for v in vedgate::dryrun::evaluate(&cfg, topic, group, m, &meta) {
            let j = vedgate::dryrun::to_json(&v);
            let line = if pretty { serde_json::to_string_pretty(&j) } else { serde_json::to_string(&j) };
            println!("{}", line.unwrap_or_default());
        }
    }
    ExitCode::SUCCESS
}

fn route_tests(args: &ConfigArgs, path: Option<PathBuf>) -> ExitCode {
    let cfg = match load(args) {
        Ok((cfg, _)) => cfg,
        Err(diags) => {
            eprint!("{diags}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let base = if args.routes.is_dir() { args.routes.clone() } else { args.routes.parent().map(|p| p.to_path_buf()).unwrap_or_default() };
    let path = path.unwrap_or_else(|| base.join("tests"));
    let files = vedgate::routetest::case_files(&path);
    if files.is_empty() {
        eprintln!("error: no test case files in {}", path.display());
        return ExitCode::FAILURE;
    }
    let report = vedgate::routetest::run(&cfg, &files);
    for p in &report.passed_names {
        println!("ok     {p}");
    }
    for f in &report.failed {
        println!("FAILED {f}");
    }
    println!("{} passed, {} failed ({} file(s))", report.passed, report.failed.len(), files.len());
    if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn migrate_status(args: &ConfigArgs, group: &str, topic: Option<String>, json: bool) -> ExitCode {
    let cfg = match load(args) {
        Ok((cfg, _)) => cfg,
        Err(diags) => {
            eprint!("{diags}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let topics: Vec<String> = match topic {
        Some(t) => vec![t],
        None => cfg.subscriptions.iter().filter(|s| s.group == group).map(|s| s.topic.clone()).collect(),
    };
    if topics.is_empty() {
        eprintln!("error: no route reads in group {group:?}; name the topic with --topic");
        return ExitCode::from(EXIT_CONFIG);
    }
    let report = vedgate::check::check(&cfg);
    let Some(bootstrap) = report.brokers.iter().find(|b| b.reachable).map(|b| b.address.clone()) else {
        eprintln!("error: no broker is reachable: {}", report.problems.join("; "));
        return ExitCode::FAILURE;
    };
    let mut out = Vec::new();
    for t in &topics {
        let parts = report.topics.iter().find(|x| &x.topic == t).and_then(|x| x.partitions).unwrap_or_else(|| vedgate::check::partitions(&cfg, &bootstrap, t));
        out.push(vedgate::check::group_status(&cfg, &bootstrap, group, t, parts));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        for g in &out {
            print!("{}", vedgate::check::render_group(g));
            let others: Vec<_> = g.members.iter().filter(|m| !m.client_id.starts_with("vedgate-")).collect();
            if !others.is_empty() {
                println!("WARNING {} member(s) other than vedgate are still active in {}: stop them before vedgate takes the group over", others.len(), g.group);
            }
        }
    }
    ExitCode::SUCCESS
}

fn run(args: &ConfigArgs) -> ExitCode {
    let opts = LoadOptions { config_path: args.config.clone(), routes_path: args.routes.clone(), profile: args.profile.clone(), env: Env::from_process() };
    let (cfg, diags) = match load(args) {
        Ok(x) => x,
        Err(diags) => {
            eprint!("{diags}");
            eprintln!("refusing to start: {} error(s) in the configuration", diags.errors().count());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for w in diags.warnings() {
        tracing::warn!("{w}");
    }
    let grace = cfg.settings.shutdown_grace;
    let rt = runtime();
    let result = rt.block_on(async move {
        let shutdown = Shutdown::default();
        let s = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!(grace_ms = grace.as_millis() as u64, "shutdown requested: no new messages; finishing in-flight deliveries");
            s.stop.cancel();
            tokio::time::sleep(grace).await;
            tracing::warn!("grace period ran out; cutting remaining deliveries short");
            s.abort.cancel();
            // Last resort: offsets are only ever stored for finished messages,
            // so leaving now loses nothing; it only means redelivery.
            tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
            tracing::warn!("shutdown did not finish in time; exiting (unfinished messages will be redelivered)");
            std::process::exit(0);
        });
        vedgate::gateway::run(cfg, Arc::new(vedgate::metrics::Metrics::default()), shutdown, Some(opts)).await
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            // Without signal handlers the gateway could not stop gracefully: stop now instead.
            tracing::error!(error = %e, "cannot install the SIGTERM/SIGINT handlers; stopping");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
