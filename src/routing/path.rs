//! JSONPaths compiled once at load time and evaluated per message.
//!
//! Paths made only of names and indexes (`$.payload.ordId`, `$.a[0]`) are
//! walked directly with no allocation; anything else (wildcards, filters,
//! slices, descendants) goes through jsonpath-rust's evaluator.

use jsonpath_rust::parser::model::{JpQuery, Segment, Selector};
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct JsonPath {
    text: String,
    kind: PathKind,
}

#[derive(Debug, Clone)]
enum PathKind {
    Singular(Vec<Step>),
    General(JpQuery),
}

#[derive(Debug, Clone)]
enum Step {
    Name(String),
    Index(i64),
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<Self, String> {
        let query = parse_json_path(text).map_err(|e| format!("invalid JSONPath {text:?}: {e}"))?;
        let steps: Option<Vec<Step>> = query
            .segments
            .iter()
            .map(|seg| match seg {
                Segment::Selector(Selector::Name(n)) => Some(Step::Name(n.clone())),
                Segment::Selector(Selector::Index(i)) => Some(Step::Index(*i)),
                _ => None,
            })
            .collect();
        let kind = match steps {
            Some(steps) => PathKind::Singular(steps),
            None => PathKind::General(query),
        };
        Ok(JsonPath { text: text.to_string(), kind })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when the path can select at most one value.
    pub fn is_singular(&self) -> bool {
        matches!(self.kind, PathKind::Singular(_))
    }

    /// The steps of a singular path: `Some(name)` for a name, `None` for an index.
    pub fn steps(&self) -> Option<Vec<Option<&str>>> {
        match &self.kind {
            PathKind::Singular(steps) => Some(steps.iter().map(|s| match s {
                Step::Name(n) => Some(n.as_str()),
                Step::Index(_) => None,
            }).collect()),
            PathKind::General(_) => None,
        }
    }

    /// The one value the path selects: the first when it selects several.
    pub fn first<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        match &self.kind {
            PathKind::Singular(steps) => walk(root, steps),
            PathKind::General(q) => js_path_process(q, root).ok()?.into_iter().next().map(|r| r.val),
        }
    }

    /// Every value the path selects, in document order.
    pub fn all<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        match &self.kind {
            PathKind::Singular(steps) => walk(root, steps).into_iter().collect(),
            PathKind::General(q) => js_path_process(q, root)
                .map(|v| v.into_iter().map(|r| r.val).collect())
                .unwrap_or_default(),
        }
    }
}

fn walk<'a>(mut v: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    for step in steps {
        v = match (step, v) {
            (Step::Name(n), Value::Object(m)) => m.get(n)?,
            (Step::Index(i), Value::Array(a)) => {
                let idx = if *i < 0 { a.len().checked_sub(i.unsigned_abs() as usize)? } else { *i as usize };
                a.get(idx)?
            }
            _ => return None,
        };
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn singular_paths_walk_directly() {
        let v = json!({"meta": {"code": "DOC_STATUS"}, "a": [1, 2, 3], "odd key": {"x": true}});
        let p = JsonPath::parse("$.meta.code").unwrap();
        assert!(p.is_singular());
        assert_eq!(p.first(&v), Some(&json!("DOC_STATUS")));
        assert_eq!(JsonPath::parse("$.a[-1]").unwrap().first(&v), Some(&json!(3)));
        assert_eq!(JsonPath::parse("$['odd key'].x").unwrap().first(&v), Some(&json!(true)));
        assert_eq!(JsonPath::parse("$.meta.nope").unwrap().first(&v), None);
        assert_eq!(JsonPath::parse("$.meta.code.deeper").unwrap().first(&v), None);
    }

    #[test]
    fn general_paths_use_the_evaluator() {
        let v = json!({"payload": {"rates": [{"c": "USD"}, {"c": "EUR"}]}});
        let p = JsonPath::parse("$.payload.rates[*]").unwrap();
        assert!(!p.is_singular());
        assert_eq!(p.all(&v).len(), 2);
        let f = JsonPath::parse("$.payload.rates[?@.c == 'EUR'].c").unwrap();
        assert_eq!(f.all(&v), vec![&json!("EUR")]);
    }

    #[test]
    fn malformed_paths_are_rejected() {
        assert!(JsonPath::parse("$.payload[").is_err());
        assert!(JsonPath::parse("payload").is_err());
    }
}
