//! `vedgate validate` and `run` on good and broken configs; the examples of
//! docs/routes.md parse.

use std::path::Path;
use std::process::Command;

use crate::harness::*;

fn vedgate(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vedgate")).args(args).env("VEDGATE_ADMIN_ADDR", "").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn validate_accepts_the_shipped_routes() {
    let root = repo();
    let (code, out) = vedgate(&["validate", "--config", root.join("gateway.toml").to_str().unwrap(), "--routes", root.join("routes").to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4 subscription(s), 6 route(s)"), "{out}");
}

const GOOD: &str = r#"[[subscription]]
name = "s"
topic = "t"
group = "g"

[sink.h]
type = "http"
url = "http://127.0.0.1:1"

[[route]]
name = "r"
subscription = "s"
when = [{ path = "$.operationCode", equals = "x" }]
sink = "h"
http = { path = "/x" }
"#;

fn check_broken(dir: &Path, text: &str, want: &[&str]) {
    let routes = dir.join("routes");
    std::fs::create_dir_all(&routes).unwrap();
    let file = routes.join("broken.toml");
    std::fs::write(&file, text).unwrap();
    let config = test_gateway_toml(dir);
    let (c, r) = (config.to_str().unwrap(), routes.to_str().unwrap());
    let (code, out) = vedgate(&["validate", "--config", c, "--routes", r]);
    assert_eq!(code, 64, "{out}");
    for w in want {
        assert!(out.contains(&w.replace("FILE", file.to_str().unwrap())), "missing {w:?} in:\n{out}");
    }
    let (code, run_out) = vedgate(&["run", "--config", c, "--routes", r]);
    assert_eq!(code, 64, "run must refuse to start: {run_out}");
    for w in want {
        assert!(run_out.contains(&w.replace("FILE", file.to_str().unwrap())), "run output lacks {w:?}:\n{run_out}");
    }
}

#[test]
fn unknown_key_is_reported_with_file_line_col() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD.replace("sink = \"h\"\n", "sink = \"h\"\nretries = 3\n");
    check_broken(dir.path(), &text, &["FILE:15:1: unknown field `retries`"]);
}

#[test]
fn unknown_sink_and_bad_jsonpath_are_all_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD.replace("sink = \"h\"\n", "sink = \"nope\"\n").replace("$.operationCode", "$.operationCode[");
    check_broken(dir.path(), &text, &["FILE:14:8: unknown sink \"nope\"", "FILE:13:18: invalid JSONPath"]);
}

#[test]
fn broken_toml_is_reported_with_position() {
    let dir = tempfile::tempdir().unwrap();
    check_broken(dir.path(), "[[subscription]\nname = 1\n", &["FILE:1:"]);
}

