//! miop-bench's command line: wrk's flags (`-t -c -d --timeout --latency -s`)
//! plus what long-lived connection load needs (ramp, source addresses, targets,
//! worker processes, scenarios). [`Plan::from_args`] validates everything up
//! front so that bad input is one clear line and a non-zero exit.
//!
//! Flag values are parsed by `quantity` (counts, durations, rates) and
//! `address` (source addresses, targets); their parsers are re-exported here.

mod address;
mod quantity;
mod source_plan;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use self::address::resolve;
pub use self::address::{parse_sources, parse_targets, Sources};
pub use self::quantity::{parse_count, parse_count_or_zero, parse_duration, parse_rate};
use super::mqtt::packet::QoS;
use super::mqtt::MqttUrl;
use crate::client::{Connector, MiopUrl, TlsArgs};

/// miop-bench: a load generator for Miop push gateways (wrk for long-lived connections).
///
/// Every connection binds as `<prefix>-<n>` (prefix = the URL's user, n counting
/// from --start), then heartbeats at the interval the server asks for (or
/// --ping-interval, or the script's delay()), and records every push it receives.
///
/// miops://, ws:// and wss:// URLs run it over TLS, WebSocket or both (the
/// TLS handshake and WebSocket upgrade are timed as "handshake", and their
/// failures counted as handshake errors); --ca FILE trusts a private CA,
/// --insecure trusts any certificate (benchmarks on throwaway certificates).
///
/// The same workload runs against an MQTT 3.1.1 broker with an mqtt:// URL:
/// CONNECT/CONNACK is the bind (client id `<--client-id>-<n>`), PINGREQ/PINGRESP
/// the heartbeat, every client subscribes to the --push-to topic, and
/// --push-rate publishes to it from one extra connection.
///
/// Example (the seed's qualification run):
///   miop-bench miop://$HOSTNAME:pk@10.0.0.1:7700/ -t 12 -c 60000 --latency -d 120m --timeout 15 -s delay.lua
#[derive(Debug, Clone, Parser)]
#[command(name = "miop-bench", version, about, long_about)]
pub struct BenchArgs {
    /// Target: miop://DEVICE_PREFIX:APP_KEY@HOST:PORT/ (or miops://, ws://,
    /// wss://) or mqtt://[USER:PASS@]HOST:PORT/
    pub url: String,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// Threads per run (split over worker processes).
    #[arg(short = 't', long, default_value = "2", value_parser = parse_count)]
    pub threads: u64,

    /// Connections to keep open (SI suffixes: 60k, 1M).
    #[arg(short = 'c', long, default_value = "10", value_parser = parse_count)]
    pub connections: u64,

    /// Duration of the run (e.g. 30s, 2m, 2h; a bare number is seconds).
    /// Default 10s; the concurrency scenario runs until its last step is held.
    #[arg(short = 'd', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// A bind or ping with no reply within this time is a timeout (the
    /// connection is then closed and re-established).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Print the latency distribution (50/75/90/99/99.9/99.99/100%).
    #[arg(long)]
    pub latency: bool,

    /// Lua script: init(args), delay() (ms between heartbeats), done(summary, latency).
    #[arg(short = 's', long)]
    pub script: Option<PathBuf>,

    /// Heartbeat interval, instead of the one the server announces in BindAck.
    /// mqtt://: the PINGREQ interval and CONNECT keep-alive (default 30s,
    /// miopd's default heartbeat).
    #[arg(long, value_parser = parse_duration)]
    pub ping_interval: Option<Duration>,

    /// New connections per second (e.g. 2000, 5k/s). Default: as fast as the
    /// server accepts them (the seed's link-limit test).
    #[arg(long, value_parser = parse_rate)]
    pub connect_rate: Option<f64>,

    /// Source addresses, used round-robin: 127.0.0.2-127.0.0.40, 127.0.0.0/26,
    /// or a comma-separated list. Each address gives ~28k ports per target.
    #[arg(long = "bind", value_parser = parse_sources)]
    pub sources: Option<Sources>,

