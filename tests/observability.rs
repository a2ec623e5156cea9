//! Observability against real parts: a real Prometheus (Debian's package)
//! scrapes a live gateway under a little load; every expression of the bundled
//! dashboard and alert rules goes through Prometheus's HTTP API.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use miop::protocol::Credential;
use serde_json::Value;

const TOKEN: &str = "obs-token";

struct Prometheus {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_prometheus(target: std::net::SocketAddr) -> Prometheus {
    let dir = std::env::temp_dir().join(format!(
        "miop-prom-{}-{}",
        std::process::id(),
        target.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let alerts = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {alerts}\n\
             scrape_configs:\n  - job_name: miop\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus must be installed (apt-get install prometheus)");
    Prometheus { child, port, dir }
}

/// GET on Prometheus's HTTP API; the JSON answer.
fn api(port: u16, path_and_query: &str) -> Option<Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path_and_query} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    serde_json::from_str(resp.split_once("\r\n\r\n")?.1).ok()
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every PromQL expression of the bundled dashboard, Grafana variables filled in.
fn dashboard_exprs() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/grafana/dashboards/miop-gateway.json"
    );
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&dash["panels"], &mut out);
    out.into_iter()
        .map(|e| {
            e.replace("$__rate_interval", "1m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h")
                .replace("$instance", ".*")
        })
        .collect()
}

