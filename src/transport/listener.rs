//! The device listeners a node serves and the transport each speaks.

use std::net::SocketAddr;
use std::sync::Arc;

use super::tls::TlsServer;
use super::ws::WsConfig;

/// What a listener's connections speak under Miop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Miop straight on TCP (`miop://`).
    Tcp,
    /// Miop in TLS (`miops://`).
    Tls,
    /// Miop in WebSocket binary messages (`ws://`).
    Ws,
    /// Miop in WebSocket over TLS (`wss://`).
    Wss,
}

impl ListenerKind {
    pub const ALL: [ListenerKind; 4] = [
        ListenerKind::Tcp,
        ListenerKind::Tls,
        ListenerKind::Ws,
        ListenerKind::Wss,
    ];

    /// Metric label and flag-value name.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }

    pub fn tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }

    pub fn websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

/// One device listener: where, what it speaks, and whether a PROXY protocol
/// header comes first (behind HAProxy or a cloud L4 balancer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerSpec {
    pub kind: ListenerKind,
    pub addr: SocketAddr,
    pub proxy: bool,
}

impl ListenerSpec {
    /// Whether connections need a transport layer at all (plain TCP without
    /// a PROXY header goes straight to the session).
    pub fn layered(&self) -> bool {
        self.proxy || self.kind != ListenerKind::Tcp
    }
}

/// The node's listeners and the shared transport state (TLS configuration,
/// WebSocket path), handed to every core.
pub struct Transports {
    /// Indexed by the listener number drivers pass to `Engine::accept_on`.
    pub listeners: Vec<ListenerSpec>,
    pub tls: Option<Arc<TlsServer>>,
    pub ws: WsConfig,
}

impl Transports {
    /// One plain TCP listener (tests, the engine's default).
    pub fn plain(addr: SocketAddr) -> Transports {
        Transports {
            listeners: vec![ListenerSpec {
                kind: ListenerKind::Tcp,
                addr,
                proxy: false,
            }],
            tls: None,
            ws: WsConfig::default(),
        }
    }

    pub fn spec(&self, listener: usize) -> ListenerSpec {
        self.listeners[listener.min(self.listeners.len() - 1)]
    }
}

impl Default for Transports {
    fn default() -> Self {
        Transports::plain(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}
