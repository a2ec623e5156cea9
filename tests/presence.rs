//! Presence in Redis: outages (kill, SIGSTOP, absent at start), dead nodes,
//! cross-node duplicate binds, and churn, against real redis-server processes
//! that each test starts on its own port.

mod common;

use std::time::Duration;

use common::redis::Redis;
use common::*;
use miop::client::fleet::{bind_fleet, FleetSpec};
use miop::client::Client;
use miop::protocol::{CloseReason, Credential};
use nix::sys::signal::Signal;
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(60);

fn node(redis: &Redis, id: &str, extra: &[&str]) -> Miopd {
    node_on(&redis.url(), id, extra)
}

/// Waits until this node's memory and Redis agree exactly and nothing is queued.
fn converged(gw: &Miopd, sessions: u64) {
    wait_until(
        CONVERGE,
        &format!("Redis equal to memory with {sessions} sessions"),
        || consistent(gw, sessions),
    );
}

async fn fleet(gw: &Miopd, prefix: &str, first: u64, count: usize) -> Vec<Client> {
    let spec = FleetSpec {
        target: gw.listen,
        sources: FleetSpec::loopback_sources(2),
        prefix: prefix.into(),
        first,
        count,
        app_key: KEY.into(),
        concurrency: 256,
    };
    bind_fleet(&spec)
        .await
        .unwrap_or_else(|(d, e)| panic!("{d}: {e}"))
}

/// Every client is still bound: no Close, and a ping is answered.
async fn all_alive(clients: &mut [Client]) {
    for c in clients.iter_mut() {
        tokio::time::timeout(Duration::from_secs(10), c.ping())
            .await
            .expect("ping timed out")
            .expect("session was dropped during the outage");
    }
}

