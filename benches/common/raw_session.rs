//! One bound Miop session over a plain tokio socket, speaking the sans-io codec
//! (`miop::protocol`) directly.
//!
//! Benchmarks that count the gateway's work per message must control exactly
//! which bytes go on the wire and when: one Ping, then wait for its Pong. The
//! client library adds its own tasks, timers and heartbeats and its API may
//! change; the protocol module is the stable contract (docs/PROTOCOL.md).

use std::io;
use std::net::SocketAddr;

use bytes::BytesMut;
use miop::protocol::{
    decode_buf, Bind, BindAck, Body, Credential, Frame, Push, FLAG_ACK_REQUIRED, MAX_FRAME_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RawSession {
    stream: TcpStream,
    inbuf: BytesMut,
    out: BytesMut,
    next_seq: u32,
}

fn protocol_error(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl RawSession {
    /// Connects and binds `device_id` with an app key; returns the session and
    /// the server's BindAck.
    pub async fn bind(
        addr: SocketAddr,
        device_id: &str,
        app_key: &str,
    ) -> io::Result<(RawSession, BindAck)> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut s = RawSession {
            stream,
            inbuf: BytesMut::with_capacity(4096),
            out: BytesMut::with_capacity(256),
            next_seq: 1,
        };
        let seq = s.seq();
        s.send(&Frame::new(
            seq,
            Body::Bind(Bind {
                device_id: device_id.to_owned(),
                credential: Credential::AppKey(app_key.to_owned()),
                topics: Vec::new(),
            }),
        ))
        .await?;
        match s.recv().await?.body {
            Body::BindAck(ack) => Ok((s, ack)),
            other => Err(protocol_error(format!(
                "{device_id}: expected BindAck, got {:?}",
                other.opcode()
            ))),
        }
    }

    fn seq(&mut self) -> u32 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        s
    }

    /// Encodes and writes one frame (one `write` on the socket).
    pub async fn send(&mut self, frame: &Frame) -> io::Result<()> {
        self.out.clear();
        frame.encode(&mut self.out).map_err(protocol_error)?;
        self.stream.write_all(&self.out).await
    }

    /// The next frame from the server. Close and Error are errors: a benchmark
    /// session is never meant to be closed.
    pub async fn recv(&mut self) -> io::Result<Frame> {
        loop {
            if let Some(f) = decode_buf(&mut self.inbuf, MAX_FRAME_LEN).map_err(protocol_error)? {
                return match f.body {
                    Body::Close(c) => Err(protocol_error(format!(
                        "server closed the session: reason {} {}",
                        c.reason, c.message
                    ))),
                    Body::Error(e) => Err(protocol_error(format!(
                        "server error {} {}",
                        e.code, e.message
                    ))),
                    _ => Ok(f),
                };
            }
            self.inbuf.reserve(4096);
            if self.stream.read_buf(&mut self.inbuf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// One heartbeat: sends a Ping and waits for the Pong that echoes its seq.
    pub async fn ping(&mut self) -> io::Result<()> {
        let seq = self.seq();
        self.send(&Frame::ping(seq)).await?;
        loop {
            let f = self.recv().await?;
            match f.body {
                Body::Pong if f.seq == seq => return Ok(()),
                Body::Pong => {}
                other => {
                    return Err(protocol_error(format!(
                        "expected Pong, got {:?}",
                        other.opcode()
                    )))
                }
            }
        }
    }

    /// Waits for the next Push; returns it and whether it asks for a PushAck.
    pub async fn next_push(&mut self) -> io::Result<(Push, bool)> {
        loop {
            let f = self.recv().await?;
            match f.body {
                Body::Push(p) => return Ok((p, f.flags & FLAG_ACK_REQUIRED != 0)),
                Body::Pong => {}
                other => {
                    return Err(protocol_error(format!(
                        "expected Push, got {:?}",
                        other.opcode()
                    )))
                }
            }
        }
    }

    /// Acknowledges a Push (nothing answers a PushAck).
    pub async fn push_ack(&mut self, message_id: u64) -> io::Result<()> {
        let seq = self.seq();
        self.send(&Frame::push_ack(seq, message_id)).await
    }
}
