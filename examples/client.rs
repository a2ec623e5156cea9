//! A device in a terminal: binds with a URL (`miop://`, `miops://`, `ws://`
//! or `wss://`, PROTOCOL.md §2.5) and the topics given after it, and stays
//! bound: it heartbeats, prints every push (acknowledged, each message once),
//! reconnects with backoff when the gateway goes away and binds again with
//! its topics, prints each state change, and closes cleanly on Ctrl-C. It
//! stops by itself only when the gateway says retrying is pointless: another
//! client bound the same device (REPLACED), or the key is wrong.
//!
//! ```text
//! cargo run --example client -- miop://phone-1:pk@127.0.0.1:7700/ [TOPIC...]
//! cargo run --example client -- miops://phone-1:pk@gw.example.com/ --ca ca.pem news
//! cargo run --example client -- ws://phone-1:pk@127.0.0.1:7702/miop
//! ```
//!
//! TLS flags (`miops://`, `wss://`): `--ca FILE`, `--client-cert FILE
//! --client-key FILE`, `--server-name NAME`, and `--insecure` (checks no
//! certificate: for tests only).

use clap::Parser;
use miop::client::{MiopUrl, Session, SessionConfig, SessionState, TlsArgs};
use tokio::sync::broadcast::error::RecvError;

/// A Miop device in a terminal: binds, prints pushes, reconnects.
#[derive(Parser)]
struct Args {
    /// miop://DEVICE:KEY@HOST[:PORT]/, or miops://, ws://, wss:// (?token=TOKEN instead of :KEY).
    #[arg(default_value = "miop://phone-1:pk@127.0.0.1:7700/")]
    url: String,
    /// Topics to join.
    topics: Vec<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let fail = |e: &dyn std::fmt::Display| -> ! {
        eprintln!("{e}");
        std::process::exit(2);
    };
    let url: MiopUrl = args.url.parse().unwrap_or_else(|e| fail(&e));
    args.tls
        .check_scheme(url.scheme)
        .unwrap_or_else(|e| fail(&e));
    if args.tls.insecure {
        eprintln!("warning: --insecure: the server's certificate is not checked");
    }
    let config = SessionConfig::from_url_tls(&url, &args.tls.options())
        .unwrap_or_else(|e| fail(&e))
        .topics(args.topics);
    let mut session = Session::start(config).unwrap_or_else(|e| fail(&e));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            Some(push) = session.pushes.recv() => {
                println!("push {}: {}", push.message_id, String::from_utf8_lossy(&push.payload));
            }
            event = session.events.recv() => match event {
                Ok(event) => match event.state {
                    SessionState::Connecting { attempt: 0 } => {
                        println!("connecting to {url}");
                    }
                    SessionState::Connecting { attempt } => {
                        println!("reconnecting (attempt {attempt})");
                    }
                    SessionState::Bound { session_id, heartbeat_interval } => println!(
                        "bound as {} (session {session_id}); heartbeat every {} ms",
                        url.device_id,
                        heartbeat_interval.as_millis()
                    ),
                    SessionState::Disconnected { reason, retry_in } => {
                        println!("{reason}; retrying in {retry_in:.1?}");
                    }
                    SessionState::Stopped { reason } => {
                        println!("stopped: {reason}");
                        std::process::exit(1);
                    }
                },
                Err(RecvError::Lagged(missed)) => println!("({missed} state changes missed)"),
                Err(RecvError::Closed) => return,
            },
            _ = &mut ctrl_c => {
                session.close().await;
                println!("closed");
                return;
            }
        }
    }
}
