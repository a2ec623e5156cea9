//! The per-core pool of read buffers.
//!
//! Connections borrow a buffer only after their socket is readable and give it
//! back as soon as the bytes are decoded, so a core needs as many buffers as it
//! has reads in flight, not as many as it has connections. The buffers are
//! registered with io_uring (`read_fixed`) when the kernel allows it; where
//! registration fails (old kernels with a small RLIMIT_MEMLOCK) the same pool
//! falls back to ordinary reads.

use std::cell::RefCell;
use std::io;

use tokio_uring::buf::fixed::FixedBufPool;
use tokio_uring::net::TcpStream;

pub const READ_BUF_LEN: usize = 16 * 1024;

pub enum ReadPool {
    Registered(FixedBufPool<Vec<u8>>),
    Plain(RefCell<Vec<Vec<u8>>>),
}

impl ReadPool {
    /// Must run inside the core's tokio-uring runtime.
    pub fn new(buffers: usize) -> ReadPool {
        let pool = FixedBufPool::new((0..buffers).map(|_| Vec::with_capacity(READ_BUF_LEN)));
        match pool.register() {
            Ok(()) => ReadPool::Registered(pool),
            Err(e) => {
                tracing::warn!(error = %e, "cannot register read buffers with io_uring; using plain reads");
                ReadPool::Plain(RefCell::new(Vec::new()))
            }
        }
    }

    pub fn is_registered(&self) -> bool {
        matches!(self, ReadPool::Registered(_))
    }

    /// Reads once from `stream` and hands the bytes to `f` (an empty slice on
    /// EOF). The buffer goes back to the pool before this returns.
    pub async fn read_with<R>(
        &self,
        stream: &TcpStream,
        f: impl FnOnce(&[u8]) -> R,
    ) -> io::Result<R> {
        match self {
            ReadPool::Registered(pool) => {
                let buf = pool.next(READ_BUF_LEN).await;
                let (res, buf) = stream.read_fixed(buf).await;
                let n = res?;
                Ok(f(&buf[..n]))
            }
            ReadPool::Plain(free) => {
                let buf = free
                    .borrow_mut()
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(READ_BUF_LEN));
                let (res, mut buf) = stream.read(buf).await;
                let out = res.map(|n| f(&buf[..n]));
                buf.clear();
                free.borrow_mut().push(buf);
                out
            }
        }
    }
}
