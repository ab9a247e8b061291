//! Shutdown stays bounded: SIGTERM exits 0 within 10 s whatever is down or hanging.

use std::path::Path;
use std::time::Duration;

use crate::harness::*;

fn route_file(dir: &Path, topic: &str, group: &str, sink: &str, shape: &str) -> std::path::PathBuf {
    let routes = dir.join("routes");
    std::fs::create_dir_all(&routes).unwrap();
    std::fs::write(
        routes.join("r.toml"),
        format!(
            "[[subscription]]\nname = \"s\"\ntopic = \"{topic}\"\ngroup = \"{group}\"\n\n{sink}\n\n[[route]]\nname = \"r\"\nsubscription = \"s\"\nwhen = [{{ path = \"$.id\", exists = true }}]\nsink = \"out\"\n{shape}\n"
        ),
    )
    .unwrap();
    routes
}

async fn assert_bounded_stop(child: &mut std::process::Child, log: &Path) {
    let (status, took) = terminate(child).await;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(status.success(), "exit {status:?}\n{text}");
    assert!(took < Duration::from_secs(10), "took {took:?}\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_hanging_webhook_exits_within_ten_seconds_and_commits_nothing_unfinished() {
    let topic = unique("hang");
    let group = unique("g-hang");
    create_topic(&topic, 1).await;
    let rx = Receiver::start().await;
    rx.set(Answer::StallOn("\"id\"".into()));
    let dir = tempfile::tempdir().unwrap();
    let routes = route_file(dir.path(), &topic, &group, &format!("[sink.out]\ntype = \"http\"\nurl = \"{}\"\ntimeout_ms = 600000", rx.url), "http = { path = \"/x\" }");
    produce(&[record(&topic, None, br#"{"id": 1}"#), record(&topic, None, br#"{"id": 2}"#)]).await;
    let log = dir.path().join("gw.log");
    let mut child = spawn_binary_logged(&test_gateway_toml(dir.path()), &routes, &[], &log);
    wait_until("request hanging", Duration::from_secs(30), || rx.count() >= 1).await;
    assert_bounded_stop(&mut child, &log).await;
    assert!(committed(&group, &topic, 1)[0] <= 0, "the hanging message was not committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_database_down_exits_within_ten_seconds() {
    let topic = unique("dbdown");
    let group = unique("g-dbdown");
    create_topic(&topic, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = route_file(
        dir.path(),
        &topic,
        &group,
        "[sink.out]\ntype = \"sql\"\nurl = \"postgres://postgres:postgres@127.0.0.1:5999/ved\"",
        "sql = { statement = \"SELECT :id::text\", params = { id = \"$.id\" } }",
    );
    produce(&[record(&topic, None, br#"{"id": 1}"#)]).await;
    let log = dir.path().join("gw.log");
    let mut child = spawn_binary_logged(&test_gateway_toml(dir.path()), &routes, &[], &log);
    wait_until("a failed attempt", Duration::from_secs(30), || std::fs::read_to_string(&log).unwrap_or_default().contains("delivery failed; retrying")).await;
    assert_bounded_stop(&mut child, &log).await;
    assert!(committed(&group, &topic, 1)[0] <= 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_is_waited_for_and_sigterm_still_exits_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let routes = route_file(dir.path(), "t", &unique("g-nobroker"), "[sink.out]\ntype = \"blackhole\"", "");
    let log = dir.path().join("gw.log");
    let mut child = spawn_binary_logged(&test_gateway_toml(dir.path()), &routes, &[("BROKERS", "127.0.0.1:9".into())], &log);
    wait_until("a clear log line about the broker", Duration::from_secs(30), || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        t.contains("Kafka consumer error; still trying") || t.contains("brokers are down")
    })
    .await;
    assert!(child.try_wait().unwrap().is_none(), "still running, not crashed");
    assert_bounded_stop(&mut child, &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_after_start_is_picked_up() {
    let topic = unique("late");
    let group = unique("g-late");
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = route_file(dir.path(), &topic, &group, &format!("[sink.out]\ntype = \"http\"\nurl = \"{}\"", rx.url), "http = { path = \"/x\" }");
    let log = dir.path().join("gw.log");
    let mut child = spawn_binary_logged(&test_gateway_toml(dir.path()), &routes, &[], &log);
    wait_until("the missing topic is reported", Duration::from_secs(30), || std::fs::read_to_string(&log).unwrap_or_default().contains("does not exist yet")).await;
    create_topic(&topic, 3).await;
    produce(&[record(&topic, Some("a"), br#"{"id": 1}"#)]).await;
    wait_until("delivered after the topic appeared", Duration::from_secs(60), || rx.count() >= 1).await;
    assert_bounded_stop(&mut child, &log).await;
}
