//! SQL shaping: `:name` parameters rewritten to `$n` once at load time, and
//! rows of parameter values taken from the message. Values are always bound,
//! never written into the SQL text.

use std::sync::Arc;

use serde_json::Value;

use super::{RecordMeta, ShapeError, Source, SqlRequest};
use crate::routing::JsonPath;

/// Rewrites `:name` parameters to `$1..$n` (a name used twice gets one
/// number) and returns the names in number order. Skips string literals,
/// quoted identifiers, comments, dollar-quoted strings and `::` casts.
pub fn rewrite_named_params(sql: &str) -> (String, Vec<String>) {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    let copy_until = |out: &mut String, from: usize, to: usize| out.push_str(&sql[from..to]);
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b'\'' | b'"' => {
                i += 1;
                while i < b.len() {
                    if b[i] == c {
                        if i + 1 < b.len() && b[i + 1] == c {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i = (i + 1).min(b.len());
                copy_until(&mut out, start, i);
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map(|n| i + n).unwrap_or(b.len());
                copy_until(&mut out, start, i);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..].find("*/").map(|n| i + 2 + n + 2).unwrap_or(b.len());
                copy_until(&mut out, start, i);
            }
            b'$' => {
                // Dollar quote: $tag$ ... $tag$
                let tag_end = sql[i + 1..]
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                    .map(|n| i + 1 + n);
                match tag_end {
                    Some(e) if b[e] == b'$' && !sql[i + 1..e].starts_with(|c: char| c.is_ascii_digit()) => {
                        let tag = &sql[i..=e];
                        i = sql[e + 1..].find(tag).map(|n| e + 1 + n + tag.len()).unwrap_or(b.len());
                    }
                    _ => i += 1,
                }
                copy_until(&mut out, start, i);
            }
            b':' if b.get(i + 1) == Some(&b':') => {
                i += 2;
                copy_until(&mut out, start, i);
            }
            b':' if b.get(i + 1).is_some_and(|ch| ch.is_ascii_alphabetic() || *ch == b'_') => {
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let name = &sql[start + 1..i];
                let n = match names.iter().position(|x| x == name) {
                    Some(p) => p + 1,
                    None => {
                        names.push(name.to_string());
                        names.len()
                    }
                };
                out.push_str(&format!("${n}"));
            }
            _ => {
                let ch_len = sql[i..].chars().next().map(char::len_utf8).unwrap_or(1);
                i += ch_len;
                copy_until(&mut out, start, i);
            }
        }
    }
    (out, names)
}

/// How a route shapes SQL rows.
#[derive(Debug, Clone)]
pub struct SqlShape {
    pub statement: Arc<str>,
    /// One source per `$n`, in order.
    pub params: Vec<Source>,
    pub for_each: Option<JsonPath>,
}

impl SqlShape {
    pub fn shape(&self, msg: &Value, meta: &RecordMeta) -> Result<SqlRequest, ShapeError> {
        let row = |element: Option<&Value>| -> Vec<Value> {
            self.params.iter().map(|s| s.resolve(msg, element, meta).unwrap_or(Value::Null)).collect()
        };
        let rows = match &self.for_each {
            None => vec![row(None)],
            Some(path) => {
                let selected = path.all(msg);
                let elements: Vec<&Value> = match selected.as_slice() {
                    [Value::Array(items)] => items.iter().collect(),
                    [] => return Err(ShapeError::NotAnArray(path.as_str().to_string())),
                    [Value::Null] => return Err(ShapeError::NotAnArray(path.as_str().to_string())),
                    many if path.is_singular() => return Err(ShapeError::NotAnArray(format!("{} ({})", path.as_str(), kind(many[0])))),
                    many => many.to_vec(),
                };
                elements.into_iter().map(|e| row(Some(e))).collect()
            }
        };
        Ok(SqlRequest { statement: self.statement.clone(), rows })
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rewrites_names_and_leaves_the_rest() {
        let (sql, names) = rewrite_named_params(
            "INSERT INTO t (a, b) VALUES (:a, :b::numeric) -- :nope\n ON CONFLICT DO UPDATE SET c = ':x', d = $q$:y$q$, e = :a /* :z */",
        );
        assert_eq!(
            sql,
            "INSERT INTO t (a, b) VALUES ($1, $2::numeric) -- :nope\n ON CONFLICT DO UPDATE SET c = ':x', d = $q$:y$q$, e = $1 /* :z */"
        );
        assert_eq!(names, vec!["a", "b"]);
    }

    #[test]
    fn for_each_makes_one_row_per_element() {
        let shape = SqlShape {
            statement: "x".into(),
            params: vec![Source::parse("@.c").unwrap(), Source::parse("$.id").unwrap()],
            for_each: Some(JsonPath::parse("$.rates").unwrap()),
        };
        let meta = RecordMeta { topic: "t".into(), partition: 0, offset: 0, key: None, timestamp_ms: None, traceparent: None };
        let r = shape.shape(&json!({"id": 7, "rates": [{"c": "USD"}, {}]}), &meta).unwrap();
        assert_eq!(r.rows, vec![vec![json!("USD"), json!(7)], vec![Value::Null, json!(7)]]);
        assert!(shape.shape(&json!({"rates": "x"}), &meta).is_err());
        assert!(shape.shape(&json!({}), &meta).is_err());
    }
}
