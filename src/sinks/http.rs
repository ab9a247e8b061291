//! HTTP sink: one request per message over a pooled reqwest client.
//! 2xx is delivered; 408, 429, 5xx, connect errors and timeouts are
//! retryable (honouring `Retry-After`); other statuses are permanent.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};

use super::DeliveryError;
use crate::shape::HttpRequest;

pub struct HttpSink {
    client: reqwest::Client,
    /// Replaces the default retryable set (408, 429, 5xx) when given.
    retryable_statuses: Option<Vec<u16>>,
}

impl HttpSink {
    pub fn new(timeout: Duration, retryable_statuses: Option<Vec<u16>>, tls: &crate::config::HttpTls) -> Result<Self, String> {
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let mut builder = reqwest::Client::builder();
        if let Some(ca) = &tls.ca_file {
            let cert = reqwest::Certificate::from_pem(&read(ca)?).map_err(|e| format!("{}: not a PEM certificate: {e}", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        if let (Some(cert), Some(key)) = (&tls.client_cert_file, &tls.client_key_file) {
            let id = reqwest::Identity::from_pkcs8_pem(&read(cert)?, &read(key)?).map_err(|e| format!("client certificate: {e}"))?;
            builder = builder.identity(id);
        }
        let client = builder
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("cannot build HTTP client: {e}"))?;
        Ok(HttpSink { client, retryable_statuses })
    }

    pub async fn deliver(&self, req: &HttpRequest) -> Result<(), DeliveryError> {
        let method = Method::from_bytes(req.method.as_bytes()).map_err(|e| DeliveryError::permanent(e.to_string()))?;
        let mut headers = HeaderMap::with_capacity(req.headers.len());
        for (k, v) in &req.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| DeliveryError::permanent(format!("header {k:?}: {e}")))?;
            let value = HeaderValue::from_str(v).map_err(|e| DeliveryError::permanent(format!("header {k:?}: {e}")))?;
            headers.append(name, value);
        }
        let resp = self
            .client
            .request(method, &req.url)
            .headers(headers)
            .body(req.body.clone())
            .send()
            .await
            .map_err(|e| DeliveryError::retryable(format!("{} {}: {}", req.method, req.url, error_chain(&e))))?;
        let status = resp.status();
        if status.is_success() {
            // Drain the body so the connection goes back to the pool.
            let _ = resp.bytes().await;
            return Ok(());
        }
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp.text().await.unwrap_or_default();
        let snippet: String = body.chars().take(200).collect();
        let reason = format!("{} {} answered {}: {}", req.method, req.url, status, snippet);
        let retry = match &self.retryable_statuses {
            Some(list) => list.contains(&status.as_u16()),
            None => retryable_status(status),
        };
        if retry {
            Err(DeliveryError::Retryable { reason, retry_after })
        } else {
            Err(DeliveryError::Permanent { reason })
        }
    }
}

pub fn retryable_status(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
