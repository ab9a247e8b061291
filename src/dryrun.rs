//! Dry runs: which route takes a message and exactly what would be sent,
//! with no network or database I/O. Used by `vedgate dry-run` and `vedgate test`.

use serde_json::{json, Map, Value};

use crate::config::{Config, Route};
use crate::message::{decode, Limits};
use crate::shape::{RecordMeta, Request};

/// One message's verdict for one consumer group.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub group: String,
    pub route: Option<String>,
    /// Why no request is shown: no route matched, invalid message, schema or shaping failure.
    pub reason: Option<String>,
    pub sink: Option<String>,
    pub request: Option<Request>,
}

/// Runs every subscription of `topic` (or only `group`) on one message.
pub fn evaluate(config: &Config, topic: &str, group: Option<&str>, raw: &[u8], meta: &RecordMeta) -> Vec<Verdict> {
    let limits = Limits { max_bytes: config.settings.max_message_bytes, max_depth: config.settings.max_json_depth };
    let decoded = decode(Some(raw), limits);
    config
        .subscriptions
        .iter()
        .filter(|s| s.topic == topic && group.is_none_or(|g| g == s.group))
        .map(|s| {
            let mut v = Verdict { group: s.group.clone(), route: None, reason: None, sink: None, request: None };
            let value = match &decoded {
                Ok(value) => value,
                Err(e) => {
                    v.reason = Some(format!("invalid-message: {e}"));
                    return v;
                }
            };
            let Some(route) = s.find(value) else {
                v.reason = Some("no route matches".into());
                return v;
            };
            v.route = Some(route.name.clone());
            v.sink = Some(config.sinks[route.sink].id.clone());
            if let Some(reason) = route.schema.as_ref().and_then(|sc| sc.check(value).err()) {
                v.reason = Some(format!("schema: {reason}"));
                return v;
            }
            match route.shape(raw, value, meta) {
                Ok(req) => v.request = Some(req),
                Err(e) => v.reason = Some(format!("permanent: cannot shape the request: {e}")),
            }
            v
        })
        .collect()
}

/// Header names whose values are credentials: never printed.
pub fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "authorization" || n == "proxy-authorization" || n == "cookie" || ["token", "secret", "password", "api-key", "apikey"].iter().any(|s| n.contains(s))
}

/// The verdict as the JSON line `dry-run` prints.
pub fn to_json(v: &Verdict) -> Value {
    let mut out = Map::new();
    out.insert("group".into(), json!(v.group));
    out.insert("route".into(), json!(v.route));
    if let Some(r) = &v.reason {
        out.insert("reason".into(), json!(r));
    }
    out.insert("sink".into(), json!(v.sink));
    out.insert("request".into(), v.request.as_ref().map(request_json).unwrap_or(Value::Null));
    Value::Object(out)
}

pub fn request_json(r: &Request) -> Value {
    match r {
        Request::Http(h) => {
            let headers: Map<String, Value> = h
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), json!(if is_secret_header(k) { "[redacted]" } else { v.as_str() })))
                .collect();
            json!({"kind": "http", "method": h.method, "url": h.url, "headers": headers, "body": String::from_utf8_lossy(&h.body)})
        }
        Request::Sql(s) => {
            let mut o = json!({"kind": "sql", "statement": s.statement.as_ref(), "rows": s.rows});
            if s.rows.len() == 1 {
                o["parameters"] = json!(s.rows[0]);
            }
            o
        }
        Request::Discard => json!({"kind": "discard"}),
    }
}

/// The route a verdict names, for callers that need more than its name.
pub fn route_of<'a>(config: &'a Config, v: &Verdict) -> Option<&'a Route> {
    let name = v.route.as_ref()?;
    config.subscriptions.iter().filter(|s| s.group == v.group).flat_map(|s| &s.routes).find(|r| &r.name == name)
}
