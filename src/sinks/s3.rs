//! S3 sink with Object Lock (WORM storage for SEC 17a-4(f), FINRA 4511, MiFID II).
//!
//! Records are written as JSON Lines objects (each line exactly the record's stored canonical
//! JSON, `\n`-terminated) of at most `maxRecordsPerObject` records, under the deterministic keys
//! of [`super::s3_keys`]; captured attachment files are written once under their SHA-256.
//! With `objectLock` set, every object is written with its retention (mode COMPLIANCE or
//! GOVERNANCE, retain-until = write time + `retentionDays`) and optionally a legal hold, in the
//! same PUT, and `start` refuses a bucket that does not have Object Lock enabled.
//!
//! Idempotence, whatever the delivery loop redelivers:
//! - Every PUT is conditional (`If-None-Match: *`) and carries the SHA-256 of the body
//!   (`x-amz-checksum-sha256`), so the server never replaces an object and rejects corrupted
//!   bodies. A `412 Precondition Failed` means the object exists: the sink reads it back and
//!   acknowledges only if it holds exactly the bytes it would have written; different bytes are
//!   a loud permanent error (the archive must never hold two versions of a record).
//! - Before writing records from sequence number `pos`, the sink finds the object that could
//!   already contain `pos` with one listing (see [`super::s3_keys`]): records already archived
//!   (by an attempt whose acknowledgement was lost, with other batch boundaries) are verified
//!   byte for byte and skipped, so each record is stored in exactly one object. Once a listing
//!   shows nothing at or after `pos`, later batches skip it until an error makes the state
//!   uncertain again.
//! - An attachment that already exists is verified by its checksum; if its retention ends before
//!   the one this write asks for, the retention is extended (always allowed, even in COMPLIANCE
//!   mode), so an attachment sent again years later is kept as long as its newest record.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    ChecksumMode, ObjectLockEnabled, ObjectLockLegalHoldStatus, ObjectLockMode as S3LockMode, ObjectLockRetention,
    ObjectLockRetentionMode,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tracing::{debug, info, instrument, warn};

use super::ca::CaBundle;
use super::s3_keys::{attachment_key, device_base, parse_records_key, records_dir, records_key, start_after_for};
use super::secret::{read_optional_secret_key, read_secret_key};
use super::{Attachment, AttachmentStore, Sink, SinkError, SpooledRecord};
use crate::api::agent::{ObjectLockMode, S3Target};

/// The S3 sink.
pub struct S3Sink {
    name: String,
    target: S3Target,
    ca: Option<CaBundle>,
    client: OnceCell<Client>,
    /// Per device base: the sequence number from which the bucket is known to hold nothing
    /// (set after a listing showed no object at or after it, advanced by our own writes).
    clear_from: Mutex<std::collections::HashMap<String, u64>>,
}

impl std::fmt::Debug for S3Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Sink")
            .field("name", &self.name)
            .field("bucket", &self.target.bucket)
            .finish_non_exhaustive()
    }
}

/// How an S3 call failed, mapped onto the sink's error classes.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    what: &str,
    err: &SdkError<E, R>,
    status: Option<u16>,
) -> SinkError {
    let code = err.code().unwrap_or("");
    let detail = match (err.code(), err.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_owned(),
        _ => super::webhook::error_chain(err),
    };
    let message = format!(
        "S3 {what} failed ({}): {detail}",
        status.map_or("no response".into(), |s| s.to_string())
    );
    match (err, status) {
        (SdkError::ServiceError(_), Some(s)) if s >= 500 || s == 408 || s == 429 => SinkError::Transient(message),
        (SdkError::ServiceError(_), _) if code == "SlowDown" || code == "RequestTimeout" => {
            SinkError::Transient(message)
        }
        (SdkError::ServiceError(_), Some(401 | 403)) => SinkError::Misconfigured(message),
        (SdkError::ServiceError(_), _) | (SdkError::ConstructionFailure(_), _) => SinkError::Permanent(message),
        _ => SinkError::Transient(message),
    }
}

fn status_of<E, R: HasStatus>(err: &SdkError<E, R>) -> Option<u16> {
    err.raw_response().map(|r| r.status_code())
}

