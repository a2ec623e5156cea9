//! The PROXY protocol header (v1 text, v2 binary) that HAProxy and cloud L4
//! load balancers send first, naming the client's real address.
//! (Placeholder until the parser lands: rejects everything.)

pub const MAX_HEADER_LEN: usize = 536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    Incomplete,
    Header {
        consumed: usize,
        source: Option<std::net::SocketAddr>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    Missing,
}

impl ProxyError {
    pub fn reason(&self) -> &'static str {
        "missing"
    }
}

pub fn parse(_buf: &[u8]) -> Result<Parsed, ProxyError> {
    Err(ProxyError::Missing)
}
