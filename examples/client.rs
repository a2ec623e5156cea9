//! A device in a terminal: binds with a `miop://DEVICE:KEY@host:port/` URL
//! and the topics given after it, and stays bound: it heartbeats, prints
//! every push (acknowledged, each message once), reconnects with backoff when
//! the gateway goes away and binds again with its topics, prints each state
//! change, and closes cleanly on Ctrl-C. It stops by itself only when the
//! gateway says retrying is pointless: another client bound the same device
//! (REPLACED), or the key is wrong.
//!
//! `cargo run --example client -- miop://phone-1:pk@127.0.0.1:7700/ [TOPIC...]`

use miop::client::{MiopUrl, Session, SessionConfig, SessionState};
use tokio::sync::broadcast::error::RecvError;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let arg = args
        .next()
        .unwrap_or_else(|| "miop://phone-1:pk@127.0.0.1:7700/".into());
    let url: MiopUrl = match arg.parse() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let config = SessionConfig::from_url(&url).topics(args);
    let mut session = match Session::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
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
                        println!("connecting to {}", url.addr());
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
