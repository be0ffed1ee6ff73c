//! Certificates made with rcgen, and rustls configurations for test clients and TLS origins.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;

/// A self-signed certificate (it is its own CA) and its key.
pub struct Cert {
    pub cert: rcgen::Certificate,
    pub key: rcgen::KeyPair,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

pub fn make_cert(names: &[&str]) -> Cert {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
            .self_signed(&key)
            .unwrap();
    Cert { cert, key }
}

/// Writes `name.pem` and `name.key` into `dir`.
pub fn write_cert(dir: &Path, name: &str, c: &Cert) -> (PathBuf, PathBuf) {
    let (p, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&p, c.cert.pem()).unwrap();
    std::fs::write(&k, c.key.serialize_pem()).unwrap();
    (p, k)
}

fn roots(certs: &[&Cert]) -> rustls::RootCertStore {
    let mut store = rustls::RootCertStore::empty();
    for c in certs {
        store.add(c.cert.der().clone()).unwrap();
    }
    store
}

/// A rustls client that trusts exactly `roots`.
pub fn client_tls(trusted: &[&Cert], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(trusted))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// A server presenting `cert`, offering h2 and http/1.1, and, given `client_ca`, requiring a
/// client certificate it signed.
pub fn server_tls(cert: &Cert, client_ca: Option<&Cert>) -> Arc<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&[ca])), provider())
                .build()
                .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    let key = rustls_pki_types::PrivateKeyDer::try_from(cert.key.serialize_der()).unwrap();
    let mut cfg = builder
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}
