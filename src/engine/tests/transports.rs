//! Connections with transport layers, driven without sockets: a rustls
//! client in memory talks TLS to the engine.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::ClientConnection;

use super::*;
use crate::protocol::{decode_buf, Push, FLAG_ACK_REQUIRED};
use crate::transport::tls::{TlsFiles, TlsServer};
use crate::transport::wire::test_pki::{localhost, Pki};
use crate::transport::{ListenerKind, ListenerSpec, Transports};

/// The integration tests' CA and a server certificate for localhost, as
/// files for miopd's TLS configuration.
pub struct TestPki {
    pki: Pki,
    files: TlsFiles,
}

impl TestPki {
    pub fn new(tag: &str) -> TestPki {
        let pki = Pki::new(tag);
        let (cert, key, _) = pki.server("server");
        TestPki {
            pki,
            files: TlsFiles {
                cert,
                key,
                client_ca: None,
            },
        }
    }

    pub fn files(&self) -> TlsFiles {
        self.files.clone()
    }

    pub fn client(&self) -> ClientConnection {
        ClientConnection::new(self.pki.client_config(None), localhost()).unwrap()
    }
}

/// An engine with a plain listener (0) and a TLS listener (1).
fn tls_rig(pki: &TestPki) -> Rig {
    let mut cfg = config(0);
    let tls = Arc::new(TlsServer::load(pki.files()).unwrap());
    let addr = "127.0.0.1:7701".parse().unwrap();
    let mut t = Transports::plain("127.0.0.1:7700".parse().unwrap());
    t.listeners.push(ListenerSpec {
        kind: ListenerKind::Tls,
        addr,
        proxy: false,
    });
    t.tls = Some(tls);
    cfg.transports = Arc::new(t);
    Rig::with(cfg)
}

/// Moves bytes both ways until neither side has anything to say. Returns
/// the Miop frames the client decrypted.
fn exchange(rig: &mut Rig, key: ConnKey, client: &mut ClientConnection) -> Vec<Frame> {
    let mut plain = BytesMut::new();
    for _ in 0..20 {
        let mut moved = false;
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).unwrap();
        }
        if !out.is_empty() {
            moved = true;
            rig.engine.on_bytes(rig.now, key, &out);
        }
        while let Some((k, batch)) = rig.engine.poll_transmit() {
            assert_eq!(k, key);
            for b in batch {
                moved = true;
                let mut rd = &b[..];
                while !rd.is_empty() {
                    client.read_tls(&mut rd).unwrap();
                }
                if let Err(e) = client.process_new_packets() {
                    panic!("client TLS error: {e}");
                }
            }
            rig.engine.on_written(rig.now, k, true);
        }
        let mut buf = [0u8; 4096];
        loop {
            match client.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => plain.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        if !moved {
            break;
        }
    }
    let mut frames = Vec::new();
    while let Some(f) = decode_buf(&mut plain, 65_536).unwrap() {
        frames.push(f);
    }
    frames
}

fn send(client: &mut ClientConnection, frame: Frame) {
    client
        .writer()
        .write_all(&frame.to_bytes().unwrap())
        .unwrap();
}

fn bind_frame(device: &str) -> Frame {
    Frame::new(
        1,
        Body::Bind(Bind {
            device_id: device.into(),
            credential: Credential::AppKey(KEY.into()),
            topics: vec![],
        }),
    )
}

