//! [`TlsArgs`]: the TLS flags of the programs that connect as clients
//! (miop-bench, the example client), one definition for all of them.

use std::path::PathBuf;

use super::{Scheme, TlsOptions};

/// `--ca`, `--insecure`, `--client-cert`, `--client-key`, `--server-name`,
/// for `miops://` and `wss://` URLs (clap flags; see [`TlsOptions`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct TlsArgs {
    /// miops://, wss://: trust the CA certificates of this PEM file instead
    /// of the system's CA store.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// miops://, wss://: accept ANY server certificate, checking nothing.
    /// INSECURE: anyone on the path can pose as the server. For tests and
    /// benchmarks against a throwaway certificate only.
    #[arg(long)]
    pub insecure: bool,

    /// miops://, wss://: present this client certificate chain (PEM) when
    /// the server asks for one; needs --client-key.
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,

    /// The private key (PEM) of --client-cert.
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,

    /// miops://, wss://: check the server's certificate for this name (and
    /// send it as SNI) instead of the URL's host.
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
}

impl TlsArgs {
    /// The options the flags describe.
    pub fn options(&self) -> TlsOptions {
        TlsOptions {
            ca: self.ca.clone(),
            insecure: self.insecure,
            client_cert: self.client_cert.clone().zip(self.client_key.clone()),
            server_name: self.server_name.clone(),
        }
    }

    /// An error if any flag is given for a scheme without TLS (they would
    /// be silently ignored, and the user believes the connection checked).
    pub fn check_scheme(&self, scheme: Scheme) -> Result<(), String> {
        if scheme.is_tls() || *self == TlsArgs::default() {
            return Ok(());
        }
        Err(format!(
            "--ca, --insecure, --client-cert, --client-key and --server-name apply to miops:// \
             and wss:// URLs, not {}://",
            scheme.name()
        ))
    }
}
