//! Hot reload: valid changes apply from the next message, invalid ones change
//! nothing, and no message is lost or delivered twice across reloads.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::*;

fn write_routes(dir: &Path, topic: &str, group: &str, url: &str, tag: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(".r.toml.tmp");
    std::fs::write(
        &tmp,
        format!(
            "[[subscription]]\nname = \"s\"\ntopic = \"{topic}\"\ngroup = \"{group}\"\n\n[sink.out]\ntype = \"http\"\nurl = \"{url}\"\nheaders = {{ \"X-Config\" = \"{tag}\" }}\n\n[[route]]\nname = \"all\"\nsubscription = \"s\"\nwhen = [{{ path = \"$.id\", exists = true }}]\nsink = \"out\"\nhttp = {{ path = \"/in/{{$.id}}\" }}\n"
        ),
    )
    .unwrap();
    // Atomic replace, as editors and ConfigMap updates do.
    std::fs::rename(tmp, dir.join("r.toml")).unwrap();
}

fn ids(rs: &[&Receiver]) -> Vec<String> {
    rs.iter().flat_map(|r| r.requests()).map(|x| x.path.trim_start_matches("/in/").to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_url_applies_within_seconds_and_a_broken_file_changes_nothing() {
    let topic = unique("reload-url");
    let group = unique("g-reload-url");
    create_topic(&topic, 3).await;
    let (a, b) = (Receiver::start().await, Receiver::start().await);
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes");
    write_routes(&routes, &topic, &group, &a.url, "a");
    let gw = Gateway::start_with(&test_gateway_toml(dir.path()), &routes, base_env(), true);

    produce(&(0..100).map(|i| record(&topic, Some(&format!("k{i}")), format!(r#"{{"id": "a{i}"}}"#).as_bytes())).collect::<Vec<_>>()).await;
    wait_until("first batch at A", Duration::from_secs(30), || a.count() >= 100).await;

    write_routes(&routes, &topic, &group, &b.url, "b");
    let switched = Instant::now();
    // Keep producing until a message reaches B: that is the switch time.
    let producer = vedgate::tools::producer(&brokers()).unwrap();
    let mut i = 0;
    while b.count() == 0 {
        vedgate::tools::produce_all(&producer, &[record(&topic, Some("k"), format!(r#"{{"id": "p{i}"}}"#).as_bytes())], 1).await.expect("produce");
        i += 1;
        assert!(switched.elapsed() < Duration::from_secs(15), "new URL not in use 15 s after the edit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A broken file: logged, counted, and the old config keeps delivering.
    std::fs::write(routes.join("r.toml"), "[[subscription]]\nname = \"s\"\ntopic = \"x\"\ngroup = \"y\"\nbogus = 1\n").unwrap();
    wait_until("reload error counted", Duration::from_secs(10), || gw.metrics.get(vedgate::metrics::CONFIG_RELOADS_TOTAL, &[("result", "error")]) >= 1).await;
    produce(&(0..50).map(|i| record(&topic, Some(&format!("k{i}")), format!(r#"{{"id": "c{i}"}}"#).as_bytes())).collect::<Vec<_>>()).await;
    let total = 100 + i + 50;
    wait_until("everything delivered", Duration::from_secs(30), || a.count() + b.count() >= total).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = ids(&[&a, &b]);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &all {
        *counts.entry(id).or_default() += 1;
    }
    assert_eq!(counts.len(), total, "none lost");
    assert!(counts.values().all(|c| *c == 1), "none twice");
    assert!(b.requests().iter().all(|r| r.header("x-config") == Some("b")));
    assert!(b.requests().iter().any(|r| r.path.starts_with("/in/c")), "delivered on the old config after the broken edit");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_during_fifty_thousand_messages_lose_and_duplicate_nothing() {
    let topic = unique("reload-many");
    let group = unique("g-reload-many");
    create_topic(&topic, 3).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes");
    write_routes(&routes, &topic, &group, &rx.url, "v0");
    let n = 50_000;
    let records: Vec<_> = (0..n).map(|i| record(&topic, Some(&format!("k{}", i % 97)), format!(r#"{{"id": "{i}"}}"#).as_bytes())).collect();
    produce(&records).await;
    let gw = Gateway::start_with(&test_gateway_toml(dir.path()), &routes, base_env(), true);
    let mut reloads = 0;
    while reloads < 20 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        reloads += 1;
        write_routes(&routes, &topic, &group, &rx.url, &format!("v{reloads}-{}", "x".repeat(reloads)));
        wait_until("reload applied", Duration::from_secs(15), || gw.metrics.get(vedgate::metrics::CONFIG_RELOADS_TOTAL, &[("result", "success")]) >= reloads as u64).await;
    }
    wait_until("all delivered", Duration::from_secs(180), || rx.count() >= n).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = rx.requests();
    let tags: std::collections::HashSet<String> = got.iter().filter_map(|r| r.header("x-config").map(str::to_string)).collect();
    let mut seen = vec![0u8; n];
    for r in &got {
        let i: usize = r.path.trim_start_matches("/in/").parse().unwrap();
        seen[i] += 1;
    }
    assert!(seen.iter().all(|c| *c == 1), "lost: {}, twice: {}", seen.iter().filter(|c| **c == 0).count(), seen.iter().filter(|c| **c > 1).count());
    assert!(tags.len() >= 2, "the reloads took effect mid-stream: {tags:?}");
    let end = end_offsets(&topic, 3);
    wait_until("committed to the end", Duration::from_secs(20), || committed(&group, &topic, 3) == end).await;
    gw.stop().await;
}
