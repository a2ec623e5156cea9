//! The client's transports (PROTOCOL.md §2) against in-process servers: a
//! tokio-rustls acceptor with certificates made here by rcgen (`miops://`),
//! a tokio-tungstenite server (`ws://`, and `wss://` over the TLS acceptor),
//! each playing the gateway's side of a Bind and of Pings with the crate's
//! codec. What is checked: a client that trusts the test CA binds; one that
//! trusts another CA, or checks another name, fails saying so; insecure mode
//! accepts any certificate; client certificates are presented; every Miop
//! frame travels in a binary WebSocket message of its own; a Session
//! reconnects over the same transport; miop-bench runs over TLS and counts
//! handshake failures.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use miop::client::{
    Backoff, Client, ClientError, MiopUrl, Session, SessionConfig, SessionState, TlsOptions,
};
use miop::protocol::{decode, decode_buf, BindAck, Body, Frame, MAX_FRAME_LEN};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(20);

/// Certificates for one test, as PEM files in a directory of their own.
struct Pki {
    dir: PathBuf,
    /// The CA that signed the server's and the client's certificates.
    ca: PathBuf,
    /// A CA that signed nothing here.
    other_ca: PathBuf,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "miop-client-transports-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = issuer("Miop test CA");
        let other = issuer("Some other CA");
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let client = CertificateParams::new(vec!["device-1".into()])
            .unwrap()
            .signed_by(&client_key, &ca)
            .unwrap();
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        Pki {
            ca: write("ca.pem", ca.pem()),
            other_ca: write("other-ca.pem", other.pem()),
            server_chain: vec![server.der().clone()],
            server_key: write("server.key", server_key.serialize_pem()),
            client_cert: write("client.pem", client.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
            dir,
        }
    }

    /// A TLS acceptor with the server certificate; `client_auth`: it
    /// requires a client certificate signed by the test CA.
    fn acceptor(&self, client_auth: bool) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(&self.ca).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::from_pem_file(&self.server_key).unwrap();
        let config = builder
            .with_single_cert(self.server_chain.clone(), key)
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }

    fn trusting(&self, ca: &Path) -> TlsOptions {
        TlsOptions {
            ca: Some(ca.to_owned()),
            ..TlsOptions::default()
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn issuer(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn bind_ack(seq: u32, session_id: u64) -> Frame {
    Frame::new(
        seq,
        Body::BindAck(BindAck {
            heartbeat_interval_ms: 30_000,
            heartbeat_timeout_ms: 60_000,
            max_frame_len: MAX_FRAME_LEN as u32,
            session_id,
        }),
    )
}

/// The gateway's side of a byte-stream connection: BindAck to a Bind, Pong
/// to a Ping, until the client closes (or, `hang_up`, right after the
/// BindAck).
async fn play_gateway<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, session_id: u64, hang_up: bool) {
    let mut buf = BytesMut::new();
    loop {
        let frame = loop {
            match decode_buf(&mut buf, MAX_FRAME_LEN) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(_) => return,
            }
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let reply = match frame.body {
            Body::Bind(_) => bind_ack(frame.seq, session_id),
            Body::Ping => Frame::pong(frame.seq),
            Body::Close(_) => return,
            _ => continue,
        };
        if s.write_all(&reply.to_bytes().unwrap()).await.is_err() {
            return;
        }
        if hang_up && matches!(reply.body, Body::BindAck(_)) {
            let _ = s.shutdown().await;
            return;
        }
    }
}

/// A TLS gateway on a loopback port: every connection plays the gateway
/// (the first one hangs up after its BindAck if `hang_up_first`); what
/// happened is reported on the channel.
async fn tls_gateway(
    acceptor: TlsAcceptor,
    hang_up_first: bool,
) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (events, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            n += 1;
            let (acceptor, events) = (acceptor.clone(), events.clone());
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        let _ = events.send(format!("handshake {n}"));
                        play_gateway(tls, n, hang_up_first && n == 1).await;
                        let _ = events.send(format!("closed {n}"));
                    }
                    Err(e) => {
                        let _ = events.send(format!("handshake failed: {e}"));
                    }
                }
            });
        }
    });
    (addr, rx)
}

fn url(s: &str) -> MiopUrl {
    s.parse().unwrap()
}

