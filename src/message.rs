//! Decoding a Kafka record's value into the JSON the routes read, with one
//! interpretation of every edge case (documented in docs/routes.md):
//! size and depth limits, strict UTF-8, duplicate keys rejected, numbers
//! kept exact, and the top level must be an object.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

/// Why a record's value cannot be routed. Each is dead-lettered as
/// `invalid-message` (or skipped and counted, for tombstones).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("null value (tombstone)")]
    Tombstone,
    #[error("empty value")]
    Empty,
    #[error("value of {size} bytes is larger than max_message_bytes ({limit})")]
    TooLarge { size: usize, limit: usize },
    #[error("JSON nested deeper than max_json_depth ({0})")]
    TooDeep(usize),
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("top-level JSON is {0}, not an object")]
    NotAnObject(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_depth: usize,
}

/// Decodes a record value; `None` is a tombstone.
pub fn decode(value: Option<&[u8]>, limits: Limits) -> Result<Value, Invalid> {
    let raw = value.ok_or(Invalid::Tombstone)?;
    if raw.is_empty() {
        return Err(Invalid::Empty);
    }
    if raw.len() > limits.max_bytes {
        return Err(Invalid::TooLarge { size: raw.len(), limit: limits.max_bytes });
    }
    // Checked before parsing, so depth can never exhaust the stack.
    if depth_exceeds(raw, limits.max_depth) {
        return Err(Invalid::TooDeep(limits.max_depth));
    }
    let mut de = serde_json::Deserializer::from_slice(raw);
    let v = Strict::deserialize(&mut de).map_err(|e| Invalid::NotJson(e.to_string()))?;
    de.end().map_err(|e| Invalid::NotJson(e.to_string()))?;
    match v.0 {
        Value::Object(_) => Ok(v.0),
        Value::Null => Err(Invalid::NotAnObject("null")),
        Value::Array(_) => Err(Invalid::NotAnObject("an array")),
        Value::String(_) => Err(Invalid::NotAnObject("a string")),
        Value::Number(_) => Err(Invalid::NotAnObject("a number")),
        Value::Bool(_) => Err(Invalid::NotAnObject("a boolean")),
    }
}

/// Bracket depth outside strings, without parsing.
fn depth_exceeds(raw: &[u8], max: usize) -> bool {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for &b in raw {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A `serde_json::Value` that refuses duplicate object keys.
struct Strict(Value);

/// serde_json's `arbitrary_precision` passes numbers as this one-entry map.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Strict, E> {
        Number::from_f64(v).map(|n| Strict(Value::Number(n))).ok_or_else(|| E::custom("number is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Strict(Value::Array(out)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        // Contract objects have a handful of keys: start with room, skip the regrowths.
        let mut out = Map::with_capacity(8);
        while let Some(key) = map.next_key::<String>()? {
            if out.is_empty() && key == NUMBER_TOKEN {
                let text: String = map.next_value()?;
                let n: Number = text.parse().map_err(de::Error::custom)?;
                return Ok(Strict(Value::Number(n)));
            }
            // One hash per key: the duplicate check and the insert share it.
            match out.entry(key) {
                serde_json::map::Entry::Occupied(e) => return Err(de::Error::custom(format!("duplicate key {:?}", e.key()))),
                serde_json::map::Entry::Vacant(e) => {
                    let Strict(v) = map.next_value()?;
                    e.insert(v);
                }
            }
        }
        Ok(Strict(Value::Object(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { max_bytes: 1000, max_depth: 8 };

    #[test]
    fn keeps_numbers_exact_and_unicode() {
        let v = decode(Some(r#"{"a": 98765432109876543.21, "b": 123456789012345678901234567890, "ключ": "знач\u00e9", "c": 1.50}"#.as_bytes()), L).unwrap();
        assert_eq!(v["a"].to_string(), "98765432109876543.21");
        assert_eq!(v["b"].to_string(), "123456789012345678901234567890");
        assert_eq!(v["c"].to_string(), "1.50");
        assert_eq!(v["ключ"], Value::String("znacé".replace("znac", "знач")));
    }

    #[test]
    fn every_poison_kind_has_one_outcome() {
        assert_eq!(decode(None, L), Err(Invalid::Tombstone));
        assert_eq!(decode(Some(b""), L), Err(Invalid::Empty));
        assert!(matches!(decode(Some(&[b' '; 1001]), L), Err(Invalid::TooLarge { .. })));
        assert_eq!(decode(Some(b"[[[[[[[[[[1]]]]]]]]]]"), L), Err(Invalid::TooDeep(8)));
        assert_eq!(decode(Some(br#"{"s": "[[[[[[[[[[[[[["}"#), L).unwrap()["s"], Value::String("[[[[[[[[[[[[[[".into()));
        assert!(matches!(decode(Some(b"not json"), L), Err(Invalid::NotJson(_))));
        assert!(matches!(decode(Some(b"{\"a\": \"\xff\"}"), L), Err(Invalid::NotJson(_))));
        assert!(matches!(decode(Some(br#"{"a": 1, "a": 2}"#), L), Err(Invalid::NotJson(e)) if e.contains("duplicate key")));
        assert!(matches!(decode(Some(br#"{"a": {"b": 1, "b": 1}}"#), L), Err(Invalid::NotJson(_))));
        assert_eq!(decode(Some(b"null"), L), Err(Invalid::NotAnObject("null")));
        assert_eq!(decode(Some(b"[1]"), L), Err(Invalid::NotAnObject("an array")));
        assert_eq!(decode(Some(b"42"), L), Err(Invalid::NotAnObject("a number")));
        assert!(matches!(decode(Some(b"{} {}"), L), Err(Invalid::NotJson(_))));
        assert_eq!(decode(Some(br#"{"k\u0041": "\"x\""}"#), L).unwrap()["kA"], Value::String("\"x\"".into()));
    }

    #[test]
    fn depth_far_beyond_the_limit_does_not_overflow_the_stack() {
        let deep = "[".repeat(200_000);
        assert_eq!(decode(Some(deep.as_bytes()), Limits { max_bytes: 1 << 20, max_depth: 64 }), Err(Invalid::TooDeep(64)));
    }
}
