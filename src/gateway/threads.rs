//! Starting the core threads, and what happens when one dies.
//!
//! A core that panics must not leave a dead core behind a healthy
//! `/healthz`: its sessions would hang and its share of new connections
//! (SO_REUSEPORT hashes them over the listeners) would never be accepted.
//! So a panic on a core thread is logged with the core and the panic message
//! and ends the process with exit code 70 (EX_SOFTWARE); systemd's
//! `Restart=on-failure` (deploy/systemd) starts a fresh one.

use std::panic::AssertUnwindSafe;

use crate::driver::{self, CoreParams, Io};

/// Exit code when a core thread panics.
pub const CORE_PANIC_EXIT: i32 = 70;

/// Spawns the thread of one core. `ready` hears once whether it started.
pub fn spawn_core(
    io: Io,
    params: CoreParams,
    ready: std::sync::mpsc::Sender<Result<u16, String>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let core = params.engine.core;
    std::thread::Builder::new()
        .name(format!("miop-core-{core}"))
        .spawn(move || {
            let started = ready.clone();
            let run = std::panic::catch_unwind(AssertUnwindSafe(move || {
                driver::run_core(io, params, |r| {
                    let _ = started.send(r.map(|()| core));
                })
            }));
            if let Err(panic) = run {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(
                    core,
                    panic = %msg,
                    exit_code = CORE_PANIC_EXIT,
                    "I/O core panicked; exiting so the service manager restarts miopd"
                );
                eprintln!("miopd: I/O core {core} panicked ({msg}); exiting");
                std::process::exit(CORE_PANIC_EXIT);
            }
        })
}
