//! TLS termination: certificates loaded from PEM files, chosen by SNI (exact names, then
//! wildcards, then the first certificate as default), ALPN h2 and http/1.1, TLS 1.2 and 1.3 with
//! rustls' safe defaults (aws-lc-rs). The server configuration sits in an `ArcSwap` so a reload
//! swaps certificates for new handshakes while existing connections carry on.
//!
//! Also the client side, for backends spoken to over TLS: one client configuration per TLS
//! setting, shared by the backend pools (streamgate-proxy) and the health probers
//! (streamgate-control), and the system's roots read once per process.
//!
//! This crate depends on the configuration and rustls only, so the control plane can build
//! TLS clients without depending on the data plane.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use streamgate_config::{CertPair, UpstreamProtocol, UpstreamTls};
use tracing::warn;

/// Certificates expiring sooner than this are logged as a warning when loaded.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// A listener's TLS configuration, swapped on reload.
pub type TlsHandle = Arc<ArcSwap<rustls::ServerConfig>>;

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read certificate: {reason}")]
    Cert { path: String, reason: String },
    #[error("{path}: cannot read private key: {reason}")]
    Key { path: String, reason: String },
    #[error("{cert}: the private key {key} does not belong to this certificate")]
    Mismatch { cert: String, key: String },
    #[error("TLS setup: {0}")]
    Setup(String),
    #[error("service \"{service}\" upstream: {source}")]
    Upstream {
        service: String,
        source: Box<TlsError>,
    },
}

/// One loaded certificate with the names it serves.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// Lower-case DNS names from the subjectAltName (or the CN), wildcards as `*.example.com`.
    names: Vec<String>,
    /// Within its validity now (not expired, not before its start).
    valid: bool,
}

/// Picks a certificate by the ClientHello's server name.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `.example.com` suffixes of wildcard names (one label only, as RFC 6125 allows).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    /// No default: a name no certificate covers, or none, is refused (nginx's
    /// `ssl_reject_handshake`, HAProxy's `strict-sni`), so a scanner connecting by address does
    /// not learn the first certificate's names.
    strict: bool,
}

impl SniResolver {
    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let fallback = || (!self.strict).then(|| self.default.clone());
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return fallback();
        };
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        if let Some((_, rest)) = name.split_once('.')
            && let Some(k) = self.wildcard.get(rest)
        {
            return Some(k.clone());
        }
        fallback()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads every certificate and key, checking each key belongs to its certificate, and logs the
/// names each serves and any that expire within 30 days.
pub fn load(
    pairs: &[CertPair],
    listener: &str,
    strict: bool,
) -> Result<Arc<SniResolver>, TlsError> {
    let provider = provider();
    let mut loaded = Vec::new();
    for p in pairs {
        loaded.push(load_one(p, &provider, listener)?);
    }
    let Some(first) = loaded.first() else {
        return Err(TlsError::Setup(format!(
            "listener {listener}: no certificates"
        )));
    };
    let default = loaded.iter().find(|l| l.valid).unwrap_or(first).key.clone();
    // A name two certificates cover is served by the first listed that is valid now: an
    // expired one left above its renewal in the list is not served in its place.
    let mut exact: HashMap<String, (Arc<CertifiedKey>, bool)> = HashMap::new();
    let mut wildcard: HashMap<String, (Arc<CertifiedKey>, bool)> = HashMap::new();
    for l in &loaded {
        for n in &l.names {
            let (map, name) = match n.strip_prefix("*.") {
                Some(suffix) => (&mut wildcard, suffix.to_string()),
                None => (&mut exact, n.clone()),
            };
            let held = map.entry(name).or_insert_with(|| (l.key.clone(), l.valid));
            if !held.1 && l.valid {
                *held = (l.key.clone(), true);
            }
        }
    }
    let keys = |m: HashMap<String, (Arc<CertifiedKey>, bool)>| {
        m.into_iter().map(|(n, (k, _))| (n, k)).collect()
    };
    let (exact, wildcard) = (keys(exact), keys(wildcard));
    Ok(Arc::new(SniResolver {
        exact,
        wildcard,
        default,
        strict,
    }))
}

