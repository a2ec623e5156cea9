//! The PROXY protocol on miopd's listener (`--proxy-protocol tcp`), as a
//! load balancer speaks it: v1 and v2 headers set the session's peer
//! address (seen in /v1/sessions/{id}); a missing or garbled header closes
//! the connection and is counted.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use common::{wait_until, Miopd, KEY};
use miop::protocol::{decode_buf, Bind, Body, Credential, Frame};

fn bind(device: &str) -> Vec<u8> {
    Frame::new(
        1,
        Body::Bind(Bind {
            device_id: device.into(),
            credential: Credential::AppKey(KEY.into()),
            topics: vec![],
        }),
    )
    .to_bytes()
    .unwrap()
    .to_vec()
}

/// Sends `bytes` on a new connection and returns the first frame, or None
/// if the server closed without one.
fn exchange(gw: &Miopd, bytes: &[u8]) -> (TcpStream, Option<Frame>) {
    let mut s = TcpStream::connect(gw.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(f) = decode_buf(&mut buf, 65_536).unwrap() {
            return (s, Some(f));
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return (s, None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn v2_tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h
}

fn peer_of(gw: &Miopd, device: &str) -> String {
    let (status, body) = gw.get(&format!("/v1/sessions/{device}"));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["peer"].as_str().unwrap().to_string()
}

#[test]
fn proxy_headers_set_the_peer_address_of_the_session() {
    let gw = Miopd::start(&["--proxy-protocol", "tcp"]);
    let mut v1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 7700\r\n".to_vec();
    v1.extend(bind("via-v1"));
    let (_c1, f) = exchange(&gw, &v1);
    assert!(matches!(f.map(|f| f.body), Some(Body::BindAck(_))));
    assert_eq!(peer_of(&gw, "via-v1"), "203.0.113.7:51234");

    let mut v2 = v2_tcp4([198, 51, 100, 9], 40001, [192, 0, 2, 1], 7700);
    v2.extend(bind("via-v2"));
    let (_c2, f) = exchange(&gw, &v2);
    assert!(matches!(f.map(|f| f.body), Some(Body::BindAck(_))));
    assert_eq!(peer_of(&gw, "via-v2"), "198.51.100.9:40001");

    let mut v6 = b"PROXY TCP6 2001:db8::5 2001:db8::1 443 7700\r\n".to_vec();
    v6.extend(bind("via-v6"));
    let (_c3, f) = exchange(&gw, &v6);
    assert!(matches!(f.map(|f| f.body), Some(Body::BindAck(_))));
    assert_eq!(peer_of(&gw, "via-v6"), "[2001:db8::5]:443");
    assert_eq!(
        gw.metric("miop_transport_handshakes_total{transport=\"proxy\"}"),
        Some(3.0)
    );
}

#[test]
fn a_missing_or_garbled_proxy_header_closes_the_connection() {
    let gw = Miopd::start(&["--proxy-protocol", "all"]);
    let failures = |reason: &str| {
        gw.metric(&format!(
            "miop_transport_failures_total{{transport=\"proxy\",reason=\"{reason}\"}}"
        ))
        .unwrap_or(0.0)
    };
    // A client talking Miop straight to a listener that expects a header.
    let (_s, f) = exchange(&gw, &bind("direct"));
    assert!(f.is_none(), "closed without a frame: {f:?}");
    wait_until(Duration::from_secs(10), "missing counted", || {
        failures("missing") >= 1.0
    });
    // A header with a bad address.
    let mut bad = b"PROXY TCP4 203.0.113.999 192.0.2.1 51234 7700\r\n".to_vec();
    bad.extend(bind("garbled"));
    let (_s, f) = exchange(&gw, &bad);
    assert!(f.is_none(), "closed without a frame: {f:?}");
    wait_until(Duration::from_secs(10), "garbled counted", || {
        failures("garbled") >= 1.0
    });
    assert_eq!(gw.metric("miop_sessions"), Some(0.0));
    // The listener still serves a correct header afterwards.
    let mut ok = b"PROXY TCP4 203.0.113.8 192.0.2.1 1000 7700\r\n".to_vec();
    ok.extend(bind("after"));
    let (_s, f) = exchange(&gw, &ok);
    assert!(matches!(f.map(|f| f.body), Some(Body::BindAck(_))));
}