async fn outage_keeps_sessions_and_converges(pause: bool) {
    let mut redis = Redis::start();
    let gw = node(&redis, "A", &[]);
    let mut clients = fleet(&gw, "out", 0, 2000).await;
    converged(&gw, 2000);
    assert_eq!(redis.device_entries(), 2000);

    if pause {
        redis.signal(Signal::SIGSTOP);
    } else {
        redis.kill();
    }
    // During the outage: 500 more devices bind, 100 leave, all others stay.
    clients.extend(fleet(&gw, "out", 2000, 500).await);
    let leaving: Vec<Client> = clients.drain(..100).collect();
    drop(leaving);
    // The node notices: a killed Redis closes the connection; a paused one
    // stops answering (detected after two failed commands, > 2 timeouts).
    wait_until(CONVERGE, "Redis seen as down", || {
        gw.metric("miop_redis_up") == Some(0.0)
    });
    let (_, health) = gw.get("/healthz");
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    all_alive(&mut clients).await;

    if pause {
        redis.signal(Signal::SIGCONT);
    } else {
        redis.restart();
    }
    converged(&gw, 2400);
    assert_eq!(redis.device_entries(), 2400);
    assert_eq!(gw.metric("miop_redis_up"), Some(1.0));
    assert!(
        gw.metric("miop_presence_reconciliations_total").unwrap() >= 2.0,
        "reconciled after the outage"
    );
    all_alive(&mut clients).await;
    assert_eq!(gw.metric("miop_sessions"), Some(2400.0));
    assert_eq!(
        gw.metric("miop_connections_closed_total{reason=\"server_shutdown\"}"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_loses_no_session_and_converges() {
    outage_keeps_sessions_and_converges(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_with_sigstop_loses_no_session_and_converges() {
    outage_keeps_sessions_and_converges(true).await;
}

/// The largest `unread=` of the "presence reconciled" lines in `log`
/// (colours or not).
fn most_reconciled_unread(log: &str) -> Option<u64> {
    let mut plain = String::with_capacity(log.len());
    let mut in_escape = false;
    for c in log.chars() {
        match c {
            '\u{1b}' => in_escape = true,
            'm' if in_escape => in_escape = false,
            _ if in_escape => {}
            _ => plain.push(c),
        }
    }
    plain
        .lines()
        .filter(|l| l.contains("presence reconciled with Redis"))
        .filter_map(|l| {
            let v = l.split("unread=").nth(1)?;
            v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .max()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_gets_every_entry_back_without_a_read_per_session() {
    let mut redis = Redis::start();
    let gw = node(&redis, "A", &[]);
    let _clients = fleet(&gw, "empty", 0, 2000).await;
    converged(&gw, 2000);
    let log_before = gw.log_text().len();

    redis.kill();
    wait_until(CONVERGE, "Redis seen as down", || {
        gw.metric("miop_redis_up") == Some(0.0)
    });
    redis.restart();
    converged(&gw, 2000);
    assert_eq!(redis.device_entries(), 2000);

    // The first round of the reconciliation after the restart found no
    // entry at all, so the rest were written without being read first.
    let log = gw.log_text()[log_before..].to_string();
    wait_until(CONVERGE, "a reconciliation after the restart ended", || {
        most_reconciled_unread(&gw.log_text()[log_before..]).is_some()
    });
    let unread = most_reconciled_unread(&gw.log_text()[log_before..]).unwrap();
    assert!(
        (1000..2000).contains(&unread),
        "{unread} of 2000 sessions restored without a read (a first round reads some):\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_absent_at_start_is_not_fatal() {
    let mut redis = Redis::absent();
    let gw = node(&redis, "A", &[]);
    let mut clients = fleet(&gw, "early", 0, 50).await;
    let (status, health) = gw.get("/healthz");
    assert_eq!(status, 200);
    let h: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(h["presence"]["mode"], "redis");
    assert_eq!(h["presence"]["redis"], "down");
    assert_eq!(gw.metric("miop_redis_up"), Some(0.0));
    assert_eq!(gw.get("/v1/consistency").0, 503);
    wait_until(
        Duration::from_secs(10),
        "the log says Redis is unreachable",
        || gw.log_text().contains("Redis is unreachable at start-up"),
    );
    redis.restart();
    converged(&gw, 50);
    assert_eq!(gw.metric("miop_redis_up"), Some(1.0));
    all_alive(&mut clients).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_entries_are_cleaned_when_its_lease_lapses() {
    let redis = Redis::start();
    let a = node(&redis, "A", &[]);
    let b = node(&redis, "B", &[]);
    let _on_a = fleet(&a, "dead", 0, 300).await;
    converged(&a, 300);
    let (status, body) = b.get("/v1/presence/dead-7");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["node"].as_str(), v["node_alive"].as_bool()),
        (Some("A"), Some(true))
    );

    a.signal(Signal::SIGKILL);
    wait_until(
        CONVERGE,
        "node A's entries removed after its lease lapsed",
        || redis.device_entries() == 0,
    );
    assert_eq!(b.get("/v1/presence/dead-7").0, 404);
    // The cleanup is counted once it has also removed A from the node set,
    // just after the last entry went.
    wait_until(CONVERGE, "B's cleanup of A counted", || {
        b.metric("miop_presence_dead_node_cleanups_total") == Some(1.0)
    });
    assert_eq!(b.metric("miop_presence_cleaned_entries_total"), Some(300.0));
    assert!(!redis.cli(&["SMEMBERS", "miop:nodes"]).contains('A'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_on_another_node_kicks_the_old_session() {
    let redis = Redis::start();
    let a = node(&redis, "A", &[]);
    let b = node(&redis, "B", &[]);
    let mut on_a = a.bound("roamer").await;
    converged(&a, 1);
    let mut on_b = b.bound("roamer").await;
    let frames = frames_until_eof(&mut on_a, Duration::from_secs(10)).await;
    let reasons: Vec<_> = frames
        .iter()
        .filter_map(|f| match f {
            miop::protocol::Body::Close(c) => c.reason(),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, vec![CloseReason::Replaced]);
    on_b.ping().await.unwrap();
    wait_until(CONVERGE, "A forgot the session", || {
        a.get("/v1/sessions/roamer").0 == 404
    });
    for gw in [&a, &b] {
        let (_, body) = gw.get("/v1/presence/roamer");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["node"], "B", "{body}");
    }
    converged(&a, 0);
    converged(&b, 1);
    assert_eq!(
        b.metric("miop_presence_remote_kicks_total{direction=\"sent\"}"),
        Some(1.0)
    );
    assert_eq!(
        a.metric("miop_presence_remote_kicks_total{direction=\"received\"}"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_binds_on_two_nodes_leave_one_holder_everywhere() {
    let redis = Redis::start();
    let a = node(&redis, "A", &[]);
    let b = node(&redis, "B", &[]);
    let mut keep = Vec::new();
    for round in 0..10 {
        let device = format!("race-{round}");
        let (mut ca, mut cb) = (a.client().await, b.client().await);
        let (ra, rb) = tokio::join!(
            ca.bind(&device, Credential::AppKey(KEY.into()), vec![]),
            cb.bind(&device, Credential::AppKey(KEY.into()), vec![])
        );
        ra.unwrap();
        rb.unwrap();
        // Exactly one of the two survives, and Redis names its node.
        wait_until(CONVERGE, "one holder", || {
            let on_a = a.get(&format!("/v1/sessions/{device}")).0 == 200;
            let on_b = b.get(&format!("/v1/sessions/{device}")).0 == 200;
            on_a != on_b
        });
        let holder = if a.get(&format!("/v1/sessions/{device}")).0 == 200 {
            "A"
        } else {
            "B"
        };
        let (_, body) = a.get(&format!("/v1/presence/{device}"));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["node"], holder, "round {round}: {body}");
        keep.push((ca, cb));
    }
    let on_a = a.metric("miop_sessions").unwrap() as u64;
    let on_b = b.metric("miop_sessions").unwrap() as u64;
    assert_eq!(on_a + on_b, 10);
    converged(&a, on_a);
    converged(&b, on_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_of_thousands_of_sessions_ends_with_redis_equal_to_memory() {
    let redis = Redis::start();
    let gw = node(&redis, "A", &[]);
    let mut clients = fleet(&gw, "churn", 0, 3000).await;
    for round in 0..5u64 {
        // A third go offline, and as many come (back) online, some of them
        // devices that were bound a moment ago.
        let leaving: Vec<Client> = clients.drain(..1000).collect();
        drop(leaving);
        clients.extend(fleet(&gw, "churn", round * 1000, 1000).await);
    }
    let n = gw.metric("miop_sessions").unwrap() as u64;
    converged(&gw, n);
    assert_eq!(redis.device_entries() as u64, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_kicks_still_work_after_a_redis_restart() {
    let mut redis = Redis::start();
    let a = node(&redis, "A", &[]);
    let b = node(&redis, "B", &[]);
    let mut on_a = a.bound("phoenix").await;
    converged(&a, 1);
    let before = a
        .metric("miop_presence_reconciliations_total")
        .unwrap_or(0.0);
    redis.restart();
    converged(&a, 1);
    // Let A's post-restart reconciliations (reconnect, lapsed lease) finish,
    // so that only a pub/sub kick can tell A in time; the periodic
    // reconciliation is minutes away.
    wait_until(CONVERGE, "A reconciled after the restart", || {
        a.metric("miop_presence_reconciliations_total")
            .unwrap_or(0.0)
            >= before + 2.0
    });
    wait_until(CONVERGE, "lease back", || {
        redis.cli(&["EXISTS", "miop:node:{A}:lease"]).trim() == "1"
    });
    // A's kick subscription must be back: a bind on B kicks A's session
    // promptly, not only at the next periodic reconciliation.
    let mut on_b = b.bound("phoenix").await;
    let frames = frames_until_eof(&mut on_a, Duration::from_secs(20)).await;
    assert!(
        frames.iter().any(|f| matches!(f, miop::protocol::Body::Close(c) if c.reason() == Some(CloseReason::Replaced))),
        "{frames:?}"
    );
    on_b.ping().await.unwrap();
    converged(&b, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_with_sigterm_withdraws_its_presence_at_once() {
    let redis = Redis::start();
    let mut a = node(&redis, "A", &[]);
    let _clients = fleet(&a, "bye", 0, 200).await;
    converged(&a, 200);
    assert_eq!(redis.cli(&["EXISTS", "miop:node:{A}:lease"]).trim(), "1");
    a.signal(Signal::SIGTERM);
    assert!(a
        .wait_exit(Duration::from_secs(20))
        .expect("exited")
        .success());
    // Gone right away, not after the lease (3 s) lapses and another node cleans up.
    assert_eq!(redis.device_entries(), 0);
    assert_eq!(redis.cli(&["EXISTS", "miop:node:{A}:lease"]).trim(), "0");
    assert!(!redis.cli(&["SMEMBERS", "miop:nodes"]).contains('A'));
}

/// After an outage every node sharing a Redis reconciles at once, and a
/// loaded Redis answers commands later than the command timeout while it
/// answers all along (issue 11: at 1M sessions the nodes took that for a
/// hung Redis, reconnected, threw their queued work away and started over,
/// for ever). Here one node re-writes its presence into a Redis restarted
/// empty while the server is blocked a little longer than the command
/// timeout (2 s), again and again: commands in flight when a block starts
/// time out, PINGs are answered when it ends. The node must keep its
/// connection (no reconnection, no "does not answer" verdict), resume its
/// reconciliation after each failed round, and converge while Redis is
/// still slow; sessions are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_during_reconciliation_is_not_taken_for_a_hung_one_and_converges() {
    let mut redis = Redis::start();
    // A lease longer than a block, so that it never lapses here.
    let gw = Miopd::start(&[
        "--cores",
        "2",
        "--redis",
        &redis.url(),
        "--node-id",
        "A",
        "--presence-lease",
        "15s",
    ]);
    let mut clients = fleet(&gw, "slow", 0, 2000).await;
    converged(&gw, 2000);

    // Redis restarted empty, then slowed: the node's reconciliation rewrites
    // the 2,000 entries through the blocks. A pass of a few rounds can fall
    // entirely into the gaps between blocks (no command fails, nothing is
    // exercised); then Redis is emptied again and the pass repeated, at most
    // five times. The PING probe only runs after a failed command.
    let mut reconnects = gw.metric("miop_redis_reconnects_total").unwrap();
    let log_before = gw.log_text().len();
    let mut slow = None;
    for attempt in 1..=5 {
        drop(slow.take());
        redis.restart();
        wait_until(CONVERGE, "the node reconnected to the new Redis", || {
            gw.metric("miop_redis_reconnects_total") == Some(reconnects + 1.0)
        });
        reconnects += 1.0;
        slow = Some(redis.slow_down(Duration::from_millis(2300), Duration::from_millis(400)));
        let probed = || {
            gw.metric("miop_redis_probes_total{result=\"answered\"}")
                .unwrap_or(0.0)
                >= 1.0
        };
        let end = std::time::Instant::now() + CONVERGE;
        while !probed() && std::time::Instant::now() < end {
            if gw.metric("miop_presence_queue_depth") == Some(0.0)
                && gw.metric("miop_presence_reconcile_remaining") == Some(0.0)
                && redis.device_entries() == 2000
            {
                break; // converged without a failed command: again
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if probed() {
            break;
        }
        assert!(
            attempt < 5,
            "no command failed in five slowed reconciliations"
        );
    }
    let slow = slow.unwrap();
    converged(&gw, 2000);
    assert_eq!(redis.device_entries(), 2000);
    let blocks = slow.blocks.load(std::sync::atomic::Ordering::Relaxed);
    drop(slow);

    let log = gw.log_text()[log_before..].to_string();
    assert!(
        !log.contains("does not answer") && !log.contains("had no reply"),
        "Redis was taken for hung:\n{log}"
    );
    assert_eq!(
        gw.metric("miop_redis_reconnects_total"),
        Some(reconnects),
        "reconnected while Redis was slow"
    );
    assert_eq!(gw.metric("miop_redis_up"), Some(1.0));
    assert_eq!(
        gw.metric("miop_presence_reconciliations_aborted_total")
            .unwrap_or(0.0),
        0.0
    );
    println!(
        "slow Redis: converged over {blocks} blocks; {} failed reconciliation rounds, {} failed writes",
        gw.metric("miop_presence_reconcile_interruptions_total")
            .unwrap_or(0.0),
        gw.metric("miop_presence_writes_total{result=\"error\"}")
            .unwrap_or(0.0)
    );
    all_alive(&mut clients).await;
    assert_eq!(gw.metric("miop_sessions"), Some(2000.0));
}

/// The node's set must hold a device before its entry exists (cleanup
/// after a dead node finds entries through it). When the set update fails
/// (an ACL takes SADD away from all keys but the node list) no entry is
/// written, the batch is retried, and once SADD works again set and
/// entries hold every device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_entry_is_written_before_its_set_member_and_a_failed_set_update_is_retried() {
    let redis = Redis::start();
    let a = node(&redis, "A", &[]);
    converged(&a, 0);
    assert_eq!(
        redis
            .cli(&["ACL", "SETUSER", "default", "-sadd", "(+sadd ~miop:nodes)"])
            .trim(),
        "OK",
        "SADD left only for the node list (the lease refresh needs it)"
    );
    let _clients = fleet(&a, "set", 0, 3).await;
    wait_until(CONVERGE, "a failed set update logged", || {
        a.log_text()
            .contains("presence write failed; changes requeued")
    });
    for i in 0..3 {
        assert_eq!(
            redis.cli(&["EXISTS", &format!("miop:dev:set-{i}")]).trim(),
            "0",
            "an entry written without its set member"
        );
    }
    assert_eq!(
        redis
            .cli(&["ACL", "SETUSER", "default", "+sadd", "clearselectors"])
            .trim(),
        "OK"
    );
    converged(&a, 3);
    assert_eq!(redis.cli(&["SCARD", "miop:node:{A}:devices"]).trim(), "3");
}

/// Waits until the nodes on `redis` have run two cleanup rounds that began
/// after `after`: each round removes a dead node planted after it (a member
/// of `miop:nodes` without a lease), one fresh name a round.
fn cleanup_rounds_ran_past(redis: &Redis, after: std::time::Instant) {
    let mut past = 0;
    for round in 0.. {
        let planted_at = std::time::Instant::now();
        let ghost = format!("ghost-{round}");
        redis.cli(&["SADD", "miop:nodes", &ghost]);
        wait_until(CONVERGE, "a planted dead node cleaned up", || {
            redis.cli(&["SISMEMBER", "miop:nodes", &ghost]).trim() == "0"
        });
        if planted_at >= after {
            past += 1;
            if past == 2 {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_reconciles_once_and_one_restarted_under_a_dead_ones_id_twice() {
    let redis = Redis::start();
    // A second pass would start 2 leases after the first, at the first
    // cleanup round (every half lease) past that instant. 6 s leases, not
    // the usual 3 s: a lease lapsed under a loaded CI machine would be a
    // reason for a second pass of its own.
    let lease = Duration::from_secs(6);
    let six_s = ["--presence-lease", "6s"];
    let started = std::time::Instant::now();
    let a = node(&redis, "A", &six_s);
    let _on_a = fleet(&a, "once", 0, 50).await;
    converged(&a, 50);
    cleanup_rounds_ran_past(&redis, started + lease * 2);
    converged(&a, 50);
    assert_eq!(
        a.metric("miop_presence_reconciliations_total"),
        Some(1.0),
        "a node id Redis had not seen needs no second pass"
    );

    // Killed: its entries, its set and its place in miop:nodes stay until
    // a cleanup (there is no other node here to do one). A new process
    // under the same id, once the old lease lapsed, must reconcile again
    // two leases later, since a cleanup could be purging what it writes.
    a.signal(Signal::SIGKILL);
    wait_until(CONVERGE, "the killed node's lease lapsed", || {
        redis.cli(&["EXISTS", "miop:node:{A}:lease"]).trim() == "0"
    });
    let a2 = node(&redis, "A", &six_s);
    wait_until(CONVERGE, "the restarted node reconciled twice", || {
        a2.metric("miop_presence_reconciliations_total") == Some(2.0)
    });
    converged(&a2, 0);
    assert_eq!(redis.device_entries(), 0);
}