fn load_one(p: &CertPair, provider: &CryptoProvider, listener: &str) -> Result<Loaded, TlsError> {
    let cert_path = p.cert.display().to_string();
    let key_path = p.key.display().to_string();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&p.cert)
        .map_err(|e| TlsError::Cert {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Cert {
            path: cert_path,
            reason: "no CERTIFICATE block in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&p.key).map_err(|e| TlsError::Key {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain.clone(), signing);
    if certified.keys_match().is_err() {
        return Err(TlsError::Mismatch {
            cert: cert_path,
            key: key_path,
        });
    }
    let (names, (not_before, not_after)) =
        names_and_validity(&chain[0]).map_err(|reason| TlsError::Cert {
            path: cert_path.clone(),
            reason,
        })?;
    let valid = not_after.is_none_or(|end| end > SystemTime::now())
        && not_before.is_none_or(|start| start <= SystemTime::now());
    if let Some(end) = not_after {
        match end.duration_since(SystemTime::now()) {
            Err(_) => {
                warn!(listener, certificate = %cert_path, "certificate has EXPIRED; clients will refuse it")
            }
            Ok(left) if left < EXPIRY_WARNING => warn!(
                listener, certificate = %cert_path, days_left = left.as_secs() / 86_400,
                "certificate expires soon; renew it"
            ),
            Ok(_) => {}
        }
    }
    tracing::info!(listener, certificate = %cert_path, names = ?names, "certificate loaded");
    Ok(Loaded {
        key: Arc::new(certified),
        names,
        valid,
    })
}

/// When a certificate's validity starts and ends (`None`: not a time this clock can hold).
type Validity = (Option<SystemTime>, Option<SystemTime>);

/// The DNS names a certificate is for, and when it is valid.
fn names_and_validity(der: &CertificateDer<'_>) -> Result<(Vec<String>, Validity), String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let at = |ts: i64| {
        u64::try_from(ts)
            .ok()
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
    };
    let validity = cert.validity();
    let bounds = (
        at(validity.not_before.timestamp()),
        at(validity.not_after.timestamp()),
    );
    Ok((names, bounds))
}

/// A server configuration for `resolver`: ALPN h2 then http/1.1, TLS 1.2 and 1.3.
pub fn server_config(resolver: Arc<SniResolver>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Loads the certificates of an https listener into a new handle.
pub fn handle(listener: &streamgate_config::Listener) -> Result<TlsHandle, TlsError> {
    Ok(Arc::new(ArcSwap::new(check(listener)?)))
}

/// A client configuration built for one setting, with the bytes of the files it was built from
/// and the [`GENERATION`] it was last checked in.
struct CachedClientConfig {
    config: Arc<rustls::ClientConfig>,
    files: Vec<u8>,
    generation: u64,
}

/// Client configurations built so far, by setting.
type ClientConfigs = Mutex<HashMap<(UpstreamTls, bool), CachedClientConfig>>;

/// Bumped by [`forget_client_configs`]: a cached configuration of an older generation has its
/// files read again before it is handed out.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn client_configs() -> &'static ClientConfigs {
    static CONFIGS: OnceLock<ClientConfigs> = OnceLock::new();
    CONFIGS.get_or_init(ClientConfigs::default)
}

/// The contents of the files a setting is built from (CA bundle, client certificate and key),
/// each with its length; an unreadable one as a marker, so that it differs from any contents.
fn file_contents(tls: &UpstreamTls) -> Vec<u8> {
    let paths = [
        tls.ca_file.as_deref(),
        tls.client_cert.as_ref().map(|p| p.cert.as_path()),
        tls.client_cert.as_ref().map(|p| p.key.as_path()),
    ];
    let mut out = Vec::new();
    for path in paths.into_iter().flatten() {
        match std::fs::read(path) {
            Ok(bytes) => {
                out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                out.extend_from_slice(&bytes);
            }
            Err(_) => out.extend_from_slice(&u64::MAX.to_le_bytes()),
        }
    }
    out
}

/// The client configuration for backends with these TLS settings: system roots (or the
/// configured CA), an optional client certificate, ALPN for the upstream protocol. Built once
/// per setting and shared (every backend pool and health prober of a service asks for it; each
/// used to read the CA bundle, or every system root, again). After [`forget_client_configs`]
/// the files are read again: the same `Arc` comes back when they are unchanged, a new one when
/// they changed, so holders can tell by `Arc::ptr_eq` whether to rebuild.
pub fn client_config(
    tls: &UpstreamTls,
    alpn_h2: bool,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let key = (tls.clone(), alpn_h2);
    let generation = GENERATION.load(std::sync::atomic::Ordering::Acquire);
    let lock = || client_configs().lock().unwrap_or_else(|e| e.into_inner());
    let stale = match lock().get(&key) {
        Some(c) if c.generation == generation => return Ok(c.config.clone()),
        Some(c) => Some((c.config.clone(), c.files.clone())),
        None => None,
    };
    // Read and built outside the lock: reading files must not hold up other lookups.
    let files = file_contents(tls);
    let config = match stale {
        Some((config, old)) if old == files => config,
        _ => build_client_config(tls, alpn_h2)?,
    };
    let mut map = lock();
    let entry = map.entry(key).or_insert_with(|| CachedClientConfig {
        config: config.clone(),
        files: files.clone(),
        generation,
    });
    if !Arc::ptr_eq(&entry.config, &config) || entry.generation != generation {
        *entry = CachedClientConfig {
            config: config.clone(),
            files,
            generation,
        };
    }
    Ok(config)
}

/// The client configuration a backend spoken to with `protocol` is dialled with: `None` for a
/// cleartext protocol, else [`client_config`] with ALPN `h2` for HTTP/2 over TLS. The one
/// reading of a service's upstream settings for its pooled clients and its health probes.
pub fn upstream_client_config(
    protocol: UpstreamProtocol,
    tls: &UpstreamTls,
) -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
    if !protocol.is_tls() {
        return Ok(None);
    }
    client_config(tls, protocol.is_h2()).map(Some)
}