async fn bind_and_ping(url: &MiopUrl, tls: &TlsOptions) -> Result<BindAck, ClientError> {
    let mut client = tokio::time::timeout(T, Client::connect_url(url, tls))
        .await
        .expect("connect timed out")?;
    let ack = client.bind_url(url).await?;
    client.ping().await?;
    client.close().await?;
    Ok(ack)
}

#[tokio::test]
async fn tls_with_the_test_ca_binds() {
    let pki = Pki::new();
    let (addr, mut events) = tls_gateway(pki.acceptor(false), false).await;
    let u = url(&format!("miops://dev:k@{addr}/"));
    let ack = bind_and_ping(&u, &pki.trusting(&pki.ca)).await.unwrap();
    assert_eq!(ack.session_id, 1);
    assert_eq!(events.recv().await.unwrap(), "handshake 1");
    // The name checked can be another of the certificate's names.
    let tls = TlsOptions {
        server_name: Some("localhost".into()),
        ..pki.trusting(&pki.ca)
    };
    bind_and_ping(&u, &tls).await.unwrap();
}

#[tokio::test]
async fn tls_with_another_ca_fails_saying_why() {
    let pki = Pki::new();
    let (addr, _events) = tls_gateway(pki.acceptor(false), false).await;
    let u = url(&format!("miops://dev:k@{addr}/"));
    let e = bind_and_ping(&u, &pki.trusting(&pki.other_ca))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Tls(_)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("handshake with {addr} failed"))
            && text.contains("not signed by a CA this client trusts")
            && text.contains("--ca"),
        "{text}"
    );
    // The name is checked too.
    let tls = TlsOptions {
        server_name: Some("elsewhere.example".into()),
        ..pki.trusting(&pki.ca)
    };
    let text = bind_and_ping(&u, &tls).await.unwrap_err().to_string();
    assert!(
        text.contains("is for localhost, 127.0.0.1, not for elsewhere.example"),
        "{text}"
    );
}

#[tokio::test]
async fn insecure_mode_accepts_any_certificate() {
    let pki = Pki::new();
    let (addr, _events) = tls_gateway(pki.acceptor(false), false).await;
    let u = url(&format!("miops://dev:k@{addr}/"));
    let insecure = TlsOptions {
        insecure: true,
        server_name: Some("not-in-the-certificate.example".into()),
        ..TlsOptions::default()
    };
    bind_and_ping(&u, &insecure).await.unwrap();
    // Trusting a CA and trusting anything contradict each other.
    let both = TlsOptions {
        insecure: true,
        ..pki.trusting(&pki.ca)
    };
    let text = Client::connect_url(&u, &both)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(text.contains("choose one"), "{text}");
}

#[tokio::test]
async fn unreadable_tls_files_are_named() {
    let pki = Pki::new();
    let u = url("miops://dev:k@127.0.0.1:1/");
    let missing = pki.dir.join("missing.pem");
    let text = Client::connect_url(&u, &pki.trusting(&missing))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        text.starts_with("TLS: cannot read") && text.contains("missing.pem"),
        "{text}"
    );
    // A key is no certificate.
    let text = Client::connect_url(&u, &pki.trusting(&pki.client_key))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(text.contains("holds no PEM certificate"), "{text}");
}

#[tokio::test]
async fn client_certificates_are_presented() {
    let pki = Pki::new();
    let (addr, mut events) = tls_gateway(pki.acceptor(true), false).await;
    let u = url(&format!("miops://dev:k@{addr}/"));
    let with_cert = TlsOptions {
        client_cert: Some((pki.client_cert.clone(), pki.client_key.clone())),
        ..pki.trusting(&pki.ca)
    };
    bind_and_ping(&u, &with_cert).await.unwrap();
    assert_eq!(events.recv().await.unwrap(), "handshake 1");
    // Without one, the server refuses (in TLS 1.3 the client learns it at
    // its first read, after its side of the handshake is done).
    assert!(bind_and_ping(&u, &pki.trusting(&pki.ca)).await.is_err());
    let refused = loop {
        let e = events.recv().await.unwrap();
        if e.starts_with("handshake failed") {
            break e;
        }
    };
    assert!(refused.contains("certificate"), "{refused}");
}

