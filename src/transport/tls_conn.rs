//! One connection's TLS: rustls's unbuffered server connection and the two
//! byte buffers that API leaves to its caller, driven sans-io by the
//! connection's [`super::Wire`].

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
};

/// The TLS layer: rustls's unbuffered server connection and the two byte
/// buffers that API leaves to its caller. Neither keeps an allocation while
/// empty, so an established idle session holds rustls's own state only (no
/// read buffer: the buffered `ServerConnection` keeps 4 KiB).
pub(super) struct Tls {
    pub(super) conn: UnbufferedServerConnection,
    /// Ciphertext received and not consumed yet: the start of a record, or
    /// of a handshake message spanning records, whose rest has not arrived.
    /// Freed whenever it empties. rustls bounds it: a record header naming
    /// more than 18 KiB, or a handshake message over 64 KiB, is an error.
    pub(super) incoming: Vec<u8>,
    /// TLS bytes to send (handshake records, alerts, sealed records), handed
    /// to the engine whole by [`Wire::seal`].
    pub(super) outgoing: Vec<u8>,
    /// The peer's close_notify arrived: what follows it is ignored.
    pub(super) peer_closed: bool,
}

/// [`Tls::drive`] without anything to encrypt.
pub(super) type NoWrite = fn(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>);

impl Tls {
    /// Ciphertext read from the socket: appends the plaintext of the records
    /// it completes to `plain`. On an error the alert rustls sends (if any)
    /// is in `outgoing`.
    pub(super) fn receive(
        &mut self,
        input: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<(), rustls::Error> {
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
    pub(super) fn write(
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
    pub(super) fn drive(
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
    pub(super) fn queue_alert(&mut self) {
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
pub(super) fn encode(record: &mut EncodeTlsData<'_, ServerConnectionData>, out: &mut Vec<u8>) {
    append(out, |buf| match record.encode(buf) {
        Ok(n) => Ok(n),
        Err(EncodeError::InsufficientSize(s)) => Err(Some(s.required_size)),
        Err(EncodeError::AlreadyEncoded) => Err(None),
    });
}

/// Appends `data` to `out` as application data records. Nothing when the
/// keys are spent (TLS 1.2 at its record limit): rustls then queues a
/// close_notify instead, as its buffered API does.
pub(super) fn encrypt(
    w: &mut WriteTraffic<'_, ServerConnectionData>,
    data: &[u8],
    out: &mut Vec<u8>,
) {
    append(out, |buf| match w.encrypt(data, buf) {
        Ok(n) => Ok(n),
        Err(EncryptError::InsufficientSize(s)) => Err(Some(s.required_size)),
        Err(_) => Err(None),
    });
}

/// Appends a close_notify alert to `out`.
pub(super) fn close_notify(w: &mut WriteTraffic<'_, ServerConnectionData>, out: &mut Vec<u8>) {
    append(out, |buf| match w.queue_close_notify(buf) {
        Ok(n) => Ok(n),
        Err(EncryptError::InsufficientSize(s)) => Err(Some(s.required_size)),
        Err(_) => Err(None),
    });
}

/// Appends what `emit` writes to `out`: asked first with no room, rustls
/// says how much it needs (and writes nothing), then with exactly that.
/// `emit` fails with `Some(size)` for too little room, `None` otherwise.
pub(super) fn append(
    out: &mut Vec<u8>,
    mut emit: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) {
    let need = match emit(&mut []) {
        Ok(_) | Err(None) => return,
        Err(Some(need)) => need,
    };
    let at = out.len();
    out.resize(at + need, 0);
    let n = emit(&mut out[at..]).unwrap_or(0);
    out.truncate(at + n);
}
