//! Shaping: turning a matched message into the exact HTTP request or SQL
//! rows a sink sends. Pure functions of the message; no I/O.

pub mod decimal;
pub mod source;
pub mod sql;

use std::sync::Arc;

use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;
use serde_json::Value;

pub use source::{KafkaField, RecordMeta, Source};

/// Everything outside RFC 3986's unreserved set is encoded, so a value
/// stays one path segment (`/`, `?`, `#`, `%` and spaces included).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Why a message could not be shaped. Shaping is deterministic, so these
/// are never worth retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("URL placeholder {{{0}}} has no value in the message")]
    MissingUrlValue(String),
    #[error("URL placeholder {{{0}}} selects a {1}, not a scalar")]
    NonScalarUrlValue(String, &'static str),
    #[error("URL placeholder {{{0}}} is {1:?}, which would change the URL's path")]
    UnsafeUrlValue(String, String),
    #[error("body selector {0} selects nothing in the message")]
    MissingBody(String),
    #[error("for_each {0} selects no array in the message")]
    NotAnArray(String),
}

/// A request ready for a sink.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Request {
    Http(HttpRequest),
    Sql(SqlRequest),
    /// A blackhole sink: nothing is sent.
    Discard,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    #[serde(serialize_with = "serialize_body")]
    pub body: Bytes,
}

fn serialize_body<S: serde::Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SqlRequest {
    /// The statement with `$1..$n` placeholders.
    pub statement: Arc<str>,
    /// One parameter list per row, in placeholder order; `null` is SQL NULL.
    pub rows: Vec<Vec<Value>>,
}

/// How an HTTP batch joins its messages' bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchFormat {
    /// `[body1,body2,...]`, `Content-Type: application/json`.
    JsonArray,
    /// One compact JSON body per line, `Content-Type: application/x-ndjson`.
    Ndjson,
}

/// One request for consecutive messages of a partition, to the first one's
/// URL. Offsets `first.offset..=last_offset` travel as `X-Kafka-Offset` and
/// `X-Kafka-Last-Offset`; `Idempotency-Key` is `{topic}-{partition}-{first}-{last}`.
pub fn combine_http(reqs: &[&HttpRequest], format: BatchFormat, first: &RecordMeta, last_offset: i64) -> HttpRequest {
    let per_message = ["content-type", "x-kafka-offset", "x-kafka-key", "idempotency-key", "traceparent"];
    let mut headers: Vec<(String, String)> = reqs[0].headers.iter().filter(|(k, _)| !per_message.contains(&k.to_ascii_lowercase().as_str())).cloned().collect();
    let content_type = match format {
        BatchFormat::JsonArray => "application/json",
        BatchFormat::Ndjson => "application/x-ndjson",
    };
    headers.insert(0, ("Content-Type".into(), content_type.into()));
    headers.push(("X-Kafka-Offset".into(), first.offset.to_string()));
    headers.push(("X-Kafka-Last-Offset".into(), last_offset.to_string()));
    headers.push(("X-Kafka-Batch-Size".into(), reqs.len().to_string()));
    headers.push(("Idempotency-Key".into(), format!("{}-{}-{}-{}", first.topic, first.partition, first.offset, last_offset)));
    let mut body = Vec::new();
    match format {
        BatchFormat::JsonArray => {
            body.push(b'[');
            for (i, r) in reqs.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&r.body);
            }
            body.push(b']');
        }
        BatchFormat::Ndjson => {
            for r in reqs {
                if r.body.contains(&b'\n') {
                    // Keep each message on one line.
                    match serde_json::from_slice::<Value>(&r.body) {
                        Ok(v) => body.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default()),
                        Err(_) => body.extend(r.body.iter().map(|b| if *b == b'\n' { b' ' } else { *b })),
                    }
                } else {
                    body.extend_from_slice(&r.body);
                }
                body.push(b'\n');
            }
        }
    }
    HttpRequest { method: reqs[0].method.clone(), url: reqs[0].url.clone(), headers, body: Bytes::from(body) }
}

/// A URL path template: literal text and `{source}` placeholders.
#[derive(Debug, Clone)]
pub struct PathTemplate {
    parts: Vec<PathPart>,
}

#[derive(Debug, Clone)]
enum PathPart {
    Literal(String),
    Value(String, Source),
}

