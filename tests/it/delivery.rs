//! At-least-once delivery: retries, ordering, graceful restart, crash.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::*;

fn http_routes(dir: &Path, topic: &str, group: &str, url: &str) -> std::path::PathBuf {
    id_routes(dir, topic, group, url, "", "")
}

fn msgs(topic: &str, from: usize, to: usize) -> Vec<vedgate::tools::traffic::Record> {
    id_msgs(topic, from..to, |i| format!("k{}", i % 7))
}

fn ids(r: &Receiver) -> Vec<String> {
    received_ids(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_are_retried_in_partition_order() {
    let topic = unique("retry");
    let group = unique("g-retry");
    create_topic(&topic, 1).await;
    let rx = Receiver::start().await;
    rx.set(Answer::FailFirst("\"m1\"".into(), 503, 3));
    let dir = tempfile::tempdir().unwrap();
    let routes = http_routes(dir.path(), &topic, &group, &rx.url);
    produce(&msgs(&topic, 0, 4)).await;
    let gw = Gateway::start(&test_gateway_toml(dir.path()), &routes, base_env());
    wait_until("all delivered", Duration::from_secs(30), || ids(&rx).contains(&"m3".to_string())).await;
    // m1 was tried 4 times (3 x 503, then 200) and m2 waited for it.
    assert_eq!(ids(&rx), vec!["m0", "m1", "m1", "m1", "m1", "m2", "m3"]);
    wait_until("committed", Duration::from_secs(10), || committed(&group, &topic, 1) == vec![4]).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_exits_zero_and_restart_redelivers_nothing() {
    let topic = unique("restart");
    let group = unique("g-restart");
    create_topic(&topic, 3).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = http_routes(dir.path(), &topic, &group, &rx.url);
    let config = test_gateway_toml(dir.path());
    produce(&msgs(&topic, 0, 300)).await;

    let mut child = spawn_binary(&config, &routes, &[]);
    wait_until("first batch", Duration::from_secs(60), || rx.count() >= 300).await;
    // Let the stored offsets be committed by the periodic commit or the final one.
    let t0 = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "SIGTERM: gateway did not exit within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(committed(&group, &topic, 3), end_offsets(&topic, 3), "everything delivered is committed at stop");

    produce(&msgs(&topic, 300, 500)).await;
    let mut child = spawn_binary(&config, &routes, &[]);
    wait_until("second batch", Duration::from_secs(60), || rx.count() >= 500).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, _) = terminate(&mut child).await;
    assert!(status.success(), "exit status {status:?}");

    let got = ids(&rx);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &got {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    assert_eq!(counts.len(), 500, "every message delivered");
    assert!(counts.values().all(|c| *c == 1), "nothing delivered twice across a graceful restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_stalled_delivery_redelivers_it_after_restart() {
    let topic = unique("kill");
    let group = unique("g-kill");
    create_topic(&topic, 1).await;
    let rx = Receiver::start().await;
    rx.set(Answer::StallOn("\"m2\"".into()));
    let dir = tempfile::tempdir().unwrap();
    let routes = http_routes(dir.path(), &topic, &group, &rx.url);
    let config = test_gateway_toml(dir.path());
    produce(&msgs(&topic, 0, 5)).await;

    let mut child = spawn_binary(&config, &routes, &[]);
    wait_until("m2 reaches the stalled receiver", Duration::from_secs(60), || ids(&rx).contains(&"m2".to_string())).await;
    wait_until("m0 and m1 committed", Duration::from_secs(15), || committed(&group, &topic, 1) == vec![2]).await;
    // Several commit intervals pass while m2 hangs: the offset stays there.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(committed(&group, &topic, 1), vec![2], "offset must not pass the stalled message");
    child.kill().unwrap();
    child.wait().unwrap();

    rx.set(Answer::Ok);
    let mut child = spawn_binary(&config, &routes, &[]);
    wait_until("redelivery after restart", Duration::from_secs(60), || ids(&rx).contains(&"m4".to_string())).await;
    assert_eq!(ids(&rx), vec!["m0", "m1", "m2", "m2", "m3", "m4"]);
    wait_until("committed", Duration::from_secs(10), || committed(&group, &topic, 1) == vec![5]).await;
    let (status, _) = terminate(&mut child).await;
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalances_lose_nothing_and_committed_offsets_never_move_backwards() {
    let topic = unique("rebalance");
    let group = unique("g-rebalance");
    create_topic(&topic, 6).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = http_routes(dir.path(), &topic, &group, &rx.url);
    let config = test_gateway_toml(dir.path());

    // Watch the committed offsets all along: they must only grow.
    let stop_watch = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (t, g, sw) = (topic.clone(), group.clone(), stop_watch.clone());
    let watcher = tokio::task::spawn_blocking(move || {
        let mut last = vec![-1001i64; 6];
        while !sw.load(std::sync::atomic::Ordering::Relaxed) {
            let now = committed(&g, &t, 6);
            for p in 0..6 {
                assert!(now[p] >= last[p], "partition {p}: committed offset moved back from {} to {}", last[p], now[p]);
            }
            last = now;
            std::thread::sleep(Duration::from_millis(100));
        }
    });

    produce(&msgs(&topic, 0, 300)).await;
    let a = Gateway::start(&config, &routes, base_env());
    wait_until("some delivered by A", Duration::from_secs(30), || rx.count() >= 50).await;
    let b = Gateway::start(&config, &routes, base_env());
    produce(&msgs(&topic, 300, 600)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.stop().await; // revokes A's partitions; B takes them over at the committed offsets
    produce(&msgs(&topic, 600, 700)).await;
    wait_until("all 700 delivered", Duration::from_secs(60), || {
        let got: std::collections::HashSet<String> = ids(&rx).into_iter().collect();
        got.len() == 700
    })
    .await;
    let end = end_offsets(&topic, 6);
    wait_until("committed to the end", Duration::from_secs(20), || committed(&group, &topic, 6) == end).await;
    b.stop().await;
    stop_watch.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.await.unwrap();
    let dups = rx.count() - 700;
    assert!(dups <= 50, "{dups} redeliveries across two rebalances");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_ordered_routes_deliver_other_keys_while_one_key_retries() {
    let topic = unique("keyorder");
    let group = unique("g-keyorder");
    create_topic(&topic, 1).await;
    let rx = Receiver::start().await;
    rx.set(Answer::FailFirst("\"a1\"".into(), 503, 3));
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes");
    std::fs::create_dir_all(&routes).unwrap();
    std::fs::write(
        routes.join("r.toml"),
        format!(
            "[[subscription]]\nname = \"s\"\ntopic = \"{topic}\"\ngroup = \"{group}\"\n\n[sink.r]\ntype = \"http\"\nurl = \"{}\"\n\n[[route]]\nname = \"all\"\nsubscription = \"s\"\nwhen = [{{ path = \"$.id\", exists = true }}]\nsink = \"r\"\norder_key = \"kafka.key\"\nretry = {{ initial_delay_ms = 300, max_delay_ms = 600 }}\nhttp = {{ path = \"/in/{{$.id}}\" }}\n",
            rx.url
        ),
    )
    .unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "[defaults]\nchannels = 16\ncommit_interval_ms = 200\nadmin_addr = \"\"\n[profile.local]\nbrokers = [\"127.0.0.1:9092\"]\n").unwrap();
    let mut records = vec![record(&topic, Some("A"), br#"{"id": "a1"}"#)];
    for i in 0..10 {
        records.push(record(&topic, Some(&format!("B{i}")), format!(r#"{{"id": "b{i}"}}"#).as_bytes()));
    }
    records.push(record(&topic, Some("A"), br#"{"id": "a2"}"#));
    produce(&records).await;
    let gw = Gateway::start(&config, &routes, base_env());
    // Every b once at least (a redelivery is allowed under at-least-once).
    let distinct_b = |got: &[String]| got.iter().filter(|i| i.starts_with('b')).collect::<std::collections::HashSet<_>>().len();
    wait_until("all delivered", Duration::from_secs(30), || {
        let got = ids(&rx);
        got.contains(&"a2".to_string()) && distinct_b(&got) == 10
    })
    .await;
    let got = ids(&rx);
    let a1_done = got.iter().rposition(|i| i == "a1").unwrap();
    let a2 = got.iter().position(|i| i == "a2").unwrap();
    assert!(a2 > a1_done, "same key stays in order: {got:?}");
    let before = distinct_b(&got[..a1_done]);
    assert!(before >= 5, "other keys did not wait for the retrying key: {got:?}");
    wait_until("committed", Duration::from_secs(10), || committed(&group, &topic, 1) == vec![12]).await;
    gw.stop().await;
}
