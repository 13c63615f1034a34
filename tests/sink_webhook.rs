//! The HTTPS webhook sink against a real HTTPS receiver on loopback (axum-server + rustls with
//! an rcgen CA), which verifies every request's Standard Webhooks signature independently and
//! stores records by their Idempotency-Key.

mod sink_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use capturefleet::api::agent::WebhookTarget;
use capturefleet::sinks::webhook::WebhookSink;
use capturefleet::sinks::{Sink, SinkError};
use sink_support::{DirAttachments, records};

const SECRET: &[u8] = b"0123456789abcdef-webhook-test-key";

/// What the receiver answers.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Accept,
    Status(u16),
    Hang,
}

#[derive(Default)]
struct Received {
    /// Bodies by Idempotency-Key: the receiver's deduplicated store.
    stored: BTreeMap<String, Vec<u8>>,
    /// Every request that carried a valid signature, duplicates included.
    requests: u64,
    bad_signatures: u64,
}

struct Receiver {
    state: Arc<Mutex<(Mode, Received)>>,
}

async fn hook(State(state): State<Arc<Mutex<(Mode, Received)>>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, ts, sig, key) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        header("idempotency-key"),
    );
    // Independent verification of the Standard Webhooks signature.
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    let fresh = ts
        .parse::<i64>()
        .is_ok_and(|t| (jiff::Timestamp::now().as_second() - t).abs() < 300);
    let mode = {
        let mut guard = state.lock().unwrap();
        if sig != expected || !fresh || id != key || id.is_empty() {
            guard.1.bad_signatures += 1;
            return StatusCode::UNAUTHORIZED;
        }
        guard.0
    };
    match mode {
        Mode::Accept => {
            let mut guard = state.lock().unwrap();
            guard.1.requests += 1;
            guard.1.stored.entry(key).or_insert_with(|| body.to_vec());
            StatusCode::OK
        }
        Mode::Status(code) => StatusCode::from_u16(code).unwrap(),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK
        }
    }
}

/// A CA, and a server certificate for 127.0.0.1 signed by it.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "webhook test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    Pki {
        ca_pem: ca.as_ref().pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

impl Receiver {
    fn new() -> Self {
        Receiver {
            state: Arc::new(Mutex::new((Mode::Accept, Received::default()))),
        }
    }

    /// Serve on `addr` (port 0 picks one); returns the bound address and the server handle.
    async fn serve(&self, pki: &Pki, addr: SocketAddr) -> (SocketAddr, Handle<SocketAddr>) {
        let config = RustlsConfig::from_pem(pki.cert_pem.clone().into_bytes(), pki.key_pem.clone().into_bytes())
            .await
            .unwrap();
        let app = Router::new().route("/hook", post(hook)).with_state(self.state.clone());
        let handle = Handle::new();
        let server = axum_server::bind_rustls(addr, config).handle(handle.clone());
        tokio::spawn(async move { server.serve(app.into_make_service()).await });
        let bound = handle.listening().await.expect("receiver bound");
        (bound, handle)
    }

    fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().0 = mode;
    }

    fn with<T>(&self, f: impl FnOnce(&Received) -> T) -> T {
        f(&self.state.lock().unwrap().1)
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    target: WebhookTarget,
}

fn setup(pki: &Pki, addr: SocketAddr, with_ca: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hmac"), SECRET).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
    let target = WebhookTarget {
        url: format!("https://127.0.0.1:{}/hook", addr.port()),
        hmac_secret_file: dir.path().join("hmac"),
        ca_file: with_ca.then(|| dir.path().join("ca.pem")),
        timeout_seconds: 2,
    };
    Setup { _dir: dir, target }
}

#[tokio::test]
async fn delivers_signed_records_byte_for_byte_and_redelivery_is_deduplicated() {
    capturefleet::tls::install_crypto_provider();
    let pki = pki();
    let receiver = Receiver::new();
    let (addr, _handle) = receiver.serve(&pki, "127.0.0.1:0".parse().unwrap()).await;
    let s = setup(&pki, addr, true);
    let sink = WebhookSink::new("hook", &s.target).unwrap();
    sink.start().await.unwrap();
    sink.health().await.unwrap();

    let mut files = DirAttachments::new();
    let batch = records("dev-w", 40, &mut files);
    sink.deliver(&batch[..25], &files).await.unwrap();
    // A crash after the receiver stored records but before the ack: the batch comes again,
    // re-cut differently.
    sink.deliver(&batch[10..], &files).await.unwrap();

    receiver.with(|r| {
        assert_eq!(r.bad_signatures, 0);
        assert_eq!(r.requests, 25 + 30, "every request reached the receiver");
        assert_eq!(r.stored.len(), 40, "deduplicated by Idempotency-Key: each record once");
        for rec in &batch {
            assert_eq!(
                r.stored[&rec.record.idempotency_key],
                rec.json.as_bytes(),
                "seq {} byte for byte",
                rec.seq
            );
        }
    });
}

