//! The HTTPS webhook sink against a real HTTPS receiver on loopback (axum-server + rustls with
//! an rcgen CA), which verifies every request's Standard Webhooks signature independently and
//! stores records by their Idempotency-Key.

mod sink_support;

use std::net::SocketAddr;
use std::time::Duration;

use capturefleet::api::agent::WebhookTarget;
use capturefleet::sinks::webhook::WebhookSink;
use capturefleet::sinks::{Sink, SinkError};
use sink_support::webhook_receiver::{Mode, Pki, Receiver, SECRET, pki};
use sink_support::{DirAttachments, records};

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
                r.stored[&rec.record().unwrap().idempotency_key],
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
            assert_eq!(r.stored[&rec.record().unwrap().idempotency_key], rec.json.as_bytes());
        }
    });
}
