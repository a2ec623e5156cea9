//! Builds the per-core listening sockets.
//!
//! Each core gets its own socket bound to the same address with SO_REUSEPORT,
//! so the kernel spreads incoming connections over the cores without a shared
//! accept queue, and with a large backlog so a connect burst does not overflow
//! the accept queue (the seed's "TCP queue overflow").

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};

pub fn bind_reuseport(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Binds `cores` listeners on `addr`. Port 0 picks one free port for all of them.
pub fn bind_all(
    addr: SocketAddr,
    cores: usize,
    backlog: u32,
) -> io::Result<Vec<std::net::TcpListener>> {
    let first = bind_reuseport(addr, backlog)?;
    let actual = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..cores {
        all.push(bind_reuseport(actual, backlog)?);
    }
    Ok(all)
}

/// The kernel's cap on listen backlogs, for the start-up log.
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}
