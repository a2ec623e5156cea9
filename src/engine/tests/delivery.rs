//! Pushes: fan-out, sharing, yielding, slow consumers, at-least-once, acks.

use super::*;
use crate::config::SlowConsumerPolicy;

#[test]
fn fan_out_reaches_devices_topics_and_everyone_bound() {
    let mut r = Rig::new(0);
    let a = r.connect();
    let a = r.bind_with(a, "a", &["news"]);
    let b = r.connect();
    let b = r.bind_with(b, "b", &["news", "sport"]);
    let c = r.device("c");
    let unbound = r.connect();
    assert_eq!(
        r.push(PushTargets::Topic("news".into()), 1, None),
        PushOutcome {
            delivered: 2,
            ..PushOutcome::default()
        }
    );
    assert_eq!(
        r.push(PushTargets::All, 2, None),
        PushOutcome {
            delivered: 3,
            ..PushOutcome::default()
        }
    );
    let stale = SessionRef {
        key: c.key,
        session_id: c.session_id + 99,
    };
    assert_eq!(
        r.push(PushTargets::Sessions(vec![c, stale]), 3, None),
        PushOutcome {
            delivered: 1,
            gone: 1,
            gone_sessions: vec![stale],
        }
    );
    assert_eq!(r.pushes(a.key), vec![1, 2]);
    assert_eq!(r.pushes(b.key), vec![1, 2]);
    assert_eq!(r.pushes(c.key), vec![2, 3]);
    assert!(r.pushes(unbound).is_empty(), "not bound: not a target");
    assert_eq!(r.engine.stats().deliveries, 6);
}

#[test]
fn one_copy_of_a_push_per_core_shared_by_its_recipients() {
    let mut r = Rig::new(0);
    let a = r.device("a");
    let b = r.device("b");
    let original = Frame {
        seq: 0,
        flags: 0,
        body: Body::Push(crate::protocol::Push {
            message_id: 1,
            payload: bytes::Bytes::from_static(b"x"),
        }),
    }
    .to_bytes()
    .unwrap();
    r.engine.push(
        r.now,
        PushJob {
            tag: 1,
            targets: PushTargets::All,
            frame: original.clone(),
            message_id: 1,
            ack: false,
            keep_until_ms: None,
        },
    );
    r.engine.work(r.now, 100);
    let mut chunks = HashMap::new();
    while let Some((k, batch)) = r.engine.poll_transmit() {
        chunks.insert(k, batch[0].clone());
    }
    assert_eq!(chunks[&a.key].as_ptr(), chunks[&b.key].as_ptr(), "shared");
    assert_ne!(
        chunks[&a.key].as_ptr(),
        original.as_ptr(),
        "a copy of this core's own, not the caller's"
    );
}

#[test]
fn a_broadcast_yields_and_pings_on_the_core_keep_flowing() {
    let mut r = Rig::new(0);
    let keys: Vec<ConnKey> = (0..5000).map(|i| r.device(&format!("d{i}")).key).collect();
    let pinger = keys[4999];
    r.clear_frames();
    r.engine.push(
        r.now,
        PushJob {
            tag: 9,
            targets: PushTargets::All,
            frame: Frame::ping(0).to_bytes().unwrap(),
            message_id: 9,
            ack: false,
            keep_until_ms: None,
        },
    );
    let mut turns = 0;
    let mut pong_at_turn = None;
    while r.engine.work(r.now, 1000) {
        turns += 1;
        // Between chunks the driver serves reads: a ping is answered before
        // the broadcast reaches the pinging session.
        if turns == 1 {
            r.engine.on_bytes(r.now, pinger, &ping_bytes(77));
            while let Some((k, batch)) = r.engine.poll_transmit() {
                if k == pinger {
                    pong_at_turn = Some(turns);
                    assert_eq!(batch.concat().len(), 16, "only the pong: no push yet");
                }
                r.engine.on_written(r.now, k, true);
            }
        }
    }
    assert_eq!(turns, 4, "5000 sessions, 1000 per turn");
    assert_eq!(pong_at_turn, Some(1));
    r.pump();
    let done = r.take_intents().into_iter().find_map(|i| match i {
        Intent::PushDone { tag: 9, outcome } => Some(outcome),
        _ => None,
    });
    assert_eq!(
        done,
        Some(PushOutcome {
            delivered: 5000,
            ..PushOutcome::default()
        })
    );
}

