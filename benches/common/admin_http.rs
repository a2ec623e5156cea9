//! A minimal HTTP/1.1 keep-alive client for the gateway's admin API.
//!
//! A benchmark that sends hundreds of pushes and counts the gateway's
//! instructions and syscalls should not pay a TCP connect, accept and close
//! per request: that is the cost of the benchmark's HTTP client, not of push
//! delivery. One persistent connection, one request at a time, responses
//! framed by `Content-Length` (what axum sends for JSON bodies).

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct AdminConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl AdminConn {
    pub async fn connect(admin: SocketAddr) -> io::Result<AdminConn> {
        let stream = TcpStream::connect(admin).await?;
        stream.set_nodelay(true)?;
        Ok(AdminConn {
            stream,
            buf: Vec::with_capacity(1024),
        })
    }

    /// `POST path` with a JSON body and a bearer token; the status and body.
    pub async fn post_json(
        &mut self,
        path: &str,
        bearer: &str,
        body: &str,
    ) -> io::Result<(u16, String)> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: miopd\r\nAuthorization: Bearer {bearer}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(req.as_bytes()).await?;
        self.response().await
    }

    async fn response(&mut self) -> io::Result<(u16, String)> {
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no HTTP status"))?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or_else(|| bad("response without Content-Length"))?;
        while self.buf.len() < head_end + len {
            self.fill().await?;
        }
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + len]).into_owned();
        self.buf.drain(..head_end + len);
        Ok((status, body))
    }

    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}
