//! Integration tests of miopd over real loopback sockets.

mod common;

use std::time::Duration;

use common::*;
use miop::client::Client;
use miop::protocol::{Body, CloseReason, Credential, ErrorCode, Frame, HEADER_LEN};
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(10);

fn close_reason(b: &Body) -> Option<CloseReason> {
    match b {
        Body::Close(c) => c.reason(),
        _ => None,
    }
}

fn error_code(b: &Body) -> Option<ErrorCode> {
    match b {
        Body::Error(e) => e.code(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_with_good_key_is_acked_and_visible_to_admin() {
    let gw = Miopd::start(&["--heartbeat", "20s"]);
    let mut c = gw.client().await;
    let ack = c
        .bind(
            "phone-1",
            Credential::AppKey(KEY.into()),
            vec!["news".into()],
        )
        .await
        .unwrap();
    assert_eq!(ack.heartbeat_interval_ms, 20_000);
    assert_eq!(ack.heartbeat_timeout_ms, 60_000);
    c.ping().await.unwrap();

    let (status, body) = gw.get("/v1/sessions/phone-1");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["device_id"], "phone-1");
    assert_eq!(v["state"], "bound");
    assert_eq!(v["session_id"], ack.session_id);
    assert_eq!(v["topics"][0], "news");
    assert_eq!(v["frames_in"], 2);
    assert_eq!(gw.get("/v1/sessions/nobody").0, 404);
    assert_eq!(gw.metric("miop_sessions"), Some(1.0));
    assert_eq!(gw.metric("miop_binds_total{result=\"ok\"}"), Some(1.0));
    let (status, health) = gw.get("/healthz");
    assert_eq!(status, 200);
    assert!(health.contains("\"sessions\":1"), "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_with_bad_key_gets_error_and_close_and_no_session() {
    let gw = Miopd::start(&[]);
    let mut c = gw.client().await;
    let err = c
        .bind("phone-2", Credential::AppKey("wrong".into()), vec![])
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some(ErrorCode::AuthFailed), "{err}");
    let rest = frames_until_eof(&mut c, T).await;
    assert_eq!(
        rest.iter().filter_map(close_reason).collect::<Vec<_>>(),
        vec![CloseReason::AuthFailed]
    );
    assert_eq!(gw.get("/v1/sessions/phone-2").0, 404);
    assert_eq!(
        gw.metric("miop_binds_total{result=\"auth_failed\"}"),
        Some(1.0)
    );
    assert_eq!(gw.metric("miop_sessions"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mode_accepts_minted_tokens_only_for_their_device() {
    let gw = Miopd::start(&["--token-secret", "s3cret"]);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = miop::auth::mint_token(b"s3cret", "phone-t", exp);
    let mut ok = gw.client().await;
    ok.bind("phone-t", Credential::Token(token.clone()), vec![])
        .await
        .unwrap();
    let mut stolen = gw.client().await;
    let err = stolen
        .bind("phone-u", Credential::Token(token), vec![])
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some(ErrorCode::AuthFailed));
    let expired = miop::auth::mint_token(b"s3cret", "phone-v", 1);
    let mut old = gw.client().await;
    let err = old
        .bind("phone-v", Credential::Token(expired), vec![])
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some(ErrorCode::AuthFailed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_timeout_closes_a_silent_client_but_not_a_pinging_one() {
    let gw = Miopd::start(&["--heartbeat", "200ms", "--heartbeat-timeout", "800ms"]);
    let mut silent = gw.bound("silent").await;
    let mut alive = gw.bound("alive").await;
    let pinger = tokio::spawn(async move {
        // Ping well inside the timeout until the silent one has been closed.
        for _ in 0..40 {
            alive.ping().await.expect("pinging session must stay up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        alive
    });
    let frames = frames_until_eof(&mut silent, T).await;
    assert_eq!(
        frames.iter().filter_map(close_reason).collect::<Vec<_>>(),
        vec![CloseReason::HeartbeatTimeout]
    );
    let mut alive = pinger.await.unwrap();
    alive.ping().await.unwrap();
    assert_eq!(gw.get("/v1/sessions/silent").0, 404);
    assert_eq!(gw.get("/v1/sessions/alive").0, 200);
    assert_eq!(gw.metric("miop_heartbeat_timeouts_total"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_timeout_closes_a_connection_that_never_binds() {
    let gw = Miopd::start(&["--bind-timeout", "300ms"]);
    let mut c = gw.client().await;
    let frames = frames_until_eof(&mut c, T).await;
    assert_eq!(
        frames.iter().filter_map(close_reason).collect::<Vec<_>>(),
        vec![CloseReason::BindTimeout]
    );
    assert_eq!(gw.metric("miop_bind_timeouts_total"), Some(1.0));
    wait_until(T, "connection gauge back to 0", || {
        gw.metric("miop_connections") == Some(0.0)
    });
}

/// Core id of a session: the top 16 bits of its id (see gateway::core).
fn core_of(session_id: u64) -> u64 {
    session_id >> 48
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_bind_kicks_the_older_session_on_the_same_and_another_core() {
    let gw = Miopd::start(&["--cores", "2"]);
    let mut old = gw.client().await;
    let mut old_core = core_of(
        old.bind("dup", Credential::AppKey(KEY.into()), vec![])
            .await
            .unwrap()
            .session_id,
    );
    let (mut same, mut cross) = (0, 0);
    // SO_REUSEPORT hashes each connection to a core; rebind on new connections
    // until both cases have happened (each has probability 1/2 per try).
    for _ in 0..64 {
        let mut new = gw.client().await;
        let ack = new
            .bind("dup", Credential::AppKey(KEY.into()), vec![])
            .await
            .unwrap();
        let frames = frames_until_eof(&mut old, T).await;
        assert_eq!(
            frames.iter().filter_map(close_reason).collect::<Vec<_>>(),
            vec![CloseReason::Replaced]
        );
        let new_core = core_of(ack.session_id);
        if new_core == old_core {
            same += 1
        } else {
            cross += 1
        }
        // The newest session is the one the node knows.
        let (_, body) = gw.get("/v1/sessions/dup");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["session_id"], ack.session_id);
        assert_eq!(v["core"], new_core);
        new.ping().await.unwrap();
        old = new;
        old_core = new_core;
        if same > 0 && cross > 0 {
            break;
        }
    }
    assert!(
        same > 0 && cross > 0,
        "saw same-core {same} and cross-core {cross} replacements"
    );
    assert_eq!(gw.metric("miop_sessions"), Some(1.0));
}

/// A header with arbitrary fields, for hand-made bad frames.
fn header(frame_len: u32, version: u8, opcode: u8, seq: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(&frame_len.to_be_bytes());
    h.extend_from_slice(&(HEADER_LEN as u16).to_be_bytes());
    h.extend_from_slice(&[version, opcode, 0, 0, 0, 0]);
    h.extend_from_slice(&seq.to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_an_error_and_a_close_while_other_sessions_continue() {
    let gw = Miopd::start(&["--max-frame", "8192"]);
    let mut healthy = gw.bound("healthy").await;

    let mut too_big = header(1 << 20, 1, 0x03, 41);
    too_big.extend(std::iter::repeat_n(0u8, 2000));
    let mut trailing = header(HEADER_LEN as u32 + 3, 1, 0x03, 42); // Ping has no body
    trailing.extend_from_slice(&[1, 2, 3]);
    let mut bad_utf8 = header(HEADER_LEN as u32 + 6, 1, 0x01, 45);
    bad_utf8.extend_from_slice(&[2, 0xff, 0xfe, 1, 0, 0]);
    let cases: Vec<(&str, Vec<u8>, ErrorCode, u32)> = vec![
        ("oversized", too_big, ErrorCode::FrameTooLarge, 41),
        ("trailing bytes", trailing, ErrorCode::Malformed, 42),
        (
            "bad version",
            header(16, 9, 0x03, 43),
            ErrorCode::UnsupportedVersion,
            43,
        ),
        (
            "unknown opcode",
            header(16, 1, 0x7f, 44),
            ErrorCode::UnknownOpcode,
            44,
        ),
        ("bad utf-8 device id", bad_utf8, ErrorCode::Malformed, 45),
        (
            "server-only opcode",
            header(16, 1, 0x04, 46),
            ErrorCode::UnknownOpcode,
            46,
        ),
    ];
    for (name, bytes, code, seq) in cases {
        let mut c = gw.bound(&format!("bad-{seq}")).await;
        c.send_raw(&bytes).await.unwrap();
        let frames = full_frames_until_eof(&mut c, T).await;
        // Exactly an Error naming the offending frame by its seq, then a Close
        // (seq 0, server-initiated), then the end of the stream.
        assert_eq!(frames.len(), 2, "{name}: {frames:?}");
        assert_eq!(error_code(&frames[0].body), Some(code), "{name}");
        assert_eq!(frames[0].seq, seq, "{name}");
        assert_eq!(
            close_reason(&frames[1].body),
            Some(CloseReason::ProtocolError),
            "{name}"
        );
        assert_eq!(frames[1].seq, 0, "{name}");
        assert_eq!(gw.get(&format!("/v1/sessions/bad-{seq}")).0, 404, "{name}");
        healthy
            .ping()
            .await
            .unwrap_or_else(|e| panic!("healthy session hurt by {name}: {e}"));
    }
    // A frame before Bind is refused too.
    let mut early = gw.client().await;
    early.send(&Frame::ping(7)).await.unwrap();
    let frames = frames_until_eof(&mut early, T).await;
    assert_eq!(
        frames.iter().filter_map(error_code).collect::<Vec<_>>(),
        vec![ErrorCode::NotBound]
    );
    healthy.ping().await.unwrap();
    assert_eq!(gw.metric("miop_sessions"), Some(1.0));
    assert_eq!(
        gw.metric("miop_connections_closed_total{reason=\"protocol_error\"}"),
        Some(7.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_coalesced_frames_are_both_understood() {
    let gw = Miopd::start(&[]);
    let mut c = gw.bound("splitter").await;
    // Three pings in one write, then one ping a byte at a time.
    let mut three = Vec::new();
    for seq in 100..103 {
        three.extend_from_slice(&Frame::ping(seq).to_bytes().unwrap());
    }
    c.send_raw(&three).await.unwrap();
    for seq in 100..103 {
        let f = next_frame(&mut c, T).await.unwrap().unwrap();
        assert_eq!((f.seq, f.body), (seq, Body::Pong));
    }
    for b in Frame::ping(200).to_bytes().unwrap().iter() {
        c.send_raw(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let f = next_frame(&mut c, T).await.unwrap().unwrap();
    assert_eq!((f.seq, f.body), (200, Body::Pong));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_session_with_close_and_exits() {
    let mut gw = Miopd::start(&["--cores", "2", "--drain-timeout", "5s"]);
    let mut clients = Vec::new();
    for i in 0..50 {
        clients.push(gw.bound(&format!("drain-{i}")).await);
    }
    // Stop accepting: after the signal, new connections are refused or closed.
    gw.signal(Signal::SIGTERM);
    for c in clients.iter_mut() {
        let frames = frames_until_eof(c, T).await;
        assert_eq!(
            frames.iter().filter_map(close_reason).collect::<Vec<_>>(),
            vec![CloseReason::ServerShutdown]
        );
    }
    let status = gw.wait_exit(T).expect("miopd did not exit after draining");
    assert!(status.success(), "{status:?}");
    let log = gw.log_text();
    assert!(log.contains("drained; exiting"), "{log}");
    // Each core's accept loop ended because of the drain (listener shut down),
    // not because the process went away.
    assert_eq!(
        log.matches("accept loop stopped for drain").count(),
        2,
        "{log}"
    );
    assert!(
        Client::connect(gw.listen).await.is_err(),
        "listener must be closed after exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_fd_budget_accepting_pauses_the_admin_api_answers_and_accept_resumes() {
    // 256 fds: the cores stop accepting at 192 open connections (the limit
    // less a reserve of 64 for the admin API and the process) and resume at
    // 160.
    let gw = Miopd::start_with(Options {
        args: ["--cores", "1", "--bind-timeout", "60s"]
            .map(String::from)
            .to_vec(),
        fd_limit: Some(256),
        ..Options::default()
    });
    let mut hold = Vec::new();
    for _ in 0..240 {
        // Connects complete in the kernel's backlog even when not accepted.
        hold.push(tokio::net::TcpStream::connect(gw.listen).await.unwrap());
    }
    wait_until(T, "accepting paused at the high-water mark", || {
        gw.metric("miop_accept_pauses_total").unwrap_or(0.0) >= 1.0
            && gw.metric("miop_accept_paused_cores") == Some(1.0)
    });
    let open = gw.metric("miop_connections").unwrap();
    assert!((192.0..=200.0).contains(&open), "{open} connections");
    // The admin API keeps its reserve: it answers, again and again.
    for _ in 0..20 {
        assert_eq!(gw.get("/healthz").0, 200);
        assert!(gw.get("/metrics").1.contains("miop_connections "));
    }
    assert_eq!(
        gw.metric("miop_accept_errors_total{errno=\"EMFILE\"}"),
        Some(0.0),
        "stopped before EMFILE"
    );
    // Connections close: below the low-water mark accepting resumes, and the
    // connections waiting in the backlog are taken, then new devices bind.
    hold.truncate(100);
    wait_until(T, "accepting resumed", || {
        gw.metric("miop_accept_paused_cores") == Some(0.0)
    });
    let mut c = gw.bound("after-the-pause").await;
    c.ping().await.unwrap();
    assert!(gw.log_text().contains("fd budget exhausted"));
    drop(hold);
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_connections_release_their_fds_even_if_the_peer_stays() {
    let gw = Miopd::start(&[
        "--bind-timeout",
        "300ms",
        "--heartbeat",
        "200ms",
        "--heartbeat-timeout",
        "600ms",
    ]);
    let baseline = open_fds(gw.pid());
    // Peers that never bind, and bound peers that go silent; none of them close
    // their side. The gateway must close every one of them itself.
    let mut peers = Vec::new();
    for _ in 0..100 {
        peers.push(gw.client().await);
    }
    for i in 0..100 {
        peers.push(gw.bound(&format!("quiet-{i}")).await);
    }
    assert_eq!(gw.metric("miop_connections_accepted_total"), Some(200.0));
    for p in peers.iter_mut() {
        let frames = frames_until_eof(p, T).await;
        assert_eq!(
            frames
                .iter()
                .filter(|b| matches!(b, Body::Close(_)))
                .count(),
            1
        );
    }
    // The peers still hold their sockets open; the gateway's fds are gone.
    wait_until(T, "gateway fds back to baseline", || {
        open_fds(gw.pid()) <= baseline
    });
    assert_eq!(gw.metric("miop_connections"), Some(0.0));
    drop(peers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_binds_of_one_device_leave_exactly_one_session() {
    let gw = Miopd::start(&["--cores", "2"]);
    let mut keep = Vec::new();
    for round in 0..20 {
        let device = format!("race-{round}");
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(gw.client().await);
        }
        // All three Binds are in flight at once.
        let binds = clients
            .iter_mut()
            .map(|c| c.bind(&device, Credential::AppKey(KEY.into()), vec![]));
        let results = join_all(binds).await;
        // Every acked bind reached the device index before its BindAck was
        // sent, so the holder the admin API names now is the last word.
        let (status, body) = gw.get(&format!("/v1/sessions/{device}"));
        assert_eq!(status, 200, "round {round}: {body}");
        let holder = serde_json::from_str::<serde_json::Value>(&body).unwrap()["session_id"]
            .as_u64()
            .unwrap();
        let mut survivors = Vec::new();
        for (c, r) in clients.iter_mut().zip(results) {
            let ack = match r {
                Ok(ack) => ack,
                // Kicked before its BindAck was read: Close(REPLACED) comes first.
                Err(e) => {
                    assert_eq!(
                        e.close_reason(),
                        Some(CloseReason::Replaced),
                        "round {round}: {e}"
                    );
                    continue;
                }
            };
            if ack.session_id == holder {
                c.ping().await.expect("the holder stays bound");
                survivors.push(ack.session_id);
            } else {
                // Any other bound session is kicked as replaced.
                let frames = frames_until_eof(c, T).await;
                assert_eq!(
                    frames.iter().filter_map(close_reason).collect::<Vec<_>>(),
                    vec![CloseReason::Replaced],
                    "round {round}"
                );
            }
        }
        assert_eq!(survivors, vec![holder], "round {round}");
        keep.extend(clients); // survivors stay bound
    }
    assert_eq!(gw.metric("miop_sessions"), Some(20.0));
}

/// Polls the futures together until all are done (no extra crate for join_all).
async fn join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (f, o) in pinned.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_as_a_slow_consumer() {
    // A budget too large to matter: this is about the outbound queue (the
    // inbound budget would slow this flooder down first; tests/hostile.rs).
    let gw = Miopd::start(&[
        "--cores",
        "1",
        "--outbound-limit",
        "65536",
        "--frames-per-sec",
        "100000000",
        "--bytes-per-sec",
        "1000000000",
    ]);
    let mut healthy = gw.bound("reader").await;
    // A small receive buffer so the kernel absorbs few Pongs for the flooder.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gw.listen).await.unwrap();
    let mut flooder = Client::from_stream(stream);
    flooder
        .bind("flooder", Credential::AppKey(KEY.into()), vec![])
        .await
        .unwrap();
    // Pings in 64 KiB writes, never reading a Pong; at most 256 MiB.
    let mut chunk = Vec::new();
    for seq in 0..4096u32 {
        chunk.extend_from_slice(&Frame::ping(seq + 1).to_bytes().unwrap());
    }
    let mut sent = 0usize;
    while sent < 256 << 20 {
        match tokio::time::timeout(T, flooder.send_raw(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(_)) => break, // the gateway closed us
            Err(_) => panic!("writes blocked for 10 s and the slow consumer was not closed"),
        }
    }
    wait_until(T, "slow consumer closed", || {
        gw.metric("miop_connections_closed_total{reason=\"slow_consumer\"}") == Some(1.0)
    });
    assert_eq!(gw.get("/v1/sessions/flooder").0, 404);
    healthy.ping().await.unwrap();
    assert_eq!(gw.metric("miop_sessions"), Some(1.0));
}
