//! One connection's transport stack: an optional PROXY header, then TLS,
//! then WebSocket, each optional, between the socket's bytes and the Miop
//! byte stream the session reads and writes.
//!
//! The engine holds a [`Wire`] for connections on a layered listener (plain
//! TCP without a PROXY header has none and pays nothing). It feeds the wire
//! what the driver read ([`Wire::receive`]) and gets the Miop bytes back;
//! when it transmits, the wire wraps the session's frames into the socket's
//! bytes ([`Wire::seal`]), after any bytes of its own (handshake records,
//! WebSocket replies, alerts). Everything here is sans-io.

use std::net::SocketAddr;

use bytes::Bytes;

use super::listener::{ListenerSpec, Transports};
use super::tls_conn::*;
use super::{proxy, tls, ws};

/// Why a connection's transport failed: the layer and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireFailure {
    /// "proxy", "tls" or "ws".
    pub layer: &'static str,
    pub reason: &'static str,
}

/// What one read brought besides Miop bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WireRead {
    /// The PROXY header completed with this read; `source` is the client's
    /// address it named (None: keep the socket's peer address).
    pub proxied: bool,
    pub source: Option<SocketAddr>,
    /// A TLS handshake completed with this read.
    pub tls_established: bool,
    /// A WebSocket upgrade completed with this read.
    pub ws_opened: bool,
    /// A complete WebSocket frame arrived (pings included): the peer is alive.
    pub liveness: bool,
    /// The peer closed its transport (TLS close_notify, WebSocket Close).
    pub peer_closed: bool,
}

/// The layers of one connection.
pub struct Wire {
    /// Some while the PROXY header is awaited: the bytes of it so far.
    proxy: Option<Vec<u8>>,
    tls: Option<Box<Tls>>,
    ws: Option<ws::WsServer>,
    /// Bytes of the wire's own to send first (WebSocket replies on a plain
    /// socket; under TLS they go into the TLS stream instead).
    pending: Vec<u8>,
    /// The transport failed: only its own last bytes (an alert, an HTTP
    /// error) go out, no more Miop frames.
    failed: bool,
    /// The closing bytes (close_notify, WebSocket Close) were queued.
    closed: bool,
}

fn fail(layer: &'static str, reason: &'static str) -> WireFailure {
    WireFailure { layer, reason }
}

impl Wire {
    /// The layers of a connection accepted on `spec` (None: plain TCP, no
    /// layer).
    pub fn new(spec: ListenerSpec, t: &Transports) -> Result<Option<Box<Wire>>, WireFailure> {
        if !spec.layered() {
            return Ok(None);
        }
        let tls = if spec.kind.tls() {
            let server = t.tls.as_ref().ok_or(fail("tls", "not_configured"))?;
            let conn = server
                .accept()
                .map_err(|e| fail("tls", tls::failure_reason(&e)))?;
            Some(Box::new(Tls {
                conn,
                incoming: Vec::new(),
                outgoing: Vec::new(),
                peer_closed: false,
            }))
        } else {
            None
        };
        Ok(Some(Box::new(Wire {
            proxy: spec.proxy.then(Vec::new),
            tls,
            ws: spec.kind.websocket().then(ws::WsServer::new),
            pending: Vec::new(),
            failed: false,
            closed: false,
        })))
    }

