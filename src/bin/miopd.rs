//! miopd: the Miop push gateway. See `miopd --help`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use miop::admin::{self, AdminState};
use miop::auth::{mint_token, Authenticator};
use miop::config::{Cli, Command, Config, LogFormat};
use miop::gateway;
use miop::presence::{RedisPresence, RedisSettings};
use tokio::signal::unix::{signal, SignalKind};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Token {
        device,
        ttl,
        secret,
    }) = &cli.command
    {
        let Some(secret) = secret.clone().or_else(|| cli.token_secret.clone()) else {
            eprintln!("miopd token: no secret (pass --secret or set MIOP_TOKEN_SECRET)");
            return ExitCode::from(2);
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        println!(
            "{}",
            mint_token(secret.as_bytes(), device, (now + *ttl).as_secs())
        );
        return ExitCode::SUCCESS;
    }
    let config = match Config::resolve(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("miopd: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("miopd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MIOP_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(config: Config) -> Result<(), String> {
    let auth = Authenticator::new(config.app_keys.clone(), config.token_secret.clone());
    if auth.is_closed() {
        return Err(
            "no credentials configured: pass --app-key KEY (or MIOP_APP_KEYS) and/or \
             --token-secret SECRET (or MIOP_TOKEN_SECRET)"
                .into(),
        );
    }
    let (io, io_warning) = miop::driver::resolve(config.io)?;
    if let Some(w) = io_warning {
        tracing::warn!("{w}");
    }
    let fd_limit = miop::driver::raise_fd_limit();
    let metrics = miop::metrics::install()?;
    miop::metrics::init_zero(config.redis.is_some(), io.name());
    metrics::gauge!(miop::metrics::CORES).set(config.cores as f64);
    metrics::gauge!(miop::metrics::FD_LIMIT).set(fd_limit as f64);
    if config.redis.is_some() {
        metrics::gauge!(miop::metrics::REDIS_UP).set(0.0);
    }
    let gw = gateway::start(&config, auth.clone(), fd_limit, io, config.redis.is_some())?;
    // Unacked pushes of ended sessions go to offline storage (with Redis).
    let unacked_rx = config.redis.as_ref().map(|_| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        gw.set_unacked_sink(tx);
        rx
    });
    tracing::info!(
        node = %config.node_id,
        listen = %gw.listen_addr,
        cores = config.cores,
        io = io.name(),
        fd_limit,
        // Every connection is one fd; keep a few for listeners, rings, Redis, admin.
        max_connections = fd_limit.saturating_sub(64 + 4 * config.cores as u64),
        somaxconn = ?gateway::somaxconn(),
        backlog = config.backlog,
        heartbeat_ms = config.session.heartbeat_interval.as_millis() as u64,
        heartbeat_timeout_ms = config.session.heartbeat_timeout.as_millis() as u64,
        app_keys = auth.app_key_count(),
        token_mode = auth.token_mode(),
        presence = if config.redis.is_some() { "redis" } else { "standalone" },
        "miopd started"
    );

    // The control plane: this thread, a plain current-thread tokio runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the control-plane runtime: {e}"))?;
    rt.block_on(async move {
        let admin_listener = tokio::net::TcpListener::bind(config.admin)
            .await
            .map_err(|e| format!("cannot listen on admin address {}: {e}", config.admin))?;
        let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;
        let gw = Arc::new(gw);
        tokio::spawn(gw.clone().run_index());
        let presence = match &config.redis {
            Some(url) => {
                let settings = RedisSettings {
                    url: url.clone(),
                    lease_ttl: config.presence_lease,
                    command_timeout: Duration::from_secs(2),
                };
                let p = RedisPresence::start(settings, gw.clone(), miop::push::Delivery::default())?;
                if let Some(rx) = unacked_rx {
                    tokio::spawn(p.clone().keep_unacked(rx));
                }
                tracing::info!(redis = %miop::config::redact_url(url), lease_ms = config.presence_lease.as_millis() as u64,
                    "presence in Redis (connecting in the background; sessions never wait for it)");
                Some(p)
            }
            _ => None,
        };
        let presence_handle = presence.clone();
        let state = AdminState {
            gateway: gw.clone(),
            metrics: metrics.clone(),
            presence,
            push_token: config.push_token.as_deref().map(Arc::from),
            read_tokens: admin::ReadTokens {
                admin: config.admin_token.as_deref().map(Arc::from),
                push: config.push_token.as_deref().map(Arc::from),
            },
        };
        tokio::spawn(admin::serve(
            admin_listener,
            admin::router(state),
            config.admin_limits,
        ));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                metrics.run_upkeep();
            }
        });
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
        // One machine-readable line on stdout for scripts and tests: the
        // plain listener, the admin API, then any other device listener
        // (tls=, ws=, wss=).
        let others: String = gw
            .listeners
            .iter()
            .skip(1)
            .map(|l| format!(" {}={}", l.kind.name(), l.addr))
            .collect();
        println!("miopd ready listen={} admin={}{others}", gw.listen_addr, admin_addr);
        for l in &gw.listeners {
            tracing::info!(
                transport = l.kind.name(),
                addr = %l.addr,
                proxy_protocol = l.proxy,
                "device listener"
            );
        }
        let _ = std::io::stdout().flush();
        tracing::info!(admin = %admin_addr, "admin API listening");
        let sig = loop {
            tokio::select! {
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
                _ = hup.recv() => reload_tls(&gw),
            }
        };
        tracing::info!(
            signal = sig,
            sessions = gw.sessions(),
            drain_timeout_ms = config.drain_timeout.as_millis() as u64,
            "draining"
        );
        let report = gw.drain().await;
        if let Some(p) = &presence_handle {
            p.withdraw(Duration::from_secs(3)).await;
        }
        tracing::info!(
            closed = report.closed,
            forced = report.forced,
            "drained; exiting"
        );
        Ok(())
    })
}

/// SIGHUP: reads the TLS certificate and key again. New handshakes present
/// the new certificate; established sessions are not touched. A bad file
/// keeps the current certificate.
fn reload_tls(gw: &gateway::Gateway) {
    let Some(tls) = &gw.tls else {
        tracing::info!("SIGHUP: no TLS listener, nothing to reload");
        return;
    };
    match tls.reload() {
        Ok(()) => {
            metrics::counter!(miop::metrics::TLS_RELOADS, "result" => "ok").increment(1);
            tracing::info!(
                sessions = gw.sessions(),
                "SIGHUP: TLS certificate reloaded; sessions kept"
            )
        }
        Err(e) => {
            metrics::counter!(miop::metrics::TLS_RELOADS, "result" => "error").increment(1);
            tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; the current one stays")
        }
    }
}
