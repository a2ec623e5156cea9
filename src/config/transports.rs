//! Which device listeners a node opens besides plain TCP (TLS, WebSocket,
//! WebSocket over TLS), with their certificate files, WebSocket path and
//! PROXY protocol setting.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::transport::tls::TlsFiles;
use crate::transport::ListenerKind;

/// The transports part of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    pub listen_tls: Option<SocketAddr>,
    pub listen_ws: Option<SocketAddr>,
    pub listen_wss: Option<SocketAddr>,
    pub tls: Option<TlsFiles>,
    /// The WebSocket request path (e.g. `/miop`).
    pub ws_path: String,
    /// Listeners whose connections start with a PROXY protocol header.
    pub proxy_protocol: Vec<ListenerKind>,
}

pub const DEFAULT_WS_PATH: &str = "/miop";

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            listen_tls: None,
            listen_ws: None,
            listen_wss: None,
            tls: None,
            ws_path: DEFAULT_WS_PATH.into(),
            proxy_protocol: Vec::new(),
        }
    }
}

/// What the command line or file said, before checks.
pub struct TransportInput {
    pub listen_tls: Option<SocketAddr>,
    pub listen_ws: Option<SocketAddr>,
    pub listen_wss: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub ws_path: Option<String>,
    pub proxy_protocol: Vec<String>,
}

impl TransportConfig {
    pub fn resolve(i: TransportInput) -> Result<TransportConfig, String> {
        let tls = match (i.tls_cert, i.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: i.tls_client_ca,
            }),
            (None, None) if i.tls_client_ca.is_none() => None,
            _ => {
                return Err(
                    "--tls-cert and --tls-key go together (and --tls-client-ca needs them)".into(),
                )
            }
        };
        if tls.is_none() && (i.listen_tls.is_some() || i.listen_wss.is_some()) {
            return Err("--listen-tls and --listen-wss need --tls-cert and --tls-key".into());
        }
        if tls.is_some() && i.listen_tls.is_none() && i.listen_wss.is_none() {
            return Err(
                "--tls-cert is given but no TLS listener: add --listen-tls and/or --listen-wss"
                    .into(),
            );
        }
        let ws_path = i.ws_path.unwrap_or_else(|| DEFAULT_WS_PATH.into());
        if !ws_path.starts_with('/') || ws_path.contains(['?', '#', ' ']) {
            return Err(format!(
                "--ws-path must be an absolute path like {DEFAULT_WS_PATH}, not {ws_path:?}"
            ));
        }
        let mut proxy_protocol = Vec::new();
        for name in i
            .proxy_protocol
            .iter()
            .map(|s| s.trim().to_ascii_lowercase())
        {
            match name.as_str() {
                "" => {}
                "all" => proxy_protocol.extend(ListenerKind::ALL),
                n => proxy_protocol.push(
                    ListenerKind::ALL
                        .into_iter()
                        .find(|k| k.name() == n)
                        .ok_or_else(|| {
                            format!("--proxy-protocol takes tcp, tls, ws, wss or all, not {n:?}")
                        })?,
                ),
            }
        }
        proxy_protocol.sort_by_key(|k| *k as u8);
        proxy_protocol.dedup();
        Ok(TransportConfig {
            listen_tls: i.listen_tls,
            listen_ws: i.listen_ws,
            listen_wss: i.listen_wss,
            tls,
            ws_path,
            proxy_protocol,
        })
    }

    /// The listeners to open: plain TCP at `tcp` first, then the others.
    pub fn listeners(&self, tcp: SocketAddr) -> Vec<(ListenerKind, SocketAddr, bool)> {
        let proxy = |k: ListenerKind| self.proxy_protocol.contains(&k);
        let mut v = vec![(ListenerKind::Tcp, tcp, proxy(ListenerKind::Tcp))];
        for (k, a) in [
            (ListenerKind::Tls, self.listen_tls),
            (ListenerKind::Ws, self.listen_ws),
            (ListenerKind::Wss, self.listen_wss),
        ] {
            if let Some(a) = a {
                v.push((k, a, proxy(k)));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> TransportInput {
        TransportInput {
            listen_tls: None,
            listen_ws: None,
            listen_wss: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            ws_path: None,
            proxy_protocol: Vec::new(),
        }
    }

    #[test]
    fn tls_listeners_need_a_certificate_and_a_certificate_needs_a_listener() {
        let mut i = input();
        i.listen_tls = Some("127.0.0.1:7701".parse().unwrap());
        assert!(TransportConfig::resolve(i)
            .unwrap_err()
            .contains("--tls-cert"));
        let mut i = input();
        i.tls_cert = Some("c.pem".into());
        i.tls_key = Some("k.pem".into());
        assert!(TransportConfig::resolve(i)
            .unwrap_err()
            .contains("no TLS listener"));
        let mut i = input();
        i.tls_cert = Some("c.pem".into());
        assert!(TransportConfig::resolve(i)
            .unwrap_err()
            .contains("go together"));
    }

    #[test]
    fn proxy_protocol_names_and_all() {
        let mut i = input();
        i.proxy_protocol = vec!["ws".into(), "TCP".into(), "tcp".into()];
        let c = TransportConfig::resolve(i).unwrap();
        assert_eq!(c.proxy_protocol, vec![ListenerKind::Tcp, ListenerKind::Ws]);
        let mut i = input();
        i.proxy_protocol = vec!["all".into()];
        assert_eq!(TransportConfig::resolve(i).unwrap().proxy_protocol.len(), 4);
        let mut i = input();
        i.proxy_protocol = vec!["udp".into()];
        assert!(TransportConfig::resolve(i).is_err());
    }

    #[test]
    fn ws_path_must_be_absolute() {
        let mut i = input();
        i.ws_path = Some("miop".into());
        assert!(TransportConfig::resolve(i).is_err());
        let mut i = input();
        i.ws_path = Some("/push/ws".into());
        assert_eq!(TransportConfig::resolve(i).unwrap().ws_path, "/push/ws");
    }
}
