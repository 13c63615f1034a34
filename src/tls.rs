//! TLS set-up shared by every client in the binary (Kubernetes, S3, SMTP, webhook).
//!
//! Several dependencies enable different rustls crypto back-ends (ring through kube,
//! aws-lc-rs through the AWS SDK and reqwest), so rustls cannot pick one on its own; we choose
//! ring once per process, before any client is built.

/// Install ring as the process-wide rustls crypto provider. Idempotent.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
