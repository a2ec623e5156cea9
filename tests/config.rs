//! Configuration sources (file, environment, command line) and log formats,
//! observed through a running miopd.

mod common;

use std::time::Duration;

use common::*;
use miop::protocol::{Credential, ErrorCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_sets_keys_and_heartbeat_and_cli_wins() {
    let dir = std::env::temp_dir().join(format!("miop-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("miopd.toml");
    std::fs::write(
        &file,
        "app_keys = [\"from-file\"]\nheartbeat = \"7s\"\nheartbeat_timeout = \"30s\"\nnode_id = \"file-node\"\n",
    )
    .unwrap();
    // --app-key pk from the harness overrides the file's keys; the heartbeat
    // and node id come from the file; --heartbeat-timeout on the CLI wins.
    let gw = Miopd::start(&[
        "--config",
        file.to_str().unwrap(),
        "--heartbeat-timeout",
        "21s",
    ]);
    let mut c = gw.client().await;
    let ack = c
        .bind("cfg-1", Credential::AppKey(KEY.into()), vec![])
        .await
        .unwrap();
    assert_eq!(ack.heartbeat_interval_ms, 7_000);
    assert_eq!(ack.heartbeat_timeout_ms, 21_000);
    let (_, health) = gw.get("/healthz");
    assert!(health.contains("\"node\":\"file-node\""), "{health}");
    let mut c2 = gw.client().await;
    let err = c2
        .bind("cfg-2", Credential::AppKey("from-file".into()), vec![])
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some(ErrorCode::AuthFailed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_sets_app_keys_and_json_logs() {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_miopd"));
    cmd.args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env("MIOP_APP_KEYS", "k1,k2")
        .env("MIOP_LOG_FORMAT", "json")
        .env("MIOP_BIND_TIMEOUT", "250ms")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let mut out = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let listen: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))
        .unwrap()
        .parse()
        .unwrap();
    for key in ["k1", "k2"] {
        let mut c = miop::client::Client::connect(listen).await.unwrap();
        c.bind(
            &format!("env-{key}"),
            Credential::AppKey(key.into()),
            vec![],
        )
        .await
        .unwrap();
    }
    // The env bind timeout applies: an idle connection is closed.
    let mut idle = miop::client::Client::connect(listen).await.unwrap();
    let frames = frames_until_eof(&mut idle, Duration::from_secs(10)).await;
    assert_eq!(frames.len(), 1);
    child.0.kill().unwrap();
    let output = child.take().wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr.lines().next().expect("a log line");
    let v: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("not JSON ({e}): {first}"));
    assert_eq!(v["fields"]["message"], "miopd started");
    assert_eq!(v["fields"]["app_keys"], 2);
}

#[test]
fn refuses_to_start_without_credentials_or_with_bad_values() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_miopd"))
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(args)
            .env_remove("MIOP_APP_KEYS")
            .env_remove("MIOP_TOKEN_SECRET")
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no credentials configured"));
    let out = run(&[
        "--app-key",
        "pk",
        "--heartbeat",
        "10s",
        "--heartbeat-timeout",
        "5s",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--heartbeat-timeout must be longer"));
    let out = run(&["--app-key", "pk", "--heartbeat", "soon"]);
    assert!(!out.status.success());
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_miopd"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for opt in [
        "--listen",
        "--admin",
        "--cores",
        "--heartbeat",
        "--redis",
        "MIOP_LISTEN",
        "MIOP_APP_KEYS",
    ] {
        assert!(help.contains(opt), "--help lacks {opt}");
    }
}

#[test]
fn token_subcommand_mints_a_token_the_gateway_accepts() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_miopd"))
        .args(["token", "--device", "dev-1", "--ttl", "1h", "--secret", "s"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let auth = miop::auth::Authenticator::new([], Some("s".into()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        auth.check("dev-1", &Credential::Token(token.trim().into()), now),
        Ok(())
    );
}

/// Kills a spawned gateway if the test fails before it does.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    fn take(mut self) -> std::process::Child {
        // Swap in an already finished child so Drop has nothing to kill.
        let done = std::process::Command::new("true").spawn().unwrap();
        std::mem::replace(&mut self.0, done)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
