//! The four ways a client reaches a gateway (PROTOCOL.md §2): Miop frames
//! over TCP (`miop://`), TLS (`miops://`), WebSocket (`ws://`) or WebSocket
//! over TLS (`wss://`). [`Connector`] opens a connection the way a URL says;
//! [`Stream`] is that connection, a byte stream whatever the transport, which
//! is all [`Client`](super::Client) needs.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::tls::{handshake_error, TlsOptions};
use super::url::{MiopUrl, Scheme};
use super::ws::{self, WsStream};
use super::ClientError;

/// A connection to a gateway, over any transport. Reads and writes carry the
/// Miop byte stream; over a WebSocket each frame written travels in a binary
/// message of its own, which needs a flush after the write
/// ([`Client`](super::Client) flushes after every frame; for TCP a flush
/// costs nothing).
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// A WebSocket over TCP or TLS.
    Ws(Box<WsStream<Stream>>),
}

impl Stream {
    /// The underlying TCP socket.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => s.get_ref().0,
            Stream::Ws(s) => s.get_ref().tcp(),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().local_addr()
    }

    /// Which transport this is, as a URL scheme name.
    pub fn kind(&self) -> &'static str {
        match self {
            Stream::Tcp(_) => Scheme::Tcp.name(),
            Stream::Tls(_) => Scheme::Tls.name(),
            Stream::Ws(s) => match s.get_ref() {
                Stream::Tcp(_) => Scheme::Ws.name(),
                _ => Scheme::Wss.name(),
            },
        }
    }
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Stream({}, {:?})", self.kind(), self.local_addr().ok())
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How to open connections to one gateway: the transport of a URL's scheme,
/// its address, the WebSocket path, and the TLS configuration (built once,
/// shared by every connection: cloning a `Connector` is cheap).
///
/// ```no_run
/// # async fn demo() -> Result<(), miop::client::ClientError> {
/// use miop::client::{Client, Connector, MiopUrl, TlsOptions};
/// let url: MiopUrl = "wss://phone-1:pk@push.example.com/miop".parse()?;
/// let connector = Connector::new(&url, &TlsOptions::default())?;
/// let mut client = Client::from_transport(connector.connect().await?);
/// client.bind_url(&url).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Connector {
    scheme: Scheme,
    /// `host:port`, resolved at every connection.
    addr: String,
    /// The `Host` of a WebSocket upgrade (IPv6 addresses keep their
    /// brackets), its port and request path.
    host: String,
    port: u16,
    path: String,
    /// `miops://` and `wss://`: the TLS configuration and the name the
    /// server's certificate must carry, or why there is no configuration
    /// (see [`Connector::new_deferred`]).
    tls: Option<Result<Tls, String>>,
}

#[derive(Clone)]
struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Connector");
        d.field("scheme", &self.scheme).field("addr", &self.addr);
        if self.scheme.is_websocket() {
            d.field("path", &self.path);
        }
        match &self.tls {
            Some(Ok(tls)) => d.field("server_name", &tls.name),
            Some(Err(why)) => d.field("tls_error", why),
            None => &mut d,
        };
        d.finish()
    }
}

impl Connector {
    /// Plain TCP (`miop://`) to `addr`, a `host:port` resolved again at
    /// every connection.
    pub fn tcp(addr: impl Into<String>) -> Connector {
        Connector {
            scheme: Scheme::Tcp,
            addr: addr.into(),
            host: String::new(),
            port: 0,
            path: String::new(),
            tls: None,
        }
    }

    /// The transport of `url`'s scheme to its host and port, checking the
    /// server's certificate as `tls` says (`tls` is unused for `miop://` and
    /// `ws://`). Fails if the TLS options do not make a configuration: a CA
    /// or key file that cannot be read, no CA certificate in the system store.
    pub fn new(url: &MiopUrl, tls: &TlsOptions) -> Result<Connector, ClientError> {
        let setup = if url.scheme.is_tls() {
            Some(Ok(Tls {
                connector: TlsConnector::from(tls.client_config()?),
                name: tls.server_name_for(&url.host)?,
            }))
        } else {
            None
        };
        Ok(Connector::with_tls(url, setup))
    }

    /// Like [`Connector::new`] with default TLS options, but never fails: if
    /// the TLS configuration cannot be built (no CA certificates on the
    /// system), every connection fails, saying why.
    pub(crate) fn new_deferred(url: &MiopUrl) -> Connector {
        Connector::new(url, &TlsOptions::default()).unwrap_or_else(|e| {
            let why = match e {
                ClientError::Tls(why) => why,
                other => other.to_string(),
            };
            Connector::with_tls(url, Some(Err(why)))
        })
    }

    fn with_tls(url: &MiopUrl, tls: Option<Result<Tls, String>>) -> Connector {
        Connector {
            scheme: url.scheme,
            addr: url.addr(),
            host: url.host.clone(),
            port: url.port,
            path: url.path.clone(),
            tls,
        }
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// `host:port`, as connections resolve it.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether this is plain TCP, where [`Connector::handshake`] has nothing to do.
    pub fn is_plain(&self) -> bool {
        self.scheme == Scheme::Tcp
    }

    /// Connects (TCP) and runs the transport's handshakes.
    pub async fn connect(&self) -> Result<Stream, ClientError> {
        let tcp = TcpStream::connect(&self.addr).await?;
        self.handshake(tcp).await
    }

    /// Runs the transport's handshakes over an already connected socket
    /// (one bound to a chosen source address, say): the TLS handshake for
    /// `miops://` and `wss://`, the WebSocket upgrade for `ws://` and
    /// `wss://`; nothing for `miop://`. Their failures are
    /// [`ClientError::Tls`] and [`ClientError::WebSocket`], in words.
    pub async fn handshake(&self, tcp: TcpStream) -> Result<Stream, ClientError> {
        let _ = tcp.set_nodelay(true);
        let stream = match &self.tls {
            None => Stream::Tcp(tcp),
            Some(Err(why)) => return Err(ClientError::Tls(why.clone())),
            Some(Ok(tls)) => {
                let stream = tls
                    .connector
                    .connect(tls.name.clone(), tcp)
                    .await
                    .map_err(|e| handshake_error(&self.addr, e))?;
                Stream::Tls(Box::new(stream))
            }
        };
        if !self.scheme.is_websocket() {
            return Ok(stream);
        }
        let ws = ws::upgrade(
            stream,
            &self.host,
            self.port,
            &self.path,
            self.scheme.is_tls(),
        )
        .await?;
        Ok(Stream::Ws(Box::new(ws)))
    }
}
