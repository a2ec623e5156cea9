//! The core's read buffers: a connection borrows one only after its socket
//! is readable and gives it back as soon as the bytes are decoded, so a core
//! needs as many buffers as it has reads in flight, not as many as it has
//! connections. Registered with io_uring (`READ_FIXED`) when the kernel
//! allows it; where registration fails (a small RLIMIT_MEMLOCK), the same
//! pool does ordinary reads.

use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};
use tokio_uring::buf::fixed::{FixedBuf, FixedBufPool};
use tokio_uring::buf::{IoBuf, IoBufMut};

pub const READ_BUF_LEN: usize = 16 * 1024;

pub enum ReadBuf {
    Fixed(FixedBuf),
    Plain(Vec<u8>),
}

impl ReadBuf {
    pub fn read_sqe(&mut self, fd: RawFd) -> squeue::Entry {
        match self {
            ReadBuf::Fixed(b) => opcode::ReadFixed::new(
                types::Fd(fd),
                b.stable_mut_ptr(),
                b.bytes_total() as u32,
                b.buf_index(),
            )
            .build(),
            ReadBuf::Plain(v) => {
                opcode::Recv::new(types::Fd(fd), v.as_mut_ptr(), v.capacity() as u32).build()
            }
        }
    }

    /// The first `n` bytes, which the kernel just wrote.
    pub fn filled(&mut self, n: usize) -> &[u8] {
        match self {
            ReadBuf::Fixed(b) => {
                // SAFETY: the read completed with n bytes written.
                unsafe { b.set_init(n) };
                &b[..n]
            }
            ReadBuf::Plain(v) => {
                // SAFETY: the read completed with n <= capacity bytes written.
                unsafe { v.set_len(n) };
                &v[..n]
            }
        }
    }

    pub fn capacity(&self) -> usize {
        match self {
            ReadBuf::Fixed(b) => b.bytes_total(),
            ReadBuf::Plain(v) => v.capacity(),
        }
    }
}

pub enum ReadBufs {
    Registered(FixedBufPool<Vec<u8>>),
    Plain(Vec<Vec<u8>>, usize),
}

impl ReadBufs {
    /// Must run inside the core's tokio-uring runtime.
    pub fn new(count: usize) -> ReadBufs {
        let pool = FixedBufPool::new((0..count).map(|_| Vec::with_capacity(READ_BUF_LEN)));
        match pool.register() {
            Ok(()) => ReadBufs::Registered(pool),
            Err(e) => {
                tracing::warn!(error = %e, "cannot register read buffers with io_uring; using plain reads");
                ReadBufs::Plain(Vec::new(), count)
            }
        }
    }

    pub fn is_registered(&self) -> bool {
        matches!(self, ReadBufs::Registered(_))
    }

    /// A free buffer, if any (a registered one returns to the pool when
    /// dropped; a plain one through [`ReadBufs::give_back`]).
    pub fn take(&mut self) -> Option<ReadBuf> {
        match self {
            ReadBufs::Registered(pool) => pool.try_next(READ_BUF_LEN).map(ReadBuf::Fixed),
            ReadBufs::Plain(free, left) => match free.pop() {
                Some(v) => Some(ReadBuf::Plain(v)),
                None if *left > 0 => {
                    *left -= 1;
                    Some(ReadBuf::Plain(Vec::with_capacity(READ_BUF_LEN)))
                }
                None => None,
            },
        }
    }

    pub fn give_back(&mut self, buf: ReadBuf) {
        if let (ReadBufs::Plain(free, _), ReadBuf::Plain(mut v)) = (self, buf) {
            v.clear();
            free.push(v);
        }
    }
}
