//! WebSocket on miopd's device listeners (`ws://` and `wss://`), against a
//! real process and a real WebSocket client (tokio-tungstenite): one Miop
//! frame per binary message both ways, the same sessions and pushes as TCP;
//! a wrong path, a plain Miop client and text messages are refused and
//! counted.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::pki::{localhost, Pki};
use common::{push_json, wait_until, Miopd, KEY};
use futures_util::{SinkExt, StreamExt};
use miop::protocol::{decode, Bind, Body, Credential, Frame};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const PUSH_TOKEN: &str = "ws-push";

fn start(pki: &Pki) -> Miopd {
    let (cert, key, _) = pki.server("server");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    Miopd::start(&[
        "--listen-ws",
        "127.0.0.1:0",
        "--listen-wss",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--push-token",
        PUSH_TOKEN,
    ])
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, f: Frame) {
    ws.send(Message::Binary(f.to_bytes().unwrap()))
        .await
        .unwrap();
}

/// The next binary message, which must hold exactly one Miop frame; None
/// when the connection ends.
async fn next<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Option<Frame> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s");
        match msg {
            Some(Ok(Message::Binary(b))) => {
                let (frame, used) = decode(&b, 65_536).unwrap().expect("a whole frame");
                assert_eq!(used, b.len(), "exactly one Miop frame per message");
                return Some(frame);
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
        }
    }
}

fn bind(device: &str) -> Frame {
    Frame::new(
        1,
        Body::Bind(Bind {
            device_id: device.into(),
            credential: Credential::AppKey(KEY.into()),
            topics: vec![],
        }),
    )
}

/// Binds, pings (Miop and WebSocket), receives a push.
async fn session_works<S: AsyncRead + AsyncWrite + Unpin>(
    gw: &Miopd,
    ws: &mut WebSocketStream<S>,
    device: &str,
) {
    send(ws, bind(device)).await;
    let f = next(ws).await.expect("BindAck");
    assert!(matches!(f.body, Body::BindAck(_)), "{f:?}");
    send(ws, Frame::new(2, Body::Ping)).await;
    let f = next(ws).await.expect("Pong");
    assert_eq!((f.seq, f.body), (2, Body::Pong));
    ws.send(Message::Ping(Bytes::from_static(b"hi")))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap();
    assert!(
        matches!(&pong, Some(Ok(Message::Pong(p))) if &p[..] == b"hi"),
        "{pong:?}"
    );
    let body = format!(r#"{{"to": {{"device": "{device}"}}, "payload": "framed"}}"#);
    let (status, resp) = push_json(gw, PUSH_TOKEN, &body);
    assert_eq!(status, 200, "{resp}");
    match next(ws).await.expect("push").body {
        Body::Push(p) => assert_eq!(&p.payload[..], b"framed"),
        other => panic!("expected a push, got {other:?}"),
    }
}

#[tokio::test]
async fn a_websocket_client_binds_pings_and_receives_pushes() {
    let pki = Pki::new("ws");
    let gw = start(&pki);
    let tcp = TcpStream::connect(gw.listener("ws")).await.unwrap();
    let url = format!("ws://{}/miop", gw.listener("ws"));
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("upgrade");
    session_works(&gw, &mut ws, "ws-phone").await;
    // Closing from the client ends the session.
    ws.close(None).await.unwrap();
    wait_until(Duration::from_secs(10), "session gone", || {
        gw.metric("miop_sessions") == Some(0.0)
    });
    assert_eq!(
        gw.metric("miop_transport_handshakes_total{transport=\"ws\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_websocket_client_over_tls_binds_pings_and_receives_pushes() {
    let pki = Pki::new("wss");
    let gw = start(&pki);
    let tcp = TcpStream::connect(gw.listener("wss")).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(pki.client_config(None))
        .connect(localhost(), tcp)
        .await
        .expect("TLS handshake");
    let url = format!("wss://localhost:{}/miop", gw.listener("wss").port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("upgrade");
    session_works(&gw, &mut ws, "wss-phone").await;
    // A kick from the server: Miop Close, then the WebSocket Close.
    gw.signal(nix::sys::signal::Signal::SIGTERM);
    let f = next(&mut ws).await.expect("Close");
    assert!(matches!(f.body, Body::Close(_)), "{f:?}");
    assert!(next(&mut ws).await.is_none(), "then the WebSocket closes");
}

#[tokio::test]
async fn wrong_paths_plain_clients_and_text_messages_are_refused_and_counted() {
    let pki = Pki::new("ws-bad");
    let gw = start(&pki);
    let failures = |reason: &str| {
        gw.metric(&format!(
            "miop_transport_failures_total{{transport=\"ws\",reason=\"{reason}\"}}"
        ))
        .unwrap_or(0.0)
    };
    // A path the listener does not serve: refused at the upgrade.
    let tcp = TcpStream::connect(gw.listener("ws")).await.unwrap();
    let url = format!("ws://{}/elsewhere", gw.listener("ws"));
    let err = tokio_tungstenite::client_async(url, tcp).await.err();
    assert!(
        format!("{err:?}").contains("404"),
        "wrong path answered 404: {err:?}"
    );
    wait_until(Duration::from_secs(10), "wrong_path counted", || {
        failures("wrong_path") >= 1.0
    });

    // A plain Miop client on the WebSocket port: not an HTTP request.
    let mut plain = miop::client::Client::connect(gw.listener("ws"))
        .await
        .unwrap();
    let r = plain
        .bind("plain", Credential::AppKey(KEY.into()), vec![])
        .await;
    assert!(r.is_err(), "no BindAck for a plain client: {r:?}");
    wait_until(Duration::from_secs(10), "bad_request counted", || {
        failures("bad_request") >= 1.0
    });

    // A text message after the upgrade: Close 1003.
    let tcp = TcpStream::connect(gw.listener("ws")).await.unwrap();
    let url = format!("ws://{}/miop", gw.listener("ws"));
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    ws.send(Message::Text("hello".into())).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap();
    match msg {
        Some(Ok(Message::Close(Some(c)))) => assert_eq!(u16::from(c.code), 1003),
        other => panic!("expected Close 1003, got {other:?}"),
    }
    wait_until(Duration::from_secs(10), "text_message counted", || {
        failures("text_message") >= 1.0
    });
    assert_eq!(gw.metric("miop_sessions"), Some(0.0));
}
