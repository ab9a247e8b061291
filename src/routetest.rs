//! Route test cases kept beside the route files (`routes/tests/*.toml`):
//! a message in, the expected route and request or rows out. `vedgate test`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::config::{Config, SourceFile};
use crate::dryrun::{evaluate, request_json};
use crate::shape::{RecordMeta, Request};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// What the case shows.
    name: String,
    topic: String,
    group: String,
    key: Option<String>,
    partition: Option<i32>,
    offset: Option<i64>,
    /// The message value, as produced.
    message: String,
    /// Expected route name; "" when no route may take the message.
    route: String,
    http: Option<HttpExpect>,
    sql: Option<SqlExpect>,
    /// Expected reason when there is no request (substring).
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpExpect {
    method: Option<String>,
    url: Option<String>,
    /// Exact body; `original = true` means the message bytes.
    body: Option<String>,
    #[serde(default)]
    original: bool,
    /// Headers that must be present with these values.
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlExpect {
    /// JSON array of rows, each an array of parameter values in order.
    rows: String,
}

/// Outcome of a test run.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: usize,
    pub passed_names: Vec<String>,
    pub failed: Vec<String>,
}

/// Case files under `path` (a directory or one file).
pub fn case_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(path)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect())
        .unwrap_or_default();
    v.sort();
    v
}

pub fn run(config: &Config, files: &[PathBuf]) -> Report {
    let mut report = Report::default();
    for f in files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                report.failed.push(format!("{}: cannot read: {e}", f.display()));
                continue;
            }
        };
        let cases: CaseFile = match toml::from_str(&text) {
            Ok(c) => c,
            Err(e) => {
                report.failed.push(SourceFile::new(f, text.clone()).toml_error(&e).to_string());
                continue;
            }
        };
        for c in cases.case {
            match check(config, &c) {
                Ok(()) => {
                    report.passed += 1;
                    report.passed_names.push(format!("{}: {}", f.display(), c.name));
                }
                Err(why) => report.failed.push(format!("{}: {}: {why}", f.display(), c.name)),
            }
        }
    }
    report
}

fn check(config: &Config, c: &Case) -> Result<(), String> {
    let meta = RecordMeta {
        topic: c.topic.as_str().into(),
        partition: c.partition.unwrap_or(0),
        offset: c.offset.unwrap_or(0),
        key: c.key.clone().map(String::into_bytes),
        timestamp_ms: None,
        traceparent: None,
    };
    let verdicts = evaluate(config, &c.topic, Some(&c.group), c.message.as_bytes(), &meta);
    let v = verdicts.first().ok_or_else(|| format!("no subscription reads topic {:?} in group {:?}", c.topic, c.group))?;
    let got_route = v.route.clone().unwrap_or_default();
    if got_route != c.route {
        return Err(format!("route: expected {:?}, got {:?} ({})", c.route, got_route, v.reason.clone().unwrap_or_default()));
    }
    if let Some(want) = &c.reason {
        let got = v.reason.clone().unwrap_or_default();
        if !got.contains(want.as_str()) {
            return Err(format!("reason: expected it to contain {want:?}, got {got:?}"));
        }
    }
    if let Some(h) = &c.http {
        let Some(Request::Http(req)) = &v.request else {
            return Err(format!("expected an HTTP request, got {}", v.request.as_ref().map(request_json).unwrap_or(Value::Null)));
        };
        if let Some(m) = &h.method {
            if *m != req.method {
                return Err(format!("method: expected {m}, got {}", req.method));
            }
        }
        if let Some(u) = &h.url {
            if *u != req.url {
                return Err(format!("url: expected {u}, got {}", req.url));
            }
        }
        let body = String::from_utf8_lossy(&req.body);
        if h.original && req.body.as_ref() != c.message.as_bytes() {
            return Err(format!("body: expected the message bytes unchanged, got {body}"));
        }
        if let Some(b) = &h.body {
            if b.as_str() != body {
                return Err(format!("body: expected {b}, got {body}"));
            }
        }
        for (k, want) in &h.headers {
            let got = req.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.as_str());
            if got != Some(want.as_str()) {
                return Err(format!("header {k}: expected {want:?}, got {got:?}"));
            }
        }
    }
    if let Some(s) = &c.sql {
        let Some(Request::Sql(req)) = &v.request else {
            return Err(format!("expected SQL rows, got {}", v.request.as_ref().map(request_json).unwrap_or(Value::Null)));
        };
        let want: Value = serde_json::from_str(&s.rows).map_err(|e| format!("sql.rows is not JSON: {e}"))?;
        let got = Value::Array(req.rows.iter().map(|r| Value::Array(r.clone())).collect());
        // Compare as text so decimals compare digit for digit.
        if want.to_string() != got.to_string() {
            return Err(format!("rows: expected {want}, got {got}"));
        }
    }
    Ok(())
}