    /// More targets besides the URL's, used round-robin: HOST:PORT or
    /// HOST:PORT-PORT, comma-separated or repeated.
    #[arg(long = "target", value_delimiter = ',')]
    pub targets: Vec<String>,

    /// Worker processes (default: enough for the fd limit, RLIMIT_NOFILE).
    #[arg(long, value_parser = parse_count)]
    pub procs: Option<u64>,

    /// First device number (so several machines or runs don't collide).
    #[arg(long, default_value = "0", value_parser = parse_count_or_zero)]
    pub start: u64,

    /// Do not re-establish connections that failed, timed out or were closed.
    #[arg(long)]
    pub no_reconnect: bool,

    /// Write the summary and the per-second timeline as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Write a self-contained HTML report with charts.
    #[arg(long)]
    pub report: Option<PathBuf>,

    /// Test stage to run (see the README): link-limit, stability, concurrency, churn.
    #[arg(long, value_enum, default_value = "stability")]
    pub scenario: Scenario,

    /// Concurrency steps (e.g. 100k,200k,600k,1M); each is held for --step-duration.
    #[arg(long, value_delimiter = ',', value_parser = parse_count)]
    pub steps: Vec<u64>,

    /// How long each concurrency step is held once reached.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub step_duration: Duration,

    /// Churn: connections per second taken offline and brought back.
    #[arg(long, value_parser = parse_rate)]
    pub churn_rate: Option<f64>,

    /// Link limit: stop when errors in a second exceed this share of the
    /// second's connection attempts.
    #[arg(long, default_value = "0.01")]
    pub max_error_rate: f64,

    /// Push load: requests per second to the push API (e.g. 10/s), started
    /// once every connection is bound. Payloads carry their send time, so the
    /// connections measure delivery latency.
    #[arg(long, value_parser = parse_rate)]
    pub push_rate: Option<f64>,

    /// The gateway's admin API for --push-rate.
    #[arg(long, default_value = "http://127.0.0.1:7701")]
    pub push_api: String,

    /// Bearer token of the push API.
    #[arg(long, env = "MIOP_PUSH_TOKEN", hide_env_values = true)]
    pub push_token: Option<String>,

    /// What each push targets: all (broadcast), device (a random device of
    /// this run), or topic:NAME. mqtt://: the topic every client subscribes
    /// to and the publisher publishes to (all = miop-bench/all).
    #[arg(long, default_value = "all")]
    pub push_to: String,

    /// Stop pushing after this many pushes (e.g. 1: one fan-out to every
    /// connection, whose time to the last recipient is the push max).
    #[arg(long, value_parser = parse_count)]
    pub push_count: Option<u64>,

    /// mqtt://: client id prefix; connection n is `<PREFIX>-<n>` (n from --start)
    /// and the publisher `<PREFIX>-publisher`.
    #[arg(long = "client-id", default_value = "miop-bench")]
    pub client_id: String,

    /// mqtt://: QoS of the subscriptions and of the published messages (0 or
    /// 1; QoS 1 messages are PUBACKed, like Miop pushes are acknowledged).
    #[arg(long, default_value = "1", value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,

    /// Payload bytes per push (at least the timestamp).
    #[arg(long, default_value = "64", value_parser = parse_count_or_zero)]
    pub push_size: u64,

    /// Process ids of the server under test on this machine (comma-separated):
    /// the report gives their RSS before and after, per connection.
    #[arg(long = "server-pid", value_delimiter = ',')]
    pub server_pids: Vec<u32>,

    /// Seconds between progress lines (0 = none).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub progress: Duration,

    /// Internal: run as worker I of N, streaming JSON lines to the parent.
    #[arg(long, hide = true)]
    pub worker: Option<String>,

