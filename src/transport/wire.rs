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

use std::io::{Read, Write};
use std::net::SocketAddr;

use bytes::Bytes;
use rustls::ServerConnection;

use super::listener::{ListenerSpec, Transports};
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
    tls: Option<Box<ServerConnection>>,
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
            let mut conn = server
                .accept()
                .map_err(|e| fail("tls", tls::failure_reason(&e)))?;
            // The engine bounds what a session queues; rustls need not.
            conn.set_buffer_limit(None);
            Some(Box::new(conn))
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
            && self.tls.as_ref().is_none_or(|t| !t.is_handshaking())
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
        } else if self.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
            Some("tls")
        } else if self.ws.as_ref().is_some_and(|w| !w.is_open()) {
            Some("ws")
        } else {
            None
        }
    }

    /// The wire has bytes of its own to send.
    pub fn wants_write(&self) -> bool {
        !self.pending.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
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
        // TLS: ciphertext in, the plaintext (Miop, or WebSocket under wss)
        // out into `opened`.
        let mut opened = Vec::new();
        let data: &[u8] = match self.tls.as_mut() {
            None => input,
            Some(conn) => {
                let was_handshaking = conn.is_handshaking();
                let mut rd = input;
                while !rd.is_empty() {
                    if conn.read_tls(&mut rd).is_err() {
                        return Err(fail("tls", "other"));
                    }
                    let state = conn
                        .process_new_packets()
                        .map_err(|e| fail("tls", tls::failure_reason(&e)))?;
                    let n = state.plaintext_bytes_to_read();
                    if n > 0 {
                        let at = opened.len();
                        opened.resize(at + n, 0);
                        conn.reader()
                            .read_exact(&mut opened[at..])
                            .map_err(|_| fail("tls", "other"))?;
                    }
                    if state.peer_has_closed() {
                        read.peer_closed = true;
                        break;
                    }
                }
                read.tls_established = was_handshaking && !conn.is_handshaking();
                &opened
            }
        };
        match self.ws.as_mut() {
            None => plain.extend_from_slice(data),
            Some(ws) if !data.is_empty() => {
                let mut reply = Vec::new();
                let r = ws.receive(&t.ws, data, plain, &mut reply);
                match self.tls.as_mut() {
                    Some(conn) => {
                        // Cannot fail: the buffer limit is off.
                        let _ = conn.writer().write_all(&reply);
                    }
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
            Some(conn) => {
                for chunk in &framed {
                    // Cannot fail: the buffer limit is off.
                    let _ = conn.writer().write_all(chunk);
                }
                let mut buf = Vec::new();
                while conn.wants_write() {
                    if conn.write_tls(&mut buf).is_err() {
                        break;
                    }
                }
                if !buf.is_empty() {
                    out.push(Bytes::from(buf));
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
        if let Some(ws) = self.ws.as_mut() {
            ws.sent_close();
            let frame = ws::WsServer::close_frame(ws::CLOSE_NORMAL);
            match self.tls.as_mut() {
                Some(conn) => {
                    let _ = conn.writer().write_all(&frame);
                }
                None => self.pending.extend_from_slice(&frame),
            }
        }
        if let Some(conn) = self.tls.as_mut() {
            conn.send_close_notify();
        }
        self.wants_write()
    }
}
