//! Kafka security per environment profile, against the dev broker's SASL_SSL
//! listener (127.0.0.1:9094: SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN, user
//! `vedgate`, server certificate signed by `.dev/kafka/tls/ca.pem`), which
//! `scripts/dev-services start` sets up. See docs/SECURITY.md.
//!
//! Credentials come from the environment (`${KAFKA_USERNAME}`,
//! `${KAFKA_PASSWORD}` in the profile's `kafka` table) and must never show up
//! in logs, `/routes`, `/metrics`, `validate`, `dry-run` or `check` output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

const USER: &str = "vedgate";
const PASSWORD: &str = "vedgate-secret";

/// What the gateway does when the broker rejects its credentials.
///
/// Intended (docs/SECURITY.md): a gateway that has never joined its group and
/// is refused by SASL exits with code 1 within seconds, naming the mechanism
/// and the user. Today it logs the error every few seconds and keeps trying
/// (like a broker that is down). Set this to `true` once src/ exits on
/// authentication failure; the test then checks the exit code as well.
const GATEWAY_EXITS_ON_AUTH_FAILURE: bool = true;

fn sasl_brokers() -> String {
    std::env::var("VEDGATE_TEST_SASL_BROKERS").unwrap_or_else(|_| "127.0.0.1:9094".into())
}

fn tls_dir() -> PathBuf {
    std::env::var("VEDGATE_TEST_KAFKA_TLS").map(PathBuf::from).unwrap_or_else(|_| repo().join(".dev/kafka/tls"))
}

/// The SASL_SSL listener and the dev CA must be there; nothing is skipped.
fn require_sasl_listener() {
    let ca = tls_dir().join("ca.pem");
    assert!(ca.is_file(), "{} is missing: the SASL_SSL listener is not set up; run scripts/dev-services start", ca.display());
    let addr: std::net::SocketAddr = sasl_brokers().split(',').next().unwrap().trim().parse().expect("VEDGATE_TEST_SASL_BROKERS is host:port");
    if let Err(e) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        panic!("the Kafka SASL_SSL listener {addr} is not up ({e}); run scripts/dev-services start");
    }
}

/// A gateway.toml whose `local` profile talks SASL_SSL with `mechanism`;
/// `extra` adds librdkafka properties to the profile's `kafka` table.
fn sasl_gateway_toml(dir: &Path, mechanism: &str, ca: &Path, extra: &[(&str, String)]) -> PathBuf {
    let mut kafka = format!(
        "\"security.protocol\" = \"SASL_SSL\", \"sasl.mechanism\" = \"{mechanism}\", \"sasl.username\" = \"${{KAFKA_USERNAME}}\", \"sasl.password\" = \"${{KAFKA_PASSWORD}}\", \"ssl.ca.location\" = \"{}\"",
        ca.display()
    );
    for (k, v) in extra {
        kafka.push_str(&format!(", \"{k}\" = \"{v}\""));
    }
    let p = dir.join("gateway.toml");
    std::fs::write(
        &p,
        format!(
            r#"[defaults]
channels = 2
retry_initial_delay_ms = 100
retry_max_delay_ms = 1000
commit_interval_ms = 200
shutdown_grace_ms = 3000
session_timeout_ms = 6000
admin_addr = ""

[profile.local]
brokers = ["{}"]
kafka = {{ {kafka} }}
"#,
            sasl_brokers()
        ),
    )
    .unwrap();
    p
}

fn route_file(dir: &Path, topic: &str, group: &str, url: &str) -> PathBuf {
    let routes = dir.join("routes");
    std::fs::create_dir_all(&routes).unwrap();
    std::fs::write(
        routes.join("secure.toml"),
        format!(
            r#"[[subscription]]
name = "s"
topic = "{topic}"
group = "{group}"

[sink.out]
type = "http"
url = "{url}"

[[route]]
name = "secure-route"
subscription = "s"
when = [{{ path = "$.id", exists = true }}]
sink = "out"
http = {{ path = "/secure" }}
"#
        ),
    )
    .unwrap();
    routes
}

/// The environment of a gateway on the SASL_SSL listener (later entries win
/// over spawn_binary_logged's BROKERS=127.0.0.1:9092).
fn sasl_env(password: &str) -> Vec<(&'static str, String)> {
    vec![
        ("BROKERS", sasl_brokers()),
        ("KAFKA_USERNAME", USER.into()),
        ("KAFKA_PASSWORD", password.into()),
        ("VEDGATE_LOG", "info,vedgate=debug".into()),
    ]
}

fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

fn assert_no_secret(what: &str, text: &str, secret: &str) {
    assert!(!text.contains(secret), "{what} contains the password {secret:?}:\n{text}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Produces five messages (over PLAINTEXT), runs the gateway on SASL_SSL with
/// `mechanism` and checks every message is delivered and committed, the
/// admin endpoints and the log do not contain the password, and SIGTERM
/// still exits 0.
async fn delivers_over_sasl_ssl(mechanism: &str, extra: &[(&str, String)]) {
    require_sasl_listener();
    let topic = unique("sasl");
    let group = unique("g-sasl");
    create_topic(&topic, 2).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = sasl_gateway_toml(dir.path(), mechanism, &tls_dir().join("ca.pem"), extra);
    let routes = route_file(dir.path(), &topic, &group, &rx.url);
    let marker = unique("m");
    let records: Vec<_> = (0..5).map(|i| record(&topic, Some(&format!("k{i}")), format!(r#"{{"id": {i}, "marker": "{marker}"}}"#).as_bytes())).collect();
    produce(&records).await;

    let admin = format!("127.0.0.1:{}", free_port());
    let mut env = sasl_env(PASSWORD);
    env.push(("VEDGATE_ADMIN_ADDR", admin.clone()));
    let log = dir.path().join("gw.log");
    let mut child = spawn_binary_logged(&config, &routes, &env, &log);

    let t0 = Instant::now();
    let mut delivered = false;
    while t0.elapsed() < Duration::from_secs(60) {
        if rx.count() >= 5 {
            delivered = true;
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("gateway exited with {status:?} before delivering over SASL_SSL ({mechanism}):\n{}", log_text(&log));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(delivered, "{} of 5 messages delivered over SASL_SSL ({mechanism}) in 60 s:\n{}", rx.count(), log_text(&log));
    let got = rx.requests();
    assert_eq!(got.len(), 5, "exactly five requests");
    for r in &got {
        assert_eq!(r.path, "/secure");
        assert!(String::from_utf8_lossy(&r.body).contains(&marker), "body {:?}", r.body);
    }
    wait_until("the five offsets are committed", Duration::from_secs(30), || committed(&group, &topic, 2).iter().map(|o| (*o).max(0)).sum::<i64>() == 5).await;

    // The admin endpoints show the profile, never its credentials.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    for path in ["/routes", "/metrics"] {
        let body = http.get(format!("http://{admin}{path}")).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", log_text(&log))).text().await.unwrap();
        assert_no_secret(path, &body, PASSWORD);
        if path == "/routes" {
            assert!(body.contains("secure-route") && body.contains("\"profile\":\"local\""), "/routes: {body}");
        }
    }

    let (status, took) = terminate(&mut child).await;
    let text = log_text(&log);
    assert!(status.success(), "exit {status:?}\n{text}");
    assert!(took < Duration::from_secs(10), "stop took {took:?}\n{text}");
    assert_no_secret("the gateway log", &text, PASSWORD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_delivers_over_sasl_ssl_with_scram_sha_512() {
    delivers_over_sasl_ssl("SCRAM-SHA-512", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_delivers_over_sasl_ssl_with_scram_sha_256_and_a_client_certificate() {
    let tls = tls_dir();
    let extra = [
        ("ssl.certificate.location", tls.join("client.pem").display().to_string()),
        ("ssl.key.location", tls.join("client.key").display().to_string()),
    ];
    delivers_over_sasl_ssl("SCRAM-SHA-256", &extra).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_delivers_over_sasl_ssl_with_plain() {
    delivers_over_sasl_ssl("PLAIN", &[]).await;
}

/// Runs the gateway with `password` and `ca` and waits up to 30 s for a log
/// line containing every one of `want`; returns the log.
async fn refused(dir: &Path, password: &str, ca: &Path, want: &[&str]) -> String {
    require_sasl_listener();
    let topic = unique("sasl-refused");
    let group = unique("g-sasl-refused");
    create_topic(&topic, 1).await;
    produce(&[record(&topic, None, br#"{"id": 1}"#)]).await;
    let rx = Receiver::start().await;
    let config = sasl_gateway_toml(dir, "SCRAM-SHA-512", ca, &[]);
    let routes = route_file(dir, &topic, &group, &rx.url);
    let log = dir.join("gw.log");
    let mut child = spawn_binary_logged(&config, &routes, &sasl_env(password), &log);
    let t0 = Instant::now();
    let clear = |t: &str| t.lines().any(|l| want.iter().all(|w| l.contains(w)));
    while !clear(&log_text(&log)) {
        assert!(t0.elapsed() < Duration::from_secs(30), "no log line with {want:?} within 30 s:\n{}", log_text(&log));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = t0.elapsed();
    if GATEWAY_EXITS_ON_AUTH_FAILURE {
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "gateway still running 30 s after it started and was refused:\n{}", log_text(&log));
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(status.code(), Some(1), "{}", log_text(&log));
    } else {
        // Today: it keeps trying, and SIGTERM still stops it cleanly.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(child.try_wait().unwrap().is_none(), "gateway died:\n{}", log_text(&log));
        let (status, stop) = terminate(&mut child).await;
        assert!(status.success() && stop < Duration::from_secs(10), "exit {status:?} after {stop:?}\n{}", log_text(&log));
    }
    assert_eq!(rx.count(), 0, "nothing can be delivered without a session");
    assert!(committed(&group, &topic, 1)[0] <= 0, "nothing committed");
    assert!(took < Duration::from_secs(30));
    log_text(&log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_a_clear_authentication_error_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = format!("wrong-Pw-{}", unique("x"));
    let text = refused(dir.path(), &wrong, &tls_dir().join("ca.pem"), &["SASL authentication error", "invalid credentials", "SCRAM-SHA-512"]).await;
    assert_no_secret("the gateway log", &text, &wrong);
    assert_no_secret("the gateway log", &text, PASSWORD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_broker_certificate_is_a_clear_tls_error_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    // A CA that did not sign the broker's certificate.
    let other_ca = dir.path().join("other-ca.pem");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=not the dev CA", "-keyout"])
        .arg(dir.path().join("other-ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    let text = refused(dir.path(), PASSWORD, &other_ca, &["SSL handshake failed", "certificate verify failed"]).await;
    assert_no_secret("the gateway log", &text, PASSWORD);
}

fn vedgate(args: &[&str], env: &[(&str, String)], stdin: Option<&str>) -> (i32, String) {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vedgate"));
    cmd.args(args).env("VEDGATE_ADMIN_ADDR", "").env("VEDGATE_LOG", "debug");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_dry_run_and_check_never_print_the_password() {
    require_sasl_listener();
    let topic = unique("sasl-tools");
    let group = unique("g-sasl-tools");
    create_topic(&topic, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = sasl_gateway_toml(dir.path(), "SCRAM-SHA-512", &tls_dir().join("ca.pem"), &[]);
    let routes = route_file(dir.path(), &topic, &group, "http://127.0.0.1:1");
    let (c, r) = (config.to_str().unwrap().to_string(), routes.to_str().unwrap().to_string());
    let env = [("BROKERS", sasl_brokers()), ("KAFKA_USERNAME", USER.to_string()), ("KAFKA_PASSWORD", PASSWORD.to_string())];

    let (code, out) = vedgate(&["validate", "--config", &c, "--routes", &r, "--env", "local"], &env, None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("profile local"), "{out}");
    assert_no_secret("validate", &out, PASSWORD);

    let (code, out) = vedgate(&["dry-run", "--config", &c, "--routes", &r, "--env", "local", "--topic", &topic, "--pretty"], &env, Some("{\"id\": 1}\n"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("secure-route"), "{out}");
    assert_no_secret("dry-run", &out, PASSWORD);

    // check talks to the broker over SASL_SSL with the same properties.
    let (_code, out) = vedgate(&["check", "--config", &c, "--routes", &r, "--env", "local"], &env, None);
    assert!(out.contains("reachable") && !out.contains("UNREACHABLE"), "check over SASL_SSL:\n{out}");
    assert_no_secret("check", &out, PASSWORD);
    let (_code, out) = vedgate(&["check", "--config", &c, "--routes", &r, "--env", "local", "--json"], &env, None);
    assert_no_secret("check --json", &out, PASSWORD);

    // A missing credential is a configuration error naming the variable, not its value.
    let (code, out) = vedgate(&["validate", "--config", &c, "--routes", &r, "--env", "local"], &[("BROKERS", sasl_brokers()), ("KAFKA_USERNAME", USER.to_string())], None);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("KAFKA_PASSWORD"), "{out}");
}
