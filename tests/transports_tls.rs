//! TLS on miopd's device listener, against a real process: a TLS client
//! binds, pings and receives pushes; a certificate the client does not
//! trust, a plain-text client and a client without a required client
//! certificate are refused and counted; SIGHUP swaps the certificate while
//! existing sessions stay.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::pki::{localhost, Pki};
use common::{push_json, wait_until, Miopd, KEY};
use miop::protocol::{decode_buf, Bind, Body, Credential, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const PUSH_TOKEN: &str = "tls-push";

fn start(pki: &Pki, extra: &[&str]) -> Miopd {
    let (cert, key, _) = pki.server("server");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let mut args = vec![
        "--listen-tls",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--push-token",
        PUSH_TOKEN,
    ];
    args.extend_from_slice(extra);
    Miopd::start(&args)
}

/// Miop frames over any byte stream.
struct Raw<S> {
    s: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    async fn send(&mut self, f: Frame) {
        self.s.write_all(&f.to_bytes().unwrap()).await.unwrap();
        self.s.flush().await.unwrap();
    }

    /// The next frame; None at EOF.
    async fn next(&mut self) -> Option<Frame> {
        let read = async {
            loop {
                if let Some(f) = decode_buf(&mut self.buf, 65_536).unwrap() {
                    return Some(f);
                }
                match self.s.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("a frame or EOF within 10 s")
    }

    async fn bind(&mut self, device: &str) {
        self.send(Frame::new(
            1,
            Body::Bind(Bind {
                device_id: device.into(),
                credential: Credential::AppKey(KEY.into()),
                topics: vec![],
            }),
        ))
        .await;
        let f = self.next().await.expect("BindAck");
        assert!(matches!(f.body, Body::BindAck(_)), "{f:?}");
    }

    async fn ping(&mut self, seq: u32) {
        self.send(Frame::new(seq, Body::Ping)).await;
        let f = self.next().await.expect("Pong");
        assert_eq!((f.seq, &f.body), (seq, &Body::Pong));
    }
}

async fn tls(
    gw: &Miopd,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<Raw<tokio_rustls::client::TlsStream<TcpStream>>> {
    let tcp = TcpStream::connect(gw.listener("tls")).await?;
    let s = TlsConnector::from(config).connect(localhost(), tcp).await?;
    Ok(Raw {
        s,
        buf: BytesMut::new(),
    })
}

fn failures(gw: &Miopd, reason: &str) -> f64 {
    gw.metric(&format!(
        "miop_transport_failures_total{{transport=\"tls\",reason=\"{reason}\"}}"
    ))
    .unwrap_or(0.0)
}

#[tokio::test]
async fn a_tls_client_binds_pings_and_receives_pushes() {
    let pki = Pki::new("ok");
    let gw = start(&pki, &[]);
    let mut c = tls(&gw, pki.client_config(None)).await.expect("handshake");
    c.bind("tls-phone").await;
    c.ping(2).await;
    let (status, body) = push_json(
        &gw,
        PUSH_TOKEN,
        r#"{"to": {"device": "tls-phone"}, "payload": "sealed"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let f = c.next().await.expect("push");
    match f.body {
        Body::Push(p) => assert_eq!(&p.payload[..], b"sealed"),
        other => panic!("expected a push, got {other:?}"),
    }
    // The plain listener still serves plain clients side by side.
    let mut plain = gw.bound("plain-phone").await;
    plain.ping().await.unwrap();
    assert_eq!(
        gw.metric("miop_transport_handshakes_total{transport=\"tls\"}"),
        Some(1.0)
    );
    let (_, health) = gw.get("/healthz");
    assert!(health.contains("\"transport\":\"tls\""), "{health}");
}

#[tokio::test]
async fn a_certificate_the_client_does_not_trust_is_refused_and_counted() {
    let pki = Pki::new("untrusted");
    let gw = start(&pki, &[]);
    let other = Pki::new("other-ca");
    let err = tls(&gw, other.client_config(None))
        .await
        .err()
        .expect("the client refuses the server's certificate");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // The client's alert reaches the server, which counts it.
    wait_until(Duration::from_secs(10), "peer_alert counted", || {
        failures(&gw, "peer_alert") >= 1.0
    });
}

#[tokio::test]
async fn a_plain_text_client_on_the_tls_port_is_refused_and_counted() {
    let pki = Pki::new("plain");
    let gw = start(&pki, &[]);
    let tcp = TcpStream::connect(gw.listener("tls")).await.unwrap();
    let mut raw = Raw {
        s: tcp,
        buf: BytesMut::new(),
    };
    raw.send(Frame::new(
        1,
        Body::Bind(Bind {
            device_id: "plain".into(),
            credential: Credential::AppKey(KEY.into()),
            topics: vec![],
        }),
    ))
    .await;
    // No Miop frame comes back (the bytes are a TLS alert), then EOF.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), raw.s.read_to_end(&mut rest))
        .await
        .expect("closed within 10 s");
    assert!(n.is_ok() || rest.is_empty() || rest[0] == 0x15, "{rest:?}");
    assert!(
        rest.is_empty() || rest[0] == 0x15,
        "a TLS alert record, not Miop: {rest:?}"
    );
    wait_until(Duration::from_secs(10), "not_tls counted", || {
        failures(&gw, "not_tls") >= 1.0
    });
    assert_eq!(gw.metric("miop_sessions"), Some(0.0));
}

#[tokio::test]
async fn a_required_client_certificate_is_checked() {
    let pki = Pki::new("mtls");
    let ca = pki.ca_path().display().to_string();
    let gw = start(&pki, &["--tls-client-ca", &ca]);
    // With a certificate from the CA: bound.
    let mut c = tls(&gw, pki.client_config(Some(pki.client_leaf())))
        .await
        .expect("handshake with a client certificate");
    c.bind("mtls-phone").await;
    // Without: refused (in TLS 1.3 the client learns it on its first read).
    let refused = match tls(&gw, pki.client_config(None)).await {
        Err(_) => true,
        Ok(mut c) => {
            c.send(Frame::new(1, Body::Ping)).await;
            c.next().await.is_none()
        }
    };
    assert!(refused, "a client without a certificate is refused");
    wait_until(Duration::from_secs(10), "no_client_cert counted", || {
        failures(&gw, "no_client_cert") >= 1.0
    });
    // With a certificate from another CA: refused too.
    let other = Pki::new("mtls-other");
    let refused = match tls(&gw, pki.client_config(Some(other.client_leaf()))).await {
        Err(_) => true,
        Ok(mut c) => {
            c.send(Frame::new(1, Body::Ping)).await;
            c.next().await.is_none()
        }
    };
    assert!(refused, "a certificate from another CA is refused");
    wait_until(Duration::from_secs(10), "bad_client_cert counted", || {
        failures(&gw, "bad_client_cert") >= 1.0
    });
}

#[tokio::test]
async fn sighup_swaps_the_certificate_and_existing_sessions_stay() {
    let pki = Pki::new("reload");
    let gw = start(&pki, &[]);
    let mut old = tls(&gw, pki.client_config(None)).await.unwrap();
    old.bind("before-reload").await;
    let first = old.s.get_ref().1.peer_certificates().unwrap()[0].clone();

    // New certificate and key in the same files, then SIGHUP.
    let (_, _, new_cert) = pki.server("server");
    assert_ne!(first, new_cert);
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until(Duration::from_secs(10), "reload counted", || {
        gw.metric("miop_tls_reloads_total{result=\"ok\"}") == Some(1.0)
    });
    let fresh = tls(&gw, pki.client_config(None)).await.unwrap();
    assert_eq!(
        fresh.s.get_ref().1.peer_certificates().unwrap()[0],
        new_cert,
        "new handshakes present the new certificate"
    );
    // The session from before the reload is still there and answers.
    old.ping(9).await;
    assert_eq!(gw.metric("miop_sessions"), Some(1.0));

    // A broken file keeps the current certificate.
    std::fs::write(pki.dir.join("server.pem"), "not a certificate").unwrap();
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until(Duration::from_secs(10), "failed reload counted", || {
        gw.metric("miop_tls_reloads_total{result=\"error\"}") == Some(1.0)
    });
    let again = tls(&gw, pki.client_config(None)).await.unwrap();
    assert_eq!(
        again.s.get_ref().1.peer_certificates().unwrap()[0],
        new_cert
    );
    old.ping(10).await;
}