#[tokio::test]
async fn server_errors_are_transient_client_errors_permanent_and_timeouts_transient() {
    capturefleet::tls::install_crypto_provider();
    let pki = pki();
    let receiver = Receiver::new();
    let (addr, _handle) = receiver.serve(&pki, "127.0.0.1:0".parse().unwrap()).await;
    let s = setup(&pki, addr, true);
    let sink = WebhookSink::new("hook", &s.target).unwrap();
    let mut files = DirAttachments::new();
    let batch = records("dev-e", 2, &mut files);

    for code in [500, 503, 429, 408] {
        receiver.set_mode(Mode::Status(code));
        let err = sink.deliver(&batch, &files).await.unwrap_err();
        assert!(matches!(err, SinkError::Transient(_)), "{code}: {err}");
    }
    for code in [400, 403, 404, 422] {
        receiver.set_mode(Mode::Status(code));
        let err = sink.deliver(&batch, &files).await.unwrap_err();
        assert!(
            matches!(err, SinkError::Permanent(ref m) if m.contains(&code.to_string())),
            "{code}: {err}"
        );
    }
    receiver.set_mode(Mode::Hang);
    let err = sink.deliver(&batch, &files).await.unwrap_err();
    assert!(matches!(err, SinkError::Transient(_)), "timeout: {err}");
    receiver.with(|r| assert!(r.stored.is_empty(), "nothing was accepted"));

    receiver.set_mode(Mode::Accept);
    sink.deliver(&batch, &files).await.unwrap();
    receiver.with(|r| assert_eq!(r.stored.len(), 2));
}

#[tokio::test]
async fn certificates_are_verified_without_the_ca_bundle_delivery_fails() {
    capturefleet::tls::install_crypto_provider();
    let pki = pki();
    let receiver = Receiver::new();
    let (addr, _handle) = receiver.serve(&pki, "127.0.0.1:0".parse().unwrap()).await;
    let s = setup(&pki, addr, false);
    let sink = WebhookSink::new("hook", &s.target).unwrap();
    let err = sink.health().await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    let mut files = DirAttachments::new();
    assert!(sink.deliver(&records("dev-c", 1, &mut files), &files).await.is_err());
    receiver.with(|r| assert_eq!(r.requests, 0));
}

#[tokio::test]
async fn outage_then_recovery_loses_and_duplicates_nothing() {
    capturefleet::tls::install_crypto_provider();
    let pki = pki();
    let receiver = Receiver::new();
    let (addr, handle) = receiver.serve(&pki, "127.0.0.1:0".parse().unwrap()).await;
    let s = setup(&pki, addr, true);
    let sink = WebhookSink::new("hook", &s.target).unwrap();
    let mut files = DirAttachments::new();
    let all = records("dev-o", 30, &mut files);

    // The delivery loop's contract, played by hand: batches of 5 from a cursor; a failed batch
    // is retried from the same cursor.
    let mut cursor = 0;
    let mut failures = 0;
    let mut handle = Some(handle);
    while cursor < all.len() {
        if cursor == 10 && failures == 0 {
            handle.take().unwrap().shutdown(); // the receiver goes down mid-stream
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let end = (cursor + 5).min(all.len());
        match sink.deliver(&all[cursor..end], &files).await {
            Ok(()) => cursor = end,
            Err(e) => {
                assert!(matches!(e, SinkError::Transient(_)), "{e}");
                failures += 1;
                assert!(sink.health().await.is_err(), "health reports the outage");
                if failures == 3 {
                    // Back on the same port.
                    let (again, h) = receiver.serve(&pki, addr).await;
                    assert_eq!(again, addr);
                    handle = Some(h);
                }
            }
        }
    }
    assert!(failures >= 3);
    sink.health().await.unwrap();
    receiver.with(|r| {
        assert_eq!(r.stored.len(), 30);
        assert_eq!(r.requests, 30, "no record was accepted twice");
        for rec in &all {
            assert_eq!(r.stored[&rec.record.idempotency_key], rec.json.as_bytes());
        }
    });
}