fn ping_bytes(seq: u32) -> Vec<u8> {
    let mut b = BytesMut::new();
    Frame::ping(seq).encode(&mut b).unwrap();
    b.to_vec()
}

#[test]
fn a_slow_consumer_is_closed_and_others_are_unaffected() {
    let mut r = Rig::new(0);
    let slow = r.device("slow");
    let fine = r.device("fine");
    r.stalled.push(slow.key);
    // 4096-byte limit; each push frame is 24 + 5 bytes.
    for id in 0..200 {
        r.push(PushTargets::All, id, None);
    }
    assert_eq!(
        r.close_reason(slow.key),
        None,
        "the Close cannot reach a non-reader"
    );
    assert_eq!(r.pushes(fine.key).len(), 200);
    assert!(r
        .take_intents()
        .iter()
        .any(|i| matches!(i, Intent::Notice(Notice::SlowConsumer { .. }))));
    assert_eq!(r.engine.sessions(), 1, "the slow one went offline");
    r.advance(Duration::from_secs(5));
    assert!(r.shut.contains(&slow.key), "shut down after the linger");
    assert_eq!(
        r.engine.stats().closed[CloseReason::SlowConsumer as usize],
        1
    );
}

#[test]
fn drop_oldest_keeps_a_slow_consumer_and_its_newest_pushes() {
    let mut cfg = config(0);
    cfg.slow_consumer = SlowConsumerPolicy::DropOldest;
    let mut r = Rig::with(cfg);
    let slow = r.device("slow");
    r.stalled.push(slow.key);
    r.push(PushTargets::All, 0, None); // goes out as the batch in flight
    for id in 1..=300 {
        r.push(PushTargets::All, id, None);
    }
    let dropped = r.engine.stats().outbound_dropped;
    assert!(dropped > 100, "{dropped}");
    assert_eq!(r.engine.sessions(), 1, "still online");
    r.unstall(slow.key);
    let got = r.pushes(slow.key);
    assert_eq!(got.first(), Some(&0));
    assert_eq!(got.last(), Some(&300), "the newest are kept");
    assert_eq!(got.len() as u64 + dropped, 301);
}

#[test]
fn unacked_pushes_are_handed_off_when_the_session_ends() {
    let mut r = Rig::new(0);
    let at = r.device("d");
    let keep = r.now.unix_ms + 60_000;
    r.push(PushTargets::Sessions(vec![at]), 1, Some(keep));
    r.push(PushTargets::Sessions(vec![at]), 2, Some(keep));
    r.push(
        PushTargets::Sessions(vec![at]),
        3,
        Some(r.now.unix_ms + 1_000),
    );
    r.send(at.key, Frame::push_ack(5, 1));
    r.advance(Duration::from_secs(2)); // message 3 expires
    r.take_intents();
    r.engine
        .on_transport_end(r.now, at.key, TransportEnd::PeerClosed);
    r.pump();
    let handed: Vec<u64> = r
        .take_intents()
        .into_iter()
        .filter_map(|i| match i {
            Intent::Unacked(h) => {
                assert_eq!(&*h.device_id, "d");
                Some(h.messages.into_iter().map(|u| u.message_id))
            }
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(handed, vec![2], "acked and expired ones are not kept");
    assert_eq!(r.engine.sessions_with_unacked(), 0);
}

#[test]
fn push_to_ack_latency_is_measured_on_the_virtual_clock() {
    let mut r = Rig::new(0);
    let at = r.device("d");
    r.push(PushTargets::Sessions(vec![at]), 42, None);
    r.advance(Duration::from_millis(1500));
    r.send(at.key, Frame::push_ack(1, 42));
    let s = r.engine.stats();
    assert_eq!(s.push_acks, 1);
    assert_eq!(s.push_ack_latency.count(), 1);
    assert!((s.push_ack_latency.sum() - 1.5).abs() < 1e-9);
}
