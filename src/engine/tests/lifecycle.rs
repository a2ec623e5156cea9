//! A connection's life: bind, heartbeats, refusals, closes, buffers.

use super::*;
use crate::protocol::ErrorCode;

#[test]
fn bind_acks_goes_online_and_pings_are_answered() {
    let mut r = Rig::new(0);
    let key = r.connect();
    let at = r.bind_with(key, "phone-1", &["news"]);
    let online: Vec<_> = r
        .take_intents()
        .into_iter()
        .filter_map(|i| match i {
            Intent::Presence(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(
        online,
        vec![PresenceEvent::Online {
            device: "phone-1".into(),
            at,
            since_ms: r.now.unix_ms,
        }]
    );
    r.send(key, Frame::ping(7));
    assert_eq!(r.last(key), Some(Body::Pong));
    assert_eq!(r.written[&key].last().unwrap().seq, 7);
    let s = r.engine.stats();
    assert_eq!((s.sessions, s.connections, s.binds[0]), (1, 1, 1));
    assert_eq!(r.engine.topics(), 1);
}

#[test]
fn replies_to_one_read_go_out_in_one_gathered_write() {
    let mut r = Rig::new(0);
    let key = r.connect();
    r.bind(key, "d");
    let mut burst = BytesMut::new();
    for seq in 10..13 {
        Frame::ping(seq).encode(&mut burst).unwrap();
    }
    r.engine.on_bytes(r.now, key, &burst);
    let (k, batch) = r.engine.poll_transmit().expect("a write");
    assert_eq!(k, key);
    assert_eq!(batch.len(), 1, "three pongs coalesced into one chunk");
    assert_eq!(batch[0].len(), 48);
    assert!(
        r.engine.poll_transmit().is_none(),
        "one write in flight per connection"
    );
    r.send(key, Frame::ping(13));
    assert!(r.engine.poll_transmit().is_none(), "still in flight");
    r.engine.on_written(r.now, key, true);
    let (_, batch) = r.engine.poll_transmit().expect("the next write");
    assert_eq!(batch.iter().map(|b| b.len()).sum::<usize>(), 16);
}

#[test]
fn frames_split_across_reads_are_reassembled() {
    let mut r = Rig::new(0);
    let key = r.connect();
    r.bind(key, "d");
    let mut bytes = BytesMut::new();
    Frame::ping(1).encode(&mut bytes).unwrap();
    Frame::ping(2).encode(&mut bytes).unwrap();
    r.send_bytes(key, &bytes[..5]);
    assert_eq!(
        r.engine.buffered_connections(),
        1,
        "the partial frame is held"
    );
    r.send_bytes(key, &bytes[5..20]);
    r.send_bytes(key, &bytes[20..]);
    let pongs: Vec<u32> = r.written[&key]
        .iter()
        .filter(|f| f.body == Body::Pong)
        .map(|f| f.seq)
        .collect();
    assert_eq!(pongs, vec![1, 2]);
    assert_eq!(r.engine.buffered_connections(), 0, "idle again: no buffers");
}

#[test]
fn wrong_key_is_refused_flushed_then_shut_down_and_released() {
    let mut r = Rig::new(0);
    let key = r.connect();
    let f = Frame::new(
        3,
        Body::Bind(Bind {
            device_id: "d".into(),
            credential: Credential::AppKey("nope".into()),
            topics: vec![],
        }),
    );
    r.send(key, f);
    match &r.frames(key)[..] {
        [Body::Error(e), Body::Close(c)] => {
            assert_eq!(e.code(), Some(ErrorCode::AuthFailed));
            assert_eq!(c.reason(), Some(CloseReason::AuthFailed));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.shut, vec![key], "shut down once the Close is written");
    assert!(r.engine.is_empty(), "released");
    let intents = r.take_intents();
    assert!(!intents.iter().any(|i| matches!(i, Intent::Presence(_))));
    assert!(intents.iter().any(|i| matches!(
        i,
        Intent::Notice(Notice::BindRefused {
            code: ErrorCode::AuthFailed,
            ..
        })
    )));
    let s = r.engine.stats();
    assert_eq!(s.binds[ErrorCode::AuthFailed as usize], 1);
    assert_eq!(s.closed[CloseReason::AuthFailed as usize], 1);
}

#[test]
fn garbage_gets_an_error_and_a_close_and_a_notice() {
    let mut r = Rig::new(0);
    let key = r.connect();
    r.bind(key, "d");
    r.send_bytes(key, &[0u8; 16]);
    assert!(matches!(r.frames(key)[1], Body::Error(_)));
    assert_eq!(r.close_reason(key), Some(CloseReason::ProtocolError));
    assert!(r
        .take_intents()
        .iter()
        .any(|i| matches!(i, Intent::Notice(Notice::ProtocolError { .. }))));
    assert!(r.engine.is_empty());
}

#[test]
fn peer_eof_goes_offline_and_shuts_down_at_once() {
    let mut r = Rig::new(0);
    let at = r.device("d");
    r.take_intents();
    r.engine
        .on_transport_end(r.now, at.key, TransportEnd::PeerClosed);
    r.pump();
    match &r.take_intents()[..] {
        [Intent::Presence(p)] => assert_eq!(
            p,
            &PresenceEvent::Offline {
                device: "d".into(),
                at
            }
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.shut, vec![at.key]);
    let s = r.engine.stats();
    assert_eq!((s.sessions, s.connections), (0, 0));
    assert_eq!(s.closed[super::super::stats::CLOSE_PEER], 1);
}

#[test]
fn a_key_is_not_reused_until_released_and_old_references_are_fenced() {
    let mut r = Rig::new(0);
    let old = r.device("a");
    // The driver has not released the connection yet: its key stays taken.
    r.engine
        .on_transport_end(r.now, old.key, TransportEnd::IoError);
    assert!(matches!(r.engine.poll_intent(), Some(Intent::Presence(_))));
    assert!(matches!(r.engine.poll_intent(), Some(Intent::Shutdown(k)) if k == old.key));
    let other = r.connect();
    assert_ne!(other, old.key);
    r.engine.released(old.key);
    let reused = r.connect();
    assert_eq!(reused, old.key, "the slot is reused once released");
    let new = r.bind(reused, "b");
    assert!(
        !r.engine.kick(r.now, old, CloseReason::AdminKick),
        "a kick for the old session does nothing"
    );
    assert_eq!(r.engine.session_of(reused), Some(new));
}

#[test]
fn idle_bound_sessions_hold_no_buffers() {
    let mut r = Rig::new(0);
    for i in 0..100 {
        let at = r.device(&format!("d{i}"));
        r.send(at.key, Frame::ping(1));
    }
    assert_eq!(r.engine.sessions(), 100);
    assert_eq!(r.engine.buffered_connections(), 0);
}
