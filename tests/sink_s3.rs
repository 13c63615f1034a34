//! The S3 sink against a real S3 server with Object Lock: versitygw (posix backend, versioning
//! on, HTTPS with the test CA), started by tests/sinks/up. `make test` runs these.

mod sink_support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{ObjectLockLegalHoldStatus, ObjectLockRetention, ObjectLockRetentionMode};

use capturefleet::api::agent::{ObjectLock, ObjectLockMode, S3Target};
use capturefleet::sinks::s3::S3Sink;
use capturefleet::sinks::{Sink, SinkError, SpooledRecord};
use sink_support::{DirAttachments, ServerInstance, env, records};

struct S3Env {
    endpoint: String,
    credentials_dir: PathBuf,
    ca_file: PathBuf,
}

impl S3Env {
    fn from_env() -> Self {
        S3Env {
            endpoint: env("CAPTUREFLEET_S3_ENDPOINT"),
            credentials_dir: env("CAPTUREFLEET_S3_CREDENTIALS_DIR").into(),
            ca_file: env("CAPTUREFLEET_SINKS_CA_FILE").into(),
        }
    }

    fn from_instance(i: &ServerInstance) -> Self {
        S3Env {
            endpoint: i.var("S3_ENDPOINT"),
            credentials_dir: i.var("S3_CREDENTIALS_DIR").into(),
            ca_file: i.var("CA_FILE").into(),
        }
    }

    /// An independent client for the test's own checks (the same root credentials).
    fn admin(&self) -> Client {
        let read = |k: &str| {
            std::fs::read_to_string(self.credentials_dir.join(k))
                .unwrap()
                .trim()
                .to_owned()
        };
        let pem = std::fs::read(&self.ca_file).unwrap();
        use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
        let tls_ctx = tls::TlsContext::builder()
            .with_trust_store(tls::TrustStore::empty().with_pem_certificate(pem))
            .build()
            .unwrap();
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(tls_ctx)
            .build_https();
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                read("accessKeyId"),
                read("secretAccessKey"),
                None,
                None,
                "test",
            ))
            .http_client(http)
            .build();
        Client::from_conf(conf)
    }

    fn target(&self, bucket: &str, lock: Option<ObjectLock>) -> S3Target {
        S3Target {
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".into(),
            bucket: bucket.into(),
            prefix: "archive".into(),
            path_style: true,
            object_lock: lock,
            credentials_dir: Some(self.credentials_dir.clone()),
            ca_file: Some(self.ca_file.clone()),
            max_records_per_object: 8,
        }
    }
}

fn compliance(days: u32) -> Option<ObjectLock> {
    Some(ObjectLock {
        mode: ObjectLockMode::Compliance,
        retention_days: days,
        legal_hold: false,
    })
}

async fn bucket(admin: &Client, locked: bool) -> String {
    let name = format!("cf-test-{:08x}", rand::random::<u32>());
    admin
        .create_bucket()
        .bucket(&name)
        .object_lock_enabled_for_bucket(locked)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create bucket {name}: {e:?}"));
    name
}