impl PathTemplate {
    pub fn parse(text: &str) -> Result<PathTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(PathPart::Literal(rest[..open].to_string()));
            }
            let close = rest[open..].find('}').ok_or_else(|| format!("unclosed {{ in path {text:?}"))? + open;
            let inner = rest[open + 1..close].trim();
            let source = Source::parse(inner)?;
            if source.is_element() {
                return Err(format!("{inner:?}: element paths (@) only work in SQL params with for_each"));
            }
            parts.push(PathPart::Value(inner.to_string(), source));
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("unmatched }} in path {text:?}"));
        }
        if !rest.is_empty() {
            parts.push(PathPart::Literal(rest.to_string()));
        }
        Ok(PathTemplate { parts })
    }

    pub fn render(&self, msg: &Value, meta: &RecordMeta) -> Result<String, ShapeError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                PathPart::Literal(s) => out.push_str(s),
                PathPart::Value(name, src) => {
                    let text = match src.resolve(msg, None, meta) {
                        None | Some(Value::Null) => return Err(ShapeError::MissingUrlValue(name.clone())),
                        Some(Value::String(s)) => s,
                        Some(Value::Number(n)) => n.to_string(),
                        Some(Value::Bool(b)) => b.to_string(),
                        Some(Value::Array(_)) => return Err(ShapeError::NonScalarUrlValue(name.clone(), "array")),
                        Some(Value::Object(_)) => return Err(ShapeError::NonScalarUrlValue(name.clone(), "object")),
                    };
                    // "", "." and ".." would be resolved by the URL parser (even
                    // percent-encoded) and send the request somewhere else.
                    if text.is_empty() || text == "." || text == ".." || text.eq_ignore_ascii_case("%2e") || text.eq_ignore_ascii_case("%2e%2e") {
                        return Err(ShapeError::UnsafeUrlValue(name.clone(), text));
                    }
                    out.extend(utf8_percent_encode(&text, PATH_SEGMENT));
                }
            }
        }
        Ok(out)
    }
}

/// A JSON body template: strings that are sources are filled in, the rest is literal.
#[derive(Debug, Clone)]
pub enum Template {
    Object(Vec<(String, Template)>),
    Array(Vec<Template>),
    Value(Source),
    Literal(Value),
}

impl Template {
    /// From the TOML of a route file. Strings starting with `$` or `kafka.`
    /// are sources; `$$` starts a literal `$`.
    pub fn from_toml(v: &toml::Value) -> Result<Template, String> {
        Ok(match v {
            toml::Value::Table(t) => Template::Object(
                t.iter().map(|(k, v)| Ok((k.clone(), Template::from_toml(v)?))).collect::<Result<_, String>>()?,
            ),
            toml::Value::Array(a) => Template::Array(a.iter().map(Template::from_toml).collect::<Result<_, _>>()?),
            toml::Value::String(s) if s.starts_with("$$") => Template::Literal(Value::String(s[1..].to_string())),
            toml::Value::String(s) if s.starts_with('$') || s.starts_with("kafka.") => {
                let src = Source::parse(s)?;
                Template::Value(src)
            }
            toml::Value::String(s) => Template::Literal(Value::String(s.clone())),
            toml::Value::Integer(i) => Template::Literal(Value::from(*i)),
            toml::Value::Float(f) => Template::Literal(serde_json::Number::from_f64(*f).map(Value::Number).unwrap_or(Value::Null)),
            toml::Value::Boolean(b) => Template::Literal(Value::Bool(*b)),
            toml::Value::Datetime(d) => Template::Literal(Value::String(d.to_string())),
        })
    }

