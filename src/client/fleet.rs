//! Opening many sessions at once from several loopback source addresses.
//!
//! One (source IP, destination) pair has ~28k ephemeral ports; spreading
//! connections over several source addresses (with IP_BIND_ADDRESS_NO_PORT,
//! so the port is chosen at connect time per 4-tuple) gets past that. Used by
//! the scale test, the memory benchmark and the load generator.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use super::{Client, ClientError};
use crate::protocol::Credential;

/// Connects to `dst` from `src` (port chosen by the kernel at connect time).
pub async fn connect_from(src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    if src.is_ipv4() {
        let one: libc::c_int = 1;
        // Best effort: without it, bind() reserves a port per source address.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of_val(&one) as libc::socklen_t,
            );
        }
    }
    socket.bind(&SocketAddr::new(src, 0).into())?;
    let std_stream: std::net::TcpStream = socket.into();
    TcpSocket::from_std_stream(std_stream).connect(dst).await
}

/// What a fleet of devices looks like.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub target: SocketAddr,
    /// Source addresses, used round-robin.
    pub sources: Vec<IpAddr>,
    /// Device ids are `{prefix}-{n}` for n in `first..first + count`.
    pub prefix: String,
    pub first: u64,
    pub count: usize,
    pub app_key: String,
    /// Connects and binds in flight at once.
    pub concurrency: usize,
}

impl FleetSpec {
    /// `count` loopback sources 127.0.0.2, 127.0.0.3, ...
    pub fn loopback_sources(count: u8) -> Vec<IpAddr> {
        (0..count)
            .map(|i| IpAddr::from([127, 0, 0, 2 + i]))
            .collect()
    }
}

/// Connects and binds every device of `spec`; returns the bound clients in
/// device order, or the first error with the device it happened to.
pub async fn bind_fleet(spec: &FleetSpec) -> Result<Vec<Client>, (String, ClientError)> {
    let gate = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(spec.count);
    for i in 0..spec.count {
        let device = format!("{}-{}", spec.prefix, spec.first + i as u64);
        let src = spec.sources[i % spec.sources.len().max(1)];
        let (dst, key, gate) = (spec.target, spec.app_key.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore closed");
            let res = async {
                let stream = connect_from(src, dst).await?;
                let mut c = Client::from_stream(stream);
                c.bind(&device, Credential::AppKey(key), Vec::new()).await?;
                Ok::<_, ClientError>(c)
            }
            .await;
            res.map_err(|e| (device, e))
        }));
    }
    let mut clients = Vec::with_capacity(spec.count);
    for t in tasks {
        clients.push(t.await.expect("bind task panicked")?);
    }
    Ok(clients)
}
