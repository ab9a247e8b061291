//! The route table of one subscription: finds the first route whose
//! predicates all hold, through an index on the matched value.

use std::collections::HashMap;

use serde_json::Value;

use super::JsonPath;

/// A JSON scalar in a form that can be hashed and compared exactly.
/// Numbers compare by their literal text (`1` and `1.0` differ).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MatchValue {
    Str(String),
    Num(String),
    Bool(bool),
    Null,
}

impl MatchValue {
    pub fn from_json(v: &Value) -> Option<MatchValue> {
        Some(match v {
            Value::String(s) => MatchValue::Str(s.clone()),
            Value::Number(n) => MatchValue::Num(n.to_string()),
            Value::Bool(b) => MatchValue::Bool(*b),
            Value::Null => MatchValue::Null,
            _ => return None,
        })
    }

    /// Whether `v` is this scalar, without allocating.
    pub fn matches(&self, v: &Value) -> bool {
        match (self, v) {
            (MatchValue::Str(a), Value::String(b)) => a == b,
            (MatchValue::Num(a), Value::Number(b)) => *a == b.to_string(),
            (MatchValue::Bool(a), Value::Bool(b)) => a == b,
            (MatchValue::Null, Value::Null) => true,
            _ => false,
        }
    }
}

/// What a predicate requires of the value at its path.
#[derive(Debug, Clone)]
pub enum PredicateTest {
    Equals(MatchValue),
    OneOf(Vec<MatchValue>),
    Exists(bool),
}

#[derive(Debug, Clone)]
pub struct Predicate {
    pub path: JsonPath,
    pub test: PredicateTest,
}

impl Predicate {
    pub fn holds(&self, msg: &Value) -> bool {
        let found = self.path.first(msg);
        match &self.test {
            PredicateTest::Exists(want) => found.is_some() == *want,
            PredicateTest::Equals(m) => found.is_some_and(|v| m.matches(v)),
            PredicateTest::OneOf(ms) => found.is_some_and(|v| ms.iter().any(|m| m.matches(v))),
        }
    }
}

/// One index: a path whose value picks candidate routes.
#[derive(Debug)]
struct Index {
    path: JsonPath,
    by_value: HashMap<MatchValue, Vec<usize>>,
}

/// Routes of one subscription in precedence order (first match wins).
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Vec<Predicate>>,
    off: Vec<bool>,
    indexes: Vec<Index>,
    /// Routes with no equals/one_of predicate on a singular path: always tried.
    unindexed: Vec<usize>,
}

impl RouteTable {
    /// Builds the table from each route's predicates, in precedence order.
    /// `None` marks a route that is switched off and never matches.
    pub fn new(routes: Vec<Option<Vec<Predicate>>>) -> Self {
        let mut table = RouteTable::default();
        for (i, preds) in routes.into_iter().enumerate() {
            table.off.push(preds.is_none());
            let Some(preds) = preds else {
                table.routes.push(Vec::new());
                continue;
            };
            let key = preds.iter().find_map(|p| match &p.test {
                PredicateTest::Equals(v) if p.path.is_singular() => Some((p.path.clone(), vec![v.clone()])),
                PredicateTest::OneOf(vs) if p.path.is_singular() => Some((p.path.clone(), vs.clone())),
                _ => None,
            });
            match key {
                Some((path, values)) => {
                    let pos = match table.indexes.iter().position(|ix| ix.path.as_str() == path.as_str()) {
                        Some(pos) => pos,
                        None => {
                            table.indexes.push(Index { path, by_value: HashMap::new() });
                            table.indexes.len() - 1
                        }
                    };
                    for v in values {
                        let bucket = table.indexes[pos].by_value.entry(v).or_default();
                        if !bucket.contains(&i) {
                            bucket.push(i);
                        }
                    }
                }
                None => table.unindexed.push(i),
            }
            table.routes.push(preds);
        }
        table
    }

    /// The predicates the table was built from (`None` for switched-off routes).
    pub fn into_predicates(self) -> Vec<Option<Vec<Predicate>>> {
        self.routes.into_iter().zip(self.off).map(|(p, off)| (!off).then_some(p)).collect()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Index of the first route whose predicates all hold for `msg`.
    pub fn find(&self, msg: &Value) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut consider = |candidates: &[usize]| {
            for &i in candidates {
                if best.is_some_and(|b| b <= i) {
                    break;
                }
                if self.routes[i].iter().all(|p| p.holds(msg)) {
                    best = Some(i);
                    break;
                }
            }
        };
        for ix in &self.indexes {
            let Some(v) = ix.path.first(msg) else { continue };
            // Lookups borrow the message's value; only scalars are indexable.
            let key = match v {
                Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null => MatchValue::from_json(v),
                _ => None,
            };
            if let Some(bucket) = key.and_then(|k| ix.by_value.get(&k)) {
                consider(bucket);
            }
        }
        consider(&self.unindexed);
        best
    }

    /// Routes that some earlier route always claims first (same index value
    /// and no further predicates on the earlier one): they can never match.
    pub fn shadowed(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (later, preds) in self.routes.iter().enumerate() {
            if self.off[later] {
                continue;
            }
            for earlier in 0..later {
                let e = &self.routes[earlier];
                if self.off[earlier] {
                    continue;
                }
                if e.iter().all(|ep| preds.iter().any(|lp| implies(lp, ep))) {
                    out.push((earlier, later));
                    break;
                }
            }
        }
        out
    }
}