#[test]
fn a_tls_client_binds_pings_and_receives_pushes() {
    let pki = TestPki::new("engine-ok");
    let mut rig = tls_rig(&pki);
    let key = rig
        .engine
        .accept_on(rig.now, "10.0.0.9:5000".parse().unwrap(), 1);
    let mut client = pki.client();
    assert!(exchange(&mut rig, key, &mut client).is_empty());
    assert!(!client.is_handshaking(), "handshake completed");
    assert_eq!(rig.engine.stats().handshakes[0], 1);

    send(&mut client, bind_frame("tls-dev"));
    let frames = exchange(&mut rig, key, &mut client);
    assert!(
        matches!(
            frames[..],
            [Frame {
                body: Body::BindAck(_),
                ..
            }]
        ),
        "{frames:?}"
    );
    let at = rig.engine.session_of(key).expect("bound");

    send(&mut client, Frame::new(7, Body::Ping));
    let frames = exchange(&mut rig, key, &mut client);
    assert!(
        matches!(
            frames[..],
            [Frame {
                seq: 7,
                body: Body::Pong,
                ..
            }]
        ),
        "{frames:?}"
    );

    let frame = Frame {
        seq: 0,
        flags: FLAG_ACK_REQUIRED,
        body: Body::Push(Push {
            message_id: 42,
            payload: bytes::Bytes::from_static(b"over tls"),
        }),
    };
    rig.engine.push(
        rig.now,
        PushJob {
            tag: 1,
            targets: PushTargets::Sessions(vec![at]),
            frame: frame.to_bytes().unwrap(),
            message_id: 42,
            ack: true,
            keep_until_ms: None,
        },
    );
    while rig.engine.work(rig.now, 1000) {}
    let frames = exchange(&mut rig, key, &mut client);
    match &frames[..] {
        [Frame {
            body: Body::Push(p),
            ..
        }] => assert_eq!((p.message_id, &p.payload[..]), (42, &b"over tls"[..])),
        other => panic!("expected the push, got {other:?}"),
    }

    // A kick: the Close frame, then close_notify, then the socket.
    assert!(rig.engine.kick(rig.now, at, CloseReason::ServerShutdown));
    let frames = exchange(&mut rig, key, &mut client);
    assert!(
        matches!(
            frames[..],
            [Frame {
                body: Body::Close(_),
                ..
            }]
        ),
        "{frames:?}"
    );
    let mut rest = Vec::new();
    let closed = client.reader().read_to_end(&mut rest);
    assert!(closed.is_ok(), "the server sent close_notify: {closed:?}");
    let mut shut = false;
    while let Some(i) = rig.engine.poll_intent() {
        shut |= matches!(i, Intent::Shutdown(k) if k == key);
    }
    assert!(shut, "the socket is shut down after the goodbye");
}

#[test]
fn plain_text_on_the_tls_port_is_refused_and_counted() {
    let pki = TestPki::new("engine-plain");
    let mut rig = tls_rig(&pki);
    let key = rig
        .engine
        .accept_on(rig.now, "10.0.0.9:5001".parse().unwrap(), 1);
    rig.engine
        .on_bytes(rig.now, key, &bind_frame("plain").to_bytes().unwrap());
    // An alert goes out, then the socket is shut down.
    let mut wrote = 0;
    while let Some((k, batch)) = rig.engine.poll_transmit() {
        wrote += batch.iter().map(|b| b.len()).sum::<usize>();
        rig.engine.on_written(rig.now, k, true);
    }
    assert!(wrote > 0, "a TLS alert was sent");
    let mut shut = false;
    while let Some(i) = rig.engine.poll_intent() {
        shut |= matches!(i, Intent::Shutdown(k) if k == key);
    }
    assert!(shut);
    assert!(rig.engine.session_of(key).is_none());
    let failures = rig.engine.stats().transport_failures;
    assert_eq!(failures, vec![("tls", "not_tls", 1)]);
}

#[test]
fn a_handshake_that_never_finishes_ends_at_the_bind_timeout() {
    let pki = TestPki::new("engine-slow");
    let mut rig = tls_rig(&pki);
    let key = rig
        .engine
        .accept_on(rig.now, "10.0.0.9:5002".parse().unwrap(), 1);
    rig.advance(Duration::from_secs(6));
    assert!(rig.shut.contains(&key), "shut down at the bind timeout");
    assert_eq!(rig.engine.stats().bind_timeouts, 1);
    assert_eq!(
        rig.engine.stats().transport_failures,
        vec![("tls", "handshake_timeout", 1)]
    );
}

/// An engine with a plain listener (0), a WebSocket listener (1) and a
/// plain listener behind a PROXY header (2).
fn ws_proxy_rig() -> Rig {
    let mut cfg = config(0);
    let mut t = Transports::plain("127.0.0.1:7700".parse().unwrap());
    t.listeners.push(ListenerSpec {
        kind: ListenerKind::Ws,
        addr: "127.0.0.1:7720".parse().unwrap(),
        proxy: false,
    });
    t.listeners.push(ListenerSpec {
        kind: ListenerKind::Tcp,
        addr: "127.0.0.1:7701".parse().unwrap(),
        proxy: true,
    });
    cfg.transports = Arc::new(t);
    Rig::with(cfg)
}

/// A masked client frame (RFC 6455: client frames are masked).
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Everything the engine wrote to `key` since the last call, as bytes.
fn written_bytes(rig: &mut Rig, key: ConnKey) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some((k, batch)) = rig.engine.poll_transmit() {
        assert_eq!(k, key);
        for b in batch {
            out.extend_from_slice(&b);
        }
        rig.engine.on_written(rig.now, k, true);
    }
    out
}

