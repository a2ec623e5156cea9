//! The wire without sockets: rustls clients in memory against it.
use std::io::{Read, Write};
use std::sync::Arc;

use rustls::{AlertDescription, ClientConfig, ClientConnection, RootCertStore};

use super::test_pki as pki;
use super::*;
use crate::transport::tls::{TlsFiles, TlsServer};
use crate::transport::ListenerKind;

/// A TLS listener's transports: a "localhost" certificate from `pki`'s
/// CA, and `client_ca` requiring client certificates from that CA.
fn tls_transports(pki: &pki::Pki, client_ca: bool) -> Transports {
    let (cert, key, _) = pki.server("server");
    let server = TlsServer::load(TlsFiles {
        cert,
        key,
        client_ca: client_ca.then(|| pki.ca_path()),
    })
    .unwrap();
    let mut t = Transports::plain("127.0.0.1:7700".parse().unwrap());
    t.listeners[0].kind = ListenerKind::Tls;
    t.tls = Some(Arc::new(server));
    t
}

fn client(pki: &pki::Pki, tls12: bool) -> ClientConnection {
    client_with(pki, tls12, None)
}

fn client_with(pki: &pki::Pki, tls12: bool, leaf: Option<pki::Leaf>) -> ClientConnection {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let config = match leaf {
        Some(l) => b.with_client_auth_cert(vec![l.cert], l.key).unwrap(),
        None => b.with_no_client_auth(),
    };
    ClientConnection::new(Arc::new(config), pki::localhost()).unwrap()
}

fn wire(t: &Transports) -> Box<Wire> {
    Wire::new(t.spec(0), t).unwrap().unwrap()
}

fn client_bytes(client: &mut ClientConnection) -> Vec<u8> {
    let mut up = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut up).unwrap();
    }
    up
}

/// The wire's bytes (after `frames`) into the client; the plaintext it
/// got.
fn to_client(
    w: &mut Wire,
    client: &mut ClientConnection,
    frames: Vec<Bytes>,
) -> Result<Vec<u8>, rustls::Error> {
    let mut out = Vec::new();
    w.seal(frames, &mut out);
    for b in out {
        let mut rd = &b[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
        }
        client.process_new_packets()?;
    }
    let mut got = Vec::new();
    let _ = client.reader().read_to_end(&mut got);
    Ok(got)
}

/// Handshakes, the client's bytes fed `step` bytes per read.
fn establish(t: &Transports, w: &mut Wire, client: &mut ClientConnection, step: usize) {
    let mut established = 0;
    while client.is_handshaking() || !w.ready() {
        let up = client_bytes(client);
        for part in up.chunks(step) {
            let mut plain = Vec::new();
            let read = w.receive(t, part, &mut plain).unwrap();
            established += usize::from(read.tls_established);
            assert!(plain.is_empty());
        }
        to_client(w, client, Vec::new()).unwrap();
    }
    assert_eq!(established, 1);
    assert_eq!(w.handshaking_layer(), None);
}

fn buffers(w: &Wire) -> (usize, usize) {
    let tls = w.tls.as_ref().unwrap();
    (tls.incoming.capacity(), tls.outgoing.capacity())
}

#[test]
fn byte_by_byte_then_idle_with_no_buffers() {
    let pki = pki::Pki::new("wire-bytes");
    let t = tls_transports(&pki, false);
    for tls12 in [false, true] {
        let mut w = wire(&t);
        let mut c = client(&pki, tls12);
        establish(&t, &mut w, &mut c, 1);
        c.writer().write_all(b"bind me").unwrap();
        let up = client_bytes(&mut c);
        let mut plain = Vec::new();
        for b in up.chunks(1) {
            w.receive(&t, b, &mut plain).unwrap();
        }
        assert_eq!(plain, b"bind me");
        let got = to_client(&mut w, &mut c, vec![Bytes::from_static(b"ack")]).unwrap();
        assert_eq!(got, b"ack");
        assert!(!w.wants_write());
        assert_eq!(buffers(&w), (0, 0), "idle: no buffer kept (tls12 {tls12})");
    }
}

#[test]
fn records_and_a_half_in_one_read() {
    let pki = pki::Pki::new("wire-half");
    let t = tls_transports(&pki, false);
    let mut w = wire(&t);
    let mut c = client(&pki, false);
    establish(&t, &mut w, &mut c, 4096);
    let mut up = Vec::new();
    for m in [&b"one"[..], b"two", b"three"] {
        c.writer().write_all(m).unwrap();
        up.extend(client_bytes(&mut c));
    }
    let cut = up.len() - 10;
    let mut plain = Vec::new();
    w.receive(&t, &up[..cut], &mut plain).unwrap();
    assert_eq!(plain, b"onetwo");
    let (incoming, _) = buffers(&w);
    assert!(
        incoming > 0 && incoming <= cut,
        "the partial record: {incoming}"
    );
    w.receive(&t, &up[cut..], &mut plain).unwrap();
    assert_eq!(plain, b"onetwothree");
    assert_eq!(buffers(&w), (0, 0));
}

#[test]
fn a_key_update_the_client_requests_is_answered() {
    let pki = pki::Pki::new("wire-keyupdate");
    let t = tls_transports(&pki, false);
    let mut w = wire(&t);
    let mut c = client(&pki, false);
    establish(&t, &mut w, &mut c, 4096);
    for round in 0..3 {
        c.refresh_traffic_keys().unwrap();
        c.writer().write_all(b"ping").unwrap();
        let up = client_bytes(&mut c);
        let mut plain = Vec::new();
        w.receive(&t, &up, &mut plain).unwrap();
        assert_eq!(plain, b"ping", "round {round}");
        let got = to_client(&mut w, &mut c, vec![Bytes::from_static(b"pong")]).unwrap();
        assert_eq!(got, b"pong", "round {round}");
    }
    assert_eq!(buffers(&w), (0, 0));
}