    /// Every handshake is done: Miop frames may be sent.
    pub fn ready(&self) -> bool {
        !self.failed
            && self.proxy.is_none()
            && self.tls.as_ref().is_none_or(|t| !t.conn.is_handshaking())
            && self.ws.as_ref().is_none_or(|w| w.is_open())
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The layer still waiting for its handshake (for the metric of a
    /// connection that timed out in it).
    pub fn handshaking_layer(&self) -> Option<&'static str> {
        if self.failed {
            None
        } else if self.proxy.is_some() {
            Some("proxy")
        } else if self.tls.as_ref().is_some_and(|t| t.conn.is_handshaking()) {
            Some("tls")
        } else if self.ws.as_ref().is_some_and(|w| !w.is_open()) {
            Some("ws")
        } else {
            None
        }
    }

    /// The wire has bytes of its own to send.
    pub fn wants_write(&self) -> bool {
        !self.pending.is_empty() || self.tls.as_ref().is_some_and(|t| !t.outgoing.is_empty())
    }

    /// Bytes read from the socket: appends the Miop bytes they carry to
    /// `plain`. On a failure the wire keeps its last bytes (alert, HTTP
    /// error, WebSocket Close) for [`Wire::seal`], and the connection is to
    /// be closed once they are written.
    pub fn receive(
        &mut self,
        t: &Transports,
        input: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<WireRead, WireFailure> {
        let mut read = WireRead::default();
        if self.failed || self.closed {
            return Ok(read);
        }
        let r = self.receive_layers(t, input, plain, &mut read);
        if r.is_err() {
            self.failed = true;
        }
        r.map(|()| read)
    }

    fn receive_layers(
        &mut self,
        t: &Transports,
        input: &[u8],
        plain: &mut Vec<u8>,
        read: &mut WireRead,
    ) -> Result<(), WireFailure> {
        let held: Vec<u8>;
        let mut input = input;
        if let Some(buf) = self.proxy.as_mut() {
            buf.extend_from_slice(input);
            match proxy::parse(buf).map_err(|e| fail("proxy", e.reason()))? {
                proxy::Parsed::Incomplete => {
                    if buf.len() >= proxy::MAX_HEADER_LEN {
                        return Err(fail("proxy", "too_long"));
                    }
                    return Ok(());
                }
                proxy::Parsed::Header { consumed, source } => {
                    read.proxied = true;
                    read.source = source;
                    held = buf.split_off(consumed);
                    self.proxy = None;
                    input = &held;
                }
            }
        }
        if input.is_empty() {
            return Ok(());
        }
        // TLS: ciphertext in, the plaintext out: straight into `plain`, or
        // into `opened` for the WebSocket layer under wss.
        let mut opened = Vec::new();
        let data: &[u8] = match self.tls.as_mut() {
            None => input,
            Some(layer) => {
                let was_handshaking = layer.conn.is_handshaking();
                let into = if self.ws.is_some() {
                    &mut opened
                } else {
                    &mut *plain
                };
                let at = into.len();
                if let Err(e) = layer.receive(input, into) {
                    into.truncate(at);
                    return Err(fail("tls", tls::failure_reason(&e)));
                }
                read.peer_closed = layer.peer_closed;
                read.tls_established = was_handshaking && !layer.conn.is_handshaking();
                // Empty without WebSocket: the plaintext is in `plain`.
                &opened
            }
        };
        match self.ws.as_mut() {
            None => plain.extend_from_slice(data),
            Some(ws) if !data.is_empty() => {
                let mut reply = Vec::new();
                let r = ws.receive(&t.ws, data, plain, &mut reply);
                match self.tls.as_mut() {
                    Some(layer) if !reply.is_empty() => {
                        layer
                            .write(|w, out| encrypt(w, &reply, out))
                            .map_err(|e| fail("tls", tls::failure_reason(&e)))?;
                    }
                    Some(_) => {}
                    None => self.pending.extend_from_slice(&reply),
                }
                let r = r.map_err(|e| fail("ws", e.reason()))?;
                read.ws_opened = r.open;
                read.liveness = r.liveness;
                read.peer_closed |= r.peer_closed;
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// The bytes to write next: the wire's own first, then `frames` (whole
    /// Miop frames, in order) wrapped by the layers. A failed wire sends only
    /// its own bytes.
    pub fn seal(&mut self, frames: Vec<Bytes>, out: &mut Vec<Bytes>) {
        let frames = if self.failed { Vec::new() } else { frames };
        let framed = match self.ws.as_ref() {
            Some(ws) if !frames.is_empty() => {
                let mut v = Vec::with_capacity(frames.len() * 2);
                ws.seal(frames, &mut v);
                v
            }
            _ => frames,
        };
        match self.tls.as_mut() {
            Some(layer) => {
                if !framed.is_empty()
                    && layer
                        .write(|w, out| {
                            for chunk in &framed {
                                encrypt(w, chunk, out);
                            }
                        })
                        .is_err()
                {
                    self.failed = true;
                }
                // Handed out whole: nothing stays allocated for the next write.
                if !layer.outgoing.is_empty() {
                    out.push(Bytes::from(std::mem::take(&mut layer.outgoing)));
                }
            }
            None => {
                if !self.pending.is_empty() {
                    out.push(Bytes::from(std::mem::take(&mut self.pending)));
                }
                out.extend(framed);
            }
        }
    }

    /// The connection is closing and its last Miop frames are written:
    /// queues the transport's goodbye (WebSocket Close, TLS close_notify),
    /// once. Returns whether there is something to write.
    pub fn close(&mut self) -> bool {
        if self.closed || self.failed || !self.ready() {
            return self.wants_write();
        }
        self.closed = true;
        let frame = self.ws.as_mut().map(|ws| {
            ws.sent_close();
            ws::WsServer::close_frame(ws::CLOSE_NORMAL)
        });
        match self.tls.as_mut() {
            Some(layer) => {
                let r = layer.write(|w, out| {
                    if let Some(frame) = &frame {
                        encrypt(w, frame, out);
                    }
                    close_notify(w, out);
                });
                if r.is_err() {
                    self.failed = true;
                }
            }
            None => {
                if let Some(frame) = frame {
                    self.pending.extend_from_slice(&frame);
                }
            }
        }
        self.wants_write()
    }
}

/// The integration tests' certificates (a CA, server and client leaves).
#[cfg(test)]
#[path = "../../tests/common/pki.rs"]
pub(crate) mod test_pki;

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
