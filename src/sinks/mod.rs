//! Sinks: where shaped requests go. A closed set of kinds: HTTP, SQL
//! (PostgreSQL) and blackhole. Each delivery ends in success, a retryable
//! error or a permanent error; the consumer core decides what follows.

pub mod http;
pub mod sql;

use std::time::Duration;

use crate::config::{SinkKind, SinkSpec};
use crate::shape::Request;

/// Why a delivery failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("retryable: {reason}")]
    Retryable { reason: String, retry_after: Option<Duration> },
    #[error("permanent: {reason}")]
    Permanent { reason: String },
}

impl DeliveryError {
    pub fn retryable(reason: impl Into<String>) -> Self {
        DeliveryError::Retryable { reason: reason.into(), retry_after: None }
    }
    pub fn permanent(reason: impl Into<String>) -> Self {
        DeliveryError::Permanent { reason: reason.into() }
    }
    pub fn is_retryable(&self) -> bool {
        matches!(self, DeliveryError::Retryable { .. })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("sink {id}: {reason}")]
pub struct BuildError {
    pub id: String,
    pub reason: String,
}

/// A sink ready to deliver: its client or pool, and its flow control.
pub struct Sink {
    target: Target,
    /// Requests per second, shared by every route and partition using the sink.
    limiter: Option<governor::DefaultDirectRateLimiter>,
    /// Requests in flight at most.
    in_flight: Option<tokio::sync::Semaphore>,
}

enum Target {
    Http(http::HttpSink),
    Sql(sql::SqlSink),
    Blackhole,
}

impl Sink {
    /// Waits for the rate limit and an in-flight slot.
    async fn admit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        if let Some(l) = &self.limiter {
            l.until_ready().await;
        }
        match &self.in_flight {
            Some(s) => s.acquire().await.ok(),
            None => None,
        }
    }

    /// Builds the client or pool. Connections open lazily, so a target that
    /// is down at start is retried per message rather than failing the start.
    pub fn build(spec: &SinkSpec) -> Result<Sink, BuildError> {
        let err = |reason: String| BuildError { id: spec.id.clone(), reason };
        let target = match &spec.kind {
            SinkKind::Http { timeout, retryable_statuses, tls, .. } => Target::Http(http::HttpSink::new(*timeout, retryable_statuses.clone(), tls).map_err(err)?),
            SinkKind::Sql { url, pool_size, .. } => Target::Sql(sql::SqlSink::new(url, *pool_size).map_err(err)?),
            SinkKind::Blackhole => Target::Blackhole,
        };
        let limiter = spec
            .flow
            .rate_per_s
            .and_then(std::num::NonZeroU32::new)
            .map(|r| governor::RateLimiter::direct(governor::Quota::per_second(r)));
        let in_flight = spec.flow.max_in_flight.map(|n| tokio::sync::Semaphore::new(n.max(1)));
        Ok(Sink { target, limiter, in_flight })
    }

    /// Several SQL requests in one transaction; any failure fails them all
    /// (the caller then delivers them one by one).
    pub async fn deliver_batch(&self, reqs: &[&crate::shape::SqlRequest]) -> Result<(), DeliveryError> {
        let _slot = self.admit().await;
        match &self.target {
            Target::Sql(s) => s.deliver_batch(reqs).await,
            _ => Err(DeliveryError::permanent("only SQL sinks take batches")),
        }
    }

    /// Whether the target answers: a database round trip for SQL sinks.
    /// HTTP targets have no common health endpoint; their failures show in
    /// the delivery metrics instead.
    pub async fn health(&self) -> Result<(), String> {
        match &self.target {
            Target::Sql(s) => s.health().await,
            _ => Ok(()),
        }
    }

    pub async fn deliver(&self, req: &Request) -> Result<(), DeliveryError> {
        let _slot = self.admit().await;
        match (&self.target, req) {
            (Target::Http(s), Request::Http(r)) => s.deliver(r).await,
            (Target::Sql(s), Request::Sql(r)) => s.deliver(r).await,
            (_, Request::Discard) | (Target::Blackhole, _) => Ok(()),
            _ => Err(DeliveryError::permanent("request kind does not fit the sink kind")),
        }
    }
}