#[test]
fn a_tampered_record_fails_and_the_alert_goes_out() {
    let pki = pki::Pki::new("wire-tamper");
    let t = tls_transports(&pki, false);
    let mut w = wire(&t);
    let mut c = client(&pki, false);
    establish(&t, &mut w, &mut c, 4096);
    c.writer().write_all(b"hello").unwrap();
    let mut up = client_bytes(&mut c);
    let last = up.len() - 1;
    up[last] ^= 1;
    let mut plain = Vec::new();
    let e = w.receive(&t, &up, &mut plain).unwrap_err();
    assert_eq!(e, fail("tls", "decrypt_error"));
    assert!(plain.is_empty());
    assert!(w.failed() && w.wants_write());
    // Only the alert: frames are dropped once failed.
    let r = to_client(&mut w, &mut c, vec![Bytes::from_static(b"late")]);
    assert_eq!(
        r.unwrap_err(),
        rustls::Error::AlertReceived(AlertDescription::BadRecordMac)
    );
    assert_eq!(buffers(&w), (0, 0));
}

#[test]
fn bytes_that_are_not_tls_get_a_decode_error_alert() {
    let pki = pki::Pki::new("wire-nottls");
    let t = tls_transports(&pki, false);
    let mut w = wire(&t);
    let mut plain = Vec::new();
    let e = w
        .receive(&t, b"GET / HTTP/1.1\r\n\r\n", &mut plain)
        .unwrap_err();
    assert_eq!(e, fail("tls", "not_tls"));
    assert_eq!(w.handshaking_layer(), None);
    // A TLS client reading the reply sees the alert.
    let mut c = client(&pki, false);
    let _ = client_bytes(&mut c);
    let r = to_client(&mut w, &mut c, Vec::new());
    assert_eq!(
        r.unwrap_err(),
        rustls::Error::AlertReceived(AlertDescription::DecodeError)
    );
    // Nothing more is read.
    assert_eq!(w.receive(&t, b"more", &mut plain), Ok(WireRead::default()));
}

#[test]
fn client_certificates_missing_or_foreign_are_refused_with_an_alert() {
    let pki = pki::Pki::new("wire-mtls");
    let t = tls_transports(&pki, true);
    let other = pki::Pki::new("wire-mtls-other");
    for tls12 in [false, true] {
        let mut w = wire(&t);
        let mut c = client_with(&pki, tls12, Some(pki.client_leaf()));
        establish(&t, &mut w, &mut c, 4096);
        // The other CA has the same name as ours (rcgen's default): its
        // leaf fails on the signature, hence decrypt_error.
        let cases = [
            (
                None,
                "no_client_cert",
                AlertDescription::CertificateRequired,
            ),
            (
                Some(other.client_leaf()),
                "bad_client_cert",
                AlertDescription::DecryptError,
            ),
        ];
        for (leaf, reason, alert) in cases {
            let mut w = wire(&t);
            let mut c = client_with(&pki, tls12, leaf);
            let failure = loop {
                let mut plain = Vec::new();
                let up = client_bytes(&mut c);
                assert!(!up.is_empty(), "{reason} tls12 {tls12}: refused");
                if let Err(f) = w.receive(&t, &up, &mut plain) {
                    break f;
                }
                to_client(&mut w, &mut c, Vec::new()).unwrap();
            };
            assert_eq!(failure, fail("tls", reason), "tls12 {tls12}");
            let r = to_client(&mut w, &mut c, Vec::new());
            assert_eq!(
                r.unwrap_err(),
                rustls::Error::AlertReceived(alert),
                "{reason} tls12 {tls12}"
            );
            assert_eq!(buffers(&w), (0, 0));
        }
    }
}

#[test]
fn close_notify_both_ways() {
    let pki = pki::Pki::new("wire-close");
    let t = tls_transports(&pki, false);
    let mut w = wire(&t);
    let mut c = client(&pki, false);
    establish(&t, &mut w, &mut c, 4096);
    c.writer().write_all(b"last").unwrap();
    c.send_close_notify();
    let up = client_bytes(&mut c);
    let mut plain = Vec::new();
    let read = w.receive(&t, &up, &mut plain).unwrap();
    assert!(read.peer_closed);
    assert_eq!(plain, b"last");
    // What follows the close_notify is ignored.
    let read = w
        .receive(&t, b"\x17\x03\x03\x00\x05junk", &mut plain)
        .unwrap();
    assert!(read.peer_closed);
    assert_eq!(plain, b"last");
    assert_eq!(buffers(&w), (0, 0));
    assert!(w.close());
    to_client(&mut w, &mut c, Vec::new()).unwrap();
    let mut got = [0u8; 1];
    assert_eq!(c.reader().read(&mut got).unwrap(), 0, "clean EOF");
}

#[test]
fn size_of_the_tls_layer() {
    // One pointer in the Wire: layers without TLS do not pay for it.
    assert_eq!(std::mem::size_of::<Option<Box<Tls>>>(), 8);
    let conn = std::mem::size_of::<rustls::server::UnbufferedServerConnection>();
    let buffered = std::mem::size_of::<rustls::ServerConnection>();
    println!(
        "Wire {} B, Tls {} B, UnbufferedServerConnection {conn} B, ServerConnection {buffered} B",
        std::mem::size_of::<Wire>(),
        std::mem::size_of::<Tls>()
    );
    assert!(conn < buffered);
    assert_eq!(std::mem::size_of::<Tls>(), conn + 56);
}
