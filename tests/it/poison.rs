//! Poison input and undeliverable messages: each has a defined outcome, the
//! gateway keeps running and the partition keeps moving.

use std::path::Path;
use std::time::Duration;

use crate::harness::*;

fn routes(dir: &Path, topic: &str, group: &str, url: &str, extra_sub: &str, extra_route: &str) -> std::path::PathBuf {
    id_routes(dir, topic, group, url, extra_sub, extra_route)
}

fn ids(r: &Receiver) -> Vec<String> {
    received_ids(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_the_partition_moves_on() {
    let topic = unique("poison");
    let group = unique("g-poison");
    create_topic(&topic, 1).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = routes(dir.path(), &topic, &group, &rx.url, "", "");
    let big = format!(r#"{{"id": "big", "pad": "{}"}}"#, "x".repeat(600_000));
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("not-json", b"{not json".to_vec()),
        ("bad-utf8", b"{\"id\": \"\xff\xfe\"}".to_vec()),
        ("empty", Vec::new()),
        ("json-null", b"null".to_vec()),
        ("array", br#"[{"id": "a"}]"#.to_vec()),
        ("scalar", b"42".to_vec()),
        ("too-large", big.into_bytes()),
        ("too-deep", deep.into_bytes()),
        ("duplicate-keys", br#"{"id": "d1", "id": "d2"}"#.to_vec()),
    ];
    let mut records = vec![record(&topic, Some("k"), br#"{"id": "first"}"#)];
    for (name, bytes) in &poison {
        records.push(record(&topic, Some(name), bytes));
    }
    records.push(vedgate::tools::traffic::Record { topic: topic.clone(), key: Some("tomb".into()), payload: None, kind: String::new() });
    // Exact big numbers and non-ASCII survive; they are not poison.
    let exact = r#"{"id": "exact", "n": 123456789012345678901234567890.000000000000000000001, "ключ": "значение \u00e9"}"#;
    records.push(record(&topic, Some("k"), exact.as_bytes()));
    records.push(record(&topic, Some("k"), br#"{"id": "last"}"#));
    produce(&records).await;

    let gw = Gateway::start(&test_gateway_toml(dir.path()), &routes, base_env());
    wait_until("last delivered", Duration::from_secs(30), || ids(&rx).contains(&"last".to_string())).await;
    assert_eq!(ids(&rx), vec!["first", "exact", "last"]);
    let exact_body = rx.requests().into_iter().find(|r| r.path == "/in/exact").unwrap().body;
    assert_eq!(&exact_body[..], exact.as_bytes(), "forwarded byte for byte");

    let dlq = format!("{group}.dlq");
    let got = read_topic(&dlq, Duration::from_secs(20), |rs| rs.len() >= poison.len());
    assert_eq!(got.len(), poison.len(), "one dead letter per poison message, tombstone skipped");
    for (name, bytes) in &poison {
        let dl = got.iter().find(|r| r.key.as_deref() == Some(name.as_bytes())).unwrap_or_else(|| panic!("{name} dead-lettered"));
        assert_eq!(dl.value.as_deref().unwrap_or_default(), &bytes[..], "{name}: original bytes kept");
        assert_eq!(dl.headers["vedgate-error-class"], "invalid-message", "{name}");
        assert_eq!(dl.headers["vedgate-original-topic"], topic);
        assert_eq!(dl.headers["vedgate-original-partition"], "0");
        assert!(!dl.headers["vedgate-error-reason"].is_empty());
    }
    let reason = |n: &str| got.iter().find(|r| r.key.as_deref() == Some(n.as_bytes())).unwrap().headers["vedgate-error-reason"].clone();
    assert!(reason("duplicate-keys").contains("duplicate key"), "{}", reason("duplicate-keys"));
    assert!(reason("too-large").contains("max_message_bytes"));
    assert!(reason("too-deep").contains("max_json_depth"));
    assert!(reason("array").contains("not an object"));
    let end = end_offsets(&topic, 1);
    wait_until("committed to the end", Duration::from_secs(10), || committed(&group, &topic, 1) == end).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_and_exhausted_failures_are_dead_lettered_with_their_class() {
    let topic = unique("permanent");
    let group = unique("g-permanent");
    create_topic(&topic, 1).await;
    let rx = Receiver::start().await;
    rx.set(Answer::FailFirst("\"bad\"".into(), 401, 100));
    let dir = tempfile::tempdir().unwrap();
    let routes = routes(dir.path(), &topic, &group, &rx.url, "", "retry = { max_attempts = 3, initial_delay_ms = 50, max_delay_ms = 100 }");
    let records = vec![
        record(&topic, Some("a"), br#"{"id": "ok1"}"#),
        record(&topic, Some("b"), br#"{"id": "bad"}"#),
        record(&topic, Some("c"), br#"{"id": "ok2"}"#),
    ];
    produce(&records).await;
    let gw = Gateway::start(&test_gateway_toml(dir.path()), &routes, base_env());
    wait_until("ok2 delivered", Duration::from_secs(30), || ids(&rx).contains(&"ok2".to_string())).await;
    assert_eq!(ids(&rx), vec!["ok1", "bad", "ok2"], "a 401 is not retried");
    let got = read_topic(&format!("{group}.dlq"), Duration::from_secs(20), |rs| !rs.is_empty());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].headers["vedgate-error-class"], "permanent");
    assert_eq!(got[0].headers["vedgate-attempts"], "1");
    assert_eq!(got[0].headers["vedgate-route"], "all");
    assert_eq!(got[0].headers["vedgate-original-offset"], "1");
    assert_eq!(got[0].value.as_deref(), Some(&br#"{"id": "bad"}"#[..]));
    wait_until("committed", Duration::from_secs(10), || committed(&group, &topic, 1) == vec![3]).await;

    // 503 forever: retried up to max_attempts, then dead-lettered as retries-exhausted.
    rx.set(Answer::FailFirst("\"flaky\"".into(), 503, 100));
    produce(&[record(&topic, Some("d"), br#"{"id": "flaky"}"#), record(&topic, Some("e"), br#"{"id": "ok3"}"#)]).await;
    wait_until("ok3 delivered", Duration::from_secs(30), || ids(&rx).contains(&"ok3".to_string())).await;
    assert_eq!(ids(&rx).iter().filter(|i| *i == "flaky").count(), 3);
    let got = read_topic(&format!("{group}.dlq"), Duration::from_secs(20), |rs| rs.len() >= 2);
    let ex = got.iter().find(|r| r.headers["vedgate-original-offset"] == "3").expect("exhausted dead letter");
    assert_eq!(ex.headers["vedgate-error-class"], "retries-exhausted");
    assert_eq!(ex.headers["vedgate-attempts"], "3");
    wait_until("committed", Duration::from_secs(10), || committed(&group, &topic, 1) == vec![5]).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dead_letter_topic_the_partition_stops_and_others_move() {
    let topic = unique("nodlq");
    let group = unique("g-nodlq");
    create_topic(&topic, 2).await;
    let rx = Receiver::start().await;
    rx.set(Answer::FailFirst("\"stuck\"".into(), 400, 1_000_000));
    let dir = tempfile::tempdir().unwrap();
    let routes = routes(dir.path(), &topic, &group, &rx.url, "dead_letter = false", "");
    // Partition is chosen by key: find keys for partitions 0 and 1 by producing and reading back.
    let mut records = Vec::new();
    for i in 0..20 {
        records.push(record(&topic, Some(&format!("key{i}")), format!(r#"{{"id": "m{i}"}}"#).as_bytes()));
    }
    produce(&records).await;
    let placed = read_topic(&topic, Duration::from_secs(20), |rs| rs.len() >= 20);
    let p_of = |i: usize| placed.iter().find(|r| r.key.as_deref() == Some(format!("key{i}").as_bytes())).unwrap().partition;
    let stuck_key = (0..20).find(|i| p_of(*i) == 0).unwrap();
    let other_key = (0..20).find(|i| p_of(*i) == 1).unwrap();
    produce(&[record(&topic, Some(&format!("key{stuck_key}")), br#"{"id": "stuck"}"#), record(&topic, Some(&format!("key{stuck_key}")), br#"{"id": "after-stuck"}"#)]).await;
    produce(&[record(&topic, Some(&format!("key{other_key}")), br#"{"id": "other"}"#)]).await;

    let gw = Gateway::start(&test_gateway_toml(dir.path()), &routes, base_env());
    wait_until("other partition delivered", Duration::from_secs(30), || ids(&rx).contains(&"other".to_string())).await;
    let end = end_offsets(&topic, 2);
    wait_until("the stuck message retried", Duration::from_secs(30), || ids(&rx).iter().filter(|i| *i == "stuck").count() >= 2).await;
    wait_until("both partitions committed as far as they go", Duration::from_secs(30), || {
        let c = committed(&group, &topic, 2);
        c[1] == end[1] && c[0] == end[0] - 2
    })
    .await;
    // And it stays there: several commit intervals and retries later, still
    // nothing past the stuck message.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!ids(&rx).contains(&"after-stuck".to_string()), "nothing after the stuck message in its partition");
    let c = committed(&group, &topic, 2);
    assert_eq!(c[1], end[1], "the other partition is committed to its end");
    assert_eq!(c[0], end[0] - 2, "the stuck partition is committed up to the stuck message");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sql_batch_delivers_the_good_messages_and_dead_letters_the_bad_one() {
    let topic = unique("batch");
    let group = unique("g-batch");
    create_topic(&topic, 1).await;
    let (db_url, db) = fresh_db().await;
    db.batch_execute("CREATE TABLE amounts (id text PRIMARY KEY, amount numeric NOT NULL)").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes");
    std::fs::create_dir_all(&routes).unwrap();
    std::fs::write(
        routes.join("r.toml"),
        format!(
            "[[subscription]]\nname = \"s\"\ntopic = \"{topic}\"\ngroup = \"{group}\"\n\n[sink.db]\ntype = \"sql\"\nurl = \"{db_url}\"\nbatch_max_rows = 100\nbatch_linger_ms = 20\n\n[[route]]\nname = \"amounts\"\nsubscription = \"s\"\nwhen = [{{ path = \"$.id\", exists = true }}]\nsink = \"db\"\nsql = {{ statement = \"INSERT INTO amounts (id, amount) VALUES (:id, :amount)\", params = {{ id = \"$.id\", amount = \"$.amount\" }} }}\n"
        ),
    )
    .unwrap();
    let mut records = Vec::new();
    for i in 0..300 {
        let amount = if i == 137 { r#""abc""#.to_string() } else { format!("{i}.{:02}", i % 100) };
        records.push(record(&topic, None, format!(r#"{{"id": "r{i}", "amount": {amount}}}"#).as_bytes()));
    }
    produce(&records).await;
    let gw = Gateway::start(&test_gateway_toml(dir.path()), &routes, base_env());
    wait_until("committed to the end", Duration::from_secs(60), || committed(&group, &topic, 1) == vec![300]).await;
    let n: i64 = db.query_one("SELECT count(*) FROM amounts", &[]).await.unwrap().get(0);
    assert_eq!(n, 299, "every good row written once");
    let exact: String = db.query_one("SELECT amount::text FROM amounts WHERE id = 'r299'", &[]).await.unwrap().get(0);
    assert_eq!(exact, "299.99");
    let dl = read_topic(&format!("{group}.dlq"), Duration::from_secs(20), |rs| !rs.is_empty());
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].headers["vedgate-original-offset"], "137");
    assert_eq!(dl[0].headers["vedgate-error-class"], "permanent");
    assert!(dl[0].headers["vedgate-error-reason"].contains("not a decimal"), "{:?}", dl[0].headers);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_waited_out_not_dead_lettered() {
    let topic = unique("retry-after");
    let group = unique("g-retry-after");
    create_topic(&topic, 1).await;
    let rx = Receiver::start().await;
    // The first attempt gets 429 with Retry-After: 2, any later one 200.
    rx.set(Answer::StatusFirst(429, Some(2), 1));
    let dir = tempfile::tempdir().unwrap();
    // Backoff alone would retry after 50 ms; Retry-After: 2 must win.
    let routes = routes(dir.path(), &topic, &group, &rx.url, "", "retry = { initial_delay_ms = 50, max_delay_ms = 5000, max_attempts = 5 }");
    produce(&[record(&topic, None, br#"{"id": "limited"}"#)]).await;
    let gw = Gateway::start(&test_gateway_toml(dir.path()), &routes, base_env());
    wait_until("delivered after the wait", Duration::from_secs(30), || rx.count() >= 2).await;
    let got = rx.requests();
    // Between the two arrivals, not from when the test noticed the first.
    let waited = got[1].at - got[0].at;
    assert!(waited >= Duration::from_millis(1800), "retried after {waited:?}, before Retry-After");
    assert!(waited < Duration::from_secs(10), "retried only after {waited:?} for Retry-After: 2");
    assert_eq!(rx.count(), 2);
    wait_until("committed", Duration::from_secs(10), || committed(&group, &topic, 1) == vec![1]).await;
    assert_eq!(gw.metrics.get(vedgate::metrics::MESSAGES_TOTAL, &[("group", &group), ("route", "all"), ("outcome", "dead_lettered")]), 0);
    assert_eq!(gw.metrics.get(vedgate::metrics::MESSAGES_TOTAL, &[("group", &group), ("route", "all"), ("outcome", "delivered")]), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_batches_carry_many_messages_and_a_bad_one_falls_back_alone() {
    let topic = unique("httpbatch");
    let group = unique("g-httpbatch");
    create_topic(&topic, 1).await;
    let rx = Receiver::start().await;
    // The batch holding m7 is refused, and so is m7 alone: only m7 is dead-lettered.
    rx.set(Answer::FailFirst("\"m7\"".into(), 422, 2));
    let dir = tempfile::tempdir().unwrap();
    let routes = id_routes(dir.path(), &topic, &group, &rx.url, "", "");
    let file = routes.join("test.toml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("timeout_ms = 60000", "timeout_ms = 60000\nbatch_max_messages = 20\nbatch_linger_ms = 50\nbatch_format = \"json-array\"")
        .replace("http = { path = \"/in/{$.id}\" }", "http = { path = \"/batch\" }");
    std::fs::write(&file, text).unwrap();
    produce(&id_msgs(&topic, 0..60, |i| format!("k{i}"))).await;
    let gw = Gateway::start(&test_gateway_toml(dir.path()), &routes, base_env());
    wait_until("committed to the end", Duration::from_secs(30), || committed(&group, &topic, 1) == vec![60]).await;
    let mut delivered: Vec<String> = Vec::new();
    let mut batches = 0;
    let mut keys = std::collections::HashSet::new();
    for r in rx.requests() {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let ok = !(r.body.windows(4).any(|w| w == b"\"m7\""));
        match v {
            serde_json::Value::Array(items) => {
                if ok {
                    batches += 1;
                    assert_eq!(r.header("x-kafka-batch-size").unwrap(), items.len().to_string());
                    assert!(keys.insert(r.header("idempotency-key").unwrap().to_string()));
                    delivered.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_string()));
                }
            }
            single => {
                if ok {
                    delivered.push(single["id"].as_str().unwrap().to_string());
                }
            }
        }
    }
    let n = delivered.len();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), n, "none delivered twice");
    assert_eq!(n, 59, "every message but m7 delivered");
    assert!(batches >= 2, "messages travelled in batches");
    let dl = read_topic(&format!("{group}.dlq"), Duration::from_secs(20), |rs| !rs.is_empty());
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].headers["vedgate-original-offset"], "7");
    gw.stop().await;
}
