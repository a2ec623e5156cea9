//! miopd's configuration: command line, environment (`MIOP_*`) and an optional
//! TOML file, in that order of precedence.

mod admin_limits;
mod limits;
mod redact;
mod transports;

pub use self::admin_limits::AdminLimits;
pub use self::limits::{default_exempt, parse_exempt, Limits};
pub use self::redact::redact_url;
use self::transports::TransportInput;
pub use self::transports::{TransportConfig, DEFAULT_WS_PATH};

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

    /// Address for Miop over TLS (`miops://`), e.g. 0.0.0.0:7710. Needs
    /// --tls-cert and --tls-key.
    #[arg(long, env = "MIOP_LISTEN_TLS")]
    pub listen_tls: Option<SocketAddr>,

    /// Address for Miop over WebSocket (`ws://`), e.g. 0.0.0.0:7720.
    #[arg(long, env = "MIOP_LISTEN_WS")]
    pub listen_ws: Option<SocketAddr>,

    /// Address for Miop over WebSocket over TLS (`wss://`), e.g.
    /// 0.0.0.0:7730. Needs --tls-cert and --tls-key.
    #[arg(long, env = "MIOP_LISTEN_WSS")]
    pub listen_wss: Option<SocketAddr>,

    /// TLS certificate chain (PEM, leaf first). Reloaded with the key on
    /// SIGHUP; sessions already established are kept.
    #[arg(long, env = "MIOP_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "MIOP_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM) for client certificates: when set, TLS clients
    /// must present a certificate signed by one of them.
    #[arg(long, env = "MIOP_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// Request path of the WebSocket listeners [default: /miop].
    #[arg(long, env = "MIOP_WS_PATH")]
    pub ws_path: Option<String>,

    /// Listeners whose connections start with a PROXY protocol (v1 or v2)
    /// header naming the client's address (behind HAProxy or a cloud L4
    /// balancer): comma-separated tcp, tls, ws, wss, or all. A connection
    /// without a valid header on such a listener is closed and counted.
    #[arg(long, env = "MIOP_PROXY_PROTOCOL", value_delimiter = ',')]
    pub proxy_protocol: Vec<String>,

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

    /// Read-only bearer token for the admin API's /v1 reads (sessions,
    /// presence, consistency); the push token opens them too. With neither,
    /// those reads are disabled. /healthz and /metrics need no token.
    #[arg(long, env = "MIOP_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Most admin API connections open at once; past it a connection gets
    /// one 503 and is closed. Keep it below --fd-reserve.
    #[arg(long, env = "MIOP_ADMIN_MAX_CONNS")]
    pub admin_max_conns: Option<usize>,

    /// Admin API timeout: for a request head (also the idle keep-alive
    /// limit) and for a whole request, body included (408 past it).
    #[arg(long, env = "MIOP_ADMIN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub admin_timeout: Option<Duration>,

    /// Secret for HMAC device tokens (production mode; see docs/PROTOCOL.md).
    #[arg(long, env = "MIOP_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// Redis for shared presence: redis://host:port, or redis-cluster://host:port
    /// for a Redis Cluster. Absent: standalone, with in-memory presence only.
    /// Redis being down (even at start) never affects sessions. A password in
    /// the URL (redis://:PASSWORD@host:port) is never logged.
    #[arg(long, env = "MIOP_REDIS", hide_env_values = true)]
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

    /// Open connections allowed per source address (0: no limit). Enforced
    /// per core (each core allows its share); addresses in --limit-exempt are
    /// not limited. Over it, a new connection gets Error(UNAVAILABLE) +
    /// Close(TRY_LATER) with a retry-after hint.
    #[arg(long, env = "MIOP_MAX_CONNS_PER_IP")]
    pub max_conns_per_ip: Option<u32>,

    /// New connections per second allowed per source address (0: no limit;
    /// bursts of twice this).
    #[arg(long, env = "MIOP_ACCEPT_RATE_PER_IP")]
    pub accept_rate_per_ip: Option<u32>,

    /// Addresses or CIDRs exempt from the per-address limits
    /// (comma-separated; `none` for no exemption). Default: loopback.
    #[arg(long, env = "MIOP_LIMIT_EXEMPT", value_delimiter = ',')]
    pub limit_exempt: Vec<String>,

    /// Bound sessions allowed on the node (0: only the fd limit). Over it, a
    /// Bind gets Error(UNAVAILABLE) + Close(TRY_LATER) with a retry-after hint.
    #[arg(long, env = "MIOP_MAX_SESSIONS")]
    pub max_sessions: Option<u64>,

    /// Binds per second allowed on the node (0: no limit); a token bucket
    /// with one second of burst.
    #[arg(long, env = "MIOP_BIND_RATE")]
    pub bind_rate: Option<u32>,

    /// Frames per second one session may send (bursts of twice this). Over
    /// it the gateway stops reading the session for a while; a session that
    /// stays over it for --budget-grace is closed (RATE_LIMITED).
    #[arg(long, env = "MIOP_FRAMES_PER_SEC")]
    pub frames_per_sec: Option<u32>,

    /// Bytes per second one session may send (bursts of twice this).
    #[arg(long, env = "MIOP_BYTES_PER_SEC")]
    pub bytes_per_sec: Option<u32>,

    /// How long a session may stay over its inbound budget before it is closed.
    #[arg(long, env = "MIOP_BUDGET_GRACE", value_parser = humantime::parse_duration)]
    pub budget_grace: Option<Duration>,

    /// With --slow-consumer drop-oldest: close a session whose queue stays over
    /// --outbound-limit this long without the client reading.
    #[arg(long, env = "MIOP_STALL_TIMEOUT", value_parser = humantime::parse_duration)]
    pub stall_timeout: Option<Duration>,

    /// Socket send buffer of device connections in bytes (the kernel doubles
    /// it; 0: the kernel's default). Small by default: push traffic is small,
    /// and a client that stops reading then pins kilobytes, not megabytes.
    #[arg(long, env = "MIOP_SNDBUF")]
    pub sndbuf: Option<u32>,

    /// File descriptors kept free for the admin API, Redis and the process:
    /// the cores stop accepting when this few are left and resume when a few
    /// more are free. Default: 1/64 of the fd limit, at least 64.
    #[arg(long, env = "MIOP_FD_RESERVE")]
    pub fd_reserve: Option<u64>,

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
    pub listen_tls: Option<SocketAddr>,
    pub listen_ws: Option<SocketAddr>,
    pub listen_wss: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub ws_path: Option<String>,
    #[serde(default)]
    pub proxy_protocol: Vec<String>,
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
    pub admin_token: Option<String>,
    pub admin_max_conns: Option<usize>,
    #[serde(default, with = "opt_duration")]
    pub admin_timeout: Option<Duration>,
    pub redis: Option<String>,
    #[serde(default, with = "opt_duration")]
    pub presence_lease: Option<Duration>,
    pub max_frame: Option<u32>,
    pub backlog: Option<u32>,
    pub outbound_limit: Option<usize>,
    pub slow_consumer: Option<SlowConsumerPolicy>,
    pub max_conns_per_ip: Option<u32>,
    pub accept_rate_per_ip: Option<u32>,
    #[serde(default)]
    pub limit_exempt: Vec<String>,
    pub max_sessions: Option<u64>,
    pub bind_rate: Option<u32>,
    pub frames_per_sec: Option<u32>,
    pub bytes_per_sec: Option<u32>,
    #[serde(default, with = "opt_duration")]
    pub budget_grace: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    pub stall_timeout: Option<Duration>,
    pub sndbuf: Option<u32>,
    pub fd_reserve: Option<u64>,
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
/// The resolved configuration. Its `Debug` leaves out the secrets (tokens,
/// app keys, the token secret) and redacts the Redis URL's password.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// TLS, WebSocket and PROXY protocol listeners.
    pub transports: TransportConfig,
    pub admin: SocketAddr,
    pub cores: usize,
    pub session: SessionConfig,
    pub app_keys: Vec<String>,
    pub token_secret: Option<String>,
    pub push_token: Option<String>,
    pub admin_token: Option<String>,
    pub admin_limits: AdminLimits,
    pub redis: Option<String>,
    pub presence_lease: Duration,
    pub slow_consumer: SlowConsumerPolicy,
    pub limits: Limits,
    pub backlog: u32,
    pub drain_timeout: Duration,
    pub node_id: String,
    pub log_format: LogFormat,
    pub io: IoMode,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |o: &Option<String>| o.as_ref().map(|_| "<set>");
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("transports", &self.transports)
            .field("admin", &self.admin)
            .field("cores", &self.cores)
            .field("session", &self.session)
            .field("app_keys", &self.app_keys.len())
            .field("token_secret", &set(&self.token_secret))
            .field("push_token", &set(&self.push_token))
            .field("admin_token", &set(&self.admin_token))
            .field("admin_limits", &self.admin_limits)
            .field("redis", &self.redis.as_deref().map(redact_url))
            .field("presence_lease", &self.presence_lease)
            .field("slow_consumer", &self.slow_consumer)
            .field("limits", &self.limits)
            .field("backlog", &self.backlog)
            .field("drain_timeout", &self.drain_timeout)
            .field("node_id", &self.node_id)
            .field("log_format", &self.log_format)
            .field("io", &self.io)
            .finish()
    }
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
        let d = Limits::default();
        let exempt_given = if cli.limit_exempt.is_empty() {
            &file.limit_exempt
        } else {
            &cli.limit_exempt
        };
        let limits = Limits {
            max_conns_per_ip: cli
                .max_conns_per_ip
                .or(file.max_conns_per_ip)
                .unwrap_or(d.max_conns_per_ip),
            accept_rate_per_ip: cli
                .accept_rate_per_ip
                .or(file.accept_rate_per_ip)
                .unwrap_or(d.accept_rate_per_ip),
            exempt: if exempt_given.is_empty() {
                d.exempt
            } else {
                parse_exempt(exempt_given)?
            },
            max_sessions: cli
                .max_sessions
                .or(file.max_sessions)
                .unwrap_or(d.max_sessions),
            bind_rate: cli.bind_rate.or(file.bind_rate).unwrap_or(d.bind_rate),
            frames_per_sec: cli
                .frames_per_sec
                .or(file.frames_per_sec)
                .unwrap_or(d.frames_per_sec),
            bytes_per_sec: cli
                .bytes_per_sec
                .or(file.bytes_per_sec)
                .unwrap_or(d.bytes_per_sec),
            budget_grace: cli
                .budget_grace
                .or(file.budget_grace)
                .unwrap_or(d.budget_grace),
            stall_timeout: cli
                .stall_timeout
                .or(file.stall_timeout)
                .unwrap_or(d.stall_timeout),
            sndbuf: cli.sndbuf.or(file.sndbuf).unwrap_or(d.sndbuf),
            fd_reserve: cli.fd_reserve.or(file.fd_reserve).unwrap_or(d.fd_reserve),
        };
        if limits.frames_per_sec == 0 || limits.bytes_per_sec < session.max_frame_len {
            return Err(
                "--frames-per-sec must be at least 1 and --bytes-per-sec at least --max-frame"
                    .into(),
            );
        }
        let transports = TransportConfig::resolve(TransportInput {
            listen_tls: cli.listen_tls.or(file.listen_tls),
            listen_ws: cli.listen_ws.or(file.listen_ws),
            listen_wss: cli.listen_wss.or(file.listen_wss),
            tls_cert: cli.tls_cert.or(file.tls_cert),
            tls_key: cli.tls_key.or(file.tls_key),
            tls_client_ca: cli.tls_client_ca.or(file.tls_client_ca),
            ws_path: cli.ws_path.or(file.ws_path),
            proxy_protocol: if cli.proxy_protocol.is_empty() {
                file.proxy_protocol
            } else {
                cli.proxy_protocol
            },
        })?;
        Ok(Config {
            transports,
            limits,
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
            admin_token: cli
                .admin_token
                .or(file.admin_token)
                .filter(|t| !t.is_empty()),
            admin_limits: AdminLimits {
                max_connections: cli
                    .admin_max_conns
                    .or(file.admin_max_conns)
                    .unwrap_or(AdminLimits::default().max_connections)
                    .max(1),
                timeout: cli
                    .admin_timeout
                    .or(file.admin_timeout)
                    .unwrap_or(AdminLimits::default().timeout)
                    .max(Duration::from_millis(100)),
            },
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
