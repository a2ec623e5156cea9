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

/// The integration tests' certificates (a CA, server and client leaves).
#[cfg(test)]
#[path = "../../tests/common/pki.rs"]
mod test_pki;

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::{AlertDescription, ClientConfig, ClientConnection, RootCertStore};

    use super::test_pki as pki;
    use super::*;
    use crate::transport::tls::{TlsFiles, TlsServer};
    use crate::transport::ListenerKind;

    /// A TLS listener's transports: a "localhost" certificate from `pki`'s
    /// CA, and `client_ca` requiring client certificates from that CA.
    fn tls_transports(pki: &pki::Pki, client_ca: bool) -> Transports {
        let (cert, key, _) = pki.server("server");
        let server = TlsServer::load(TlsFiles {
            cert,
            key,
            client_ca: client_ca.then(|| pki.ca_path()),
        })
        .unwrap();
        let mut t = Transports::plain("127.0.0.1:7700".parse().unwrap());
        t.listeners[0].kind = ListenerKind::Tls;
        t.tls = Some(Arc::new(server));
        t
    }

    fn client(pki: &pki::Pki, tls12: bool) -> ClientConnection {
        client_with(pki, tls12, None)
    }

    fn client_with(pki: &pki::Pki, tls12: bool, leaf: Option<pki::Leaf>) -> ClientConnection {
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca.clone()).unwrap();
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let b =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots);
        let config = match leaf {
            Some(l) => b.with_client_auth_cert(vec![l.cert], l.key).unwrap(),
            None => b.with_no_client_auth(),
        };
        ClientConnection::new(Arc::new(config), pki::localhost()).unwrap()
    }

    fn wire(t: &Transports) -> Box<Wire> {
        Wire::new(t.spec(0), t).unwrap().unwrap()
    }

    fn client_bytes(client: &mut ClientConnection) -> Vec<u8> {
        let mut up = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut up).unwrap();
        }
        up
    }

    /// The wire's bytes (after `frames`) into the client; the plaintext it
    /// got.
    fn to_client(
        w: &mut Wire,
        client: &mut ClientConnection,
        frames: Vec<Bytes>,
    ) -> Result<Vec<u8>, rustls::Error> {
        let mut out = Vec::new();
        w.seal(frames, &mut out);
        for b in out {
            let mut rd = &b[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
            }
            client.process_new_packets()?;
        }
        let mut got = Vec::new();
        let _ = client.reader().read_to_end(&mut got);
        Ok(got)
    }

    /// Handshakes, the client's bytes fed `step` bytes per read.
    fn establish(t: &Transports, w: &mut Wire, client: &mut ClientConnection, step: usize) {
        let mut established = 0;
        while client.is_handshaking() || !w.ready() {
            let up = client_bytes(client);
            for part in up.chunks(step) {
                let mut plain = Vec::new();
                let read = w.receive(t, part, &mut plain).unwrap();
                established += usize::from(read.tls_established);
                assert!(plain.is_empty());
            }
            to_client(w, client, Vec::new()).unwrap();
        }
        assert_eq!(established, 1);
        assert_eq!(w.handshaking_layer(), None);
    }

    fn buffers(w: &Wire) -> (usize, usize) {
        let tls = w.tls.as_ref().unwrap();
        (tls.incoming.capacity(), tls.outgoing.capacity())
    }

    #[test]
    fn byte_by_byte_then_idle_with_no_buffers() {
        let pki = pki::Pki::new("wire-bytes");
        let t = tls_transports(&pki, false);
        for tls12 in [false, true] {
            let mut w = wire(&t);
            let mut c = client(&pki, tls12);
            establish(&t, &mut w, &mut c, 1);
            c.writer().write_all(b"bind me").unwrap();
            let up = client_bytes(&mut c);
            let mut plain = Vec::new();
            for b in up.chunks(1) {
                w.receive(&t, b, &mut plain).unwrap();
            }
            assert_eq!(plain, b"bind me");
            let got = to_client(&mut w, &mut c, vec![Bytes::from_static(b"ack")]).unwrap();
            assert_eq!(got, b"ack");
            assert!(!w.wants_write());
            assert_eq!(buffers(&w), (0, 0), "idle: no buffer kept (tls12 {tls12})");
        }
    }

    #[test]
    fn records_and_a_half_in_one_read() {
        let pki = pki::Pki::new("wire-half");
        let t = tls_transports(&pki, false);
        let mut w = wire(&t);
        let mut c = client(&pki, false);
        establish(&t, &mut w, &mut c, 4096);
        let mut up = Vec::new();
        for m in [&b"one"[..], b"two", b"three"] {
            c.writer().write_all(m).unwrap();
            up.extend(client_bytes(&mut c));
        }
        let cut = up.len() - 10;
        let mut plain = Vec::new();
        w.receive(&t, &up[..cut], &mut plain).unwrap();
        assert_eq!(plain, b"onetwo");
        let (incoming, _) = buffers(&w);
        assert!(
            incoming > 0 && incoming <= cut,
            "the partial record: {incoming}"
        );
        w.receive(&t, &up[cut..], &mut plain).unwrap();
        assert_eq!(plain, b"onetwothree");
        assert_eq!(buffers(&w), (0, 0));
    }

    #[test]
    fn a_key_update_the_client_requests_is_answered() {
        let pki = pki::Pki::new("wire-keyupdate");
        let t = tls_transports(&pki, false);
        let mut w = wire(&t);
        let mut c = client(&pki, false);
        establish(&t, &mut w, &mut c, 4096);
        for round in 0..3 {
            c.refresh_traffic_keys().unwrap();
            c.writer().write_all(b"ping").unwrap();
            let up = client_bytes(&mut c);
            let mut plain = Vec::new();
            w.receive(&t, &up, &mut plain).unwrap();
            assert_eq!(plain, b"ping", "round {round}");
            let got = to_client(&mut w, &mut c, vec![Bytes::from_static(b"pong")]).unwrap();
            assert_eq!(got, b"pong", "round {round}");
        }
        assert_eq!(buffers(&w), (0, 0));
    }

    #[test]
    fn a_tampered_record_fails_and_the_alert_goes_out() {
        let pki = pki::Pki::new("wire-tamper");
        let t = tls_transports(&pki, false);
        let mut w = wire(&t);
        let mut c = client(&pki, false);
        establish(&t, &mut w, &mut c, 4096);
        c.writer().write_all(b"hello").unwrap();
        let mut up = client_bytes(&mut c);
        let last = up.len() - 1;
        up[last] ^= 1;
        let mut plain = Vec::new();
        let e = w.receive(&t, &up, &mut plain).unwrap_err();
        assert_eq!(e, fail("tls", "decrypt_error"));
        assert!(plain.is_empty());
        assert!(w.failed() && w.wants_write());
        // Only the alert: frames are dropped once failed.
        let r = to_client(&mut w, &mut c, vec![Bytes::from_static(b"late")]);
        assert_eq!(
            r.unwrap_err(),
            rustls::Error::AlertReceived(AlertDescription::BadRecordMac)
        );
        assert_eq!(buffers(&w), (0, 0));
    }

    #[test]
    fn bytes_that_are_not_tls_get_a_decode_error_alert() {
        let pki = pki::Pki::new("wire-nottls");
        let t = tls_transports(&pki, false);
        let mut w = wire(&t);
        let mut plain = Vec::new();
        let e = w
            .receive(&t, b"GET / HTTP/1.1\r\n\r\n", &mut plain)
            .unwrap_err();
        assert_eq!(e, fail("tls", "not_tls"));
        assert_eq!(w.handshaking_layer(), None);
        // A TLS client reading the reply sees the alert.
        let mut c = client(&pki, false);
        let _ = client_bytes(&mut c);
        let r = to_client(&mut w, &mut c, Vec::new());
        assert_eq!(
            r.unwrap_err(),
            rustls::Error::AlertReceived(AlertDescription::DecodeError)
        );
        // Nothing more is read.
        assert_eq!(w.receive(&t, b"more", &mut plain), Ok(WireRead::default()));
    }

    #[test]
    fn client_certificates_missing_or_foreign_are_refused_with_an_alert() {
        let pki = pki::Pki::new("wire-mtls");
        let t = tls_transports(&pki, true);
        let other = pki::Pki::new("wire-mtls-other");
        for tls12 in [false, true] {
            let mut w = wire(&t);
            let mut c = client_with(&pki, tls12, Some(pki.client_leaf()));
            establish(&t, &mut w, &mut c, 4096);
            // The other CA has the same name as ours (rcgen's default): its
            // leaf fails on the signature, hence decrypt_error.
            let cases = [
                (
                    None,
                    "no_client_cert",
                    AlertDescription::CertificateRequired,
                ),
                (
                    Some(other.client_leaf()),
                    "bad_client_cert",
                    AlertDescription::DecryptError,
                ),
            ];
            for (leaf, reason, alert) in cases {
                let mut w = wire(&t);
                let mut c = client_with(&pki, tls12, leaf);
                let failure = loop {
                    let mut plain = Vec::new();
                    let up = client_bytes(&mut c);
                    assert!(!up.is_empty(), "{reason} tls12 {tls12}: refused");
                    if let Err(f) = w.receive(&t, &up, &mut plain) {
                        break f;
                    }
                    to_client(&mut w, &mut c, Vec::new()).unwrap();
                };
                assert_eq!(failure, fail("tls", reason), "tls12 {tls12}");
                let r = to_client(&mut w, &mut c, Vec::new());
                assert_eq!(
                    r.unwrap_err(),
                    rustls::Error::AlertReceived(alert),
                    "{reason} tls12 {tls12}"
                );
                assert_eq!(buffers(&w), (0, 0));
            }
        }
    }

    #[test]
    fn close_notify_both_ways() {
        let pki = pki::Pki::new("wire-close");
        let t = tls_transports(&pki, false);
        let mut w = wire(&t);
        let mut c = client(&pki, false);
        establish(&t, &mut w, &mut c, 4096);
        c.writer().write_all(b"last").unwrap();
        c.send_close_notify();
        let up = client_bytes(&mut c);
        let mut plain = Vec::new();
        let read = w.receive(&t, &up, &mut plain).unwrap();
        assert!(read.peer_closed);
        assert_eq!(plain, b"last");
        // What follows the close_notify is ignored.
        let read = w
            .receive(&t, b"\x17\x03\x03\x00\x05junk", &mut plain)
            .unwrap();
        assert!(read.peer_closed);
        assert_eq!(plain, b"last");
        assert_eq!(buffers(&w), (0, 0));
        assert!(w.close());
        to_client(&mut w, &mut c, Vec::new()).unwrap();
        let mut got = [0u8; 1];
        assert_eq!(c.reader().read(&mut got).unwrap(), 0, "clean EOF");
    }

    #[test]
    fn size_of_the_tls_layer() {
        // One pointer in the Wire: layers without TLS do not pay for it.
        assert_eq!(std::mem::size_of::<Option<Box<Tls>>>(), 8);
        let conn = std::mem::size_of::<UnbufferedServerConnection>();
        let buffered = std::mem::size_of::<rustls::ServerConnection>();
        println!(
            "Wire {} B, Tls {} B, UnbufferedServerConnection {conn} B, ServerConnection {buffered} B",
            std::mem::size_of::<Wire>(),
            std::mem::size_of::<Tls>()
        );
        assert!(conn < buffered);
        assert_eq!(std::mem::size_of::<Tls>(), conn + 56);
    }
}
