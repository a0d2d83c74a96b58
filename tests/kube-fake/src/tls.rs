//! HTTPS serving: a certificate chain and key in PEM, as a real API server
//! has, so a client can verify the server against a CA the way a pod does
//! with its mounted `ca.crt`.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// The server's TLS identity: its certificate chain (leaf first), its
/// private key, and the CA a client should trust (for the kubeconfig).
#[derive(Clone, Debug)]
pub struct TlsIdentity {
    pub(crate) cert_chain_pem: Vec<u8>,
    pub(crate) key_pem: Vec<u8>,
    pub(crate) ca_pem: Vec<u8>,
}

impl TlsIdentity {
    /// PEM text of the chain, the key (PKCS#8, PKCS#1 or SEC1) and the CA.
    pub fn from_pem(
        cert_chain_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
        ca_pem: impl Into<Vec<u8>>,
    ) -> Self {
        TlsIdentity {
            cert_chain_pem: cert_chain_pem.into(),
            key_pem: key_pem.into(),
            ca_pem: ca_pem.into(),
        }
    }

    /// Reads the three PEM files.
    pub fn from_files(
        cert_chain: impl AsRef<std::path::Path>,
        key: impl AsRef<std::path::Path>,
        ca: impl AsRef<std::path::Path>,
    ) -> Result<Self> {
        Ok(Self::from_pem(
            std::fs::read(cert_chain)?,
            std::fs::read(key)?,
            std::fs::read(ca)?,
        ))
    }

    /// The CA, checked to hold at least one certificate.
    pub(crate) fn ca(&self) -> Result<Ca> {
        let der = certs(&self.ca_pem, "CA")?
            .into_iter()
            .map(|c| c.to_vec())
            .collect();
        Ok(Ca {
            pem: self.ca_pem.clone(),
            der,
        })
    }

    /// An acceptor that serves the chain (HTTP/1.1 only, like the server).
    pub(crate) fn acceptor(&self) -> Result<TlsAcceptor> {
        let chain = certs(&self.cert_chain_pem, "server certificate")?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| Error::Tls(format!("no private key in the key PEM: {e}")))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| Error::Tls(format!("certificate and key do not fit: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// The CA as PEM (for a kubeconfig) and DER (for `kube::Config::root_cert`).
#[derive(Clone, Debug)]
pub(crate) struct Ca {
    pub pem: Vec<u8>,
    pub der: Vec<Vec<u8>>,
}

fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("unreadable {what} PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("no certificate in the {what} PEM")));
    }
    Ok(certs)
}
