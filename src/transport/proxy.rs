//! The PROXY protocol header (v1 text, v2 binary) that HAProxy and cloud L4
//! load balancers send first, naming the client's real address.
//!
//! [`parse`] looks at the first bytes of a connection and says whether they
//! hold a whole header ([`Parsed::Header`], with the client's address and
//! the header's length), a valid beginning of one ([`Parsed::Incomplete`]:
//! call again with more bytes), or something that can never become one
//! ([`ProxyError`], whose [`reason`](ProxyError::reason) is the metric
//! label). It is a pure function of the bytes: no state, no allocation, no
//! I/O, so the caller keeps the bytes in its own read buffer and parses
//! them again whenever more arrive (a header is at most [`MAX_HEADER_LEN`]
//! bytes, and in practice arrives in one segment). Bytes after the header
//! belong to the next layer (Miop, TLS or WebSocket): the caller drops the
//! first `consumed` bytes and hands the rest on.
//!
//! Every answer depends only on the bytes given, and more bytes never
//! change it: an error stays the same error, a header the same header.
//! Errors come as soon as the bytes show them; in particular bytes that
//! cannot begin either signature (`PROXY ` or the v2 one) are rejected as
//! [`ProxyError::Missing`] at once, so a client that speaks Miop, TLS or
//! HTTP directly to a listener that expects the header is turned away on
//! its first byte (a Miop frame starts with 0x00, the high byte of its
//! length; a TLS record with 0x16; an HTTP request with a method name,
//! where only `P` of `POST`/`PUT`/`PATCH` needs a second byte).
//!
//! Hand-written rather than the `ppp` crate (the formats are small):
//! `ppp` takes `+80` as a v1 port (it parses ports with `u16::from_str`),
//! and its 28 error kinds (18 for v1, 10 for v2), split into "partial" and
//! final by its own rules, would each need a mapping to our four labels
//! and a check against our reject-at-once rule. Here each check is a few
//! lines, and the rules are those of haproxy's `doc/proxy-protocol.txt`:
//!
//! - v1: `PROXY TCP4 <src> <dst> <srcport> <dstport>\r\n`, likewise `TCP6`,
//!   and `PROXY UNKNOWN` followed by anything up to the CRLF (the real
//!   connection's address stays). Single spaces; addresses of the declared
//!   family (IPv4 dotted quads without leading zeros; IPv6 as
//!   [`Ipv6Addr`]'s parser takes it, `::` and an embedded IPv4 tail
//!   included, no zone or brackets); decimal ports 0–65535 without sign or
//!   leading zeros; the line, CRLF included, at most 107 bytes. A lone CR
//!   or LF is garbled; no CRLF within 107 bytes is too long.
//! - v2: the 12-byte signature, version 2 with command LOCAL (0x20: the
//!   proxy's own connection, e.g. a health check; the address block is
//!   skipped unread) or PROXY (0x21), then the family and protocol byte:
//!   TCP over IPv4 (0x11) or IPv6 (0x21) give the source address; UNSPEC
//!   (family or protocol 0, e.g. 0x00) and UNIX stream (0x31) give none.
//!   Datagram protocols (UDP 0x12/0x22, UNIX datagram 0x32) are refused:
//!   this is a TCP listener, so such a header is a misconfigured proxy.
//!   The spec lets a receiver fall back to UNSPEC for them instead; we
//!   would rather see the `unsupported` count rise. Unassigned versions,
//!   commands, families and protocols are refused too. The 2-byte length
//!   covers the address block and any TLVs; TLVs are skipped without
//!   being read (nor their CRC32C checked), and the length is capped so
//!   the whole header fits in [`MAX_HEADER_LEN`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What starts a v1 header: "PROXY" and its single space.
const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest v1 line, CRLF included (the spec's worst case: `UNKNOWN` with
/// two full-length IPv6 addresses and two 5-digit ports).
const V1_MAX_LEN: usize = 107;
/// The v2 signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part of a v2 header: signature, version/command, family/protocol
/// and the 2-byte length of what follows.
const V2_FIXED_LEN: usize = 16;
/// Longest v2 address block plus TLVs accepted. The largest address block is
/// 216 bytes (UNIX); 512 leaves room for the TLVs load balancers add (AWS's
/// VPC endpoint id, GCP's PSC connection id, ALPN, authority, SSL details).
const V2_MAX_BLOCK: usize = 512;

/// Longest header accepted: a v1 line is at most 107 bytes, a v2 header is
/// 16 bytes plus its length field (TLVs included), capped at 16 + 512 (a
/// longer one is [`ProxyError::TooLong`]). [`parse`] never answers
/// [`Parsed::Incomplete`] once it has this many bytes, so a caller that
/// buffers up to this many bytes always gets an answer.
pub const MAX_HEADER_LEN: usize = V2_FIXED_LEN + V2_MAX_BLOCK;

/// What the bytes so far hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed (what arrived so far is a valid prefix).
    Incomplete,
    /// A whole header of `consumed` bytes; `source` is the client's address
    /// (None for v1 UNKNOWN, v2 LOCAL, or v2 families other than INET/INET6
    /// such as UNIX/UNSPEC: the connection's own peer address stays).
    Header {
        consumed: usize,
        source: Option<SocketAddr>,
    },
}

