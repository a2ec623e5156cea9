//! A tokio client for the Miop protocol, at two levels:
//!
//! - [`Client`]: one connection. Connect, bind, ping, join and leave topics,
//!   receive pushes, acknowledge, close; every frame is visible, and when the
//!   connection ends so does the client. The integration tests and the load
//!   generator use it, to see exactly what the gateway sends.
//! - [`Session`]: a device that stays reachable. It runs a `Client` in a task
//!   and keeps it bound: it heartbeats, acknowledges, suppresses duplicate
//!   pushes, and reconnects with jittered exponential backoff (honouring the
//!   server's retry-after hint), rejoining its topics, or stops when the
//!   protocol says retrying is wrong (replaced by another session, bad
//!   credential); it reports every state change. Devices and the example
//!   client use it; [`Session`] documents the policy.
//!
//! Both speak every transport of PROTOCOL.md §2, chosen by the URL's scheme:
//! `miop://` (TCP), `miops://` (TLS), `ws://` and `wss://` (WebSocket, one
//! Miop frame per binary message). [`TlsOptions`] says which server
//! certificates to trust (by default the system's CAs) and which client
//! certificate to present; [`Connector`] opens connections the way a URL says.
//!
//! The low-level client:
//!
//! ```no_run
//! # async fn demo() -> Result<(), miop::client::ClientError> {
//! use miop::client::{Client, MiopUrl, TlsOptions};
//! let url: MiopUrl = "miops://phone-1:pk@127.0.0.1:7710/".parse()?;
//! let mut client = Client::connect_url(&url, &TlsOptions::default()).await?;
//! let ack = client.bind_url(&url).await?;
//! println!("bound; ping every {} ms", ack.heartbeat_interval_ms);
//! client.ping().await?;
//! while let Some(push) = client.next_push().await? {
//!     println!("message {}: {:?}", push.message_id, push.payload);
//! }
//! # Ok(()) }
//! ```

mod backoff;
mod error;
pub mod fleet;
mod reconnect;
mod tls;
mod tls_args;
mod transport;
mod url;
mod ws;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

pub use self::backoff::{Backoff, Jitter};
pub use self::error::ClientError;
pub use self::reconnect::{
    Disconnect, Session, SessionConfig, SessionError, SessionEvent, SessionState, TopicsUpdate,
    EVENT_BUFFER,
};
pub use self::tls::TlsOptions;
pub use self::tls_args::TlsArgs;
pub use self::transport::{Connector, Stream};
pub(crate) use self::url::{percent_decode, split_host_port};
pub use self::url::{MiopUrl, Scheme};
pub use self::ws::{WsStream, SUBPROTOCOL};
use crate::protocol::{
    decode_buf, Bind, BindAck, Body, Close, CloseReason, Credential, Frame, Push,
    FLAG_ACK_REQUIRED, MAX_FRAME_LEN,
};

/// One device connection, over any transport ([`Stream`]).
pub struct Client {
    stream: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    next_seq: u32,
    /// Frames that arrived while waiting for a specific reply (pushes during a
    /// ping), handed out by `recv` in order.
    pending: VecDeque<Frame>,
    bind_ack: Option<BindAck>,
    /// Recently received push ids, to suppress duplicates (a message can be
    /// delivered again after a reconnect or from offline storage).
    seen: RecentIds,
}

/// How many recent push ids are remembered for duplicate suppression.
const SEEN_PUSHES: usize = 1024;

/// The last [`SEEN_PUSHES`] push message ids, oldest first: a message can be
/// delivered more than once (PROTOCOL.md §10.8), and the application should
/// see it once. Shared by [`Client`] (one connection) and [`Session`] (across
/// reconnects, which is where redeliveries come from).
#[derive(Debug, Default)]
pub(crate) struct RecentIds {
    ids: VecDeque<u64>,
}

impl RecentIds {
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.ids.contains(&id)
    }

    /// Remembers `id`, forgetting the oldest one beyond the window.
    pub(crate) fn insert(&mut self, id: u64) {
        if self.ids.len() == SEEN_PUSHES {
            self.ids.pop_front();
        }
        self.ids.push_back(id);
    }
}