/// Every alert expression of deploy/prometheus/alerts.yml (simple YAML scan).
fn alert_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/alerts.yml"
    ))
    .unwrap();
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        let t = l.trim_start();
        if let Some(rest) = t.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest == "|" || rest == ">" || rest == "|-" || rest == ">-" {
                let indent = lines.peek().map_or(0, |n| n.len() - n.trim_start().len());
                let mut e = String::new();
                while let Some(n) = lines.peek() {
                    if n.trim().is_empty() || n.len() - n.trim_start().len() < indent {
                        break;
                    }
                    e.push_str(n.trim());
                    e.push(' ');
                    lines.next();
                }
                out.push(e);
            } else {
                out.push(rest.trim_matches('\'').trim_matches('"').to_owned());
            }
        }
    }
    out
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let starts = (expr[i..].starts_with("miop_") || expr[i..].starts_with("process_"))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'));
        if starts {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(b.len(), |n| i + n);
            names.push(expr[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

fn base_name(n: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| n.strip_suffix(s))
        .unwrap_or(n)
}

#[test]
fn every_metric_a_dashboard_or_alert_uses_is_exported() {
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics/mod.rs"))
            .unwrap();
    let exprs: Vec<String> = dashboard_exprs().into_iter().chain(alert_exprs()).collect();
    assert!(exprs.len() > 40, "found only {} expressions", exprs.len());
    for e in &exprs {
        for n in metric_names(e) {
            let n = base_name(&n);
            let known = source.contains(&format!("\"{n}\"")) || n.starts_with("process_");
            assert!(known, "{n} (in {e}) is not exported by src/metrics/mod.rs");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_runs_every_dashboard_and_alert_expression() {
    // With Redis, so that the presence panels have data too.
    let redis = common::redis::Redis::start();
    let url = redis.url();
    let gw = Miopd::start(&[
        "--cores",
        "2",
        "--push-token",
        TOKEN,
        "--redis",
        &url,
        "--node-id",
        "obs",
    ]);
    // A little load: binds (one refused), a duplicate bind (kick), pushes and acks.
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(gw.bound(&format!("obs-{i}")).await);
    }
    let mut bad = gw.client().await;
    let _ = bad
        .bind("obs-bad", Credential::AppKey("wrong".into()), vec![])
        .await;
    let _again = gw.bound("obs-0").await;
    let (status, _) = gw.post(
        "/v1/push",
        r#"{"to": "all", "payload": "hello"}"#,
        Some(TOKEN),
    );
    assert_eq!(status, 200);
    for c in clients.iter_mut().skip(1) {
        if let Ok(Some(p)) = tokio::time::timeout(Duration::from_secs(10), c.next_push())
            .await
            .unwrap()
        {
            let _ = p;
        }
    }
    let prom = start_prometheus(gw.admin);
    wait_until(
        Duration::from_secs(60),
        "Prometheus has scraped the gateway several times",
        || {
            api(
                prom.port,
                &format!(
                    "/api/v1/query?query={}",
                    encode("count_over_time(miop_sessions[1m])")
                ),
            )
            .and_then(|v| {
                v["data"]["result"][0]["value"][1]
                    .as_str()
                    .map(|s| s.parse::<f64>().unwrap_or(0.0))
            })
            .is_some_and(|n| n >= 5.0)
        },
    );
    let exposition = gw.get("/metrics").1;
    let mut checked = 0;
    let alerts = alert_exprs();
    for expr in dashboard_exprs().into_iter().chain(alerts.iter().cloned()) {
        let v = api(prom.port, &format!("/api/v1/query?query={}", encode(&expr)))
            .unwrap_or_else(|| panic!("no answer for {expr}"));
        assert_eq!(v["status"], "success", "{expr}: {v}");
        // Whenever every metric it uses has been exported, it returns data.
        // Alert expressions are conditions: empty means "not firing". Every
        // dashboard expression returns data (counters start at 0).
        if !alerts.contains(&expr) {
            let result = &v["data"]["result"];
            let has_data = match result {
                Value::Array(a) => !a.is_empty(),
                Value::Null => false,
                _ => true,
            };
            assert!(
                has_data,
                "{expr} returned no data although its metrics are exported: {v}"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 20,
        "only {checked} expressions had all their metrics"
    );
    // Every alert rule evaluates without error.
    wait_until(Duration::from_secs(30), "alert rules evaluated", || {
        api(prom.port, "/api/v1/rules").is_some_and(|v| {
            let groups = v["data"]["groups"].as_array().cloned().unwrap_or_default();
            let rules: Vec<Value> = groups
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            !rules.is_empty() && rules.iter().all(|r| r["health"] == "ok")
        })
    });
    // The exposition passes Prometheus's own linter.
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    lint.stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_deploy_kit_passes_promtool() {
    for args in [
        vec![
            "check",
            "config",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/deploy/prometheus/prometheus.yml"
            ),
        ],
        vec![
            "check",
            "rules",
            concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml"),
        ],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .output()
            .expect("promtool (apt-get install prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_compose_file_and_grafana_provisioning_parse() {
    let read =
        |p: &str| std::fs::read_to_string(format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/docker-compose.yml")).expect("compose parses");
    let services = compose["services"].as_mapping().expect("services");
    for s in ["redis", "gateway-1", "gateway-2", "prometheus", "grafana"] {
        assert!(services.contains_key(s), "compose lacks {s}");
    }
    for p in [
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/miop.yml",
    ] {
        let _: serde_yaml::Value =
            serde_yaml::from_str(&read(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    }
    let ds = read("grafana/provisioning/datasources/prometheus.yml");
    assert!(
        ds.contains("http://prometheus:9090"),
        "datasource must reach the compose service"
    );
    let dash = read("grafana/dashboards/miop-gateway.json");
    assert!(dash.contains("\"${datasource}\"") && !dash.contains("DS_PROMETHEUS"));
}

#[test]
fn systemd_accepts_the_unit() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed here; unit not verified");
        return;
    }
    // Point ExecStart at the binary this test built, then verify.
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/systemd/miopd.service"
    ))
    .unwrap();
    let dir = std::env::temp_dir().join(format!("miop-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("miopd.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/miopd", env!("CARGO_BIN_EXE_miopd")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histograms_are_exported_from_the_start() {
    // Before any observation, every bucket of every histogram is there at 0,
    // so a dashboard panel never says "no data" on an idle gateway.
    let gw = Miopd::start(&["--cores", "2"]);
    let body = gw.get("/metrics").1;
    for h in [
        "miop_bind_duration_seconds",
        "miop_read_handling_seconds",
        "miop_push_ack_latency_seconds",
    ] {
        let buckets: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with(&format!("{h}_bucket{{")))
            .collect();
        assert!(buckets.len() >= 10, "{h}: {buckets:?}");
        assert!(
            buckets.iter().all(|l| l.ends_with(" 0")),
            "{h}: {buckets:?}"
        );
        assert!(
            body.contains(&format!("{h}_bucket{{le=\"+Inf\"}} 0\n")),
            "{h}"
        );
        assert!(body.contains(&format!("{h}_count 0\n")), "{h}");
        assert!(body.contains(&format!("# TYPE {h} histogram\n")), "{h}");
    }
    // And they move: one bind is one observation.
    let _c = gw.bound("first").await;
    let body = gw.get("/metrics").1;
    assert!(
        body.contains("miop_bind_duration_seconds_count 1\n"),
        "{body}"
    );
}