/// Every object under `prefix`: key → bytes.
async fn objects(admin: &Client, bucket: &str, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut token = None;
    loop {
        let page = admin
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .unwrap();
        for o in page.contents() {
            let key = o.key().unwrap().to_owned();
            let body = admin.get_object().bucket(bucket).key(&key).send().await.unwrap();
            out.insert(key, body.body.collect().await.unwrap().into_bytes().to_vec());
        }
        match page.next_continuation_token() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    out
}

/// The records stored under the device's records folder, in key order, one entry per line.
async fn stored_lines(admin: &Client, bucket: &str, device: &str) -> Vec<String> {
    objects(admin, bucket, &format!("archive/compliance/{device}/records/"))
        .await
        .values()
        .flat_map(|b| {
            String::from_utf8(b.clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn spool_lines(batch: &[SpooledRecord]) -> Vec<String> {
    batch.iter().map(|r| r.json.to_string()).collect()
}

#[tokio::test]
#[ignore = "needs the S3 test server (tests/sinks/up); run by make test"]
async fn start_refuses_a_bucket_without_object_lock() {
    capturefleet::tls::install_crypto_provider();
    let s3 = S3Env::from_env();
    let admin = s3.admin();
    let plain = bucket(&admin, false).await;
    let err = S3Sink::new("s3", &s3.target(&plain, compliance(1)))
        .unwrap()
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, SinkError::Misconfigured(ref m) if m.contains("Object Lock")),
        "{err}"
    );
    // Without objectLock the same bucket is accepted.
    S3Sink::new("s3", &s3.target(&plain, None))
        .unwrap()
        .start()
        .await
        .unwrap();
    // A missing bucket is a misconfiguration too.
    let err = S3Sink::new("s3", &s3.target("cf-no-such-bucket", None))
        .unwrap()
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, SinkError::Misconfigured(_)), "{err}");
}

#[tokio::test]
#[ignore = "needs the S3 test server (tests/sinks/up); run by make test"]
async fn records_and_attachments_are_stored_byte_for_byte_with_retention_and_legal_hold() {
    capturefleet::tls::install_crypto_provider();
    let s3 = S3Env::from_env();
    let admin = s3.admin();
    let b = bucket(&admin, true).await;
    let lock = Some(ObjectLock {
        mode: ObjectLockMode::Compliance,
        retention_days: 2555,
        legal_hold: true,
    });
    let sink = S3Sink::new("s3", &s3.target(&b, lock)).unwrap();
    sink.start().await.unwrap();
    let mut files = DirAttachments::new();
    let batch = records("dev-s3", 30, &mut files);
    let t0 = jiff::Timestamp::now().as_second();
    sink.deliver(&batch[..20], &files).await.unwrap();
    sink.deliver(&batch[20..], &files).await.unwrap();

    assert_eq!(
        stored_lines(&admin, &b, "dev-s3").await,
        spool_lines(&batch),
        "byte for byte, each once"
    );
    let keys = objects(&admin, &b, "archive/compliance/dev-s3/records/").await;
    assert_eq!(keys.len(), 5, "20 records as 8+8+4, then 10 as 8+2: {:?}", keys.keys());

    // Read back with HeadObject (versitygw 1.8.0 answers GetObjectRetention with a root
    // element the AWS SDK does not accept; the lock headers of HEAD carry the same facts).
    let expected_until = t0 + 2555 * 86_400;
    let check_lock = |head: &aws_sdk_s3::operation::head_object::HeadObjectOutput, key: &str| {
        assert_eq!(
            head.object_lock_mode(),
            Some(&aws_sdk_s3::types::ObjectLockMode::Compliance),
            "{key}"
        );
        let until = head.object_lock_retain_until_date().unwrap().secs();
        assert!(
            (expected_until - 60..expected_until + 600).contains(&until),
            "{key}: retain until {until}"
        );
        assert_eq!(
            head.object_lock_legal_hold_status(),
            Some(&ObjectLockLegalHoldStatus::On),
            "{key}"
        );
    };
    for key in keys.keys() {
        check_lock(&admin.head_object().bucket(&b).key(key).send().await.unwrap(), key);
        let hold = admin.get_object_legal_hold().bucket(&b).key(key).send().await.unwrap();
        assert_eq!(
            hold.legal_hold().and_then(|h| h.status()),
            Some(&ObjectLockLegalHoldStatus::On)
        );
    }
    let stored = objects(&admin, &b, "archive/compliance/dev-s3/attachments/").await;
    let expected: BTreeMap<String, Vec<u8>> = batch
        .iter()
        .flat_map(|r| r.record().unwrap().attachments.iter())
        .map(|a| {
            let h = a.sha256.clone().unwrap();
            (format!("archive/compliance/dev-s3/attachments/{h}"), files.bytes(&h))
        })
        .collect();
    assert_eq!(stored.len(), 9, "30 records carry 9 attachments");
    assert_eq!(stored, expected, "attachments stored by hash, byte for byte");
    for key in stored.keys() {
        check_lock(&admin.head_object().bucket(&b).key(key).send().await.unwrap(), key);
    }
}

#[tokio::test]
#[ignore = "needs the S3 test server (tests/sinks/up); run by make test"]
async fn redelivery_with_other_batch_boundaries_stores_each_record_once() {
    capturefleet::tls::install_crypto_provider();
    let s3 = S3Env::from_env();
    let admin = s3.admin();
    let b = bucket(&admin, true).await;
    let mut files = DirAttachments::new();
    let batch = records("dev-re", 40, &mut files);
    let target = s3.target(&b, compliance(1));

    S3Sink::new("s3", &target)
        .unwrap()
        .deliver(&batch[..13], &files)
        .await
        .unwrap();
    // A crash lost the acknowledgement: a new agent process redelivers from seq 1 with other
    // boundaries, then a smaller batch, then again overlapping the end.
    let restarted = S3Sink::new("s3", &target).unwrap();
    restarted.deliver(&batch[..5], &files).await.unwrap();
    restarted.deliver(&batch[5..25], &files).await.unwrap();
    let again = S3Sink::new("s3", &target).unwrap();
    again.deliver(&batch[10..], &files).await.unwrap();
    again.deliver(&batch[30..], &files).await.unwrap();

    assert_eq!(stored_lines(&admin, &b, "dev-re").await, spool_lines(&batch));
}

#[tokio::test]
#[ignore = "needs the S3 test server (tests/sinks/up); run by make test"]
async fn different_bytes_for_an_archived_record_are_a_loud_permanent_error() {
    capturefleet::tls::install_crypto_provider();
    let s3 = S3Env::from_env();
    let admin = s3.admin();
    let b = bucket(&admin, true).await;
    let mut files = DirAttachments::new();
    let batch = records("dev-mm", 6, &mut files);
    let sink = S3Sink::new("s3", &s3.target(&b, compliance(1))).unwrap();
    sink.deliver(&batch, &files).await.unwrap();

    let mut forged = batch.clone();
    let mut altered = forged[3].record().unwrap().clone();
    altered.body.as_mut().unwrap().text = "altered".into();
    altered.seal(4, &batch[2].meta.hash);
    let json = altered.to_canonical_json();
    forged[3] = SpooledRecord::from_record(4, altered, json);
    let err = S3Sink::new("s3", &s3.target(&b, compliance(1)))
        .unwrap()
        .deliver(&forged, &files)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SinkError::Permanent(ref m) if m.contains("MISMATCH") && m.contains("seq 4")),
        "{err}"
    );
    assert_eq!(
        stored_lines(&admin, &b, "dev-mm").await,
        spool_lines(&batch),
        "the archive is unchanged"
    );
}