/// What a WebSocket gateway saw.
#[derive(Debug)]
enum Seen {
    Upgrade {
        path: String,
        protocol: Option<String>,
    },
    /// A binary message: the frames it held.
    Message(Vec<Frame>),
    Pong,
}

/// A WebSocket gateway over `accept` (TCP or TLS): it answers the upgrade
/// with the subprotocol `subprotocol` (if any), answers Bind and Ping in messages of their
/// own, sends a ping after the BindAck, and after the first Pong sends two
/// Pongs in one message (a server may; the client reads a byte stream).
// The upgrade callback's error type is tungstenite's, large as it is.
#[allow(clippy::result_large_err)]
async fn ws_gateway<S, F, Fut>(
    accept: F,
    subprotocol: Option<&'static str>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<S>> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Some(stream) = accept(tcp).await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let seen2 = seen.clone();
                let callback = move |req: &Request, mut resp: Response| {
                    let protocol = req
                        .headers()
                        .get("Sec-WebSocket-Protocol")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let _ = seen2.send(Seen::Upgrade {
                        path: req.uri().path().to_owned(),
                        protocol,
                    });
                    if let Some(p) = subprotocol {
                        resp.headers_mut()
                            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                let mut pongs = 0;
                while let Some(Ok(msg)) = ws.next().await {
                    let payload = match msg {
                        Message::Binary(b) => b,
                        Message::Pong(_) => {
                            let _ = seen.send(Seen::Pong);
                            continue;
                        }
                        Message::Close(_) => return,
                        _ => continue,
                    };
                    let mut frames = Vec::new();
                    let mut at = 0;
                    while let Ok(Some((f, n))) = decode(&payload[at..], MAX_FRAME_LEN) {
                        frames.push(f);
                        at += n;
                    }
                    assert_eq!(at, payload.len(), "a message holds whole frames only");
                    let replies: Vec<Frame> = frames
                        .iter()
                        .filter_map(|f| match f.body {
                            Body::Bind(_) => Some(bind_ack(f.seq, 7)),
                            Body::Ping => Some(Frame::pong(f.seq)),
                            _ => None,
                        })
                        .collect();
                    let _ = seen.send(Seen::Message(frames));
                    for reply in replies {
                        let bind = matches!(reply.body, Body::BindAck(_));
                        let pong = matches!(reply.body, Body::Pong);
                        let bytes = reply.to_bytes().unwrap();
                        if pong && pongs == 1 {
                            // This one and the next in one message.
                            let mut two = bytes.to_vec();
                            two.extend_from_slice(
                                &Frame::pong(reply.seq + 1000).to_bytes().unwrap(),
                            );
                            ws.send(Message::Binary(two.into())).await.unwrap();
                        } else {
                            ws.send(Message::Binary(bytes)).await.unwrap();
                        }
                        pongs += pong as u32;
                        if bind {
                            ws.send(Message::Ping("are you there".into()))
                                .await
                                .unwrap();
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn plain(tcp: tokio::net::TcpStream) -> Option<tokio::net::TcpStream> {
    Some(tcp)
}

/// Checks one ws:// or wss:// session: the upgrade, then one frame per message.
async fn one_frame_per_message(
    u: &MiopUrl,
    tls: &TlsOptions,
    seen: &mut mpsc::UnboundedReceiver<Seen>,
) {
    let mut client = Client::connect_url(u, tls).await.unwrap();
    match seen.recv().await.unwrap() {
        Seen::Upgrade { path, protocol } => {
            assert_eq!(path, "/miop");
            assert_eq!(protocol.as_deref(), Some("miop"));
        }
        other => panic!("{other:?}"),
    }
    let ack = client.bind_url(u).await.unwrap();
    assert_eq!(ack.session_id, 7);
    client.ping().await.unwrap();
    client.ping().await.unwrap();
    // Two frames in one write: two messages.
    let mut two = Frame::ping(90).to_bytes().unwrap().to_vec();
    two.extend_from_slice(&Frame::ping(91).to_bytes().unwrap());
    client.send_raw(&two).await.unwrap();
    // The Pong of seq 3 came with a stowaway (seq 1003) in its message:
    // both were read, the stowaway kept for recv.
    let mut pongs = Vec::new();
    while pongs.len() < 3 {
        let f = tokio::time::timeout(T, client.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(matches!(f.body, Body::Pong), "{f:?}");
        pongs.push(f.seq);
    }
    assert_eq!(pongs, [1003, 90, 91]);
    let mut messages = Vec::new();
    let mut ponged = false;
    while messages.len() < 5 {
        match seen.recv().await.unwrap() {
            Seen::Message(frames) => messages.push(
                frames
                    .iter()
                    .map(|f| (f.body.opcode().name(), f.seq))
                    .collect::<Vec<_>>(),
            ),
            Seen::Pong => ponged = true,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        messages,
        [
            vec![("bind", 1)],
            vec![("ping", 2)],
            vec![("ping", 3)],
            vec![("ping", 90)],
            vec![("ping", 91)],
        ]
    );
    client.close().await.unwrap();
    // The server's ping was answered (by the time the close arrives, at
    // the latest).
    while !ponged {
        match tokio::time::timeout(T, seen.recv()).await.unwrap() {
            Some(Seen::Pong) => ponged = true,
            Some(_) => {}
            None => break,
        }
    }
    assert!(ponged, "the client answered the server's ping");
}

#[tokio::test]
async fn ws_carries_one_frame_per_binary_message() {
    let (addr, mut seen) = ws_gateway(plain, Some("miop")).await;
    let u = url(&format!("ws://dev:k@{addr}"));
    assert_eq!(u.path, "/miop");
    one_frame_per_message(&u, &TlsOptions::default(), &mut seen).await;
    // Miop needs no subprotocol (PROTOCOL.md §2.3): a server may ignore it.
    let (addr, mut seen) = ws_gateway(plain, None).await;
    let u = url(&format!("ws://dev:k@{addr}/miop"));
    one_frame_per_message(&u, &TlsOptions::default(), &mut seen).await;
}

#[tokio::test]
async fn wss_is_websocket_over_tls() {
    let pki = Pki::new();
    let acceptor = pki.acceptor(false);
    let (addr, mut seen) = ws_gateway(
        move |tcp| {
            let acceptor = acceptor.clone();
            async move { acceptor.accept(tcp).await.ok() }
        },
        Some("miop"),
    )
    .await;
    let u = url(&format!("wss://dev:k@{addr}/"));
    one_frame_per_message(&u, &pki.trusting(&pki.ca), &mut seen).await;
}

#[tokio::test]
async fn websocket_upgrade_failures_say_why() {
    // A server that chooses a subprotocol the client did not offer.
    let (addr, _seen) = ws_gateway(plain, Some("mqtt")).await;
    let u = url(&format!("ws://dev:k@{addr}/"));
    let e = Client::connect_url(&u, &TlsOptions::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ClientError::WebSocket(_)), "{e:?}");
    assert!(e.to_string().contains("subprotocol \"mqtt\""), "{e}");
    // A plain HTTP server where the gateway should be.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            .await;
    });
    let u = url(&format!("ws://dev:k@{addr}/elsewhere"));
    let text = Client::connect_url(&u, &TlsOptions::default())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        text.contains("404") && text.contains("/elsewhere"),
        "{text}"
    );
}

#[tokio::test]
async fn a_session_reconnects_over_tls() {
    let pki = Pki::new();
    let (addr, mut events) = tls_gateway(pki.acceptor(false), true).await;
    let u = url(&format!("miops://dev:k@{addr}/"));
    let config = SessionConfig::from_url_tls(&u, &pki.trusting(&pki.ca))
        .unwrap()
        .backoff(Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
            ..Backoff::default()
        });
    let mut session = Session::start(config).unwrap();
    let mut bound = Vec::new();
    while bound.len() < 2 {
        let event = tokio::time::timeout(T, session.events.recv())
            .await
            .unwrap()
            .unwrap();
        match event.state {
            SessionState::Bound { session_id, .. } => bound.push(session_id),
            SessionState::Stopped { reason } => panic!("stopped: {reason}"),
            _ => {}
        }
    }
    // The first connection hung up after its BindAck; the second is TLS too.
    assert_eq!(bound, [1, 2]);
    let mut handshakes = Vec::new();
    while handshakes.len() < 2 {
        let e = events.recv().await.unwrap();
        if e.starts_with("handshake") {
            handshakes.push(e);
        }
    }
    assert_eq!(handshakes, ["handshake 1", "handshake 2"]);
    session.close().await;

    // Trusting another CA: the session keeps trying, saying why.
    let config = SessionConfig::from_url_tls(&u, &pki.trusting(&pki.other_ca)).unwrap();
    let mut session = Session::start(config).unwrap();
    let reason = loop {
        let event = tokio::time::timeout(T, session.events.recv())
            .await
            .unwrap()
            .unwrap();
        if let SessionState::Disconnected { reason, .. } = event.state {
            break reason.to_string();
        }
    };
    assert!(reason.contains("not signed by a CA"), "{reason}");
    session.close().await;
}

/// Runs miop-bench (off the runtime, which keeps serving the gateway).
async fn bench(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_miop-bench"))
            .args(&args)
            .output()
            .expect("run miop-bench")
    })
    .await
    .unwrap()
}

/// A short run of `connections` connections to `url`, trusting `ca`.
fn bench_args(
    url: String,
    ca: &Path,
    connections: u32,
    json: &Path,
    extra: &[&str],
) -> Vec<String> {
    let connections = connections.to_string();
    let mut args: Vec<String> = [
        url.as_str(),
        "--ca",
        ca.to_str().unwrap(),
        "-t",
        "1",
        "-c",
        &connections,
        "-d",
        "1s",
        "--ping-interval",
        "100ms",
        "--progress",
        "0",
        "--no-reconnect",
        "--json",
        json.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miop_bench_runs_over_tls_and_counts_handshake_failures() {
    let pki = Pki::new();
    let json = pki.dir.join("run.json");
    let (addr, _events) = tls_gateway(pki.acceptor(false), false).await;
    let out = bench(bench_args(
        format!("miops://bench:k@{addr}/"),
        &pki.ca,
        20,
        &json,
        &["--latency"],
    ))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("@ miops://bench:***@{addr}/")),
        "{stdout}"
    );
    assert!(
        stdout.contains("Handshake errors (TLS, WebSocket): 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Latency Distribution (handshake)"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let s = &report["summary"];
    assert_eq!(s["counters"]["binds"], 20, "{s}");
    assert_eq!(s["counters"]["handshake_errors"], 0, "{s}");
    assert!(s["counters"]["pongs"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["latency"]["handshake"]["count"], 20, "{s}");

    // An untrusted certificate: one clear line before the run.
    let out = bench(bench_args(
        format!("miops://bench:k@{addr}/"),
        &pki.other_ca,
        20,
        &json,
        &[],
    ))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("miop-bench: TLS: handshake with")
            && stderr.contains("not signed by a CA this client trusts"),
        "{stderr}"
    );

    // Handshakes that fail under load (the gateway hangs up on every
    // connection after the preflight's handshake) are counted as handshake
    // errors.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let flaky = listener.local_addr().unwrap();
    let acceptor = pki.acceptor(false);
    tokio::spawn(async move {
        let mut shook = false;
        while let Ok((tcp, _)) = listener.accept().await {
            if !shook {
                shook = acceptor.accept(tcp).await.is_ok();
            }
        }
    });
    let out = bench(bench_args(
        format!("miops://bench:k@{flaky}/"),
        &pki.ca,
        5,
        &json,
        &[],
    ))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("handshake failed (the first; later ones are only counted)"),
        "{stderr}"
    );
    assert!(
        stdout.contains("Handshake errors (TLS, WebSocket): 5"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let c = &report["summary"]["counters"];
    assert_eq!(
        (c["handshake_errors"].as_u64(), c["binds"].as_u64()),
        (Some(5), Some(0)),
        "{c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miop_bench_runs_over_websocket() {
    let pki = Pki::new();
    let json = pki.dir.join("ws.json");
    let (addr, _seen) = ws_gateway(plain, Some("miop")).await;
    let mut args = bench_args(format!("ws://bench:k@{addr}/"), &pki.ca, 20, &json, &[]);
    // --ca is for TLS URLs only.
    args.drain(1..3);
    let out = bench(args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let c = &report["summary"]["counters"];
    assert_eq!(c["binds"], 20, "{c}");
    assert!(c["pongs"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(c["read_errors"], 0, "{c}");
}
