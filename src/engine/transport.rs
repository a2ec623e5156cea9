//! Connections with transport layers (TLS, WebSocket, a PROXY header): their
//! bytes pass through the connection's [`crate::transport::Wire`] on the way
//! in (here) and on the way out (`outflow.rs`).

use super::conn::{ADMITTED, SHUT};
use super::{ConnKey, Engine, Now, SessionRef, TransportEnd};
use crate::transport::WireFailure;

/// The unwrap buffer is kept between reads up to this size (a large TLS
/// record or WebSocket message may grow it once; it is not kept that large).
const UNWRAPPED_KEEP: usize = 64 * 1024;

impl Engine {
    /// Bytes read from a connection with transport layers.
    pub(super) fn on_wire_bytes(&mut self, now: Now, key: ConnKey, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(key.index()) else {
            return;
        };
        if c.has(SHUT) {
            return;
        }
        let Some(wire) = c.wire.as_mut() else {
            return;
        };
        let mut plain = std::mem::take(&mut self.unwrapped);
        plain.clear();
        let result = wire.receive(&self.cfg.transports, bytes, &mut plain);
        let at = SessionRef {
            key,
            session_id: c.session.session_id(),
        };
        match result {
            Err(f) => self.transport_failed(now, key, f),
            Ok(read) => {
                if read.tls_established {
                    self.stats.handshakes[0] += 1;
                }
                if read.ws_opened {
                    self.stats.handshakes[1] += 1;
                }
                if read.proxied {
                    self.stats.handshakes[2] += 1;
                    if let Some(source) = read.source {
                        c.peer = source.into();
                    }
                    let peer = c.peer.addr();
                    if !c.has(ADMITTED) {
                        self.admit(now, at, peer);
                    }
                }
                if let Some(c) = self.conns.get_mut(key.index()) {
                    if read.liveness {
                        c.session.note_liveness(now.mono);
                    }
                    if c.wire_wants_write() || (c.wire_ready() && c.queued() > 0) {
                        self.flush_later(key);
                    }
                }
                if !plain.is_empty() {
                    self.on_miop_bytes(now, key, &plain);
                }
                if read.peer_closed {
                    // Like EOF, but the wire's reply (WebSocket Close)
                    // goes out first.
                    self.end_transport(now, key, TransportEnd::PeerClosed, true);
                }
            }
        }
        if plain.capacity() <= UNWRAPPED_KEEP {
            self.unwrapped = plain;
        }
    }

    /// The transport failed (a handshake refused, bytes that are not TLS, a
    /// bad WebSocket frame, a missing PROXY header): counted by reason; the
    /// session ends; the transport's last bytes (an alert, an HTTP error)
    /// are written, then the socket is shut down.
    pub(super) fn transport_failed(&mut self, now: Now, key: ConnKey, f: WireFailure) {
        self.stats.transport_failure(f);
        self.end_transport(now, key, TransportEnd::PeerClosed, true);
    }
}