    /// Arguments for the script's init(args), after `--`.
    #[arg(last = true)]
    pub script_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Ramp (at --connect-rate, or as fast as possible) until errors cross
    /// --max-error-rate or -c connections are bound; report where it broke.
    LinkLimit,
    /// Ramp to -c and hold it for -d (the default; the seed's 2 h soak).
    Stability,
    /// Step through --steps, holding each for --step-duration, reporting latency per step.
    Concurrency,
    /// Hold -c while --churn-rate connections per second go offline and come back.
    Churn,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::LinkLimit => "link-limit",
            Scenario::Stability => "stability",
            Scenario::Concurrency => "concurrency",
            Scenario::Churn => "churn",
        }
    }
}

/// What the run connects to.
#[derive(Debug, Clone)]
pub enum BenchUrl {
    Miop(MiopUrl),
    Mqtt(MqttPlan),
}

impl BenchUrl {
    fn addr(&self) -> String {
        match self {
            BenchUrl::Miop(u) => u.addr(),
            BenchUrl::Mqtt(m) => m.url.addr(),
        }
    }
}

/// Secrets masked, as printed in reports.
impl std::fmt::Display for BenchUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchUrl::Miop(u) => u.fmt(f),
            BenchUrl::Mqtt(m) => m.url.fmt(f),
        }
    }
}

/// An `mqtt://` run: the broker, client ids, the topic and QoS.
#[derive(Debug, Clone)]
pub struct MqttPlan {
    pub url: MqttUrl,
    pub client_prefix: String,
    /// Every client subscribes to it; the publisher publishes to it.
    pub topic: String,
    pub qos: QoS,
}

/// The topic of `--push-to all` on mqtt://.
pub const MQTT_ALL_TOPIC: &str = "miop-bench/all";

/// A validated run plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub url: BenchUrl,
    /// Miop URLs: the transport (TCP, TLS, WebSocket) with its TLS
    /// configuration, built once. Connections still connect their TCP
    /// socket themselves (from their --bind source), then run its handshakes.
    pub connector: Option<Connector>,
    pub targets: Vec<SocketAddr>,
    pub sources: Vec<IpAddr>,
    pub threads: usize,
    pub connections: u64,
    /// None: run until the scenario ends (concurrency steps) or Ctrl-C.
    pub duration: Option<Duration>,
    pub timeout: Duration,
    pub ping_interval: Option<Duration>,
    pub script: Option<PathBuf>,
    pub script_args: Vec<String>,
    pub connect_rate: Option<f64>,
    pub start: u64,
    pub reconnect: bool,
    pub scenario: Scenario,
    pub steps: Vec<u64>,
    pub step_duration: Duration,
    pub churn_rate: f64,
    pub max_error_rate: f64,
    pub push: Option<PushPlan>,
    /// What may keep the run from reaching -c (printed once, by the parent).
    pub warnings: Vec<String>,
}

