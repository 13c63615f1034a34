//! HTTPS webhook sink: each record is POSTed as its exact canonical JSON.
//!
//! One request per record, in sequence order. The body is the record's stored bytes
//! ([`SpooledRecord::json`]), so a receiver can check the record's hash over exactly what it
//! received. Headers follow the Standard Webhooks specification, so receivers can use any of its
//! libraries to verify them:
//! - `webhook-id` and `Idempotency-Key`: the record's idempotency key (`device/guid/revision`),
//!   identical on every redelivery, so the receiver deduplicates retries by it;
//! - `webhook-timestamp`: Unix seconds when the request was signed;
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, with the key
//!   from `hmacSecretFile` (a `whsec_<base64>` value is decoded as the spec says; any other value
//!   is used as raw bytes);
//! - `X-Capturefleet-Seq`, `X-Capturefleet-Record-Sha256`, `X-Capturefleet-Device`.
//!
//! Outcomes: 2xx acknowledges the record; 408, 429 and 5xx, timeouts and connection failures are
//! transient (retried with backoff by the delivery loop); any other status (4xx, and 3xx since
//! redirects are not followed with a signed body) is a permanent error, reported loudly while
//! the record stays in the spool. The URL must be `https://`; certificates are always verified
//! (system roots plus `caFile`).

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use sha2::Sha256;
use tracing::{debug, instrument, warn};

use super::ca::CaBundle;
use super::secret::{SecretValue, read_secret_file};
use super::{AttachmentStore, Sink, SinkError, SpooledRecord};
use crate::api::agent::WebhookTarget;

/// The webhook sink.
pub struct WebhookSink {
    name: String,
    url: reqwest::Url,
    key: Vec<u8>,
    client: reqwest::Client,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("name", &self.name)
            .field("host", &self.url.host_str())
            .finish_non_exhaustive()
    }
}

/// The HMAC key of a secret value: `whsec_<base64>` is decoded, anything else is raw bytes.
pub fn signing_key(secret: &SecretValue) -> Result<Vec<u8>, SinkError> {
    match secret.expose().strip_prefix("whsec_") {
        Some(b64) => BASE64
            .decode(b64)
            .map_err(|_| SinkError::Misconfigured("the webhook secret starts with whsec_ but is not base64".into())),
        None => Ok(secret.expose_bytes().to_vec()),
    }
}

/// The `webhook-signature` value for one request (Standard Webhooks, version `v1`).
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// How a response status is treated.
pub fn classify_status(status: StatusCode) -> Result<(), SinkError> {
    if status.is_success() {
        Ok(())
    } else if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Err(SinkError::Transient(format!("webhook answered {status}")))
    } else {
        Err(SinkError::Permanent(format!("webhook refused the record: {status}")))
    }
}

impl WebhookSink {
    /// Build the sink: reads the HMAC secret and the CA bundle, builds the HTTPS client.
    pub fn new(name: &str, target: &WebhookTarget) -> Result<Self, SinkError> {
        let url = reqwest::Url::parse(&target.url)
            .map_err(|e| SinkError::Misconfigured(format!("webhook url is not a URL: {e}")))?;
        if url.scheme() != "https" {
            return Err(SinkError::Misconfigured(format!(
                "webhook url must be https:// (got {}://)",
                url.scheme()
            )));
        }
        let key = signing_key(&read_secret_file(&target.hmac_secret_file)?)?;
        let mut builder = reqwest::Client::builder()
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(target.timeout_seconds.max(1)))
            .user_agent(concat!("capturefleet/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = CaBundle::read_optional(target.ca_file.as_deref())? {
            let certs = reqwest::Certificate::from_pem_bundle(ca.pem())
                .map_err(|e| SinkError::Misconfigured(format!("webhook caFile: {e}")))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| SinkError::Misconfigured(format!("cannot build the HTTPS client: {e}")))?;
        Ok(WebhookSink {
            name: name.to_owned(),
            url,
            key,
            client,
        })
    }

    async fn post(&self, record: &SpooledRecord) -> Result<(), SinkError> {
        let parsed = record.record()?;
        let id = &parsed.idempotency_key;
        let timestamp = jiff::Timestamp::now().as_second();
        let body = record.json.as_bytes();
        let device = match &parsed.device.namespace {
            Some(ns) => format!("{ns}/{}", parsed.device.name),
            None => parsed.device.name.clone(),
        };
        let response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", sign(&self.key, id, timestamp, body))
            .header("Idempotency-Key", id)
            .header("X-Capturefleet-Seq", record.seq.to_string())
            .header("X-Capturefleet-Record-Sha256", &record.meta.hash)
            .header("X-Capturefleet-Device", device)
            .body(record.json.to_string())
            .send()
            .await
            .map_err(|e| SinkError::Transient(format!("webhook request failed: {}", error_chain(&e))))?;
        let status = response.status();
        classify_status(status).inspect_err(|e| {
            if matches!(e, SinkError::Permanent(_)) {
                warn!(sink = %self.name, seq = record.seq, %status, "webhook refused a record; it stays in the spool");
            }
        })
    }
}

/// An error and its sources on one line (reqwest's Display hides the TLS/IO cause).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[async_trait]
impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn type_name(&self) -> &'static str {
        "webhook"
    }

    async fn start(&self) -> Result<(), SinkError> {
        self.health().await
    }

    /// Reachability: any HTTP answer to a `HEAD` of the URL (even 404 or 405) over a verified
    /// TLS connection.
    async fn health(&self) -> Result<(), SinkError> {
        self.client
            .head(self.url.clone())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| SinkError::Transient(format!("webhook unreachable: {}", error_chain(&e))))
    }

    #[instrument(name = "webhook_deliver", skip_all, fields(sink = %self.name, records = batch.len()))]
    async fn deliver(&self, batch: &[SpooledRecord], _attachments: &dyn AttachmentStore) -> Result<(), SinkError> {
        for record in batch {
            self.post(record).await?;
        }
        debug!(
            first = batch.first().map(|r| r.seq),
            last = batch.last().map(|r| r.seq),
            "webhook batch acknowledged"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let secret = SecretValue::for_test("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let key = signing_key(&secret).unwrap();
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn raw_secrets_are_used_as_bytes() {
        let key = signing_key(&SecretValue::for_test("plain-key")).unwrap();
        assert_eq!(key, b"plain-key");
        assert!(matches!(
            signing_key(&SecretValue::for_test("whsec_***")),
            Err(SinkError::Misconfigured(_))
        ));
    }

    #[test]
    fn statuses_are_classified() {
        assert!(classify_status(StatusCode::OK).is_ok());
        assert!(classify_status(StatusCode::NO_CONTENT).is_ok());
        for transient in [408, 429, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(transient).unwrap();
            assert!(
                matches!(classify_status(status), Err(SinkError::Transient(_))),
                "{status}"
            );
        }
        for permanent in [301, 400, 401, 403, 404, 409, 413, 422] {
            let status = StatusCode::from_u16(permanent).unwrap();
            assert!(
                matches!(classify_status(status), Err(SinkError::Permanent(_))),
                "{status}"
            );
        }
    }

    #[test]
    fn plain_http_urls_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("hmac");
        std::fs::write(&secret, "k").unwrap();
        let target = WebhookTarget {
            url: "http://127.0.0.1:1/hook".into(),
            hmac_secret_file: secret,
            ca_file: None,
            timeout_seconds: 1,
        };
        assert!(matches!(
            WebhookSink::new("w", &target),
            Err(SinkError::Misconfigured(_))
        ));
    }
}
