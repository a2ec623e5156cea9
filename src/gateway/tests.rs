//! Two engines and the node's device index in one test, on a virtual clock:
//! duplicate binds across cores, and the drain.

use super::index::{DeviceIndex, Kick};
use crate::engine::testing::Rig;
use crate::engine::{Intent, PresenceEvent, SessionRef};
use crate::protocol::CloseReason;

/// Feeds a rig's presence intents to the index; returns the kicks.
fn sync(index: &mut DeviceIndex, r: &mut Rig, core: u16) -> Vec<Kick> {
    r.take_intents()
        .into_iter()
        .filter_map(|i| match i {
            Intent::Presence(p) => index.apply(core, p),
            _ => None,
        })
        .collect()
}

#[test]
fn a_duplicate_bind_on_another_core_kicks_the_older_session() {
    let mut index = DeviceIndex::default();
    let mut core0 = Rig::new(0);
    let mut core1 = Rig::new(1);
    let old = core0.device("phone");
    assert!(sync(&mut index, &mut core0, 0).is_empty());
    let new = core1.device("phone");
    let kicks = sync(&mut index, &mut core1, 1);
    assert_eq!(kicks, vec![Kick { core: 0, at: old }]);
    assert_ne!(
        old.session_id, new.session_id,
        "session ids are unique per node"
    );
    // The control plane sends the kick to core 0.
    assert!(core0.engine.kick(core0.now, old, CloseReason::Replaced));
    core0.pump();
    assert_eq!(core0.close_reason(old.key), Some(CloseReason::Replaced));
    // Core 0's late "offline" must not remove the newer session.
    assert!(sync(&mut index, &mut core0, 0).is_empty());
    let loc = index.get("phone").unwrap();
    assert_eq!((loc.core, loc.at()), (1, new));
    assert_eq!(core1.close_reason(new.key), None);
}

#[test]
fn a_duplicate_bind_on_the_same_core_kicks_the_older_session() {
    let mut index = DeviceIndex::default();
    let mut r = Rig::new(0);
    let old = r.device("phone");
    let new = r.device("phone");
    let kicks = sync(&mut index, &mut r, 0);
    assert_eq!(kicks, vec![Kick { core: 0, at: old }]);
    r.engine.kick(r.now, old, CloseReason::Replaced);
    r.pump();
    sync(&mut index, &mut r, 0);
    assert_eq!(index.get("phone").map(|l| l.at()), Some(new));
    assert_eq!(r.engine.sessions(), 1);
}

#[test]
fn drain_closes_everyone_with_server_shutdown_and_refuses_newcomers() {
    let mut r = Rig::new(0);
    let sessions: Vec<SessionRef> = (0..3).map(|i| r.device(&format!("d{i}"))).collect();
    let unbound = r.connect();
    r.engine.begin_drain();
    r.pump();
    for s in &sessions {
        assert_eq!(r.close_reason(s.key), Some(CloseReason::ServerShutdown));
    }
    assert_eq!(r.close_reason(unbound), Some(CloseReason::ServerShutdown));
    assert!(
        r.engine.is_empty(),
        "everyone flushed, shut down and released"
    );
    let late = r.connect();
    assert_eq!(r.close_reason(late), Some(CloseReason::ServerShutdown));
    let offline = r
        .take_intents()
        .iter()
        .filter(|i| matches!(i, Intent::Presence(PresenceEvent::Offline { .. })))
        .count();
    assert_eq!(offline, 3);
}

#[test]
fn a_drain_that_runs_out_of_time_forces_the_rest() {
    let mut r = Rig::new(0);
    let stuck = r.device("stuck");
    r.stalled.push(stuck.key);
    r.device("fine");
    r.engine.begin_drain();
    r.pump();
    assert_eq!(
        r.engine.connections(),
        1,
        "the non-reader is still flushing"
    );
    assert_eq!(r.engine.force_close_all(r.now), 1);
    r.pump();
    assert!(r.engine.is_empty());
}