/// Push load settings (miop-bench drives the gateway's push API).
#[derive(Debug, Clone)]
pub struct PushPlan {
    pub rate: f64,
    /// host:port of the admin API.
    pub api: String,
    pub token: Option<String>,
    pub target: PushTarget,
    pub size: usize,
    /// Pushes to send in all (None: until the run ends).
    pub count: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushTarget {
    All,
    /// A random device of the run, each push.
    Device,
    Topic(String),
}

impl Plan {
    pub fn from_args(a: &BenchArgs) -> Result<Plan, String> {
        let url = if a.url.starts_with("mqtt://") {
            let topic = match a.push_to.as_str() {
                "all" => MQTT_ALL_TOPIC.to_owned(),
                t => match t.strip_prefix("topic:") {
                    Some(name) if !name.is_empty() => name.to_owned(),
                    _ => {
                        return Err(format!(
                            "--push-to {t:?}: mqtt:// runs use all or topic:NAME"
                        ))
                    }
                },
            };
            if a.client_id.is_empty() {
                return Err("--client-id must not be empty".into());
            }
            BenchUrl::Mqtt(MqttPlan {
                url: a.url.parse()?,
                client_prefix: a.client_id.clone(),
                topic,
                qos: if a.qos == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                },
            })
        } else {
            BenchUrl::Miop(
                a.url
                    .parse()
                    .map_err(|e: crate::client::ClientError| e.to_string())?,
            )
        };
        let connector = match &url {
            BenchUrl::Miop(u) => {
                a.tls.check_scheme(u.scheme)?;
                Some(Connector::new(u, &a.tls.options()).map_err(|e| e.to_string())?)
            }
            BenchUrl::Mqtt(_) if a.tls != TlsArgs::default() => {
                return Err(
                    "--ca, --insecure, --client-cert, --client-key and --server-name \
                            apply to miops:// and wss:// URLs, not mqtt://"
                        .into(),
                )
            }
            BenchUrl::Mqtt(_) => None,
        };
        if a.connections == 0 {
            return Err("-c/--connections must be at least 1".into());
        }
        if a.threads == 0 {
            return Err("-t/--threads must be at least 1".into());
        }
        if a.threads > a.connections {
            return Err(format!(
                "-c/--connections ({}) must be at least -t/--threads ({})",
                a.connections, a.threads
            ));
        }
        if a.threads > 4096 {
            return Err("-t/--threads above 4096 makes no sense".into());
        }
        if a.duration.is_some_and(|d| d.is_zero()) {
            return Err("-d/--duration must be longer than 0".into());
        }
        if a.timeout.is_zero() {
            return Err("--timeout must be longer than 0".into());
        }
        if a.connect_rate.is_some_and(|r| r <= 0.0) {
            return Err("--connect-rate must be positive".into());
        }
        if !(0.0..=1.0).contains(&a.max_error_rate) {
            return Err("--max-error-rate is a share between 0 and 1".into());
        }
        let mut targets = resolve(&url.addr())?;
        targets.truncate(1);
        for t in &a.targets {
            targets.extend(parse_targets(t)?);
        }
        let (sources, mut layout_warnings) = source_plan::choose(
            a.sources.as_ref().map(|s| &s.0[..]),
            &targets,
            a.steps.last().copied().unwrap_or(a.connections),
            source_plan::port_range(),
        );
        if let Some(bad) = targets
            .iter()
            .find(|t| sources.iter().any(|s| s.is_ipv4() != t.is_ipv4()))
        {
            return Err(format!(
                "--bind addresses and target {bad} are not the same IP version"
            ));
        }
        let mut steps = a.steps.clone();
        match a.scenario {
            Scenario::Concurrency => {
                if steps.is_empty() {
                    return Err(
                        "--scenario concurrency needs --steps (e.g. --steps 100k,200k,600k,1M)"
                            .into(),
                    );
                }
                if steps.windows(2).any(|w| w[0] >= w[1]) {
                    return Err("--steps must increase".into());
                }
                if steps.contains(&0) {
                    return Err("--steps must be at least 1".into());
                }
            }
            _ if !steps.is_empty() => {
                return Err("--steps only applies to --scenario concurrency".into());
            }
            _ => {}
        }
        let connections = match a.scenario {
            Scenario::Concurrency => *steps.last().unwrap(),
            _ => a.connections,
        };
        if a.scenario != Scenario::Concurrency {
            steps.clear();
        }
        let churn_rate = match (a.scenario, a.churn_rate) {
            (Scenario::Churn, Some(r)) if r > 0.0 => r,
            (Scenario::Churn, _) => {
                return Err("--scenario churn needs a positive --churn-rate".into())
            }
            (_, Some(_)) => return Err("--churn-rate only applies to --scenario churn".into()),
            (_, None) => 0.0,
        };
        if a.push_count.is_some() && a.push_rate.is_none() {
            return Err("--push-count needs --push-rate".into());
        }
        let push = match a.push_rate {
            None => None,
            Some(rate) if rate <= 0.0 => return Err("--push-rate must be positive".into()),
            Some(rate) => {
                let api = a
                    .push_api
                    .strip_prefix("http://")
                    .ok_or_else(|| format!("--push-api {:?} must be an http:// URL", a.push_api))?
                    .trim_end_matches('/')
                    .to_owned();
                let target = match a.push_to.as_str() {
                    "all" => PushTarget::All,
                    "device" => PushTarget::Device,
                    t => match t.strip_prefix("topic:") {
                        Some(name) if !name.is_empty() => PushTarget::Topic(name.to_owned()),
                        _ => return Err(format!("--push-to {t:?}: use all, device or topic:NAME")),
                    },
                };
                Some(PushPlan {
                    rate,
                    api,
                    token: a.push_token.clone(),
                    target,
                    size: a.push_size as usize,
                    count: a.push_count,
                })
            }
        };
        if a.tls.insecure {
            layout_warnings.push(
                "--insecure: the server's certificate is not checked (benchmarks only)".into(),
            );
        }
        Ok(Plan {
            warnings: layout_warnings,
            connector,
            push,
            url,
            targets,
            sources,
            threads: a.threads as usize,
            connections,
            duration: match a.scenario {
                Scenario::Concurrency => a.duration,
                _ => Some(a.duration.unwrap_or(Duration::from_secs(10))),
            },
            timeout: a.timeout,
            ping_interval: a.ping_interval,
            script: a.script.clone(),
            script_args: a.script_args.clone(),
            connect_rate: a.connect_rate,
            start: a.start,
            reconnect: !a.no_reconnect,
            scenario: a.scenario,
            steps,
            step_duration: a.step_duration,
            churn_rate,
            max_error_rate: a.max_error_rate,
        })
    }