/// Moves the virtual clock and fires what is due, without decoding the
/// writes as plain Miop (the rig's `advance` does).
fn tick(rig: &mut Rig, d: Duration) {
    rig.now.mono += d;
    rig.now.unix_ms += d.as_millis() as u64;
    while rig.engine.handle_timeouts(rig.now, 1000) {}
}

const UPGRADE: &[u8] = b"GET /miop HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[test]
fn websocket_pings_keep_a_session_alive_past_its_heartbeat_timeout() {
    let mut rig = ws_proxy_rig();
    let key = rig
        .engine
        .accept_on(rig.now, "10.0.0.9:6000".parse().unwrap(), 1);
    // The upgrade and the Bind in one read (a client may pipeline).
    let mut input = UPGRADE.to_vec();
    input.extend(ws_frame(2, &bind_frame("ws-dev").to_bytes().unwrap()));
    rig.engine.on_bytes(rig.now, key, &input);
    let out = written_bytes(&mut rig, key);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{text}");
    assert!(rig.engine.session_of(key).is_some(), "bound");
    // The heartbeat timeout is 30 s: WebSocket pings every 20 s keep it.
    for _ in 0..5 {
        tick(&mut rig, Duration::from_secs(20));
        rig.engine.on_bytes(rig.now, key, &ws_frame(9, b"p"));
        let pong = written_bytes(&mut rig, key);
        assert_eq!(pong[0], 0x8A, "a Pong");
    }
    assert!(rig.engine.session_of(key).is_some(), "alive after 100 s");
    // Silence: closed at the timeout.
    tick(&mut rig, Duration::from_secs(31));
    let out = written_bytes(&mut rig, key);
    assert!(rig.engine.session_of(key).is_none(), "timed out");
    // The Miop Close in one binary message, then the WebSocket Close.
    assert_eq!(out[0], 0x82, "{out:?}");
    assert_eq!(&out[out.len() - 4..], &[0x88, 2, 0x03, 0xE8], "{out:?}");
    assert_eq!(rig.engine.stats().heartbeat_timeouts, 1);
}

#[test]
fn a_proxy_header_names_the_peer_and_admission_counts_that_address() {
    let mut rig = ws_proxy_rig();
    let lb: std::net::SocketAddr = "10.1.1.1:40000".parse().unwrap();
    let key = rig.engine.accept_on(rig.now, lb, 2);
    // No admission state before the header: the balancer's address is not
    // the client's.
    assert_eq!(rig.engine.tracked_addresses(), 0);
    let mut input = b"PROXY TCP4 203.0.113.7 10.1.1.1 51234 7700\r\n".to_vec();
    input.extend(bind_frame("behind-lb").to_bytes().unwrap());
    // In two reads, split inside the header.
    rig.engine.on_bytes(rig.now, key, &input[..10]);
    assert!(rig.engine.session_of(key).is_none());
    rig.engine.on_bytes(rig.now, key, &input[10..]);
    rig.pump();
    let at = rig.engine.session_of(key).expect("bound");
    let view = rig.engine.inspect(rig.now, at).unwrap();
    assert_eq!(view.peer, "203.0.113.7:51234".parse().unwrap());
    assert_eq!(rig.engine.tracked_addresses(), 1);
    assert_eq!(rig.engine.stats().handshakes[2], 1);
}

#[test]
fn a_connection_without_a_proxy_header_is_closed_and_counted() {
    let mut rig = ws_proxy_rig();
    let key = rig
        .engine
        .accept_on(rig.now, "10.1.1.1:40001".parse().unwrap(), 2);
    rig.engine
        .on_bytes(rig.now, key, &bind_frame("no-header").to_bytes().unwrap());
    assert!(
        written_bytes(&mut rig, key).is_empty(),
        "nothing is answered"
    );
    let mut shut = false;
    while let Some(i) = rig.engine.poll_intent() {
        shut |= matches!(i, Intent::Shutdown(k) if k == key);
    }
    assert!(shut);
    assert_eq!(
        rig.engine.stats().transport_failures,
        vec![("proxy", "missing", 1)]
    );
    // Released without touching admission state it never had.
    rig.engine.released(key);
    assert_eq!(rig.engine.tracked_addresses(), 0);
}