#[test]
fn every_example_in_docs_routes_md_parses() {
    let doc = std::fs::read_to_string(repo().join("docs/routes.md")).expect("docs/routes.md");
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in doc.lines() {
        match (&mut cur, line.trim_start()) {
            (None, l) if l.starts_with("```toml") => cur = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => blocks.push(cur.take().unwrap()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    assert!(blocks.len() >= 2, "docs/routes.md has toml examples");
    for (i, b) in blocks.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let config = test_gateway_toml(dir.path());
        let file = dir.path().join(format!("example-{i}.toml"));
        std::fs::write(&file, b).unwrap();
        let res = vedgate::config::load(&vedgate::config::LoadOptions {
            config_path: config,
            routes_path: file,
            profile: None,
            env: vedgate::config::Env::default(),
        });
        if let Err(d) = res {
            panic!("example {i} of docs/routes.md does not load:\n{d}\n{b}");
        }
    }
}

#[test]
fn dry_run_prints_the_exact_request_without_io() {
    let root = repo();
    let msg = r#"{"operation": "foreign-contract-rework-request-update-status", "payload": {"reworkRequestId": "RR/2026 1", "status": "COMPLETED", "comment": "ok", "updatedAt": "2026-11-30T12:00:00+05:00"}}"#;
    let mut child = Command::new(env!("CARGO_BIN_EXE_vedgate"))
        .args(["dry-run", "--config", root.join("gateway.toml").to_str().unwrap(), "--routes", root.join("routes").to_str().unwrap(), "--topic", "bcc.business.fea.process.events", "-"])
        .env("VED_FOREIGN_CONTRACTS_URL", "http://127.0.0.1:1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(format!("{msg}\nnot json\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["group"], "dbp-foreign-contract-process");
    assert_eq!(lines[0]["route"], "rework-request-status");
    assert_eq!(lines[0]["request"]["method"], "PUT");
    assert_eq!(lines[0]["request"]["url"], "http://127.0.0.1:1/internal/rework-requests/RR%2F2026%201/status");
    assert_eq!(lines[0]["request"]["body"], r#"{"status":"COMPLETED","comment":"ok","updatedAt":"2026-11-30T12:00:00+05:00"}"#);
    assert_eq!(lines[1]["route"], serde_json::Value::Null);
    assert!(lines[1]["reason"].as_str().unwrap().starts_with("invalid-message"));
}

#[test]
fn route_test_cases_pass_and_a_wrong_expectation_fails() {
    let root = repo();
    let (c, r) = (root.join("gateway.toml"), root.join("routes"));
    let (code, out) = vedgate(&["test", "--config", c.to_str().unwrap(), "--routes", r.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(" 0 failed"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[case]]\nname = \"wrong route\"\ntopic = \"kz-bcc-colvir\"\ngroup = \"connect-dbp-international-transfers-sink\"\nmessage = '{\"meta\": {\"code\": \"DOC_STATUS\"}, \"payload\": {\"ordId\": \"1\", \"status\": \"EXECUTED\"}}'\nroute = \"bank-swift-detail\"\n").unwrap();
    let (code, out) = vedgate(&["test", "--config", c.to_str().unwrap(), "--routes", r.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED") && out.contains("expected \"bank-swift-detail\", got \"doc-status\""), "{out}");
}

#[test]
fn validate_warns_and_deny_warnings_makes_them_errors() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes");
    std::fs::create_dir_all(&routes).unwrap();
    let schema = repo().join("schemas/doc-status.schema.json");
    std::fs::write(
        routes.join("w.toml"),
        format!(
            r#"[[subscription]]
name = "s"
topic = "t"
group = "g"

[sink.h]
type = "http"
url = "http://127.0.0.1:1"
headers = {{ "Authorization" = "Bearer literally-here" }}

[sink.unused]
type = "blackhole"

[[route]]
name = "a"
subscription = "s"
when = [{{ path = "$.meta.code", one_of = ["DOC_STATUS", "X"] }}]
sink = "h"
schema = "{}"
http = {{ path = "/a" }}

[[route]]
name = "b"
subscription = "s"
when = [{{ path = "$.meta.code", equals = "X" }}, {{ path = "$.payload.ordID", exists = true }}]
sink = "h"
http = {{ path = "/b" }}

[[route]]
name = "c"
subscription = "s"
when = [{{ path = "$.meta.code", equals = "DOC_STATUS" }}, {{ path = "$.payload.ordID", exists = true }}]
sink = "h"
schema = "{}"
http = {{ path = "/c" }}
"#,
            schema.display(),
            schema.display()
        ),
    )
    .unwrap();
    let config = test_gateway_toml(dir.path());
    let (c, r) = (config.to_str().unwrap(), routes.to_str().unwrap());
    let (code, out) = vedgate(&["validate", "--offline", "--config", c, "--routes", r]);
    assert_eq!(code, 0, "{out}");
    for want in [
        "a credential is written literally",
        "sink \"unused\" is not used",
        "route \"b\" can never match",
        "$.payload.ordID cannot match the route's schema",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let (code, out) = vedgate(&["validate", "--offline", "--deny-warnings", "--config", c, "--routes", r]);
    assert_eq!(code, 64, "{out}");
}

#[test]
fn the_dashboard_imports_and_uses_only_metrics_the_gateway_exports() {
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(repo().join("deploy/grafana/vedgate-dashboard.json")).unwrap()).unwrap();
    let names = std::fs::read_to_string(repo().join("src/metrics.rs")).unwrap();
    let text = dash.to_string();
    let mut used = 0;
    for (i, _) in text.match_indices("vedgate_") {
        let name: String = text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let base = name.trim_end_matches("_bucket");
        assert!(names.contains(&format!("\"{base}\"")), "{base} is not a metric in src/metrics.rs");
        used += 1;
    }
    assert!(used >= 10);
    assert!(dash["panels"].as_array().unwrap().len() >= 8);
}

/// Found by fuzzing the loader (fuzz/regressions/route_file-schema-dev-zero.bin).
#[test]
fn a_schema_that_is_not_a_regular_file_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD.replace("http = { path = \"/x\" }", "schema = \"/dev/zero\"\nhttp = { path = \"/x\" }");
    check_broken(dir.path(), &text, &["cannot read schema /dev/zero: not a regular file"]);
}
