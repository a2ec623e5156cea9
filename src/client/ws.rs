//! `ws://` and `wss://`: the WebSocket upgrade (RFC 6455 §4.1; the request
//! offers the subprotocol `miop`, which the server may accept or ignore), and
//! [`WsStream`], which carries the Miop byte stream in binary messages, one
//! Miop frame per message (PROTOCOL.md §2.3), so that
//! [`Client`](super::Client) reads and writes it like a socket.
//!
//! The upgrade is written here rather than with tungstenite's client
//! handshake, which fails when a server that was offered a subprotocol
//! answers without one: Miop needs none, and servers may not send one.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use super::ClientError;
use crate::protocol::HEADER_LEN;

/// The WebSocket subprotocol the client offers; the server may accept it
/// (answering `Sec-WebSocket-Protocol: miop`) or answer without one.
pub const SUBPROTOCOL: &str = "miop";

/// Above this many bytes written but not yet handed to the WebSocket, a write
/// waits for the WebSocket to take them.
const WRITE_BACKLOG: usize = 64 * 1024;

/// The Miop byte stream over a WebSocket: each complete Miop frame written is
/// sent as one binary message (a write holding several frames becomes
/// several messages; bytes that do not make a whole frame yet wait for the
/// rest, or for a flush, which sends them as they are). Binary messages read
/// are appended to the byte stream; pings are answered, pongs ignored, a
/// close ends the stream, and a text message is an error.
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// Bytes written, not yet sent as messages.
    wbuf: BytesMut,
    /// The rest of the last binary message read.
    rbuf: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// The underlying stream (TCP or TLS).
    pub fn get_ref(&self) -> &S {
        self.ws.get_ref()
    }
}

/// Upgrades `stream` to a WebSocket with `GET path` to `host` (the `Host`
/// header, with its port). The request offers the `miop` subprotocol; the
/// server may accept it or answer without one (PROTOCOL.md §2.3: Miop needs
/// none), but not choose another, nor an extension the client did not offer.
pub(crate) async fn upgrade<S>(
    mut stream: S,
    host: &str,
    port: u16,
    path: &str,
    tls: bool,
) -> Result<WsStream<S>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let uri = format!("{}://{host}:{port}{path}", if tls { "wss" } else { "ws" });
    let failed = |why: String| ClientError::WebSocket(format!("upgrade to {uri} failed: {why}"));
    let key = generate_key();
    let request = format!(
        "GET {path} HTTP/1.1\r\n\
         Host: {host}:{port}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\
         \r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut buf = Vec::with_capacity(512);
    let (head_len, answer) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => break (n, Answer::of(&response)),
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(failed(format!("the server's answer is not HTTP ({e})"))),
        }
        if buf.len() >= MAX_ANSWER_HEAD {
            return Err(failed(format!(
                "the server's answer has no end of headers within {MAX_ANSWER_HEAD} bytes"
            )));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(failed(
                "the server closed the connection during the upgrade".into(),
            ));
        }
    };
    answer.check(&key).map_err(failed)?;
    // Bytes after the answer are the first WebSocket frames.
    let rest = buf.split_off(head_len);
    let ws = WebSocketStream::from_partially_read(stream, rest, Role::Client, Some(config())).await;
    Ok(WsStream {
        ws,
        wbuf: BytesMut::new(),
        rbuf: Bytes::new(),
    })
}

/// Longest answer head read before giving up.
const MAX_ANSWER_HEAD: usize = 16 * 1024;

/// Miop frames are small (at most 64 KiB) and the load generator holds many
/// connections: small buffers, and every message written at once.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// What of the server's answer to the upgrade request matters.
#[derive(Debug, Default)]
struct Answer {
    code: u16,
    reason: String,
    upgrade: Option<String>,
    connection: Option<String>,
    accept: Option<String>,
    protocol: Option<String>,
    extensions: Option<String>,
}

impl Answer {
    fn of(r: &httparse::Response<'_, '_>) -> Answer {
        let header = |name: &str| {
            r.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
        };
        Answer {
            code: r.code.unwrap_or(0),
            reason: r.reason.unwrap_or("").to_owned(),
            upgrade: header("Upgrade"),
            connection: header("Connection"),
            accept: header("Sec-WebSocket-Accept"),
            protocol: header("Sec-WebSocket-Protocol"),
            extensions: header("Sec-WebSocket-Extensions"),
        }
    }

