//! Dead letters: the original key and value bytes, with headers saying
//! where the record came from and why it could not be delivered.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use super::DeadLetterProducer;

use crate::shape::RecordMeta;

/// Why a message was dead-lettered (`vedgate-error-class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Permanent,
    RetriesExhausted,
    InvalidMessage,
    Schema,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Permanent => "permanent",
            ErrorClass::RetriesExhausted => "retries-exhausted",
            ErrorClass::InvalidMessage => "invalid-message",
            ErrorClass::Schema => "schema",
        }
    }
}

/// What goes into one dead letter besides the original bytes.
pub struct DeadLetter<'a> {
    pub meta: &'a RecordMeta,
    pub value: Option<&'a [u8]>,
    pub group: &'a str,
    pub route: &'a str,
    pub class: ErrorClass,
    pub reason: &'a str,
    pub attempts: u32,
}

/// Writes dead letters of one subscription to its topic.
#[derive(Clone)]
pub struct DeadLetterWriter {
    pub topic: String,
    producer: DeadLetterProducer,
}

impl DeadLetterWriter {
    pub fn new(topic: String, producer: DeadLetterProducer) -> Self {
        DeadLetterWriter { topic, producer }
    }

    /// Returns once the broker acknowledged the record (acks=all).
    pub async fn write(&self, dl: &DeadLetter<'_>) -> Result<(), String> {
        let partition = dl.meta.partition.to_string();
        let offset = dl.meta.offset.to_string();
        let ts = dl.meta.timestamp_ms.map(|t| t.to_string()).unwrap_or_default();
        let attempts = dl.attempts.to_string();
        // Header values are bytes; keep the reason readable and bounded.
        let reason: String = dl.reason.chars().take(2000).collect();
        let headers = OwnedHeaders::new_with_capacity(9)
            .insert(Header { key: "vedgate-original-topic", value: Some(dl.meta.topic.as_bytes()) })
            .insert(Header { key: "vedgate-original-partition", value: Some(partition.as_bytes()) })
            .insert(Header { key: "vedgate-original-offset", value: Some(offset.as_bytes()) })
            .insert(Header { key: "vedgate-original-timestamp", value: Some(ts.as_bytes()) })
            .insert(Header { key: "vedgate-group", value: Some(dl.group.as_bytes()) })
            .insert(Header { key: "vedgate-route", value: Some(dl.route.as_bytes()) })
            .insert(Header { key: "vedgate-error-class", value: Some(dl.class.as_str().as_bytes()) })
            .insert(Header { key: "vedgate-error-reason", value: Some(reason.as_bytes()) })
            .insert(Header { key: "vedgate-attempts", value: Some(attempts.as_bytes()) });
        let mut rec = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(k) = &dl.meta.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = dl.value {
            rec = rec.payload(v);
        }
        self.producer
            .send(rec, Duration::from_secs(5))
            .await
            .map(|_| ())
            .map_err(|(e, _)| format!("dead-letter write to {} failed: {e}", self.topic))
    }
}