/// The HTTP status of a raw response (kept generic so [`classify`] stays testable).
trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn sdk_error<E: ProvideErrorMetadata + std::error::Error + 'static>(
    what: &str,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> SinkError {
    classify(what, &err, status_of(&err))
}

fn sha256_b64(bytes: &[u8]) -> String {
    BASE64.encode(Sha256::digest(bytes))
}

impl S3Sink {
    /// Build the sink: reads the credentials and CA files (the client is built on first use).
    pub fn new(name: &str, target: &S3Target) -> Result<Self, SinkError> {
        if target.bucket.is_empty() {
            return Err(SinkError::Misconfigured("s3 bucket is empty".into()));
        }
        if let Some(endpoint) = &target.endpoint
            && !endpoint.starts_with("https://")
        {
            return Err(SinkError::Misconfigured(format!(
                "s3 endpoint must be https:// (got {endpoint})"
            )));
        }
        if target.object_lock.as_ref().is_some_and(|l| l.retention_days == 0) {
            return Err(SinkError::Misconfigured(
                "objectLock.retentionDays must be at least 1".into(),
            ));
        }
        if target.max_records_per_object == 0 {
            return Err(SinkError::Misconfigured(
                "maxRecordsPerObject must be at least 1".into(),
            ));
        }
        if let Some(dir) = &target.credentials_dir {
            // Fail early on a missing Secret; the values are read again when the client is built.
            read_secret_key(dir, "accessKeyId")?;
            read_secret_key(dir, "secretAccessKey")?;
        }
        Ok(S3Sink {
            name: name.to_owned(),
            target: target.clone(),
            ca: CaBundle::read_optional(target.ca_file.as_deref())?,
            client: OnceCell::new(),
            clear_from: Mutex::new(Default::default()),
        })
    }

    async fn client(&self) -> Result<&Client, SinkError> {
        self.client.get_or_try_init(|| self.build_client()).await
    }