impl RouteTable {
    /// Pairs of routes whose index values overlap: both claim some messages,
    /// and the earlier takes them (there is no fan-out).
    pub fn overlaps(&self) -> Vec<(usize, usize, String)> {
        let mut out = Vec::new();
        for ix in &self.indexes {
            for (value, bucket) in &ix.by_value {
                for (n, &a) in bucket.iter().enumerate() {
                    for &b in &bucket[n + 1..] {
                        if !out.iter().any(|(x, y, _)| (*x, *y) == (a, b)) {
                            out.push((a, b, format!("{} = {:?}", ix.path.as_str(), value)));
                        }
                    }
                }
            }
        }
        out.sort();
        out
    }
}

/// Whether predicate `a` holding guarantees predicate `b` holds.
fn implies(a: &Predicate, b: &Predicate) -> bool {
    if a.path.as_str() != b.path.as_str() {
        return false;
    }
    match (&a.test, &b.test) {
        (PredicateTest::Equals(x), PredicateTest::Equals(y)) => x == y,
        (PredicateTest::Equals(x), PredicateTest::OneOf(ys)) => ys.contains(x),
        (PredicateTest::OneOf(xs), PredicateTest::OneOf(ys)) => xs.iter().all(|x| ys.contains(x)),
        (PredicateTest::Equals(_) | PredicateTest::OneOf(_), PredicateTest::Exists(true)) => true,
        (PredicateTest::Exists(x), PredicateTest::Exists(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eq(path: &str, v: &str) -> Predicate {
        Predicate { path: JsonPath::parse(path).unwrap(), test: PredicateTest::Equals(MatchValue::Str(v.into())) }
    }
    fn one_of(path: &str, vs: &[&str]) -> Predicate {
        Predicate {
            path: JsonPath::parse(path).unwrap(),
            test: PredicateTest::OneOf(vs.iter().map(|v| MatchValue::Str(v.to_string())).collect()),
        }
    }
    fn exists(path: &str) -> Predicate {
        Predicate { path: JsonPath::parse(path).unwrap(), test: PredicateTest::Exists(true) }
    }

    fn conversions_table() -> RouteTable {
        RouteTable::new(vec![
            Some(vec![eq("$.operationCode", "conversion_notification"), eq("$.payload.conversionTypeCode", "FORWARD")]),
            Some(vec![eq("$.operationCode", "COLVIR.DOP_RATE_UPDATE")]),
        ])
    }

    #[test]
    fn finds_by_indexed_value_then_remaining_predicates() {
        let t = conversions_table();
        let fwd = json!({"operationCode": "conversion_notification", "payload": {"conversionTypeCode": "FORWARD"}});
        let spot = json!({"operationCode": "conversion_notification", "payload": {"conversionTypeCode": "SPOT"}});
        let rates = json!({"operationCode": "COLVIR.DOP_RATE_UPDATE", "payload": {"rates": []}});
        assert_eq!(t.find(&fwd), Some(0));
        assert_eq!(t.find(&spot), None);
        assert_eq!(t.find(&rates), Some(1));
        assert_eq!(t.find(&json!({"operationCode": 5})), None);
        assert_eq!(t.find(&json!({"meta": {"code": "DOC_STATUS"}})), None);
    }

    #[test]
    fn first_route_in_file_order_wins_across_indexes() {
        let t = RouteTable::new(vec![
            Some(vec![exists("$.payload.special")]),
            Some(vec![eq("$.meta.code", "DOC_STATUS")]),
            Some(vec![one_of("$.meta.code", &["DOC_STATUS", "X"])]),
        ]);
        assert_eq!(t.find(&json!({"meta": {"code": "DOC_STATUS"}, "payload": {"special": 1}})), Some(0));
        assert_eq!(t.find(&json!({"meta": {"code": "DOC_STATUS"}})), Some(1));
        assert_eq!(t.find(&json!({"meta": {"code": "X"}})), Some(2));
        assert_eq!(t.shadowed(), vec![]);
    }

    #[test]
    fn switched_off_routes_never_match() {
        let t = RouteTable::new(vec![None, Some(vec![eq("$.operation", "a")])]);
        assert_eq!(t.find(&json!({"operation": "a"})), Some(1));
    }

    #[test]
    fn reports_shadowed_routes() {
        let t = RouteTable::new(vec![
            Some(vec![one_of("$.operationCode", &["a", "b"])]),
            Some(vec![eq("$.operationCode", "a"), exists("$.payload")]),
        ]);
        assert_eq!(t.shadowed(), vec![(0, 1)]);
    }

    #[test]
    fn numbers_match_by_literal_text() {
        let t = RouteTable::new(vec![Some(vec![Predicate {
            path: JsonPath::parse("$.v").unwrap(),
            test: PredicateTest::Equals(MatchValue::Num("12345678901234567890123".into())),
        }])]);
        let v: Value = serde_json::from_str(r#"{"v": 12345678901234567890123}"#).unwrap();
        assert_eq!(t.find(&v), Some(0));
        let w: Value = serde_json::from_str(r#"{"v": 12345678901234567890124}"#).unwrap();
        assert_eq!(t.find(&w), None);
    }
}
