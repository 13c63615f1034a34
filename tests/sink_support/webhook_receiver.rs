//! A real HTTPS webhook receiver for tests: axum-server + rustls with an rcgen CA on loopback.
//! It verifies every request's Standard Webhooks signature independently of the sink's code and
//! stores records by their Idempotency-Key.

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

pub const SECRET: &[u8] = b"0123456789abcdef-webhook-test-key";

/// What the receiver answers.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Accept,
    Status(u16),
    Hang,
}

#[derive(Default)]
pub struct Received {
    /// Bodies by Idempotency-Key: the receiver's deduplicated store.
    pub stored: BTreeMap<String, Vec<u8>>,
    /// Every request that carried a valid signature, duplicates included.
    pub requests: u64,
    pub bad_signatures: u64,
}

pub struct Receiver {
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
pub struct Pki {
    pub ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

pub fn pki() -> Pki {
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
    pub fn new() -> Self {
        Receiver {
            state: Arc::new(Mutex::new((Mode::Accept, Received::default()))),
        }
    }

    /// Serve on `addr` (port 0 picks one); returns the bound address and the server handle.
    pub async fn serve(&self, pki: &Pki, addr: SocketAddr) -> (SocketAddr, Handle<SocketAddr>) {
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

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().0 = mode;
    }

    pub fn with<T>(&self, f: impl FnOnce(&Received) -> T) -> T {
        f(&self.state.lock().unwrap().1)
    }
}
