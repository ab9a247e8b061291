//! Operator tooling: explicit topic creation (auto-creation stays off) and
//! realistic VED traffic for the demo, tests and benchmarks.

pub mod traffic;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

/// Creates topics that do not exist yet; existing ones are left alone.
pub async fn create_topics(brokers: &str, topics: &[(&str, i32)]) -> Result<(), KafkaError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    create_topics_with(c, topics).await
}

/// [`create_topics`] with a full client configuration (security settings).
pub async fn create_topics_with(config: ClientConfig, topics: &[(&str, i32)]) -> Result<(), KafkaError> {
    let admin: AdminClient<crate::consumer::QuietContext> = config.create_with_context(crate::consumer::QuietContext::new("admin"))?;
    let new: Vec<NewTopic> = topics.iter().map(|(name, parts)| NewTopic::new(name, *parts, TopicReplication::Fixed(1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    for r in admin.create_topics(new.iter(), &opts).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(KafkaError::AdminOp(code)).inspect_err(|_| tracing::error!(topic = %name, ?code, "cannot create topic")),
        }
    }
    Ok(())
}

/// An idempotent producer for tooling.
pub fn producer(brokers: &str) -> Result<FutureProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000")
        .create()
}

/// Produces records and waits for every acknowledgement, keeping at most
/// `window` in flight.
pub async fn produce_all(producer: &FutureProducer, records: &[traffic::Record], window: usize) -> Result<(), KafkaError> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    stream::iter(records.iter())
        .map(|r| async move {
            let mut rec = FutureRecord::<[u8], [u8]>::to(&r.topic);
            if let Some(p) = &r.payload {
                rec = rec.payload(p.as_slice());
            }
            if let Some(k) = &r.key {
                rec = rec.key(k.as_bytes());
            }
            producer.send(rec, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e)
        })
        .buffered(window.max(1))
        .try_for_each(|()| async { Ok(()) })
        .await
}