#[tokio::test]
#[ignore = "needs the S3 test server (tests/sinks/up); run by make test"]
async fn the_server_refuses_to_delete_or_overwrite_locked_versions() {
    capturefleet::tls::install_crypto_provider();
    let s3 = S3Env::from_env();
    let admin = s3.admin();
    let b = bucket(&admin, true).await;
    let mut files = DirAttachments::new();
    let batch = records("dev-lock", 4, &mut files);
    S3Sink::new("s3", &s3.target(&b, compliance(30)))
        .unwrap()
        .deliver(&batch, &files)
        .await
        .unwrap();
    let objs = objects(&admin, &b, "archive/compliance/dev-lock/records/").await;
    let (key, original) = objs.iter().next().unwrap();
    let head = admin.head_object().bucket(&b).key(key).send().await.unwrap();
    let version = head.version_id().expect("a versioned, locked object").to_owned();

    // Delete the locked version, with and without the governance bypass.
    let err = admin
        .delete_object()
        .bucket(&b)
        .key(key)
        .version_id(&version)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("AccessDenied"), "{err:?}");
    let err = admin
        .delete_object()
        .bucket(&b)
        .key(key)
        .version_id(&version)
        .bypass_governance_retention(true)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some("AccessDenied"),
        "COMPLIANCE ignores the bypass: {err:?}"
    );
    // Shorten the retention.
    let err = admin
        .put_object_retention()
        .bucket(&b)
        .key(key)
        .version_id(&version)
        .bypass_governance_retention(true)
        .retention(
            ObjectLockRetention::builder()
                .mode(ObjectLockRetentionMode::Compliance)
                .retain_until_date(DateTime::from_secs(jiff::Timestamp::now().as_second() + 60))
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    assert!(
        err.code().is_some(),
        "shortening COMPLIANCE retention must be refused: {err:?}"
    );
    // Overwrite: S3 semantics keep the locked version and add a new one (or refuse).
    let _ = admin
        .put_object()
        .bucket(&b)
        .key(key)
        .body(ByteStream::from_static(b"tampered\n"))
        .send()
        .await;
    let got = admin
        .get_object()
        .bucket(&b)
        .key(key)
        .version_id(&version)
        .send()
        .await
        .unwrap();
    assert_eq!(
        &got.body.collect().await.unwrap().into_bytes().to_vec(),
        original,
        "the locked version is intact"
    );
    // Even after a plain DELETE (a delete marker), the locked version is still there.
    let _ = admin.delete_object().bucket(&b).key(key).send().await;
    let got = admin
        .get_object()
        .bucket(&b)
        .key(key)
        .version_id(&version)
        .send()
        .await
        .unwrap();
    assert_eq!(&got.body.collect().await.unwrap().into_bytes().to_vec(), original);

    // GOVERNANCE: refused without the bypass.
    let gov = bucket(&admin, true).await;
    let target = s3.target(
        &gov,
        Some(ObjectLock {
            mode: ObjectLockMode::Governance,
            retention_days: 30,
            legal_hold: false,
        }),
    );
    S3Sink::new("s3", &target)
        .unwrap()
        .deliver(&batch, &files)
        .await
        .unwrap();
    let objs = objects(&admin, &gov, "archive/compliance/dev-lock/records/").await;
    let key = objs.keys().next().unwrap();
    let version = admin
        .head_object()
        .bucket(&gov)
        .key(key)
        .send()
        .await
        .unwrap()
        .version_id()
        .unwrap()
        .to_owned();
    let err = admin
        .delete_object()
        .bucket(&gov)
        .key(key)
        .version_id(&version)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("AccessDenied"), "{err:?}");
}