    /// RFC 6455 §4.1's checks of the answer to a request with `key`.
    fn check(&self, key: &str) -> Result<(), String> {
        if self.code != 101 {
            return Err(format!(
                "the server answered {} {} instead of 101 Switching Protocols (is the path its \
                 WebSocket path, and the port a WebSocket port?)",
                self.code, self.reason
            ));
        }
        if !self
            .upgrade
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        {
            return Err("the 101 answer lacks Upgrade: websocket".into());
        }
        let upgrades = self.connection.as_deref().is_some_and(|c| {
            c.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
        if !upgrades {
            return Err("the 101 answer lacks Connection: Upgrade".into());
        }
        if self.accept.as_deref() != Some(derive_accept_key(key.as_bytes()).as_str()) {
            return Err(
                "the server's Sec-WebSocket-Accept does not match the request's key".into(),
            );
        }
        match self.protocol.as_deref() {
            None | Some(SUBPROTOCOL) => {}
            Some(other) => {
                return Err(format!(
                    "the server chose the subprotocol {other:?}, which the client did not offer \
                     (only {SUBPROTOCOL:?})"
                ))
            }
        }
        if let Some(ext) = &self.extensions {
            return Err(format!(
                "the server chose the extension {ext:?}, which the client did not offer"
            ));
        }
        Ok(())
    }
}

fn io_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}

/// The length of the Miop frame at the start of `buf`, if it is all there.
/// A header whose length is not even a header's is no frame: such bytes go
/// out only on a flush.
fn complete_frame(buf: &[u8]) -> Option<usize> {
    let len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    (len >= HEADER_LEN && buf.len() >= len).then_some(len)
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Sends every complete frame of `wbuf` as its own message.
    fn poll_send_frames(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(len) = complete_frame(&self.wbuf) {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_error)?;
            let frame = self.wbuf.split_to(len).freeze();
            Pin::new(&mut self.ws)
                .start_send(Message::Binary(frame))
                .map_err(io_error)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.rbuf.is_empty() {
                let n = this.rbuf.len().min(buf.remaining());
                buf.put_slice(&this.rbuf[..n]);
                this.rbuf.advance(n);
                return Poll::Ready(Ok(()));
            }
            // Reading also sends the pong of a ping read earlier.
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(payload))) => this.rbuf = payload,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the server sent a text WebSocket message (Miop frames travel in binary messages)",
                    )))
                }
                // The end of the byte stream.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                )) => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.wbuf.len() >= WRITE_BACKLOG {
            ready!(this.poll_send_frames(cx))?;
            if this.wbuf.len() >= WRITE_BACKLOG {
                // One partial "frame" this large: send it as it is.
                ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(io_error)?;
                let bytes = this.wbuf.split().freeze();
                Pin::new(&mut this.ws)
                    .start_send(Message::Binary(bytes))
                    .map_err(io_error)?;
            }
        }
        this.wbuf.extend_from_slice(buf);
        // Whatever the WebSocket takes now; the rest goes on the next write
        // or flush (the bytes are accepted either way).
        if let Poll::Ready(Err(e)) = this.poll_send_frames(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_frames(cx))?;
        if !this.wbuf.is_empty() {
            ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(io_error)?;
            let rest = this.wbuf.split().freeze();
            Pin::new(&mut this.ws)
                .start_send(Message::Binary(rest))
                .map_err(io_error)?;
        }
        Pin::new(&mut this.ws).poll_flush(cx).map_err(io_error)
    }

    /// The WebSocket Close (after whatever was written), then the
    /// underlying stream's own shutdown (TLS close_notify, TCP FIN).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.ws).poll_close(cx)) {
            Ok(()) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {}
            Err(e) => return Poll::Ready(Err(io_error(e))),
        }
        Pin::new(this.ws.get_mut()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_found_by_their_length() {
        let mut b = vec![0, 0, 0, 20];
        b.resize(16, 0);
        assert_eq!(complete_frame(&b), None, "header only, body missing");
        b.resize(20, 0);
        assert_eq!(complete_frame(&b), Some(20));
        b.resize(30, 0);
        assert_eq!(complete_frame(&b), Some(20), "and more after it");
        assert_eq!(complete_frame(&[0, 0, 0]), None);
        assert_eq!(
            complete_frame(&[0, 0, 0, 3, 1, 2]),
            None,
            "shorter than a header"
        );
    }

    #[test]
    fn upgrade_answers_are_checked() {
        // RFC 6455 §1.3's example key and accept value.
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = || Answer {
            code: 101,
            reason: "Switching Protocols".into(),
            upgrade: Some("WebSocket".into()),
            connection: Some("keep-alive, Upgrade".into()),
            accept: Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()),
            ..Answer::default()
        };
        ok().check(key).unwrap();
        Answer {
            protocol: Some("miop".into()),
            ..ok()
        }
        .check(key)
        .unwrap();
        for (answer, why) in [
            (
                Answer {
                    code: 404,
                    reason: "Not Found".into(),
                    ..ok()
                },
                "answered 404 Not Found",
            ),
            (
                Answer {
                    upgrade: None,
                    ..ok()
                },
                "Upgrade: websocket",
            ),
            (
                Answer {
                    connection: Some("close".into()),
                    ..ok()
                },
                "Connection: Upgrade",
            ),
            (
                Answer {
                    accept: Some("x".into()),
                    ..ok()
                },
                "Sec-WebSocket-Accept",
            ),
            (
                Answer {
                    protocol: Some("mqtt".into()),
                    ..ok()
                },
                "subprotocol \"mqtt\"",
            ),
            (
                Answer {
                    extensions: Some("permessage-deflate".into()),
                    ..ok()
                },
                "extension",
            ),
        ] {
            let e = answer.check(key).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
