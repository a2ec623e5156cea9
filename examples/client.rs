//! A device in a terminal: binds with a `miop://DEVICE:KEY@host:port/` URL,
//! heartbeats at the interval the server asks for, prints every push (and acks
//! it), and closes cleanly on Ctrl-C.
//!
//! `cargo run --example client -- miop://phone-1:pk@127.0.0.1:7700/`

use std::time::Duration;

use miop::client::{Client, MiopUrl};
use miop::protocol::{Body, FLAG_ACK_REQUIRED};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let arg = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "miop://phone-1:pk@127.0.0.1:7700/".into());
    let url: MiopUrl = match arg.parse() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut client = match Client::connect(url.addr()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot connect to {}: {e}", url.addr());
            std::process::exit(1);
        }
    };
    let ack = match client.bind_url(&url).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bind refused: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "bound as {} (session {}); heartbeat every {} ms",
        url.device_id, ack.session_id, ack.heartbeat_interval_ms
    );
    let mut beat = tokio::time::interval(Duration::from_millis(
        ack.heartbeat_interval_ms.max(100) as u64
    ));
    beat.tick().await;
    let mut seq = 1_000u32;
    loop {
        tokio::select! {
            _ = beat.tick() => {
                seq += 1;
                if let Err(e) = client.send(&miop::protocol::Frame::ping(seq)).await {
                    eprintln!("connection lost: {e}");
                    std::process::exit(1);
                }
            }
            frame = client.recv() => match frame {
                Ok(Some(f)) => match f.body {
                    Body::Pong => println!("pong {}", f.seq),
                    Body::Push(p) => {
                        println!("push {}: {}", p.message_id, String::from_utf8_lossy(&p.payload));
                        if f.flags & FLAG_ACK_REQUIRED != 0 {
                            let _ = client.ack(p.message_id).await;
                        }
                    }
                    Body::Close(c) => {
                        println!("server closed the session: reason {} ({})", c.reason, c.message);
                        return;
                    }
                    other => println!("{other:?}"),
                },
                Ok(None) => { println!("server closed the connection"); return; }
                Err(e) => { eprintln!("connection error: {e}"); std::process::exit(1); }
            },
            _ = tokio::signal::ctrl_c() => {
                let _ = client.close().await;
                println!("closed");
                return;
            }
        }
    }
}