/// Why the bytes cannot be a PROXY header; the connection is to be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The bytes cannot start either signature: the peer speaks something
    /// else (Miop, TLS, HTTP) directly, bypassing the load balancer.
    #[error("no PROXY protocol header")]
    Missing,
    /// A v1 line that breaks the syntax (spaces, protocol name, address,
    /// port, line end), or a v2 header whose address block is too short
    /// for its family.
    #[error("garbled PROXY protocol header")]
    Garbled,
    /// A v2 header of another version, an unassigned command, family or
    /// protocol, or a datagram protocol (UDP).
    #[error("unsupported PROXY protocol version, command or protocol")]
    Unsupported,
    /// A v1 line without CRLF within 107 bytes, or a v2 header longer than
    /// [`MAX_HEADER_LEN`].
    #[error("PROXY protocol header too long")]
    TooLong,
}

impl ProxyError {
    /// The snake_case label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::Missing => "missing",
            ProxyError::Garbled => "garbled",
            ProxyError::Unsupported => "unsupported",
            ProxyError::TooLong => "too_long",
        }
    }
}

/// Parses the start of a connection's bytes. Rejects as early as possible:
/// as soon as the bytes so far cannot be a prefix of either signature
/// ("PROXY " or the 12-byte v2 signature \r\n\r\n\0\r\nQUIT\n), returns
/// Err(missing) without waiting for more bytes.
///
/// The answer for `buf` holds for every extension of `buf`: once an error,
/// always the same error; once a header, the same header (it depends only
/// on the first `consumed` bytes, which it never exceeds).
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyError::Missing),
    }
}

