//! The WebSocket server side (RFC 6455): the HTTP upgrade, then one Miop frame
//! per binary message. (Placeholder until the layer lands: refuses.)

use bytes::Bytes;

#[derive(Debug, Clone)]
pub struct WsConfig {
    pub path: String,
    pub max_handshake: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            path: "/miop".into(),
            max_handshake: 8192,
        }
    }
}

#[derive(Debug, Default)]
pub struct WsServer {
    open: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WsRead {
    pub open: bool,
    pub liveness: bool,
    pub peer_closed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsError {
    BadRequest,
}

impl WsError {
    pub fn reason(&self) -> &'static str {
        "bad_request"
    }
}

impl WsServer {
    pub fn new() -> WsServer {
        WsServer { open: false }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    pub fn receive(
        &mut self,
        _cfg: &WsConfig,
        _input: &[u8],
        _plain: &mut Vec<u8>,
        reply: &mut Vec<u8>,
    ) -> Result<WsRead, WsError> {
        reply.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        Err(WsError::BadRequest)
    }

    pub fn seal(&self, chunks: Vec<Bytes>, out: &mut Vec<Bytes>) {
        out.extend(chunks);
    }

    pub fn close_frame(code: u16) -> Bytes {
        let c = code.to_be_bytes();
        Bytes::copy_from_slice(&[0x88, 2, c[0], c[1]])
    }
}
