//! Operating and migrating: check, migrate status, lag metrics, group take-over.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::harness::*;

fn routes(dir: &Path, topic: &str, group: &str, url: &str) -> std::path::PathBuf {
    id_routes(dir, topic, group, url, "", "")
}

fn msgs(topic: &str, n: usize) -> Vec<vedgate::tools::traffic::Record> {
    id_msgs(topic, 0..n, |i| format!("k{i}"))
}

fn vedgate_out(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vedgate")).args(args).env("BROKERS", brokers()).output().unwrap();
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_lists_lag_as_the_broker_has_it_and_fails_on_a_missing_topic() {
    let topic = unique("check");
    let group = unique("g-check");
    create_topic(&topic, 3).await;
    produce(&msgs(&topic, 30)).await;
    // The group has committed offset 1 on partition 0 and nothing elsewhere.
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers()).set("group.id", &group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(1)).unwrap();
    commit_sync(&c, &tpl);
    let dir = tempfile::tempdir().unwrap();
    let config = test_gateway_toml(dir.path());
    let r = routes(dir.path(), &topic, &group, "http://127.0.0.1:1");
    let check = || {
        let (code, out) = vedgate_out(&["check", "--config", config.to_str().unwrap(), "--routes", r.to_str().unwrap(), "--json"]);
        let report: Result<serde_json::Value, String> = match out.rfind('}') {
            Some(end) => serde_json::from_str(&out[..end + 1]).map_err(|e| e.to_string()),
            None => Err("no JSON document".into()),
        };
        (code, out, report)
    };
    // A loaded broker may not show the fresh commit to check's own client at
    // once (or answer it with a transient error): ask again, 500 ms apart.
    let (mut code, mut out, mut report) = check();
    for _ in 1..10 {
        if matches!(&report, Ok(rep) if rep["groups"][0]["partitions"][0]["committed"] == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        (code, out, report) = check();
    }
    let report = report.unwrap_or_else(|e| panic!("{e}: {out}"));
    let end = end_offsets(&topic, 3);
    let g = &report["groups"][0];
    assert_eq!(g["partitions"][0]["committed"], 1);
    assert_eq!(g["partitions"][0]["lag"], end[0] - 1);
    assert_eq!(g["partitions"][1]["lag"], serde_json::Value::Null, "no committed offset: no made-up lag");
    assert_eq!(report["topics"][0]["partitions"], 3);
    assert_eq!(code, 0, "{out}");

    let missing = routes(&dir.path().join("m"), &unique("missing"), &group, "http://127.0.0.1:1");
    let (code, out) = vedgate_out(&["check", "--config", config.to_str().unwrap(), "--routes", missing.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not exist"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_resumes_exactly_where_the_go_service_committed() {
    let topic = unique("takeover");
    let group = unique("g-takeover");
    create_topic(&topic, 3).await;
    produce(&msgs(&topic, 120)).await;

    // The stand-in for a Go service: consumes about half in group G, commits, leaves.
    let standin_ids = tokio::task::spawn_blocking({
        let (topic, group) = (topic.clone(), group.clone());
        move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", brokers())
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .create()
                .unwrap();
            c.subscribe(&[&topic]).unwrap();
            let mut ids = Vec::new();
            // The next offset per partition, as a Go service commits it.
            let mut next: HashMap<i32, i64> = HashMap::new();
            let start = std::time::Instant::now();
            while ids.len() < 55 && start.elapsed() < Duration::from_secs(30) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                    let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                    ids.push(v["id"].as_str().unwrap().to_string());
                    next.insert(m.partition(), m.offset() + 1);
                }
            }
            let mut tpl = TopicPartitionList::new();
            for (p, o) in next {
                tpl.add_partition_offset(&topic, p, Offset::Offset(o)).unwrap();
            }
            commit_sync(&c, &tpl);
            c.unsubscribe();
            ids
        }
    })
    .await
    .unwrap();
    let handed_over = committed(&group, &topic, 3);

    let dir = tempfile::tempdir().unwrap();
    let config = test_gateway_toml(dir.path());
    let (status_code, status) = vedgate_out(&["migrate", "status", "--config", config.to_str().unwrap(), "--routes", routes(dir.path(), &topic, &group, "http://127.0.0.1:1").to_str().unwrap(), "--group", &group]);
    assert_eq!(status_code, 0, "{status}");
    assert!(status.contains("committed"), "{status}");

    let rx = Receiver::start().await;
    let r = routes(dir.path(), &topic, &group, &rx.url);
    let gw = Gateway::start(&config, &r, base_env());
    let want = 120 - standin_ids.len();
    wait_until("the rest delivered", Duration::from_secs(60), || rx.count() >= want).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.stop().await;

    let got = rx.requests();
    let vedgate_ids: Vec<String> = got.iter().map(|r| r.path.trim_start_matches("/in/").to_string()).collect();
    let unique_ids: HashSet<&String> = vedgate_ids.iter().collect();
    assert_eq!(unique_ids.len(), vedgate_ids.len(), "none twice");
    let standin: HashSet<&String> = standin_ids.iter().collect();
    assert!(unique_ids.is_disjoint(&standin), "nothing the Go service handled is delivered again");
    assert_eq!(unique_ids.len() + standin.len(), 120, "the union is the whole topic");
    // vedgate's first offset per partition is exactly the handed-over committed offset.
    let mut first: HashMap<i32, i64> = HashMap::new();
    for r in &got {
        let p: i32 = r.header("x-kafka-partition").unwrap().parse().unwrap();
        let o: i64 = r.header("x-kafka-offset").unwrap().parse().unwrap();
        let e = first.entry(p).or_insert(o);
        *e = (*e).min(o);
    }
    let end = end_offsets(&topic, 3);
    for p in 0..3 {
        let start = if handed_over[p as usize] < 0 { 0 } else { handed_over[p as usize] };
        if start < end[p as usize] {
            assert_eq!(first.get(&p), Some(&start), "partition {p}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_lag_per_partition_and_counts_per_route() {
    let topic = unique("metrics");
    let group = unique("g-metrics");
    create_topic(&topic, 3).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let r = routes(dir.path(), &topic, &group, &rx.url);
    let mut records = msgs(&topic, 40);
    records.push(record(&topic, None, br#"{"other": 1}"#));
    produce(&records).await;
    let gw = Gateway::start(&test_gateway_toml(dir.path()), &r, base_env());
    wait_until("delivered", Duration::from_secs(30), || rx.count() >= 40).await;
    let lag_line = |p: i32| format!("vedgate_consumer_lag{{group=\"{group}\",topic=\"{topic}\",partition=\"{p}\"}} 0");
    wait_until("lag 0 on every partition", Duration::from_secs(20), || {
        let m = gw.metrics.render();
        (0..3).all(|p| m.contains(&lag_line(p)))
    })
    .await;
    let m = gw.metrics.render();
    assert!(m.contains(&format!("vedgate_messages_total{{group=\"{group}\",route=\"all\",outcome=\"delivered\"}} 40")), "{m}");
    assert!(m.contains(&format!("vedgate_messages_total{{group=\"{group}\",route=\"_unmatched\",outcome=\"skipped\"}} 1")), "{m}");
    assert!(m.contains("vedgate_sink_latency_seconds_bucket"), "{m}");
    assert!(m.contains("vedgate_broker_up{"), "{m}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_is_down_does_not_slow_the_primary_and_observe_mode_delivers_nowhere() {
    let topic = unique("mirror");
    let group = unique("g-mirror");
    create_topic(&topic, 3).await;
    let primary = Receiver::start().await;
    let hanging = Receiver::start().await;
    hanging.set(Answer::StallOn("\"id\"".into()));
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes");
    std::fs::create_dir_all(&routes).unwrap();
    std::fs::write(
        routes.join("r.toml"),
        format!(
            r#"[[subscription]]
name = "s"
topic = "{topic}"
group = "{group}"

[sink.go-service]
type = "http"
url = "{}"

[sink.new-target]
type = "http"
url = "http://127.0.0.1:9"

[sink.hanging-target]
type = "http"
url = "{}"
timeout_ms = 60000

[[route]]
name = "watch-only"
subscription = "s"
when = [{{ path = "$.kind", equals = "watch" }}]
sink = "go-service"
mode = "observe"
http = {{ path = "/never" }}

[[route]]
name = "slow-mirror"
subscription = "s"
when = [{{ path = "$.kind", equals = "slow" }}]
sink = "go-service"
mirror = "hanging-target"
http = {{ path = "/in/{{$.id}}" }}

[[route]]
name = "compare"
subscription = "s"
when = [{{ path = "$.id", exists = true }}]
sink = "go-service"
mirror = "new-target"
http = {{ path = "/in/{{$.id}}" }}
"#,
            primary.url, hanging.url
        ),
    )
    .unwrap();
    // The mirrors of a subscription share 64 slots. The 200 copies to the
    // down mirror go first and are all counted before the 100 to the hanging
    // one are produced: otherwise hanging copies, interleaved across
    // partitions, may hold every slot and some `compare` copies get dropped.
    let m_records: Vec<_> = (0..200).map(|i| record(&topic, Some(&format!("k{i}")), format!(r#"{{"id": "m{i}"}}"#).as_bytes())).collect();
    let mut s_records: Vec<_> = (0..100).map(|i| record(&topic, Some(&format!("s{i}")), format!(r#"{{"id": "s{i}", "kind": "slow"}}"#).as_bytes())).collect();
    s_records.extend((0..20).map(|i| record(&topic, None, format!(r#"{{"id": "w{i}", "kind": "watch"}}"#).as_bytes())));
    produce(&m_records).await;
    let gw = Gateway::start(&test_gateway_toml(dir.path()), &routes, base_env());
    let m = |route: &str, p: &str, mirror: &str| gw.metrics.get(vedgate::metrics::MIRROR_TOTAL, &[("route", route), ("primary", p), ("mirror", mirror)]);
    wait_until("primary deliveries with the down mirror", Duration::from_secs(60), || primary.count() >= 200).await;
    wait_until("down mirror outcomes counted", Duration::from_secs(20), || m("compare", "delivered", "retryable_error") == 200).await;
    produce(&s_records).await;
    wait_until("primary deliveries with the hanging mirror", Duration::from_secs(30), || primary.count() >= 300).await;
    // Time between the first and the last primary arrival of each phase
    // (start-up and the pause between the phases left out). Waiting for the
    // hanging mirror (30 s per copy) would take far longer.
    let took = primary.span(|r| r.path.starts_with("/in/m")) + primary.span(|r| r.path.starts_with("/in/s"));
    let end = end_offsets(&topic, 3);
    wait_until("committed to the end", Duration::from_secs(20), || committed(&group, &topic, 3) == end).await;
    assert!(took < Duration::from_secs(15), "primary slowed by its mirror: {took:?}");
    assert!(primary.requests().iter().all(|r| r.path != "/never"), "observe mode delivers nowhere");
    assert_eq!(primary.count(), 300);
    assert_eq!(m("compare", "delivered", "retryable_error"), 200);
    assert_eq!(gw.metrics.get(vedgate::metrics::MESSAGES_TOTAL, &[("group", &group), ("route", "watch-only"), ("outcome", "skipped")]), 20);
    wait_until("dropped hanging-mirror copies counted", Duration::from_secs(10), || m("slow-mirror", "delivered", "dropped") >= 30).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer_and_never_show_secrets() {
    let topic = unique("admin");
    let group = unique("g-admin");
    create_topic(&topic, 1).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes");
    std::fs::create_dir_all(&routes).unwrap();
    std::fs::write(
        routes.join("r.toml"),
        format!(
            "[[subscription]]\nname = \"s\"\ntopic = \"{topic}\"\ngroup = \"{group}\"\n\n[sink.out]\ntype = \"http\"\nurl = \"{}\"\nheaders = {{ \"Authorization\" = \"Bearer ${{SINK_TOKEN}}\" }}\n\n[[route]]\nname = \"all\"\nsubscription = \"s\"\nwhen = [{{ path = \"$.id\", exists = true }}]\nsink = \"out\"\nhttp = {{ path = \"/in\" }}\n",
            rx.url
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let admin = format!("127.0.0.1:{port}");
    let secret = "s3cr3t-sink-token-value";
    let log = dir.path().join("gw.log");
    let config = test_gateway_toml(dir.path());
    let mut child = spawn_binary_logged(&config, &routes, &[("VEDGATE_ADMIN_ADDR", admin.clone()), ("SINK_TOKEN", secret.into()), ("VEDGATE_ADMIN_TOKEN", "admintoken".into()), ("VEDGATE_LOG", "debug".into())], &log);
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let (http, url) = (http.clone(), format!("http://{admin}{path}"));
        async move { http.get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    wait_until_async("healthz", Duration::from_secs(20), || get("/healthz")).await;
    produce(&[record(&topic, None, br#"{"id": 1}"#)]).await;
    wait_until("delivered", Duration::from_secs(30), || rx.count() >= 1).await;
    assert_eq!(rx.requests()[0].header("authorization"), Some(&*format!("Bearer {secret}")), "the sink gets the real header");
    wait_until_async("readyz", Duration::from_secs(20), || get("/readyz")).await;
    let metrics = http.get(format!("http://{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("vedgate_messages_total{{group=\"{group}\",route=\"all\",outcome=\"delivered\"}} 1")), "{metrics}");
    let routes_json = http.get(format!("http://{admin}/routes")).send().await.unwrap().text().await.unwrap();
    assert!(routes_json.contains("config_hash") && routes_json.contains("\"all\""), "{routes_json}");
    assert_eq!(http.post(format!("http://{admin}/reload")).send().await.unwrap().status().as_u16(), 401);
    assert_eq!(http.post(format!("http://{admin}/reload")).bearer_auth("admintoken").send().await.unwrap().status().as_u16(), 202);
    // The dry run of the same config redacts the credential too.
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"id\": 2}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vedgate"))
        .args(["dry-run", "--config", config.to_str().unwrap(), "--routes", routes.to_str().unwrap(), "--topic", &topic, input.to_str().unwrap()])
        .env("SINK_TOKEN", secret)
        .output()
        .unwrap();
    let dry = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(dry.contains("[redacted]") && dry.contains("\"route\":\"all\""), "{dry}");
    let (status, _) = terminate(&mut child).await;
    assert!(status.success());
    let logs = std::fs::read_to_string(&log).unwrap();
    for (what, text) in [("log", &logs), ("/routes", &routes_json), ("/metrics", &metrics), ("dry-run", &dry)] {
        assert!(!text.contains(secret), "{what} shows the secret");
    }
}

async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let start = std::time::Instant::now();
    while f().await != 200 {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_rate_limit_spreads_deliveries_over_time() {
    let topic = unique("ratelimit");
    let group = unique("g-ratelimit");
    create_topic(&topic, 3).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = id_routes(dir.path(), &topic, &group, &rx.url, "", "");
    let file = routes.join("test.toml");
    let text = std::fs::read_to_string(&file).unwrap().replace("timeout_ms = 60000", "timeout_ms = 60000\nrate_limit_per_s = 20\nmax_in_flight = 2");
    std::fs::write(&file, text).unwrap();
    produce(&msgs(&topic, 60)).await;
    let gw = Gateway::start(&test_gateway_toml(dir.path()), &routes, base_env());
    wait_until("all delivered", Duration::from_secs(60), || rx.count() >= 60).await;
    // From the first request's arrival to the last one's (not when the test
    // noticed them): 20 at once (the burst), the other 40 at 20 per second.
    let took = rx.span(|_| true);
    assert!(took >= Duration::from_millis(1700), "60 requests in {took:?} despite 20/s");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_w3c_traceparent_header_is_passed_on_to_http_sinks() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;
    let topic = unique("trace");
    let group = unique("g-trace");
    create_topic(&topic, 1).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = id_routes(dir.path(), &topic, &group, &rx.url, "", "");
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let p = vedgate::tools::producer(&brokers()).unwrap();
    let headers = OwnedHeaders::new().insert(Header { key: "traceparent", value: Some(tp) });
    p.send(FutureRecord::<str, str>::to(&topic).payload(r#"{"id": "t1"}"#).headers(headers), Duration::from_secs(10)).await.unwrap();
    p.send(FutureRecord::<str, str>::to(&topic).payload(r#"{"id": "t2"}"#), Duration::from_secs(10)).await.unwrap();
    let gw = Gateway::start(&test_gateway_toml(dir.path()), &routes, base_env());
    wait_until("delivered", Duration::from_secs(30), || rx.count() >= 2).await;
    let got = rx.requests();
    assert_eq!(got[0].header("traceparent"), Some(tp));
    assert_eq!(got[1].header("traceparent"), None);
    gw.stop().await;
}