    /// Fills the template; an absent value becomes JSON `null`.
    pub fn render(&self, msg: &Value, meta: &RecordMeta) -> Value {
        match self {
            Template::Object(fields) => {
                Value::Object(fields.iter().map(|(k, t)| (k.clone(), t.render(msg, meta))).collect())
            }
            Template::Array(items) => Value::Array(items.iter().map(|t| t.render(msg, meta)).collect()),
            Template::Value(src) => src.resolve(msg, None, meta).unwrap_or(Value::Null),
            Template::Literal(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Body {
    Original,
    Select(Source),
    Template(Template),
}

/// How a route shapes an HTTP request.
#[derive(Debug, Clone)]
pub struct HttpShape {
    pub method: String,
    /// The sink's base URL, without a trailing slash.
    pub base_url: String,
    pub path: PathTemplate,
    /// Sink headers, then route headers (already expanded from the environment).
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl HttpShape {
    pub fn shape(&self, raw: &[u8], msg: &Value, meta: &RecordMeta) -> Result<HttpRequest, ShapeError> {
        let url = format!("{}{}", self.base_url, self.path.render(msg, meta)?);
        let body = match &self.body {
            Body::Original => Bytes::copy_from_slice(raw),
            Body::Select(src) => {
                let v = src.resolve(msg, None, meta).ok_or_else(|| ShapeError::MissingBody(source_text(src)))?;
                Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
            }
            Body::Template(t) => Bytes::from(serde_json::to_vec(&t.render(msg, meta)).unwrap_or_default()),
        };
        let mut headers = Vec::with_capacity(self.headers.len() + 6);
        headers.push(("Content-Type".to_string(), "application/json".to_string()));
        headers.extend(self.headers.iter().cloned());
        headers.push(("X-Kafka-Topic".to_string(), meta.topic.to_string()));
        headers.push(("X-Kafka-Partition".to_string(), meta.partition.to_string()));
        headers.push(("X-Kafka-Offset".to_string(), meta.offset.to_string()));
        if let Some(k) = meta.key_text() {
            headers.push(("X-Kafka-Key".to_string(), header_safe(&k)));
        }
        headers.push(("Idempotency-Key".to_string(), meta.idempotency_key()));
        if let Some(tp) = &meta.traceparent {
            headers.push(("traceparent".to_string(), tp.clone()));
        }
        Ok(HttpRequest { method: self.method.clone(), url, headers, body })
    }
}

/// Header values cannot hold control characters or non-ASCII bytes
/// portably: such keys are percent-encoded.
fn header_safe(s: &str) -> String {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        s.to_string()
    } else {
        utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
    }
}

fn source_text(src: &Source) -> String {
    match src {
        Source::Message(p) | Source::Element(p) => p.as_str().to_string(),
        Source::Kafka(f) => format!("kafka.{f:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta() -> RecordMeta {
        RecordMeta { topic: "t".into(), partition: 2, offset: 41, key: Some(b"RR/1".to_vec()), timestamp_ms: Some(0), traceparent: None }
    }

    #[test]
    fn url_values_are_one_percent_encoded_segment() {
        let t = PathTemplate::parse("/internal/rework-requests/{$.payload.id}/status").unwrap();
        let msg = json!({"payload": {"id": "RR 2026/00 1?#%ä"}});
        assert_eq!(
            t.render(&msg, &meta()).unwrap(),
            "/internal/rework-requests/RR%202026%2F00%201%3F%23%25%C3%A4/status"
        );
        assert_eq!(t.render(&json!({}), &meta()), Err(ShapeError::MissingUrlValue("$.payload.id".into())));
        for bad in ["", ".", ".."] {
            assert!(matches!(t.render(&json!({"payload": {"id": bad}}), &meta()), Err(ShapeError::UnsafeUrlValue(..))), "{bad:?}");
        }
        assert_eq!(t.render(&json!({"payload": {"id": "a..b"}}), &meta()).unwrap(), "/internal/rework-requests/a..b/status");
        assert!(PathTemplate::parse("/a/{$.x").is_err());
        assert!(PathTemplate::parse("/a/{nope}").is_err());
    }

    #[test]
    fn templates_keep_order_and_fill_nulls() {
        let toml: toml::Value = toml::from_str(r#"status = "$.p.status"
comment = "$.p.comment"
lit = "x"
dollar = "$$5"
offset = "kafka.offset""#)
        .unwrap();
        let t = Template::from_toml(&toml).unwrap();
        let v = t.render(&json!({"p": {"status": "OK"}}), &meta());
        assert_eq!(v, json!({"status": "OK", "comment": null, "lit": "x", "dollar": "$5", "offset": 41}));
    }

    #[test]
    fn http_shape_adds_kafka_headers() {
        let shape = HttpShape {
            method: "POST".into(),
            base_url: "http://127.0.0.1:1".into(),
            path: PathTemplate::parse("/n").unwrap(),
            headers: vec![],
            body: Body::Original,
        };
        let raw = br#"{"a": 1.10}"#;
        let req = shape.shape(raw, &json!({"a": 1.10}), &meta()).unwrap();
        assert_eq!(&req.body[..], raw);
        assert!(req.headers.contains(&("Idempotency-Key".into(), "t-2-41".into())));
        assert!(req.headers.contains(&("X-Kafka-Key".into(), "RR/1".into())));
    }
}
