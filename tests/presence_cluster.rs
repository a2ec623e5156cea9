//! Presence against a local 3-master Redis Cluster: keys spread over the
//! masters' slots, cross-node kicks over sharded pub/sub, and convergence.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use miop::client::fleet::{bind_fleet, FleetSpec};

struct Cluster {
    nodes: Vec<(u16, Child)>,
    dir: std::path::PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port whose cluster-bus port (+10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start_cluster() -> Cluster {
    let dir = std::env::temp_dir().join(format!("miop-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let port = cluster_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        nodes.push((port, child));
    }
    let cluster = Cluster { nodes, dir };
    for (port, _) in &cluster.nodes {
        wait_until(Duration::from_secs(10), "cluster node up", || {
            cli(*port, &["PING"]).trim() == "PONG"
        });
    }
    let addrs: Vec<String> = cluster
        .nodes
        .iter()
        .map(|(p, _)| format!("127.0.0.1:{p}"))
        .collect();
    let out = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cluster create: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for (port, _) in &cluster.nodes {
        wait_until(Duration::from_secs(20), "cluster_state:ok", || {
            cli(*port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
        });
    }
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_works_on_a_three_master_cluster() {
    let cluster = start_cluster();
    let url = format!("redis-cluster://127.0.0.1:{}", cluster.nodes[0].0);
    let node = |id: &str| node_on(&url, id, &[]);
    let a = node("A");
    let b = node("B");
    let spec = FleetSpec {
        target: a.listen,
        sources: FleetSpec::loopback_sources(2),
        prefix: "cl".into(),
        first: 0,
        count: 600,
        app_key: KEY.into(),
        concurrency: 128,
    };
    let _clients = bind_fleet(&spec)
        .await
        .unwrap_or_else(|(d, e)| panic!("{d}: {e}"));
    wait_until(
        Duration::from_secs(60),
        "A consistent with the cluster",
        || consistent(&a, 600),
    );
    // Device entries are spread over every master's slots.
    let per_master: Vec<usize> = cluster
        .nodes
        .iter()
        .map(|(p, _)| {
            cli(*p, &["--scan", "--pattern", "miop:dev:*"])
                .lines()
                .filter(|l| !l.is_empty())
                .count()
        })
        .collect();
    assert_eq!(per_master.iter().sum::<usize>(), 600, "{per_master:?}");
    assert!(per_master.iter().all(|n| *n > 0), "{per_master:?}");
    let (status, body) = b.get("/v1/presence/cl-42");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"node\":\"A\""), "{body}");

    // A cross-node duplicate bind on the cluster kicks the session on A.
    let mut moved = b.bound("cl-42").await;
    wait_until(Duration::from_secs(30), "A kicked cl-42", || {
        a.get("/v1/sessions/cl-42").0 == 404
    });
    moved.ping().await.unwrap();
    wait_until(Duration::from_secs(60), "both nodes consistent", || {
        consistent(&a, 599) && consistent(&b, 1)
    });
    let (_, body) = a.get("/v1/presence/cl-42");
    assert!(body.contains("\"node\":\"B\""), "{body}");
}