    /// Device id of connection `index` (0-based within the run).
    /// mqtt://: the client id.
    pub fn device_id(&self, index: u64) -> String {
        let prefix = match &self.url {
            BenchUrl::Miop(u) => &u.device_id,
            BenchUrl::Mqtt(m) => &m.client_prefix,
        };
        format!("{prefix}-{}", self.start + index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &[&str]) -> Result<BenchArgs, clap::Error> {
        BenchArgs::try_parse_from(std::iter::once("miop-bench").chain(line.iter().copied()))
    }

    #[test]
    fn the_seeds_command_line_parses() {
        let a = args(&[
            "miop://vm-host:pk@127.0.0.1:7700/",
            "-t",
            "12",
            "-c",
            "60000",
            "--latency",
            "-d",
            "120m",
            "--timeout",
            "15",
            "-s",
            "delay.lua",
        ])
        .unwrap();
        assert_eq!(a.threads, 12);
        assert_eq!(a.connections, 60_000);
        assert!(a.latency);
        assert_eq!(a.duration, Some(Duration::from_secs(7200)));
        assert_eq!(a.timeout, Duration::from_secs(15));
        assert_eq!(a.script.as_deref(), Some(std::path::Path::new("delay.lua")));
        let p = Plan::from_args(&a).unwrap();
        let BenchUrl::Miop(u) = &p.url else {
            panic!("{:?}", p.url)
        };
        assert_eq!(u.device_id, "vm-host");
        assert_eq!(u.app_key, "pk");
        assert_eq!(p.targets, vec!["127.0.0.1:7700".parse().unwrap()]);
        assert_eq!(p.device_id(0), "vm-host-0");
        assert_eq!(p.scenario, Scenario::Stability);
    }

    #[test]
    fn mqtt_urls_plan_the_same_workload() {
        let a = args(&[
            "mqtt://127.0.0.1:1883/",
            "-c",
            "100",
            "--ping-interval",
            "1s",
            "--push-rate",
            "1",
            "--push-count",
            "1",
            "--qos",
            "0",
        ])
        .unwrap();
        let p = Plan::from_args(&a).unwrap();
        let BenchUrl::Mqtt(m) = &p.url else {
            panic!("{:?}", p.url)
        };
        assert_eq!((m.topic.as_str(), m.qos), (MQTT_ALL_TOPIC, QoS::AtMostOnce));
        assert_eq!(p.device_id(7), "miop-bench-7");
        assert_eq!(p.push.as_ref().unwrap().count, Some(1));
        assert_eq!(p.url.to_string(), "mqtt://127.0.0.1:1883/");
        let a = args(&[
            "mqtt://u:p@127.0.0.1:1/",
            "--client-id",
            "x",
            "--push-to",
            "topic:t/1",
        ]);
        let p = Plan::from_args(&a.unwrap()).unwrap();
        let BenchUrl::Mqtt(m) = &p.url else {
            panic!("{:?}", p.url)
        };
        assert_eq!((m.topic.as_str(), m.qos), ("t/1", QoS::AtLeastOnce));
        assert_eq!(p.device_id(0), "x-0");
        assert_eq!(p.url.to_string(), "mqtt://u:***@127.0.0.1:1/");
        let plan = |line: &[&str]| Plan::from_args(&args(line).unwrap()).unwrap_err();
        assert!(plan(&["mqtt://127.0.0.1:1/", "--push-to", "device"]).contains("all or topic"));
        assert!(plan(&["mqtt://127.0.0.1:1/", "--push-count", "1"]).contains("--push-rate"));
        assert!(args(&["mqtt://127.0.0.1:1/", "--qos", "2"]).is_err());
    }

    #[test]
    fn tls_and_websocket_urls_take_tls_flags() {
        let p = Plan::from_args(&args(&["ws://d:k@127.0.0.1:7702/"]).unwrap()).unwrap();
        let c = p.connector.as_ref().unwrap();
        assert_eq!((c.scheme().name(), c.addr()), ("ws", "127.0.0.1:7702"));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let a = args(&["wss://d:k@127.0.0.1:7703/", "--insecure"]).unwrap();
        assert!(a.tls.insecure);
        let p = Plan::from_args(&a).unwrap();
        assert!(!p.connector.as_ref().unwrap().is_plain());
        assert!(p.warnings.iter().any(|w| w.contains("--insecure")));
        assert_eq!(p.url.to_string(), "wss://d:***@127.0.0.1:7703/miop");
        let plan = |line: &[&str]| Plan::from_args(&args(line).unwrap()).unwrap_err();
        assert!(plan(&["miop://d:k@127.0.0.1:1/", "--insecure"]).contains("not miop://"));
        assert!(plan(&["ws://d:k@127.0.0.1:1/", "--ca", "x.pem"]).contains("not ws://"));
        assert!(plan(&["mqtt://127.0.0.1:1/", "--ca", "x.pem"]).contains("not mqtt://"));
        let e = plan(&["miops://d:k@127.0.0.1:1/", "--ca", "/nonexistent/ca.pem"]);
        assert!(e.contains("cannot read /nonexistent/ca.pem"), "{e}");
        // A client key needs its certificate, and the reverse.
        assert!(args(&["miops://d:k@127.0.0.1:1/", "--client-key", "k.pem"]).is_err());
    }

    #[test]
    fn impossible_plans_are_refused_with_a_reason() {
        let plan = |line: &[&str]| Plan::from_args(&args(line).unwrap()).unwrap_err();
        assert!(plan(&["miop://d:k@127.0.0.1:1/", "-t", "8", "-c", "4"]).contains("at least -t"));
        assert!(plan(&["127.0.0.1:7700", "-c", "4"]).contains("missing scheme"));
        assert!(plan(&["http://d:k@127.0.0.1:1/"]).contains("unsupported scheme"));
        assert!(
            plan(&["miop://d:k@127.0.0.1:1/", "--scenario", "concurrency"]).contains("--steps")
        );
        assert!(plan(&["miop://d:k@127.0.0.1:1/", "--scenario", "churn"]).contains("--churn-rate"));
        assert!(plan(&["miop://d:k@127.0.0.1:1/", "--steps", "1,2"]).contains("only applies"));
        assert!(plan(&["miop://d:k@no-such-host.invalid:1/"]).contains("cannot resolve"));
        assert!(args(&["miop://d:k@127.0.0.1:1/", "-c", "0"]).is_err());
        let p = Plan::from_args(
            &args(&[
                "miop://d:k@127.0.0.1:1/",
                "--scenario",
                "concurrency",
                "--steps",
                "10,20k",
            ])
            .unwrap(),
        )
        .unwrap();
        assert_eq!(p.connections, 20_000);
    }
}
