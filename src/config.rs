//! miopd's configuration: command line, environment (`MIOP_*`) and an optional
//! TOML file, in that order of precedence.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::protocol::{MAX_BIND_FRAME_LEN, MAX_FRAME_LEN};
use crate::session::SessionConfig;

/// miopd: the Miop push gateway.
///
/// Holds long-lived device connections on one io_uring runtime per core and
/// serves an admin/metrics HTTP API on a separate control-plane thread.
/// Every option can also be set through the environment variable shown, or in
/// the TOML file given by --config (same names with underscores, e.g.
/// `app_keys = ["pk"]`, `heartbeat = "30s"`). Command line wins over the
/// environment, which wins over the file.
#[derive(Debug, Parser)]
#[command(name = "miopd", version, about, long_about)]
pub struct Cli {
    /// Address for Miop device connections.
    #[arg(long, env = "MIOP_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Address for the admin HTTP API (/healthz, /metrics, /v1/...).
    /// Loopback by default: it is not meant for the internet.
    #[arg(long, env = "MIOP_ADMIN")]
    pub admin: Option<SocketAddr>,

    /// Number of I/O cores (threads, each with its own io_uring and listener).
    /// 0 means one per available CPU.
    #[arg(long, env = "MIOP_CORES")]
    pub cores: Option<usize>,

    /// Heartbeat interval announced to clients in BindAck (e.g. 30s, 500ms).
    #[arg(long, env = "MIOP_HEARTBEAT", value_parser = humantime::parse_duration)]
    pub heartbeat: Option<Duration>,

    /// Silence after which a bound session is closed. Default: 3 × heartbeat.
    #[arg(long, env = "MIOP_HEARTBEAT_TIMEOUT", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Option<Duration>,

    /// Time a new connection has to send a valid Bind.
    #[arg(long, env = "MIOP_BIND_TIMEOUT", value_parser = humantime::parse_duration)]
    pub bind_timeout: Option<Duration>,

    /// An accepted app key (repeatable; the environment takes a comma-separated list).
    #[arg(long = "app-key", env = "MIOP_APP_KEYS", value_delimiter = ',')]
    pub app_keys: Vec<String>,

    /// Bearer token for the push API (POST /v1/push). Without it the push API
    /// is disabled.
    #[arg(long, env = "MIOP_PUSH_TOKEN", hide_env_values = true)]
    pub push_token: Option<String>,

    /// Secret for HMAC device tokens (production mode; see docs/PROTOCOL.md).
    #[arg(long, env = "MIOP_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// Redis for shared presence: redis://host:port, or redis-cluster://host:port
    /// for a Redis Cluster. Absent: standalone, with in-memory presence only.
    /// Redis being down (even at start) never affects sessions.
    #[arg(long, env = "MIOP_REDIS")]
    pub redis: Option<String>,

    /// Presence lease: a node whose lease lapses for this long is considered
    /// dead and its presence entries are removed by the other nodes.
    #[arg(long, env = "MIOP_PRESENCE_LEASE", value_parser = humantime::parse_duration)]
    pub presence_lease: Option<Duration>,

    /// Largest inbound frame in bytes (header included).
    #[arg(long, env = "MIOP_MAX_FRAME")]
    pub max_frame: Option<u32>,

    /// Listen backlog per core (the kernel caps it at net.core.somaxconn).
    #[arg(long, env = "MIOP_BACKLOG")]
    pub backlog: Option<u32>,

    /// Bytes queued for a client that does not read before it is closed as a
    /// slow consumer (default 262144).
    #[arg(long, env = "MIOP_OUTBOUND_LIMIT")]
    pub outbound_limit: Option<usize>,

    /// What to do with a device whose pushes pile up past --outbound-limit:
    /// close it, or drop its oldest pushes (a client flooding requests without
    /// reading is always closed).
    #[arg(long, env = "MIOP_SLOW_CONSUMER", value_enum)]
    pub slow_consumer: Option<SlowConsumerPolicy>,

    /// On SIGTERM/SIGINT, how long sessions get to receive Close before exit.
    #[arg(long, env = "MIOP_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,

    /// Name of this node in logs and the admin API. Default: the host name.
    #[arg(long, env = "MIOP_NODE_ID")]
    pub node_id: Option<String>,

    /// Log format.
    #[arg(long, env = "MIOP_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// I/O driver: io_uring (`uring`), epoll (`epoll`), or `auto`: io_uring
    /// where the kernel allows it, else epoll with one warning saying why
    /// (container seccomp profiles and kernel.io_uring_disabled block it).
    #[arg(long, env = "MIOP_IO", value_enum)]
    pub io: Option<IoMode>,

    /// TOML configuration file.
    #[arg(long, env = "MIOP_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a device token signed with the token secret (for tests and backends).
    Token {
        /// Device id the token is for.
        #[arg(long)]
        device: String,
        /// Token lifetime (e.g. 24h).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Secret; defaults to --token-secret / MIOP_TOKEN_SECRET.
        #[arg(long, hide_env_values = true)]
        secret: Option<String>,
    },
}

/// What happens to a device whose pushes pile up past --outbound-limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SlowConsumerPolicy {
    /// Close it with SLOW_CONSUMER (it reconnects; with a TTL its messages
    /// can be kept offline by the backend).
    #[default]
    Close,
    /// Keep it connected and drop its oldest queued pushes.
    DropOldest,
}

