//! TLS on the device listener: rustls's server side, sans-io.
//!
//! rustls is itself sans-io (its unbuffered API, `process_tls_records`, is
//! what [`crate::transport::Wire`] drives), so a connection's TLS state is
//! just one more layer the engine runs between the driver's bytes and the
//! session; the drivers never see TLS. The
//! certificate is held behind a resolver that a SIGHUP swaps
//! ([`TlsServer::reload`]): handshakes after the swap present the new
//! certificate, sessions already established keep theirs.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::crypto::ring::default_provider;
use rustls::server::{
    ClientHello, ResolvesServerCert, UnbufferedServerConnection, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Where the listener's certificate, key and (optional) client CA are read
/// from, at start and again on every reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM: CA certificates that sign client certificates. When set, every
    /// TLS client must present a certificate chaining to one of them.
    pub client_ca: Option<PathBuf>,
}

/// The node's TLS server configuration, shared by the cores.
pub struct TlsServer {
    files: TlsFiles,
    config: Arc<ServerConfig>,
    cert: Arc<SwappableCert>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// The certificate handshakes present; swapped whole on reload.
#[derive(Debug)]
struct SwappableCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

impl TlsServer {
    /// Reads the files and builds the configuration (TLS 1.3 and 1.2).
    pub fn load(files: TlsFiles) -> Result<TlsServer, String> {
        let provider = Arc::new(default_provider());
        let key = certified_key(&files, &provider)?;
        let cert = Arc::new(SwappableCert(RwLock::new(Arc::new(key))));
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs(path)? {
                    roots
                        .add(c)
                        .map_err(|e| format!("TLS: client CA {}: {e}", path.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| format!("TLS: client CA {}: {e}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(cert.clone());
        // Session tickets would keep per-node resumption state; mobile
        // clients reconnect to any node of the fleet, so full handshakes.
        config.send_tls13_tickets = 0;
        Ok(TlsServer {
            files,
            config: Arc::new(config),
            cert,
        })
    }

    /// Reads the certificate and key again (SIGHUP). On an error the current
    /// certificate stays and the error is returned for the log.
    pub fn reload(&self) -> Result<(), String> {
        let key = certified_key(&self.files, &Arc::new(default_provider()))?;
        *self.cert.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_cert(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The server side of one new connection (rustls's unbuffered API: the
    /// wire owns the byte buffers, so an idle session keeps none).
    pub fn accept(&self) -> Result<UnbufferedServerConnection, rustls::Error> {
        UnbufferedServerConnection::new(self.config.clone())
    }

    /// The certificate chain handshakes present now (for tests and logs).
    pub fn current_chain(&self) -> Vec<CertificateDer<'static>> {
        self.cert
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .cert
            .clone()
    }
}

fn read_certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("TLS: cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("TLS: {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("TLS: no certificate in {}", path.display()));
    }
    Ok(certs)
}

fn certified_key(
    files: &TlsFiles,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<CertifiedKey, String> {
    let chain = read_certs(&files.cert)?;
    // The key's file name only: its contents never reach a message.
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "TLS: cannot read a private key from {}: {e}",
            files.key.display()
        )
    })?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!(
            "TLS: the key in {} does not fit the certificate in {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(key)
}

/// The metric label of a failed handshake or TLS stream (bounded set).
pub fn failure_reason(e: &rustls::Error) -> &'static str {
    use rustls::Error as E;
    match e {
        // Not TLS at all: a plain-text client on the TLS port.
        E::InvalidMessage(_) => "not_tls",
        E::NoCertificatesPresented => "no_client_cert",
        E::InvalidCertificate(_) => "bad_client_cert",
        // The client refused our certificate (unknown CA, bad name...).
        E::AlertReceived(_) => "peer_alert",
        E::PeerIncompatible(_) => "incompatible",
        E::PeerMisbehaved(_) => "misbehaved",
        E::DecryptError => "decrypt_error",
        _ => "other",
    }
}

/// The labels [`failure_reason`] returns.
pub const FAILURE_REASONS: &[&str] = &[
    "not_tls",
    "no_client_cert",
    "bad_client_cert",
    "peer_alert",
    "incompatible",
    "misbehaved",
    "decrypt_error",
    "other",
];
