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
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
};

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

/// The TLS layer: rustls's unbuffered server connection and the two byte
/// buffers that API leaves to its caller. Neither keeps an allocation while
/// empty, so an established idle session holds rustls's own state only (no
/// read buffer: the buffered `ServerConnection` keeps 4 KiB).
struct Tls {
    conn: UnbufferedServerConnection,
    /// Ciphertext received and not consumed yet: the start of a record, or
    /// of a handshake message spanning records, whose rest has not arrived.
    /// Freed whenever it empties. rustls bounds it: a record header naming
    /// more than 18 KiB, or a handshake message over 64 KiB, is an error.
    incoming: Vec<u8>,
    /// TLS bytes to send (handshake records, alerts, sealed records), handed
    /// to the engine whole by [`Wire::seal`].
    outgoing: Vec<u8>,
    /// The peer's close_notify arrived: what follows it is ignored.
    peer_closed: bool,
}

/// [`Tls::drive`] without anything to encrypt.
type NoWrite = fn(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>);

impl Tls {
    /// Ciphertext read from the socket: appends the plaintext of the records
    /// it completes to `plain`. On an error the alert rustls sends (if any)
    /// is in `outgoing`.
    fn receive(&mut self, input: &[u8], plain: &mut Vec<u8>) -> Result<(), rustls::Error> {
        if self.peer_closed {
            return Ok(());
        }
        self.incoming.extend_from_slice(input);
        let r = self.drive(plain, None::<NoWrite>);
        if r.is_err() {
            self.queue_alert();
        }
        r
    }

    /// Runs `write` with rustls's encrypter (application data may be sent:
    /// the engine only seals once the wire is ready).
    fn write(
        &mut self,
        write: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>),
    ) -> Result<(), rustls::Error> {
        // Every whole record was processed on receipt: no plaintext here.
        let mut none = Vec::new();
        let r = self.drive(&mut none, Some(write));
        debug_assert!(none.is_empty(), "plaintext left unread");
        if r.is_err() {
            self.queue_alert();
        }
        r
    }

    /// Runs rustls over `incoming` until it needs more bytes: plaintext
    /// records go to `plain`, handshake records and alerts to `outgoing`;
    /// once application data may be sent, `write` (if any) encrypts into
    /// `outgoing`. Consumed ciphertext leaves `incoming`.
    fn drive(
        &mut self,
        plain: &mut Vec<u8>,
        mut write: Option<impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>)>,
    ) -> Result<(), rustls::Error> {
        let Tls {
            conn,
            incoming,
            outgoing,
            peer_closed,
        } = self;
        // Consumed bytes are counted here and dropped from the front once at
        // the end (rustls wants them gone before its next call: slicing past
        // them is the same).
        let mut start = 0;
        let result = loop {
            let UnbufferedStatus { mut discard, state } =
                conn.process_tls_records(&mut incoming[start..]);
            // Ok(true): stop, Ok(false): call rustls again.
            let step = match state {
                Err(e) => Err(e),
                Ok(ConnectionState::ReadTraffic(mut records)) => loop {
                    match records.next_record() {
                        None => break Ok(false),
                        Some(Err(e)) => break Err(e),
                        Some(Ok(record)) => {
                            discard += record.discard;
                            plain.extend_from_slice(record.payload);
                        }
                    }
                },
                Ok(ConnectionState::EncodeTlsData(mut record)) => {
                    encode(&mut record, outgoing);
                    Ok(false)
                }
                // What was encoded is in `outgoing`, for the engine to send.
                Ok(ConnectionState::TransmitTlsData(sent)) => {
                    sent.done();
                    Ok(false)
                }
                Ok(ConnectionState::PeerClosed) => {
                    *peer_closed = true;
                    Ok(false)
                }
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    if let Some(write) = write.take() {
                        write(&mut w, outgoing);
                    }
                    Ok(true)
                }
                // BlockedHandshake (more bytes needed), Closed (both sides
                // sent close_notify); ReadEarlyData cannot come (0-RTT is
                // off: `max_early_data_size` 0).
                Ok(_) => Ok(true),
            };
            start += discard;
            match step {
                Ok(false) => {}
                Ok(true) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if *peer_closed || start >= incoming.len() {
            *incoming = Vec::new();
        } else if start > 0 {
            incoming.drain(..start);
            // A partial record after a large read: keep its bytes only.
            if incoming.capacity() - incoming.len() > 4096 {
                incoming.shrink_to_fit();
            }
        }
        result
    }

    /// After an error: the fatal alert rustls queued (if it did) goes to
    /// `outgoing`, and nothing more is read. rustls hands out queued records
    /// before it looks at its input again, so this never re-reads the bytes
    /// that failed.
    fn queue_alert(&mut self) {
        while self.conn.wants_write() {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.incoming);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut record)) => {
                    encode(&mut record, &mut self.outgoing)
                }
                _ => break,
            }
        }
        self.incoming = Vec::new();
    }
}

/// Appends a handshake record or alert rustls hands out to `out`.
fn encode(record: &mut EncodeTlsData<'_, ServerConnectionData>, out: &mut Vec<u8>) {
    append(out, |buf| match record.encode(buf) {
        Ok(n) => Ok(n),
        Err(EncodeError::InsufficientSize(s)) => Err(Some(s.required_size)),
        Err(EncodeError::AlreadyEncoded) => Err(None),
    });
}

/// Appends `data` to `out` as application data records. Nothing when the
/// keys are spent (TLS 1.2 at its record limit): rustls then queues a
/// close_notify instead, as its buffered API does.
fn encrypt(w: &mut WriteTraffic<'_, ServerConnectionData>, data: &[u8], out: &mut Vec<u8>) {
    append(out, |buf| match w.encrypt(data, buf) {
        Ok(n) => Ok(n),
        Err(EncryptError::InsufficientSize(s)) => Err(Some(s.required_size)),
        Err(_) => Err(None),
    });
}

/// Appends a close_notify alert to `out`.
fn close_notify(w: &mut WriteTraffic<'_, ServerConnectionData>, out: &mut Vec<u8>) {
    append(out, |buf| match w.queue_close_notify(buf) {
        Ok(n) => Ok(n),
        Err(EncryptError::InsufficientSize(s)) => Err(Some(s.required_size)),
        Err(_) => Err(None),
    });
}

/// Appends what `emit` writes to `out`: asked first with no room, rustls
/// says how much it needs (and writes nothing), then with exactly that.
/// `emit` fails with `Some(size)` for too little room, `None` otherwise.
fn append(out: &mut Vec<u8>, mut emit: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>) {
    let need = match emit(&mut []) {
        Ok(_) | Err(None) => return,
        Err(Some(need)) => need,
    };
    let at = out.len();
    out.resize(at + need, 0);
    let n = emit(&mut out[at..]).unwrap_or(0);
    out.truncate(at + n);
}
