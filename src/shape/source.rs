//! Where a shaped value comes from: the message (`$.path`), the current
//! `for_each` element (`@.path`), or the Kafka record (`kafka.offset`, ...).

use serde_json::Value;

use crate::routing::JsonPath;

/// Kafka coordinates and metadata of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    /// Shared by every record of a subscription: no copy per message.
    pub topic: std::sync::Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// Milliseconds since the epoch, when the record has a timestamp.
    pub timestamp_ms: Option<i64>,
    /// W3C `traceparent` from the record's headers, passed on to HTTP sinks.
    pub traceparent: Option<String>,
}

impl RecordMeta {
    /// The key as text: UTF-8 as is, anything else lossily converted.
    pub fn key_text(&self) -> Option<String> {
        self.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned())
    }

    /// `{topic}-{partition}-{offset}`: stable across redeliveries.
    pub fn idempotency_key(&self) -> String {
        format!("{}-{}-{}", self.topic, self.partition, self.offset)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaField {
    Topic,
    Partition,
    Offset,
    Key,
    Timestamp,
}

#[derive(Debug, Clone)]
pub enum Source {
    Message(JsonPath),
    Element(JsonPath),
    Kafka(KafkaField),
}

impl Source {
    /// Parses `$...`, `@...` or `kafka.<field>`.
    pub fn parse(text: &str) -> Result<Source, String> {
        if text.starts_with('$') {
            return JsonPath::parse(text).map(Source::Message);
        }
        if let Some(rest) = text.strip_prefix('@') {
            return JsonPath::parse(&format!("${rest}")).map(Source::Element);
        }
        if let Some(field) = text.strip_prefix("kafka.") {
            let f = match field {
                "topic" => KafkaField::Topic,
                "partition" => KafkaField::Partition,
                "offset" => KafkaField::Offset,
                "key" => KafkaField::Key,
                "timestamp" => KafkaField::Timestamp,
                other => {
                    return Err(format!(
                        "unknown Kafka field {other:?} (expected topic, partition, offset, key or timestamp)"
                    ))
                }
            };
            return Ok(Source::Kafka(f));
        }
        Err(format!("unknown value source {text:?}: expected a JSONPath `$.…`, an element path `@.…` or `kafka.<field>`"))
    }

    pub fn is_element(&self) -> bool {
        matches!(self, Source::Element(_))
    }

    /// The value, or `None` when the message does not have it.
    pub fn resolve(&self, msg: &Value, element: Option<&Value>, meta: &RecordMeta) -> Option<Value> {
        match self {
            Source::Message(p) => p.first(msg).cloned(),
            Source::Element(p) => element.and_then(|e| p.first(e)).cloned(),
            Source::Kafka(f) => Some(match f {
                KafkaField::Topic => Value::String(meta.topic.to_string()),
                KafkaField::Partition => Value::from(meta.partition),
                KafkaField::Offset => Value::from(meta.offset),
                KafkaField::Key => return meta.key_text().map(Value::String),
                KafkaField::Timestamp => {
                    let ms = meta.timestamp_ms?;
                    let ts = chrono::DateTime::from_timestamp_millis(ms)?;
                    Value::String(ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                }
            }),
        }
    }
}