    async fn build_client(&self) -> Result<Client, SinkError> {
        let t = &self.target;
        let mut builder = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(t.region.clone()))
            .force_path_style(t.path_style)
            // The sink sends its own SHA-256 checksum on every PUT.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            );
        if let Some(endpoint) = &t.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        match &t.credentials_dir {
            Some(dir) => builder = builder.credentials_provider(file_credentials(dir)?),
            None => {
                let shared = aws_config::defaults(BehaviorVersion::latest())
                    .region(Region::new(t.region.clone()))
                    .load()
                    .await;
                if let Some(provider) = shared.credentials_provider() {
                    builder = builder.credentials_provider(provider);
                }
            }
        }
        if let Some(ca) = &self.ca {
            use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
            let store = tls::TrustStore::default().with_pem_certificate(ca.pem().to_vec());
            let context = tls::TlsContext::builder()
                .with_trust_store(store)
                .build()
                .map_err(|e| SinkError::Misconfigured(format!("s3 caFile: {e}")))?;
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
                .tls_context(context)
                .build_https();
            builder = builder.http_client(http);
        }
        Ok(Client::from_conf(builder.build()))
    }

    fn retention(&self) -> Option<(S3LockMode, DateTime, bool)> {
        self.target.object_lock.as_ref().map(|lock| {
            let mode = match lock.mode {
                ObjectLockMode::Compliance => S3LockMode::Compliance,
                ObjectLockMode::Governance => S3LockMode::Governance,
            };
            let until = jiff::Timestamp::now().as_second() + i64::from(lock.retention_days) * 86_400;
            (mode, DateTime::from_secs(until), lock.legal_hold)
        })
    }

    /// Conditional PUT. `Ok(true)` when written, `Ok(false)` when the key already exists.
    async fn put_new(
        &self,
        key: &str,
        body: ByteStream,
        sha256_b64: &str,
        content_type: &str,
        metadata: &[(&str, String)],
    ) -> Result<bool, SinkError> {
        let client = self.client().await?;
        let mut put = client
            .put_object()
            .bucket(&self.target.bucket)
            .key(key)
            .if_none_match("*")
            .checksum_sha256(sha256_b64)
            .content_type(content_type)
            .body(body);
        for (k, v) in metadata {
            put = put.metadata(*k, v);
        }
        if let Some((mode, until, hold)) = self.retention() {
            put = put.object_lock_mode(mode).object_lock_retain_until_date(until);
            if hold {
                put = put.object_lock_legal_hold_status(ObjectLockLegalHoldStatus::On);
            }
        }
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(412) => Ok(false),
            // A concurrent conditional write of the same key (another attempt still in flight).
            Err(e) if status_of(&e) == Some(409) && e.code() == Some("ConditionalRequestConflict") => {
                Err(SinkError::Transient(format!("S3 PUT {key}: concurrent write, retry")))
            }
            Err(e) => Err(sdk_error(&format!("PUT {key}"), e)),
        }
    }

    async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, SinkError> {
        let client = self.client().await?;
        let out = client
            .get_object()
            .bucket(&self.target.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_error(&format!("GET {key}"), e))?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| SinkError::Transient(format!("S3 GET {key}: reading the body failed: {e}")))?;
        Ok(body.into_bytes().to_vec())
    }

    /// The records object that contains `pos`, or else the first one after it: one listing.
    async fn object_at_or_after(&self, base: &str, pos: u64) -> Result<Option<(String, u64, u64)>, SinkError> {
        let client = self.client().await?;
        let out = client
            .list_objects_v2()
            .bucket(&self.target.bucket)
            .prefix(records_dir(base))
            .start_after(start_after_for(base, pos))
            .max_keys(1)
            .send()
            .await
            .map_err(|e| sdk_error("LIST records", e))?;
        Ok(out
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .find_map(|k| parse_records_key(base, k).map(|(f, l)| (k.to_owned(), f, l))))
    }

    /// Write the batch's records (all of one device, consecutive).
    async fn write_records(&self, base: &str, batch: &[SpooledRecord]) -> Result<(), SinkError> {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        let (first, last) = (first.seq, last.seq);
        let at = |seq: u64| &batch[(seq - first) as usize];
        let max = u64::from(self.target.max_records_per_object);
        let mut pos = first;
        while pos <= last {
            let known_clear = self
                .clear_from
                .lock()
                .expect("clear_from lock")
                .get(base)
                .is_some_and(|&c| c <= pos);
            let existing = if known_clear {
                None
            } else {
                self.object_at_or_after(base, pos).await?
            };
            let mut end = last.min(pos + max - 1);
            match existing {
                Some((key, o_first, o_last)) if o_first <= pos => {
                    // Already archived (an earlier attempt): verify the overlap, skip it.
                    let upto = o_last.min(last);
                    let stored = self.get_bytes(&key).await?;
                    verify_lines(&key, &stored, o_first, pos, upto, |s| at(s).json.as_str())?;
                    info!(sink = %self.name, key = %key, from = pos, to = upto, "records already archived; verified");
                    pos = upto + 1;
                    continue;
                }
                Some((_, o_first, _)) => end = end.min(o_first - 1),
                None => {
                    self.clear_from
                        .lock()
                        .expect("clear_from lock")
                        .insert(base.to_owned(), pos);
                }
            }
            let mut body = String::with_capacity((end - pos + 1) as usize * 1200);
            for seq in pos..=end {
                body.push_str(&at(seq).json);
                body.push('\n');
            }
            let key = records_key(base, pos, end);
            let record = at(end);
            let meta = [
                ("first-seq", pos.to_string()),
                ("last-seq", end.to_string()),
                ("last-hash", record.meta.hash.clone()),
                ("schema", record.record()?.schema.to_string()),
            ];
            let written = self
                .put_new(
                    &key,
                    ByteStream::from(body.clone().into_bytes()),
                    &sha256_b64(body.as_bytes()),
                    "application/x-ndjson",
                    &meta,
                )
                .await?;
            if !written {
                let stored = self.get_bytes(&key).await?;
                verify_lines(&key, &stored, pos, pos, end, |s| at(s).json.as_str())?;
                info!(sink = %self.name, key = %key, "records object already existed with the same bytes");
            }
            let mut clear = self.clear_from.lock().expect("clear_from lock");
            if clear.get(base).is_some_and(|&c| c <= pos) {
                clear.insert(base.to_owned(), end + 1);
            }
            drop(clear);
            debug!(sink = %self.name, key = %key, "records object written");
            pos = end + 1;
        }
        Ok(())
    }

    async fn write_attachment(&self, base: &str, sha256: &str, content: &Attachment) -> Result<(), SinkError> {
        let raw = hex::decode(sha256)
            .ok()
            .filter(|h| h.len() == 32)
            .ok_or_else(|| SinkError::Permanent(format!("attachment hash {sha256:?} is not a SHA-256")))?;
        let checksum = BASE64.encode(&raw);
        let key = attachment_key(base, sha256);
        let (path, offset) = content.location();
        let body = ByteStream::read_from()
            .path(path)
            .offset(offset)
            .length(aws_sdk_s3::primitives::Length::Exact(content.len()))
            .build()
            .await
            .map_err(|e| SinkError::Transient(format!("cannot read captured attachment {sha256}: {e}")))?;
        let meta = [("sha256", sha256.to_owned())];
        if self
            .put_new(&key, body, &checksum, "application/octet-stream", &meta)
            .await?
        {
            return Ok(());
        }
        // Already there: check it is the same file, and that it is retained long enough.
        let client = self.client().await?;
        let head = client
            .head_object()
            .bucket(&self.target.bucket)
            .key(&key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| sdk_error(&format!("HEAD {key}"), e))?;
        let same = match head.checksum_sha256().filter(|c| !c.contains('-')) {
            Some(stored) => stored == checksum,
            None => hex::encode(Sha256::digest(self.get_bytes(&key).await?)) == sha256,
        };
        if !same {
            return Err(SinkError::Permanent(format!(
                "ARCHIVE MISMATCH: s3://{}/{key} exists with different content than attachment {sha256}",
                self.target.bucket
            )));
        }
        if let Some((mode, until, _)) = self.retention()
            && head
                .object_lock_retain_until_date()
                .is_none_or(|d| d.secs() < until.secs())
        {
            let mode = match mode {
                S3LockMode::Compliance => ObjectLockRetentionMode::Compliance,
                _ => ObjectLockRetentionMode::Governance,
            };
            client
                .put_object_retention()
                .bucket(&self.target.bucket)
                .key(&key)
                .retention(
                    ObjectLockRetention::builder()
                        .mode(mode)
                        .retain_until_date(until)
                        .build(),
                )
                .send()
                .await
                .map_err(|e| sdk_error(&format!("extend retention of {key}"), e))?;
            info!(sink = %self.name, key = %key, "extended the retention of an attachment archived earlier");
        }
        Ok(())
    }
}