impl Client {
    /// Connects over plain TCP (`miop://`).
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        Ok(Client::from_stream(stream))
    }

    /// Connects over the transport of `url`'s scheme (`miop://`, `miops://`,
    /// `ws://`, `wss://`), checking the server's certificate as `tls` says
    /// (unused without TLS). To open many connections, build one
    /// [`Connector`] and use [`Client::connect_with`]: it reads the
    /// certificate files once.
    pub async fn connect_url(url: &MiopUrl, tls: &TlsOptions) -> Result<Client, ClientError> {
        Client::connect_with(&Connector::new(url, tls)?).await
    }

    /// Connects the way `connector` says.
    pub async fn connect_with(connector: &Connector) -> Result<Client, ClientError> {
        Ok(Client::from_transport(connector.connect().await?))
    }

    /// Wraps an already connected socket (e.g. one bound to a chosen source
    /// address), for plain TCP; [`Connector::handshake`] makes the other
    /// transports over such a socket.
    pub fn from_stream(stream: TcpStream) -> Client {
        let _ = stream.set_nodelay(true);
        Client::from_transport(Stream::Tcp(stream))
    }

    /// Wraps a connection of any transport.
    pub fn from_transport(stream: Stream) -> Client {
        Client {
            stream,
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::with_capacity(256),
            next_seq: 1,
            pending: VecDeque::new(),
            bind_ack: None,
            seen: RecentIds::default(),
        }
    }

    /// The BindAck of this connection, once bound.
    pub fn bind_ack(&self) -> Option<&BindAck> {
        self.bind_ack.as_ref()
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.stream.local_addr()
    }

    /// The connection.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    fn seq(&mut self) -> u32 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        s
    }

    /// Binds with the URL's device id and credential (app key or token).
    pub async fn bind_url(&mut self, url: &MiopUrl) -> Result<BindAck, ClientError> {
        self.bind(&url.device_id, url.credential(), Vec::new())
            .await
    }

    /// Sends Bind and waits for BindAck. An Error or Close from the server
    /// becomes [`ClientError::Rejected`] or [`ClientError::Closed`].
    pub async fn bind(
        &mut self,
        device_id: &str,
        credential: Credential,
        topics: Vec<String>,
    ) -> Result<BindAck, ClientError> {
        let seq = self.seq();
        let frame = Frame::new(
            seq,
            Body::Bind(Bind {
                device_id: device_id.to_owned(),
                credential,
                topics,
            }),
        );
        self.send(&frame).await?;
        let reply = self.reply_to(seq).await?;
        match reply.body {
            Body::BindAck(ack) => {
                self.bind_ack = Some(ack);
                Ok(ack)
            }
            _ => Err(ClientError::Unexpected(reply.body.opcode().name())),
        }
    }

    /// Sends Ping and waits for its Pong; returns the round-trip time.
    pub async fn ping(&mut self) -> Result<Duration, ClientError> {
        let seq = self.seq();
        let start = Instant::now();
        self.send(&Frame::ping(seq)).await?;
        let reply = self.reply_to(seq).await?;
        match reply.body {
            Body::Pong => Ok(start.elapsed()),
            _ => Err(ClientError::Unexpected(reply.body.opcode().name())),
        }
    }

    /// Sends Subscribe and waits for its TopicsAck; returns the session's whole
    /// topic list after joining `topics` (1 to 32 names). A session may hold
    /// at most 32 topics: more closes it ([`ClientError::Rejected`], MALFORMED).
    pub async fn subscribe(&mut self, topics: Vec<String>) -> Result<Vec<String>, ClientError> {
        self.topics_request(Body::Subscribe { topics }).await
    }

    /// Sends Unsubscribe and waits for its TopicsAck; returns the session's
    /// whole topic list after leaving `topics` (1 to 32 names; ones not joined
    /// are ignored).
    pub async fn unsubscribe(&mut self, topics: Vec<String>) -> Result<Vec<String>, ClientError> {
        self.topics_request(Body::Unsubscribe { topics }).await
    }

    async fn topics_request(&mut self, body: Body) -> Result<Vec<String>, ClientError> {
        let seq = self.seq();
        self.send(&Frame::new(seq, body)).await?;
        let reply = self.reply_to(seq).await?;
        match reply.body {
            Body::TopicsAck { topics } => Ok(topics),
            _ => Err(ClientError::Unexpected(reply.body.opcode().name())),
        }
    }

    /// Acknowledges a push.
    pub async fn ack(&mut self, message_id: u64) -> Result<(), ClientError> {
        let seq = self.seq();
        self.send(&Frame::push_ack(seq, message_id)).await
    }

    /// Waits for the next push, acknowledging it if the server asked for an ack.
    /// A push whose id was among the last 1024 received is acknowledged again
    /// but not returned (at-least-once delivery, exactly-once to the caller).
    /// Returns `None` when the server closed the connection cleanly.
    pub async fn next_push(&mut self) -> Result<Option<Push>, ClientError> {
        loop {
            let Some(frame) = self.recv().await? else {
                return Ok(None);
            };
            match frame.body {
                Body::Push(p) => {
                    if frame.flags & FLAG_ACK_REQUIRED != 0 {
                        self.ack(p.message_id).await?;
                    }
                    // Acked again, but handed out once.
                    if self.seen.contains(p.message_id) {
                        continue;
                    }
                    self.seen.insert(p.message_id);
                    return Ok(Some(p));
                }
                Body::Close(c) => return Err(closed(c)),
                Body::Error(e) => {
                    return Err(ClientError::Rejected {
                        code: e.code,
                        message: e.message,
                    })
                }
                _ => continue,
            }
        }
    }

    /// Sends Close(NORMAL) and shuts the connection down.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.send(&Frame::close(0, CloseReason::Normal, "bye"))
            .await?;
        self.stream.shutdown().await?;
        Ok(())
    }

    /// Writes one frame (over a WebSocket, in one binary message).
    pub async fn send(&mut self, frame: &Frame) -> Result<(), ClientError> {
        self.wbuf.clear();
        frame.encode(&mut self.wbuf)?;
        self.stream.write_all(&self.wbuf).await?;
        // Nothing for TCP; TLS records and WebSocket messages go out now.
        self.stream.flush().await?;
        Ok(())
    }

    /// Writes raw bytes (for tests of malformed input). Over a WebSocket,
    /// each complete frame among them travels in a message of its own and
    /// any rest in one more.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// The next frame from the server, or `None` at a clean end of stream.
    pub async fn recv(&mut self) -> Result<Option<Frame>, ClientError> {
        if let Some(f) = self.pending.pop_front() {
            return Ok(Some(f));
        }
        self.read_frame().await
    }

    async fn read_frame(&mut self) -> Result<Option<Frame>, ClientError> {
        loop {
            if let Some(frame) = decode_buf(&mut self.rbuf, MAX_FRAME_LEN)? {
                return Ok(Some(frame));
            }
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(4096);
            }
            let n = self.stream.read_buf(&mut self.rbuf).await?;
            if n == 0 {
                if self.rbuf.is_empty() {
                    return Ok(None);
                }
                return Err(ClientError::Truncated);
            }
        }
    }

    /// Reads until the reply to `seq` arrives, keeping other frames for `recv`.
    async fn reply_to(&mut self, seq: u32) -> Result<Frame, ClientError> {
        loop {
            let Some(frame) = self.read_frame().await? else {
                return Err(ClientError::Eof);
            };
            match &frame.body {
                Body::Error(e) if frame.seq == seq || frame.seq == 0 => {
                    return Err(ClientError::Rejected {
                        code: e.code,
                        message: e.message.clone(),
                    })
                }
                Body::Close(c) => return Err(closed(c.clone())),
                Body::BindAck(_) | Body::Pong | Body::TopicsAck { .. } if frame.seq == seq => {
                    return Ok(frame)
                }
                _ => self.pending.push_back(frame),
            }
        }
    }
}

fn closed(c: Close) -> ClientError {
    ClientError::Closed {
        reason: c.reason,
        message: c.message,
        retry_after_ms: c.retry_after_ms,
    }
}