/// Whether `buf` and `signature` agree on their common length.
fn agrees_with(buf: &[u8], signature: &[u8]) -> bool {
    let n = buf.len().min(signature.len());
    buf[..n] == signature[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if !agrees_with(buf, V1_PREFIX) {
        return Err(ProxyError::Missing);
    }
    if buf.len() <= V1_PREFIX.len() {
        return Ok(Parsed::Incomplete);
    }
    // The line ends at the first CR or LF, which must be within the first
    // 107 bytes (the prefix holds neither).
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(end) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        // No line end yet: what there is must be a valid beginning.
        v1_body(&window[V1_PREFIX.len()..], false)?;
        return if window.len() == V1_MAX_LEN {
            Err(ProxyError::TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    if window[end] == b'\n' {
        // A lone LF does not end a line.
        return Err(ProxyError::Garbled);
    }
    let source = v1_body(&window[V1_PREFIX.len()..end], true)?;
    let consumed = end + 2;
    if consumed > V1_MAX_LEN {
        // The CR is the 107th byte: its LF would be the 108th.
        return Err(ProxyError::TooLong);
    }
    match buf.get(end + 1) {
        None => Ok(Parsed::Incomplete),
        Some(b'\n') => Ok(Parsed::Header { consumed, source }),
        Some(_) => Err(ProxyError::Garbled),
    }
}

/// Checks the v1 line after "PROXY " and before the CRLF (`complete`), or
/// the part of it received so far (not `complete`: the last field may still
/// grow). Holds no CR or LF. Returns the source address of a complete TCP4
/// or TCP6 line; None for UNKNOWN and for a valid beginning.
fn v1_body(body: &[u8], complete: bool) -> Result<Option<SocketAddr>, ProxyError> {
    let (protocol, rest) = match body.iter().position(|&b| b == b' ') {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    if rest.is_none() && !complete {
        // The protocol name so far.
        return if [&b"TCP4"[..], b"TCP6", b"UNKNOWN"]
            .iter()
            .any(|name| name.starts_with(protocol))
        {
            Ok(None)
        } else {
            Err(ProxyError::Garbled)
        };
    }
    let v6 = match protocol {
        // Anything may follow UNKNOWN (before the CRLF); none of it is read.
        b"UNKNOWN" => return Ok(None),
        b"TCP4" => false,
        b"TCP6" => true,
        _ => return Err(ProxyError::Garbled),
    };
    // "PROXY TCP4\r\n" has no fields at all.
    let rest = rest.ok_or(ProxyError::Garbled)?;

    // Source address, destination address, source port, destination port:
    // four fields, one space between each, the last one possibly partial.
    let mut fields: [&[u8]; 4] = [&[]; 4];
    let mut count = 0;
    for field in rest.split(|&b| b == b' ') {
        if count == fields.len() {
            return Err(ProxyError::Garbled);
        }
        fields[count] = field;
        count += 1;
    }
    if complete && count < fields.len() {
        return Err(ProxyError::Garbled);
    }
    let mut source_ip = None;
    let mut source_port = None;
    for (i, field) in fields[..count].iter().enumerate() {
        let whole = complete || i + 1 < count;
        match i {
            0 => source_ip = v1_address(field, v6, whole)?,
            1 => {
                v1_address(field, v6, whole)?;
            }
            2 => source_port = v1_port(field, whole)?,
            _ => {
                v1_port(field, whole)?;
            }
        }
    }
    Ok(match (complete, source_ip, source_port) {
        (true, Some(ip), Some(port)) => Some(SocketAddr::new(ip, port)),
        _ => None,
    })
}

/// Checks a v1 address field of the declared family; returns the address
/// once the field is `whole`.
fn v1_address(field: &[u8], v6: bool, whole: bool) -> Result<Option<IpAddr>, ProxyError> {
    // Longest text forms: "255.255.255.255" and, for IPv6 with an embedded
    // IPv4 address, "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".
    let (max_len, allowed): (usize, fn(u8) -> bool) = if v6 {
        (45, |b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    } else {
        (15, |b| b.is_ascii_digit() || b == b'.')
    };
    if field.len() > max_len || !field.iter().all(|&b| allowed(b)) {
        return Err(ProxyError::Garbled);
    }
    if !whole {
        return Ok(None);
    }
    // ASCII by the check above.
    let text = std::str::from_utf8(field).map_err(|_| ProxyError::Garbled)?;
    let ip = if v6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        // Rejects leading zeros ("010.0.0.1"), as the spec asks.
        text.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    ip.map(Some).map_err(|_| ProxyError::Garbled)
}

/// Checks a v1 port field: decimal digits only, no leading zero, at most
/// 65535; returns the port once the field is `whole`.
fn v1_port(field: &[u8], whole: bool) -> Result<Option<u16>, ProxyError> {
    if field.len() > 5
        || !field.iter().all(u8::is_ascii_digit)
        || (field.len() > 1 && field[0] == b'0')
    {
        return Err(ProxyError::Garbled);
    }
    let value = field
        .iter()
        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    let port = u16::try_from(value).map_err(|_| ProxyError::Garbled)?;
    if !whole {
        return Ok(None);
    }
    if field.is_empty() {
        return Err(ProxyError::Garbled);
    }
    Ok(Some(port))
}

/// The address kinds a v2 PROXY command can carry that we accept.
#[derive(Clone, Copy)]
enum V2Addresses {
    /// Nothing to read: LOCAL, or UNSPEC family or protocol.
    Ignored,
    /// TCP over IPv4: 4 + 4 address bytes, 2 + 2 port bytes.
    Tcp4,
    /// TCP over IPv6: 16 + 16 address bytes, 2 + 2 port bytes.
    Tcp6,
    /// UNIX stream: two 108-byte paths, not read.
    Unix,
}

impl V2Addresses {
    /// The shortest address block this kind needs.
    fn block_len(self) -> usize {
        match self {
            V2Addresses::Ignored => 0,
            V2Addresses::Tcp4 => 12,
            V2Addresses::Tcp6 => 36,
            V2Addresses::Unix => 216,
        }
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if !agrees_with(buf, V2_SIGNATURE) {
        return Err(ProxyError::Missing);
    }
    let Some(&version_command) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    if version_command >> 4 != 2 {
        return Err(ProxyError::Unsupported);
    }
    let local = match version_command & 0x0F {
        0x0 => true,
        0x1 => false,
        _ => return Err(ProxyError::Unsupported),
    };
    let Some(&family_protocol) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    let addresses = if local {
        // The family and the address block are ignored.
        V2Addresses::Ignored
    } else {
        match (family_protocol >> 4, family_protocol & 0x0F) {
            // Unassigned families; datagram and unassigned protocols.
            (4.., _) | (_, 2..) => return Err(ProxyError::Unsupported),
            (0, _) | (_, 0) => V2Addresses::Ignored,
            (1, _) => V2Addresses::Tcp4,
            (2, _) => V2Addresses::Tcp6,
            (3, _) => V2Addresses::Unix,
        }
    };
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(Parsed::Incomplete);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > V2_MAX_BLOCK {
        return Err(ProxyError::TooLong);
    }
    if len < addresses.block_len() {
        return Err(ProxyError::Garbled);
    }
    let consumed = V2_FIXED_LEN + len;
    let Some(block) = buf.get(V2_FIXED_LEN..consumed) else {
        return Ok(Parsed::Incomplete);
    };
    // Any bytes past the address block are TLVs: skipped.
    let source = match addresses {
        V2Addresses::Ignored | V2Addresses::Unix => None,
        V2Addresses::Tcp4 => {
            let ip: [u8; 4] = block[0..4].try_into().expect("4 bytes");
            let port = u16::from_be_bytes([block[8], block[9]]);
            Some(SocketAddr::new(Ipv4Addr::from(ip).into(), port))
        }
        V2Addresses::Tcp6 => {
            let ip: [u8; 16] = block[0..16].try_into().expect("16 bytes");
            let port = u16::from_be_bytes([block[32], block[33]]);
            Some(SocketAddr::new(Ipv6Addr::from(ip).into(), port))
        }
    };
    Ok(Parsed::Header { consumed, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(consumed: usize, source: &str) -> Result<Parsed, ProxyError> {
        Ok(Parsed::Header {
            consumed,
            source: Some(source.parse().unwrap()),
        })
    }

    fn header_without_source(consumed: usize) -> Result<Parsed, ProxyError> {
        Ok(Parsed::Header {
            consumed,
            source: None,
        })
    }

    /// A v2 header: signature, the two bytes, the length and `block`
    /// (addresses and TLVs).
    fn v2(version_command: u8, family_protocol: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(version_command);
        out.push(family_protocol);
        out.extend_from_slice(&(block.len() as u16).to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    /// The v2 TCP4 address block for 192.0.2.1:56324 → 198.51.100.11:443.
    fn tcp4_block() -> Vec<u8> {
        let mut block = vec![192, 0, 2, 1, 198, 51, 100, 11];
        block.extend_from_slice(&56324u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        block
    }

    /// The v2 TCP6 address block for [2001:db8::1]:56324 → [2001:db8::11]:443.
    fn tcp6_block() -> Vec<u8> {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::11".parse().unwrap();
        let mut block = src.octets().to_vec();
        block.extend_from_slice(&dst.octets());
        block.extend_from_slice(&56324u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        block
    }

    /// TLVs as a load balancer sends them: ALPN "h2", authority, a NOOP
    /// padding TLV and a custom (0xEA, AWS's VPC endpoint id) one.
    fn tlvs() -> Vec<u8> {
        let mut out = Vec::new();
        for (kind, value) in [
            (0x01u8, &b"h2"[..]),
            (0x02, b"push.example.com"),
            (0x04, &[0, 0, 0]),
            (0xEA, b"\x01vpce-0123456789abcdef"),
        ] {
            out.push(kind);
            out.extend_from_slice(&(value.len() as u16).to_be_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    const IPV6_MAX: &str = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";

    /// Whole headers and what they parse to, each followed by bytes of the
    /// next layer (which must not be consumed).
    fn valid_vectors() -> Vec<(Vec<u8>, Result<Parsed, ProxyError>)> {
        let mut out: Vec<(Vec<u8>, Result<Parsed, ProxyError>)> = Vec::new();
        let mut v1 = |line: String, expected: Result<Parsed, ProxyError>| {
            out.push((line.into_bytes(), expected));
        };
        // The spec's example line and its maximum-length lines.
        v1(
            "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".into(),
            header(47, "192.168.0.1:56324"),
        );
        v1(
            "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n".into(),
            header(56, "255.255.255.255:65535"),
        );
        v1(
            format!("PROXY TCP6 {IPV6_MAX} {IPV6_MAX} 65535 65535\r\n"),
            header(104, &format!("[{IPV6_MAX}]:65535")),
        );
        v1("PROXY UNKNOWN\r\n".into(), header_without_source(15));
        v1(
            format!("PROXY UNKNOWN {IPV6_MAX} {IPV6_MAX} 65535 65535\r\n"),
            header_without_source(107),
        );
        // Compressed IPv6, port 0, an IPv4-mapped IPv6 address.
        v1(
            "PROXY TCP6 2001:db8::1 ::1 0 8443\r\n".into(),
            header(35, "[2001:db8::1]:0"),
        );
        v1(
            "PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n".into(),
            header(37, "[::ffff:192.0.2.1]:1"),
        );
        v1(
            "PROXY TCP4 0.0.0.0 10.0.0.1 0 0\r\n".into(),
            header(33, "0.0.0.0:0"),
        );

        out.push((v2(0x21, 0x11, &tcp4_block()), header(28, "192.0.2.1:56324")));
        let mut with_tlvs = tcp4_block();
        with_tlvs.extend_from_slice(&tlvs());
        let with_tlvs_len = 16 + with_tlvs.len();
        out.push((
            v2(0x21, 0x11, &with_tlvs),
            header(with_tlvs_len, "192.0.2.1:56324"),
        ));
        out.push((
            v2(0x21, 0x21, &tcp6_block()),
            header(52, "[2001:db8::1]:56324"),
        ));
        let mut with_tlvs = tcp6_block();
        with_tlvs.extend_from_slice(&tlvs());
        let with_tlvs_len = 16 + with_tlvs.len();
        out.push((
            v2(0x21, 0x21, &with_tlvs),
            header(with_tlvs_len, "[2001:db8::1]:56324"),
        ));
        // LOCAL (a health check): no address, with or without a block, and
        // whatever the family byte says.
        out.push((v2(0x20, 0x00, &[]), header_without_source(16)));
        out.push((v2(0x20, 0x11, &tcp4_block()), header_without_source(28)));
        out.push((v2(0x20, 0xFF, &[]), header_without_source(16)));
        // PROXY with UNSPEC family or protocol, and UNIX stream.
        out.push((v2(0x21, 0x00, &[]), header_without_source(16)));
        out.push((v2(0x21, 0x10, &[1, 2, 3]), header_without_source(19)));
        out.push((v2(0x21, 0x31, &[b'/'; 216]), header_without_source(232)));
        // The largest block accepted.
        let mut largest = tcp4_block();
        largest.resize(V2_MAX_BLOCK, 0);
        out.push((
            v2(0x21, 0x11, &largest),
            header(MAX_HEADER_LEN, "192.0.2.1:56324"),
        ));

        // What follows: a Miop frame, a TLS ClientHello start, text.
        let trailers: [&[u8]; 3] = [
            &crate::protocol::Frame::ping(7).to_bytes().unwrap(),
            &[0x16, 0x03, 0x01, 0x02, 0x00],
            b"PROXY TCP4 \r\n",
        ];
        for (i, (bytes, _)) in out.iter_mut().enumerate() {
            bytes.extend_from_slice(trailers[i % trailers.len()]);
        }
        out
    }

    /// Each split point gives Incomplete before the header is whole and the
    /// same header from then on; trailing bytes are never consumed.
    #[test]
    fn vectors_parse_at_every_split() {
        for (bytes, expected) in valid_vectors() {
            let Ok(Parsed::Header { consumed, .. }) = expected else {
                unreachable!()
            };
            assert!(consumed < bytes.len(), "{bytes:?} has trailing bytes");
            assert_eq!(
                parse(&bytes),
                expected,
                "{:?}",
                String::from_utf8_lossy(&bytes)
            );
            for k in 0..=bytes.len() {
                let got = parse(&bytes[..k]);
                if k < consumed {
                    assert_eq!(got, Ok(Parsed::Incomplete), "{bytes:?} at {k}");
                } else {
                    assert_eq!(got, expected, "{bytes:?} at {k}");
                }
            }
        }
    }

    /// Where an error shows (`at`: the fewest bytes that give it) and what
    /// it is; every shorter prefix is Incomplete, every longer the same error.
    fn assert_error_at(bytes: &[u8], at: usize, error: ProxyError) {
        let text = String::from_utf8_lossy(bytes);
        for k in 0..=bytes.len() {
            let got = parse(&bytes[..k]);
            if k < at {
                assert_eq!(got, Ok(Parsed::Incomplete), "{text:?} at {k}");
            } else {
                assert_eq!(got, Err(error), "{text:?} at {k}");
            }
        }
    }

    #[test]
    fn other_protocols_are_missing_at_their_first_byte() {
        let miop = crate::protocol::Frame::ping(1).to_bytes().unwrap();
        assert_eq!(miop[0], 0x00, "a Miop frame starts with its length");
        assert_error_at(&miop, 1, ProxyError::Missing);
        assert_error_at(
            &[0x16, 0x03, 0x01, 0x00, 0xF4, 0x01],
            1,
            ProxyError::Missing,
        );
        assert_error_at(b"GET / HTTP/1.1\r\n", 1, ProxyError::Missing);
        assert_error_at(b"POST / HTTP/1.1\r\n", 2, ProxyError::Missing);
        assert_error_at(b"\n", 1, ProxyError::Missing);
        assert_error_at(b"\0", 1, ProxyError::Missing);
    }

    #[test]
    fn near_signatures_are_missing_where_they_part() {
        assert_error_at(b"PROXX TCP4", 5, ProxyError::Missing);
        assert_error_at(b"PROXYTCP4", 6, ProxyError::Missing);
        assert_error_at(b"proxy TCP4", 1, ProxyError::Missing);
        assert_error_at(
            b"\r\n\r\n\0\r\nQUIX\n\x21\x11\0\x0c",
            11,
            ProxyError::Missing,
        );
        assert_error_at(b"\r\n\r\nGET", 5, ProxyError::Missing);
        assert_error_at(b"\r\r", 2, ProxyError::Missing);
    }

    #[test]
    fn garbled_v1_lines() {
        let cases: &[(&str, usize)] = &[
            // Protocol names.
            ("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", 10),
            ("PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", 7),
            ("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", 8),
            ("PROXY TCP 1.2.3.4 5.6.7.8 1 2\r\n", 10),
            ("PROXY UNKNOWNX\r\n", 14),
            ("PROXY \r\n", 7),
            ("PROXY TCP4\r\n", 11),
            // Spaces.
            ("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 7),
            ("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", 12),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", 31),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", 31),
            ("PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", 19),
            // Too few fields.
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", 29),
            ("PROXY TCP4 1.2.3.4\r\n", 19),
            // Addresses of the wrong family or malformed.
            ("PROXY TCP4 ::1 5.6.7.8 1 2\r\n", 12),
            ("PROXY TCP6 1.2.3.4 ::1 1 2\r\n", 19),
            ("PROXY TCP4 1.2.3.4 ::1 1 2\r\n", 20),
            ("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", 21),
            ("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", 20),
            ("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", 17),
            ("PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", 21),
            ("PROXY TCP4 1.2.3.4 5.6.7.8\r\n", 27),
            ("PROXY TCP4 255.255.255.2550 5.6.7.8 1 2\r\n", 27),
            ("PROXY TCP6 1::2::3 ::1 1 2\r\n", 19),
            ("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", 19),
            ("PROXY TCP6 [::1] ::1 1 2\r\n", 12),
            // Ports.
            ("PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", 28),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", 28),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", 29),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 00 2\r\n", 29),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", 32),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n", 32),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 100000 2\r\n", 33),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", 34),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 0x1\r\n", 31),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", 30),
            // Line ends.
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", 31),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", 32),
            ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", 32),
            ("PROXY UNKNOWN\n", 14),
            ("PROXY UNKNOWN junk\rjunk\r\n", 20),
            ("PROXY UNKNOWN\r", 15),
        ];
        for &(line, at) in cases {
            // A line ending in CR needs the byte after it to show the error.
            let bytes = if line.ends_with('\r') {
                format!("{line}X")
            } else {
                line.to_string()
            };
            assert_error_at(bytes.as_bytes(), at, ProxyError::Garbled);
        }
        assert_eq!(ProxyError::Garbled.reason(), "garbled");
    }

    #[test]
    fn too_long_v1_lines() {
        // No CRLF within 107 bytes.
        let junk = format!("PROXY UNKNOWN {}\r\n", "x".repeat(200));
        assert_error_at(junk.as_bytes(), 107, ProxyError::TooLong);
        // The CR as the 107th byte: the LF would be the 108th.
        let line = format!("PROXY UNKNOWN {}\r\n", "x".repeat(106 - 14));
        assert_eq!(line.find('\r'), Some(106));
        assert_error_at(line.as_bytes(), 107, ProxyError::TooLong);
        let line = format!("PROXY UNKNOWN {}\r\n", "x".repeat(105 - 14));
        assert_eq!(parse(line.as_bytes()), header_without_source(107));
        // IPv4-mapped addresses can make a TCP6 line too long.
        let mapped = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
        let line = format!("PROXY TCP6 {mapped} {mapped} 65535 65535\r\n");
        assert_error_at(line.as_bytes(), 107, ProxyError::TooLong);
        assert_eq!(ProxyError::TooLong.reason(), "too_long");
    }

    #[test]
    fn v2_errors() {
        let tcp4 = tcp4_block();
        // Version 1 and 3; commands 2 and 0xF.
        assert_error_at(&v2(0x11, 0x11, &tcp4), 13, ProxyError::Unsupported);
        assert_error_at(&v2(0x31, 0x11, &tcp4), 13, ProxyError::Unsupported);
        assert_error_at(&v2(0x22, 0x11, &tcp4), 13, ProxyError::Unsupported);
        assert_error_at(&v2(0x2F, 0x11, &tcp4), 13, ProxyError::Unsupported);
        // UDP over IPv4 and IPv6, UNIX datagram, UNSPEC datagram.
        for family_protocol in [0x12, 0x22, 0x32, 0x02] {
            assert_error_at(
                &v2(0x21, family_protocol, &tcp4),
                14,
                ProxyError::Unsupported,
            );
        }
        // Unassigned families and protocols.
        for family_protocol in [0x41, 0xF1, 0x13, 0x1F, 0x40] {
            assert_error_at(
                &v2(0x21, family_protocol, &tcp4),
                14,
                ProxyError::Unsupported,
            );
        }
        assert_eq!(ProxyError::Unsupported.reason(), "unsupported");

        // Address blocks too short for their family.
        assert_error_at(&v2(0x21, 0x11, &tcp4[..11]), 16, ProxyError::Garbled);
        assert_error_at(&v2(0x21, 0x21, &tcp4), 16, ProxyError::Garbled);
        assert_error_at(&v2(0x21, 0x31, &[0; 215]), 16, ProxyError::Garbled);

        // Longer than the cap: rejected on the length field.
        let mut long = tcp4.clone();
        long.resize(V2_MAX_BLOCK + 1, 0);
        assert_error_at(&v2(0x21, 0x11, &long), 16, ProxyError::TooLong);
        let mut header = v2(0x21, 0x11, &[]);
        header[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_error_at(&header, 16, ProxyError::TooLong);
        // Also for LOCAL, whose block is otherwise ignored.
        assert_error_at(&v2(0x20, 0x00, &long), 16, ProxyError::TooLong);
        assert_eq!(ProxyError::Missing.reason(), "missing");
    }

    #[test]
    fn errors_display() {
        assert_eq!(ProxyError::Missing.to_string(), "no PROXY protocol header");
    }

    /// The invariants every input must keep, for `buf` and its prefix of `k`
    /// bytes: no panic, nothing consumed beyond the bytes given, an answer
    /// once MAX_HEADER_LEN bytes are there, and answers that more bytes never
    /// change.
    fn check_invariants(buf: &[u8], k: usize) {
        let full = parse(buf);
        let part = parse(&buf[..k]);
        if let Ok(Parsed::Header { consumed, source }) = full {
            assert!(consumed <= buf.len() && consumed <= MAX_HEADER_LEN);
            assert!(consumed >= 15, "shortest header is PROXY UNKNOWN\\r\\n");
            assert_eq!(parse(&buf[..consumed]), full);
            if source.is_some() {
                assert!(buf.starts_with(b"PROXY TCP") || buf.starts_with(V2_SIGNATURE));
            }
            if k < consumed {
                assert_eq!(part, Ok(Parsed::Incomplete));
            } else {
                assert_eq!(part, full);
            }
        }
        if buf.len() >= MAX_HEADER_LEN {
            assert_ne!(full, Ok(Parsed::Incomplete));
        }
        match part {
            Err(e) => assert_eq!(full, Err(e), "an error at {k} bytes changed"),
            Ok(Parsed::Header { .. }) => assert_eq!(full, part),
            Ok(Parsed::Incomplete) => {}
        }
    }

    /// A valid header of any kind from random fields, and the source
    /// address it names.
    fn any_header() -> impl Strategy<Value = (Vec<u8>, Option<SocketAddr>)> {
        let v1 = (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<u16>(),
            0..3u8,
        )
            .prop_map(|(s4, d4, s6, d6, sp, dp, kind)| {
                let (s4, d4) = (Ipv4Addr::from(s4), Ipv4Addr::from(d4));
                let (s6, d6) = (Ipv6Addr::from(s6), Ipv6Addr::from(d6));
                let (line, source) = match kind {
                    0 => (
                        format!("PROXY TCP4 {s4} {d4} {sp} {dp}\r\n"),
                        Some(SocketAddr::new(s4.into(), sp)),
                    ),
                    1 => (
                        format!("PROXY TCP6 {s6} {d6} {sp} {dp}\r\n"),
                        Some(SocketAddr::new(s6.into(), sp)),
                    ),
                    _ => (format!("PROXY UNKNOWN {s6} {d4} {sp} {dp}\r\n"), None),
                };
                (line.into_bytes(), source)
            });
        let v2 = (
            prop::sample::select(vec![0x20u8, 0x21]),
            prop::sample::select(vec![0x00u8, 0x01, 0x10, 0x11, 0x21, 0x31]),
            any::<[u8; 36]>(),
            prop::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(version_command, family_protocol, addresses, tlvs)| {
                let mut block = addresses.to_vec();
                block.resize(216, 0x5A);
                let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
                let ip4: [u8; 4] = block[..4].try_into().unwrap();
                let ip6: [u8; 16] = block[..16].try_into().unwrap();
                let (len, source) = match (version_command, family_protocol) {
                    (0x21, 0x11) => (
                        12,
                        Some(SocketAddr::new(Ipv4Addr::from(ip4).into(), port(8))),
                    ),
                    (0x21, 0x21) => (
                        36,
                        Some(SocketAddr::new(Ipv6Addr::from(ip6).into(), port(32))),
                    ),
                    (_, 0x11) => (12, None),
                    (_, 0x21) => (36, None),
                    (_, 0x31) => (216, None),
                    _ => (0, None),
                };
                block.truncate(len);
                block.extend_from_slice(&tlvs);
                (v2(version_command, family_protocol, &block), source)
            });
        prop_oneof![v1, v2]
    }

    proptest! {
        #[test]
        fn random_bytes_keep_the_invariants(
            buf in prop::collection::vec(any::<u8>(), 0..700),
            k in any::<prop::sample::Index>(),
        ) {
            check_invariants(&buf, k.index(buf.len() + 1));
        }

        #[test]
        fn signature_starts_keep_the_invariants(
            start in prop::sample::select(vec![&b"PROXY "[..], V2_SIGNATURE]),
            rest in prop::collection::vec(any::<u8>(), 0..600),
            k in any::<prop::sample::Index>(),
        ) {
            let mut buf = start.to_vec();
            buf.extend_from_slice(&rest);
            check_invariants(&buf, k.index(buf.len() + 1));
        }

        #[test]
        fn valid_headers_parse_and_mutants_keep_the_invariants(
            (header, source) in any_header(),
            trailer in prop::collection::vec(any::<u8>(), 0..32),
            mutation in any::<(prop::sample::Index, u8)>(),
            k in any::<prop::sample::Index>(),
        ) {
            let mut buf = header.clone();
            buf.extend_from_slice(&trailer);
            prop_assert_eq!(
                parse(&buf),
                Ok(Parsed::Header { consumed: header.len(), source }),
                "{:?}", String::from_utf8_lossy(&header)
            );
            check_invariants(&buf, k.index(buf.len() + 1));
            let (at, byte) = mutation;
            buf[at.index(header.len())] = byte;
            check_invariants(&buf, k.index(buf.len() + 1));
        }
    }
}
