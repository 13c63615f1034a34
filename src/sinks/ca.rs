//! Extra trusted CAs for the sinks' TLS clients.
//!
//! Every sink verifies the server's certificate. By default the system's roots are trusted; a
//! sink's `caFile` adds the CAs of a PEM bundle (a private PKI, the test CA). There is no
//! switch to turn verification off.

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::SinkError;

/// A PEM bundle of CA certificates, checked to hold at least one parseable certificate.
#[derive(Clone, Debug)]
pub struct CaBundle {
    pem: Vec<u8>,
    count: usize,
}

impl CaBundle {
    /// Read and check a PEM bundle.
    pub fn read(path: &Path) -> Result<Self, SinkError> {
        let pem = std::fs::read(path)
            .map_err(|e| SinkError::Misconfigured(format!("cannot read CA bundle {}: {e}", path.display())))?;
        Self::from_pem(pem).map_err(|e| SinkError::Misconfigured(format!("CA bundle {}: {e}", path.display())))
    }

    /// Check PEM bytes.
    pub fn from_pem(pem: Vec<u8>) -> Result<Self, String> {
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
        if certs.is_empty() {
            return Err("holds no certificate".into());
        }
        Ok(CaBundle {
            count: certs.len(),
            pem,
        })
    }

    /// Read the optional `caFile` of a sink.
    pub fn read_optional(path: Option<&Path>) -> Result<Option<Self>, SinkError> {
        path.map(Self::read).transpose()
    }

    /// The PEM bytes.
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }

    /// How many certificates the bundle holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always false: a bundle holds at least one certificate.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_bundle_and_refuses_garbage() {
        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
        let bundle = format!("{}{}", a.cert.pem(), b.cert.pem());
        assert_eq!(CaBundle::from_pem(bundle.into_bytes()).unwrap().len(), 2);
        assert!(CaBundle::from_pem(b"hello".to_vec()).is_err());
        let dir = tempfile::tempdir().unwrap();
        let err = CaBundle::read(&dir.path().join("missing.pem")).unwrap_err();
        assert!(matches!(err, SinkError::Misconfigured(_)));
    }
}