/// Compare lines `from..=to` of an existing records object starting at `object_first` with the
/// bytes the sink would write.
fn verify_lines<'a>(
    key: &str,
    stored: &[u8],
    object_first: u64,
    from: u64,
    to: u64,
    expected: impl Fn(u64) -> &'a str,
) -> Result<(), SinkError> {
    let text = std::str::from_utf8(stored).map_err(|_| mismatch(key, from))?;
    let mut lines = text.split_terminator('\n').skip((from - object_first) as usize);
    for seq in from..=to {
        if lines.next() != Some(expected(seq)) {
            return Err(mismatch(key, seq));
        }
    }
    Ok(())
}

fn mismatch(key: &str, seq: u64) -> SinkError {
    SinkError::Permanent(format!(
        "ARCHIVE MISMATCH: {key} holds different bytes for record seq {seq} than the spool; refusing to write"
    ))
}

fn file_credentials(dir: &Path) -> Result<Credentials, SinkError> {
    Ok(Credentials::new(
        read_secret_key(dir, "accessKeyId")?.expose(),
        read_secret_key(dir, "secretAccessKey")?.expose(),
        read_optional_secret_key(dir, "sessionToken")?.map(|t| t.expose().to_owned()),
        None,
        "capturefleet-secret-dir",
    ))
}

#[async_trait]
impl Sink for S3Sink {
    fn name(&self) -> &str {
        &self.name
    }

