//! TLS for `miops://` and `wss://`: which server certificates the client
//! trusts ([`TlsOptions`]), the rustls configuration built from them, and
//! handshake failures explained in words (a wrong CA, a wrong name, an
//! expired certificate) rather than rustls's variant names.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::ClientError;

/// How a client checks the server's certificate, and proves its own identity
/// if the server asks for a client certificate.
///
/// The default trusts the system's CA certificates (the `ca-certificates`
/// store, or `SSL_CERT_FILE` / `SSL_CERT_DIR`), as curl or a browser would:
/// right for a gateway with a certificate from a public CA. A gateway with a
/// certificate from a private CA (or a self-signed one) needs `ca`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// A PEM file of CA certificates to trust instead of the system's.
    pub ca: Option<PathBuf>,
    /// **Accept any server certificate, checking nothing.** For tests and
    /// benchmarks against a throwaway certificate only: with it, anyone on
    /// the path can impersonate the server and read every push. Never set it
    /// in a device or a deployment.
    pub insecure: bool,
    /// Certificate chain and private key (PEM files) to present when the
    /// server asks for a client certificate.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The name to check the server's certificate against (and to send as
    /// SNI) instead of the URL's host: for a server reached by IP address or
    /// through a tunnel.
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// The rustls client configuration these options describe. Fails with
    /// [`ClientError::Tls`] saying which file is unreadable or holds no
    /// certificate or key, or that the system has no CA certificates.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(format!("cannot configure: {e}")))?;
        let builder = if self.insecure {
            if let Some(ca) = &self.ca {
                return Err(tls_error(format!(
                    "both a CA file ({}) and insecure mode (which checks no certificate): choose one",
                    ca.display()
                )));
            }
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        } else {
            let roots = match &self.ca {
                Some(path) => Arc::new(read_ca_file(path)?),
                None => system_roots()?,
            };
            builder.with_root_certificates(roots)
        };
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certificates(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    tls_error(format!(
                        "cannot read a private key from {}: {e}",
                        key.display()
                    ))
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| tls_error(format!("client certificate {}: {e}", cert.display())))?
            }
        };
        Ok(Arc::new(config))
    }

    /// The name the server's certificate must carry: [`TlsOptions::server_name`]
    /// if set, else `host` (brackets of an IPv6 address removed).
    pub fn server_name_for(&self, host: &str) -> Result<ServerName<'static>, ClientError> {
        let name = self.server_name.as_deref().unwrap_or(host);
        let name = name
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(name);
        ServerName::try_from(name.to_owned())
            .map_err(|_| tls_error(format!("{name:?} is not a valid TLS server name")))
    }
}

fn tls_error(why: String) -> ClientError {
    ClientError::Tls(why)
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_error(format!("cannot read {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_error(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_ca_file(path: &Path) -> Result<RootCertStore, ClientError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(path)? {
        roots.add(cert).map_err(|e| {
            tls_error(format!(
                "a certificate in {} is not a usable CA: {e}",
                path.display()
            ))
        })?;
    }
    Ok(roots)
}

/// The system's CA certificates, loaded once per process (the load
/// generator builds one configuration per worker thread).
fn system_roots() -> Result<Arc<RootCertStore>, ClientError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                let why = match found.errors.first() {
                    Some(e) => format!(" ({e})"),
                    None => String::new(),
                };
                return Err(format!(
                    "no CA certificates found in the system store{why}: give the server's CA \
                     with --ca FILE (TlsOptions::ca), or install the ca-certificates package"
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
        .map_err(tls_error)
}

/// What a failed TLS handshake with `server` means, in words.
pub(crate) fn handshake_error(server: &str, e: std::io::Error) -> ClientError {
    let why = match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(c)) => certificate_problem(c),
        Some(rustls::Error::AlertReceived(alert)) => format!(
            "the server refused the handshake ({alert:?} alert){}",
            match alert {
                rustls::AlertDescription::CertificateRequired
                | rustls::AlertDescription::BadCertificate
                | rustls::AlertDescription::UnknownCA
                | rustls::AlertDescription::HandshakeFailure => {
                    ": does it require a client certificate (--client-cert, --client-key)?"
                }
                _ => "",
            }
        ),
        Some(other) => other.to_string(),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the server closed the connection during the handshake (is it a TLS port?)".into()
        }
        None => e.to_string(),
    };
    tls_error(format!("handshake with {server} failed: {why}"))
}

fn certificate_problem(c: &CertificateError) -> String {
    match c {
        CertificateError::UnknownIssuer => "the server's certificate is not signed by a CA this \
            client trusts (give the CA with --ca FILE; --insecure skips the check, for tests only)"
            .into(),
        CertificateError::NotValidForName => {
            "the server's certificate is not valid for this host name (--server-name NAME checks \
             another name)"
                .into()
        }
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "the server's certificate is for {}, not for {} (--server-name NAME checks \
             another name)",
            presented
                .iter()
                .map(|n| bare_name(n))
                .collect::<Vec<_>>()
                .join(", "),
            expected.to_str()
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the server's certificate has expired".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the server's certificate is not valid yet (check the clocks)".into()
        }
        other => format!("invalid server certificate: {other:?}"),
    }
}

/// `localhost` of rustls's `DnsName("localhost")`, `127.0.0.1` of
/// `IpAddress(127.0.0.1)`.
fn bare_name(presented: &str) -> &str {
    let inner = presented
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or(presented);
    inner.trim_matches('"')
}

/// `TlsOptions::insecure`: accepts every certificate, but still checks that
/// the handshake is signed by the key of the certificate presented (which
/// proves nothing about who the server is).
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl fmt::Debug for AcceptAnyCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AcceptAnyCertificate")
    }
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