#[tokio::test]
#[ignore = "needs the S3 test server (tests/sinks/up); run by make test"]
async fn outage_mid_stream_then_recovery_loses_and_duplicates_nothing() {
    capturefleet::tls::install_crypto_provider();
    let mut server = ServerInstance::start("s3");
    let s3 = S3Env::from_instance(&server);
    let admin = s3.admin();
    let b = bucket(&admin, true).await;
    let sink = S3Sink::new("s3", &s3.target(&b, compliance(1))).unwrap();
    sink.start().await.unwrap();
    let mut files = DirAttachments::new();
    let all = records("dev-out", 60, &mut files);

    let (mut cursor, mut failures, mut stopped) = (0, 0, false);
    while cursor < all.len() {
        if cursor >= 20 && !stopped {
            server.stop();
            stopped = true;
        }
        let end = (cursor + 7).min(all.len());
        match sink.deliver(&all[cursor..end], &files).await {
            Ok(()) => cursor = end,
            Err(e) => {
                assert!(matches!(e, SinkError::Transient(_)), "{e}");
                assert!(sink.health().await.is_err());
                failures += 1;
                if failures == 3 {
                    server.restart();
                }
            }
        }
    }
    assert_eq!(failures, 3);
    assert_eq!(stored_lines(&admin, &b, "dev-out").await, spool_lines(&all));
}

#[tokio::test]
#[ignore = "needs the S3 test server (tests/sinks/up); run by make test"]
async fn an_attachment_archived_again_gets_the_longer_retention() {
    capturefleet::tls::install_crypto_provider();
    let s3 = S3Env::from_env();
    let admin = s3.admin();
    let b = bucket(&admin, true).await;
    let mut files = DirAttachments::new();
    let mut batch = records("dev-ext", 10, &mut files);
    // Record 10 carries the same file as record 5 (sent again later).
    let shared = batch[4].record().unwrap().attachments[0].clone();
    let mut tenth = batch[9].record().unwrap().clone();
    tenth.attachments = vec![shared.clone()];
    tenth.seal(10, &batch[8].meta.hash);
    let json = tenth.to_canonical_json();
    batch[9] = SpooledRecord::from_record(10, tenth, json);
    let key = format!(
        "archive/compliance/dev-ext/attachments/{}",
        shared.sha256.clone().unwrap()
    );

    S3Sink::new("s3", &s3.target(&b, compliance(1)))
        .unwrap()
        .deliver(&batch[..5], &files)
        .await
        .unwrap();
    let first = admin.head_object().bucket(&b).key(&key).send().await.unwrap();
    let until_1 = first.object_lock_retain_until_date().unwrap().secs();
    S3Sink::new("s3", &s3.target(&b, compliance(30)))
        .unwrap()
        .deliver(&batch[5..], &files)
        .await
        .unwrap();
    let again = admin.head_object().bucket(&b).key(&key).send().await.unwrap();
    let until_30 = again.object_lock_retain_until_date().unwrap().secs();
    assert!(
        until_30 >= until_1 + 28 * 86_400,
        "retention extended: {until_1} -> {until_30}"
    );
    assert_eq!(
        again.version_id(),
        first.version_id(),
        "the same object, not a new version"
    );
    assert_eq!(stored_lines(&admin, &b, "dev-ext").await, spool_lines(&batch));
}