/// Has the next [`client_config`] of every setting read its CA bundle and client certificate
/// again: a reload calls this before it checks the new configuration, so a certificate rotated
/// in place takes effect with it, and one left unchanged keeps its configuration (and the
/// backend connections made with it). (The system's roots are read once per process.)
/// Returns the generation forgotten, for [`remember_client_configs`].
pub fn forget_client_configs() -> u64 {
    GENERATION.fetch_add(1, std::sync::atomic::Ordering::AcqRel)
}

/// Takes back the [`forget_client_configs`] that returned `forgotten`, for a reload that was
/// rejected: the configurations kept for the running config stay current, and a client built
/// later (a health prober for an address DNS adds) does not read a CA bundle or certificate
/// the rejected reload found broken. Nothing happens if another reload forgot since.
pub fn remember_client_configs(forgotten: u64) {
    let _ = GENERATION.compare_exchange(
        forgotten + 1,
        forgotten,
        std::sync::atomic::Ordering::AcqRel,
        std::sync::atomic::Ordering::Acquire,
    );
}

/// The system's trusted roots, read once.
fn system_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        roots
    })
}

fn build_client_config(
    tls: &UpstreamTls,
    alpn_h2: bool,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = if tls.verify {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca_file {
            Some(path) => {
                for c in CertificateDer::pem_file_iter(path).map_err(|e| TlsError::Cert {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })? {
                    let c = c.map_err(|e| TlsError::Cert {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                    roots.add(c).map_err(|e| TlsError::Cert {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                }
                if roots.is_empty() {
                    return Err(TlsError::Cert {
                        path: path.display().to_string(),
                        reason: "no PEM certificate in the file".into(),
                    });
                }
            }
            None => roots = system_roots().clone(),
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
    };
    let mut cfg = match &tls.client_cert {
        Some(pair) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
                .and_then(|i| i.collect::<Result<_, _>>())
                .map_err(|e| TlsError::Cert {
                    path: pair.cert.display().to_string(),
                    reason: e.to_string(),
                })?;
            let key = PrivateKeyDer::from_pem_file(&pair.key).map_err(|e| TlsError::Key {
                path: pair.key.display().to_string(),
                reason: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Setup(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = if alpn_h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(cfg))
}

/// `tls_verify = false`: accept any backend certificate (lab setups only).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks that an https listener's certificate files load (for reload's all-or-nothing
/// check); the server configuration they make.
pub fn check(
    listener: &streamgate_config::Listener,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config(load(
        &listener.certificates,
        &listener.name,
        listener.strict_sni,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn write_cert(dir: &Path, name: &str, sans: &[&str]) -> CertPair {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        CertPair { cert: c, key: k }
    }

    #[test]
    fn picks_by_exact_then_wildcard_then_default() {
        let dir = tempfile_dir();
        let a = write_cert(&dir, "a", &["a.example.com"]);
        let w = write_cert(&dir, "w", &["*.example.com"]);
        let r = load(&[a, w], "test", false).unwrap();
        let first = r.pick(None).unwrap();
        assert!(
            Arc::ptr_eq(&r.pick(Some("A.example.com")).unwrap(), &first),
            "exact (and default)"
        );
        let wild = r.pick(Some("b.example.com")).unwrap();
        assert!(!Arc::ptr_eq(&wild, &first), "wildcard");
        assert!(
            Arc::ptr_eq(&r.pick(Some("x.y.example.com")).unwrap(), &first),
            "a wildcard covers one label only"
        );
        assert!(
            Arc::ptr_eq(&r.pick(Some("other.org")).unwrap(), &first),
            "default"
        );
    }

    #[test]
    fn strict_sni_serves_only_the_names_it_has() {
        let dir = tempfile_dir();
        let a = write_cert(&dir, "a", &["a.example.com"]);
        let w = write_cert(&dir, "w", &["*.example.org"]);
        let r = load(&[a, w], "test", true).unwrap();
        assert!(r.pick(Some("a.example.com")).is_some());
        assert!(r.pick(Some("x.example.org")).is_some(), "wildcard");
        assert!(
            r.pick(Some("other.test")).is_none(),
            "an unknown name is refused"
        );
        assert!(r.pick(None).is_none(), "no name is refused");
    }

    #[test]
    fn a_name_two_certificates_cover_is_served_by_the_valid_one() {
        let dir = tempfile_dir();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example.com".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let expired = params.self_signed(&key).unwrap();
        let (c, k) = (dir.join("old.pem"), dir.join("old.key"));
        std::fs::write(&c, expired.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let old = CertPair { cert: c, key: k };
        let renewed = write_cert(&dir, "new", &["a.example.com"]);
        // The expired one first, as a renewal appended below it in the list would be.
        let r = load(&[old.clone(), renewed.clone()], "test", false).unwrap();
        let fresh = load(std::slice::from_ref(&renewed), "test", false)
            .unwrap()
            .pick(None)
            .unwrap();
        let served = r.pick(Some("a.example.com")).unwrap();
        assert_eq!(served.cert, fresh.cert, "the renewal is served");
        assert_eq!(r.pick(None).unwrap().cert, fresh.cert, "and is the default");
        // Alone, an expired certificate is still served (with a warning) rather than none.
        let only = load(std::slice::from_ref(&old), "test", false).unwrap();
        assert_ne!(only.pick(Some("a.example.com")).unwrap().cert, fresh.cert);
    }

    #[test]
    fn clear_errors() {
        let dir = tempfile_dir();
        let a = write_cert(&dir, "a", &["a.example"]);
        let b = write_cert(&dir, "b", &["b.example"]);
        let mismatched = CertPair {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let e = load(&[mismatched], "t", false).unwrap_err().to_string();
        assert!(e.contains("does not belong to this certificate"), "{e}");
        let missing = CertPair {
            cert: dir.join("nope.pem"),
            key: a.key.clone(),
        };
        let e = load(&[missing], "t", false).unwrap_err().to_string();
        assert!(e.contains("nope.pem: cannot read certificate"), "{e}");
        std::fs::write(dir.join("empty.pem"), "").unwrap();
        let empty = CertPair {
            cert: dir.join("empty.pem"),
            key: a.key.clone(),
        };
        assert!(
            load(&[empty], "t", false)
                .unwrap_err()
                .to_string()
                .contains("no CERTIFICATE")
        );
    }

    #[test]
    fn client_configs_are_shared_per_setting_until_a_reload_forgets_them() {
        let dir = tempfile_dir();
        let ca = write_cert(&dir, "ca", &["backend.example"]);
        let tls = UpstreamTls {
            ca_file: Some(ca.cert.clone()),
            ..UpstreamTls::default()
        };
        let first = client_config(&tls, false).unwrap();
        assert!(Arc::ptr_eq(&first, &client_config(&tls, false).unwrap()));
        let h2 = client_config(&tls, true).unwrap();
        assert!(
            !Arc::ptr_eq(&first, &h2),
            "ALPN differs, so does the config"
        );
        assert_eq!(h2.alpn_protocols, vec![b"h2".to_vec()]);
        // A reload with the files unchanged keeps the config (and the connections made with
        // it): holders compare by pointer.
        forget_client_configs();
        assert!(Arc::ptr_eq(&first, &client_config(&tls, false).unwrap()));
        // A CA bundle emptied on disk: still the shared config until a reload forgets it, then
        // the file is read again and its problem reported.
        let pem = std::fs::read(&ca.cert).unwrap();
        std::fs::write(&ca.cert, "").unwrap();
        assert!(Arc::ptr_eq(&first, &client_config(&tls, false).unwrap()));
        let forgotten = forget_client_configs();
        let e = client_config(&tls, false).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        // That reload is rejected: the running config's client stays, broken file or not.
        remember_client_configs(forgotten);
        assert!(Arc::ptr_eq(&first, &client_config(&tls, false).unwrap()));
        forget_client_configs();
        assert!(
            client_config(&tls, false).is_err(),
            "the next reload reads it again"
        );
        // Another CA rotated in at the same path: a new config at the next reload.
        let other = write_cert(&dir, "other", &["backend.example"]);
        std::fs::copy(&other.cert, &ca.cert).unwrap();
        forget_client_configs();
        let rotated = client_config(&tls, false).unwrap();
        assert!(!Arc::ptr_eq(&first, &rotated));
        std::fs::write(&ca.cert, pem).unwrap();
        forget_client_configs();
        assert!(!Arc::ptr_eq(&rotated, &client_config(&tls, false).unwrap()));
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sg-tls-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn fastrand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }
}