/// Which driver to run (`--io`, `MIOP_IO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// io_uring where the kernel allows it, else epoll (with one warning).
    #[default]
    Auto,
    Uring,
    Epoll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// The optional TOML file; every field mirrors a command-line option.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub cores: Option<usize>,
    #[serde(default, with = "opt_duration")]
    pub heartbeat: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    pub heartbeat_timeout: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    pub bind_timeout: Option<Duration>,
    #[serde(default)]
    pub app_keys: Vec<String>,
    pub token_secret: Option<String>,
    pub push_token: Option<String>,
    pub redis: Option<String>,
    #[serde(default, with = "opt_duration")]
    pub presence_lease: Option<Duration>,
    pub max_frame: Option<u32>,
    pub backlog: Option<u32>,
    pub outbound_limit: Option<usize>,
    pub slow_consumer: Option<SlowConsumerPolicy>,
    #[serde(default, with = "opt_duration")]
    pub drain_timeout: Option<Duration>,
    pub node_id: Option<String>,
    pub log_format: Option<LogFormat>,
    pub io: Option<IoMode>,
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// The resolved configuration a node runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub cores: usize,
    pub session: SessionConfig,
    pub app_keys: Vec<String>,
    pub token_secret: Option<String>,
    pub push_token: Option<String>,
    pub redis: Option<String>,
    pub presence_lease: Duration,
    pub slow_consumer: SlowConsumerPolicy,
    pub backlog: u32,
    pub drain_timeout: Duration,
    pub node_id: String,
    pub log_format: LogFormat,
    pub io: IoMode,
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:7700";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:7701";

impl Config {
    /// Merges the command line (with environment) over the file, then defaults.
    pub fn resolve(cli: Cli) -> Result<Config, String> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| format!("invalid config file {}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let heartbeat = cli
            .heartbeat
            .or(file.heartbeat)
            .unwrap_or(Duration::from_secs(30));
        let mut session = SessionConfig::with_heartbeat(heartbeat);
        if let Some(t) = cli.heartbeat_timeout.or(file.heartbeat_timeout) {
            session.heartbeat_timeout = t;
        }
        if let Some(t) = cli.bind_timeout.or(file.bind_timeout) {
            session.bind_timeout = t;
        }
        let max_frame = cli
            .max_frame
            .or(file.max_frame)
            .unwrap_or(MAX_FRAME_LEN as u32);
        // A client learns the limit only from BindAck, so every legal Bind must fit.
        if !(MAX_BIND_FRAME_LEN as u32..=MAX_FRAME_LEN as u32).contains(&max_frame) {
            return Err(format!(
                "--max-frame must be between {MAX_BIND_FRAME_LEN} (the largest legal Bind) and {MAX_FRAME_LEN}"
            ));
        }
        session.max_frame_len = max_frame;
        if heartbeat.is_zero() || session.heartbeat_timeout <= heartbeat {
            return Err("--heartbeat-timeout must be longer than a non-zero --heartbeat".into());
        }
        if session.bind_timeout.is_zero() {
            return Err("--bind-timeout must not be zero".into());
        }
        // Deadlines are Instant + Duration: keep them far from overflow.
        let week = Duration::from_secs(7 * 24 * 3600);
        if [heartbeat, session.heartbeat_timeout, session.bind_timeout]
            .iter()
            .any(|d| *d > week)
        {
            return Err(
                "--heartbeat, --heartbeat-timeout and --bind-timeout must be at most 7 days".into(),
            );
        }
        if let Some(limit) = cli.outbound_limit.or(file.outbound_limit) {
            if limit < 4096 {
                return Err("--outbound-limit must be at least 4096 bytes".into());
            }
            session.max_outbound_bytes = limit;
        }
        let cores = match cli.cores.or(file.cores).unwrap_or(0) {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut app_keys = cli.app_keys;
        if app_keys.is_empty() {
            app_keys = file.app_keys;
        }
        let node_id = cli
            .node_id
            .or(file.node_id)
            .or_else(|| {
                nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
            })
            .unwrap_or_else(|| "miopd".into());
        Ok(Config {
            listen: cli
                .listen
                .or(file.listen)
                .unwrap_or(DEFAULT_LISTEN.parse().unwrap()),
            admin: cli
                .admin
                .or(file.admin)
                .unwrap_or(DEFAULT_ADMIN.parse().unwrap()),
            cores,
            session,
            app_keys,
            token_secret: cli.token_secret.or(file.token_secret),
            push_token: cli.push_token.or(file.push_token).filter(|t| !t.is_empty()),
            slow_consumer: cli.slow_consumer.or(file.slow_consumer).unwrap_or_default(),
            redis: cli.redis.or(file.redis),
            presence_lease: cli
                .presence_lease
                .or(file.presence_lease)
                .unwrap_or(Duration::from_secs(15))
                .max(Duration::from_millis(300)),
            backlog: cli.backlog.or(file.backlog).unwrap_or(65_535),
            drain_timeout: cli
                .drain_timeout
                .or(file.drain_timeout)
                .unwrap_or(Duration::from_secs(10)),
            node_id,
            log_format: cli
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Human),
            io: cli.io.or(file.io).unwrap_or_default(),
        })
    }
}