    fn type_name(&self) -> &'static str {
        "s3"
    }

    /// The bucket must exist and be reachable with these credentials; with `objectLock` set it
    /// must have Object Lock enabled.
    async fn start(&self) -> Result<(), SinkError> {
        self.health().await?;
        if self.target.object_lock.is_none() {
            warn!(sink = %self.name, "S3 sink writes without Object Lock retention (objectLock is not set)");
            return Ok(());
        }
        let client = self.client().await?;
        let bucket = &self.target.bucket;
        match client.get_object_lock_configuration().bucket(bucket).send().await {
            Ok(out)
                if out.object_lock_configuration().and_then(|c| c.object_lock_enabled())
                    == Some(&ObjectLockEnabled::Enabled) =>
            {
                Ok(())
            }
            Ok(_) => Err(SinkError::Misconfigured(format!(
                "bucket {bucket} does not have Object Lock enabled, but the sink requires it"
            ))),
            Err(e) if e.code() == Some("ObjectLockConfigurationNotFoundError") || status_of(&e) == Some(404) => {
                Err(SinkError::Misconfigured(format!(
                    "bucket {bucket} does not have Object Lock enabled, but the sink requires it"
                )))
            }
            Err(e) => Err(sdk_error("GetObjectLockConfiguration", e)),
        }
    }

    async fn health(&self) -> Result<(), SinkError> {
        let client = self.client().await?;
        match client.head_bucket().bucket(&self.target.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Err(SinkError::Misconfigured(format!(
                "bucket {} does not exist",
                self.target.bucket
            ))),
            Err(e) => Err(sdk_error("HeadBucket", e)),
        }
    }

    #[instrument(name = "s3_deliver", skip_all, fields(sink = %self.name, records = batch.len()))]
    async fn deliver(&self, batch: &[SpooledRecord], attachments: &dyn AttachmentStore) -> Result<(), SinkError> {
        let result = self.deliver_inner(batch, attachments).await;
        if result.is_err() {
            // The bucket's state is uncertain after a failure: list again next time.
            self.clear_from.lock().expect("clear_from lock").clear();
        }
        result
    }
}

impl S3Sink {
    async fn deliver_inner(&self, batch: &[SpooledRecord], attachments: &dyn AttachmentStore) -> Result<(), SinkError> {
        // A batch may in principle mix devices; write each device's consecutive run separately.
        let mut start = 0;
        while start < batch.len() {
            let device = &batch[start].record()?.device;
            let mut end = start + 1;
            while end < batch.len()
                && batch[end].record()?.device.name == device.name
                && batch[end].record()?.device.namespace == device.namespace
                && batch[end].seq == batch[end - 1].seq + 1
            {
                end += 1;
            }
            let base = device_base(&self.target.prefix, device.namespace.as_deref(), &device.name);
            // Attachments first: a stored record never points at a missing file.
            for rec in &batch[start..end] {
                for sha in &rec.meta.files {
                    let content = attachments.get(sha).ok_or_else(|| {
                        SinkError::Permanent(format!(
                            "record seq {} names attachment {sha} but the spool does not hold its file",
                            rec.seq
                        ))
                    })?;
                    self.write_attachment(&base, sha, &content).await?;
                }
            }
            self.write_records(&base, &batch[start..end]).await?;
            start = end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_lines_compares_the_overlap_exactly() {
        let stored = b"a\nb\nc\n";
        let lines = ["", "", "", "", "", "a", "b", "c", "d"];
        let expected = |seq: u64| lines[seq as usize];
        assert!(verify_lines("k", stored, 5, 5, 7, expected).is_ok());
        assert!(verify_lines("k", stored, 5, 6, 7, expected).is_ok());
        assert!(matches!(
            verify_lines("k", stored, 5, 6, 8, expected),
            Err(SinkError::Permanent(_))
        ));
        let changed = ["", "", "", "", "", "a", "B", "c"];
        assert!(matches!(
            verify_lines("k", stored, 5, 5, 7, |s| changed[s as usize]),
            Err(SinkError::Permanent(m)) if m.contains("seq 6")
        ));
    }

    #[test]
    fn plain_http_endpoints_and_zero_retention_are_refused() {
        let mut target = S3Target {
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: "us-east-1".into(),
            bucket: "b".into(),
            prefix: String::new(),
            path_style: true,
            object_lock: None,
            credentials_dir: None,
            ca_file: None,
            max_records_per_object: 1000,
        };
        assert!(matches!(S3Sink::new("s", &target), Err(SinkError::Misconfigured(_))));
        target.endpoint = Some("https://127.0.0.1:9000".into());
        assert!(S3Sink::new("s", &target).is_ok());
        target.object_lock = Some(crate::api::agent::ObjectLock {
            mode: ObjectLockMode::Compliance,
            retention_days: 0,
            legal_hold: false,
        });
        assert!(matches!(S3Sink::new("s", &target), Err(SinkError::Misconfigured(_))));
    }
}
