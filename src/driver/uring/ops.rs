//! The io_uring operations of the driver, submitted through tokio-uring's
//! public `UnsubmittedOneshot` escape hatch.
//!
//! tokio-uring's own socket methods are `async fn`s that want a task each,
//! and it has no provided buffers; these are plain `Unpin` values (an op
//! index and a driver handle: 16 bytes for a pending receive) that live in
//! the core's tables and are polled with a waker naming their connection (see
//! `driver/wake.rs`). Each keeps what the kernel reads from or writes into
//! (iovecs, a sockaddr) as the op's stable data until the completion arrives.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types};
use tokio_uring::{InFlightOneshot, OneshotOutputTransform, UnsubmittedOneshot};

fn result(cqe: &cqueue::Entry) -> io::Result<u32> {
    let r = cqe.result();
    if r < 0 {
        Err(io::Error::from_raw_os_error(-r))
    } else {
        Ok(r as u32)
    }
}

/// One IORING_OP_RECV with IOSQE_BUFFER_SELECT: the kernel picks a buffer
/// from the core's provided-buffer group only when data arrives, so an idle
/// connection waits on this without holding a buffer, and readiness and the
/// read are one operation.
pub struct RecvDone;

impl OneshotOutputTransform for RecvDone {
    /// Bytes received and the id of the buffer they are in (none on EOF or
    /// error).
    type Output = (io::Result<usize>, Option<u16>);
    type StoredData = ();
    fn transform_oneshot_output(self, _: (), cqe: cqueue::Entry) -> Self::Output {
        (
            result(&cqe).map(|n| n as usize),
            cqueue::buffer_select(cqe.flags()),
        )
    }
}

pub type RecvOp = InFlightOneshot<(), RecvDone>;

pub fn recv(fd: RawFd, group: u16, len: u32) -> RecvOp {
    let sqe = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), len)
        .buf_group(group)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT);
    UnsubmittedOneshot::new((), RecvDone, sqe).submit()
}

/// IORING_OP_PROVIDE_BUFFERS: hands buffers (back) to the kernel's group.
pub struct ProvideDone;

impl OneshotOutputTransform for ProvideDone {
    type Output = io::Result<u32>;
    type StoredData = ();
    fn transform_oneshot_output(self, _: (), cqe: cqueue::Entry) -> io::Result<u32> {
        result(&cqe)
    }
}

pub type ProvideOp = InFlightOneshot<(), ProvideDone>;

/// Provides `count` buffers of `len` bytes starting at `addr`, with ids
/// `first..first + count`.
///
/// # Safety
/// The memory must stay valid, and untouched by us, until the kernel hands
/// each buffer back in a completion.
pub unsafe fn provide(addr: *mut u8, len: usize, count: u16, group: u16, first: u16) -> ProvideOp {
    let sqe = opcode::ProvideBuffers::new(addr, len as i32, count, group, first).build();
    UnsubmittedOneshot::new((), ProvideDone, sqe).submit()
}

/// The chunks of one gathered write and how far it got.
pub struct WriteBufs {
    chunks: Vec<Bytes>,
    iov: Vec<libc::iovec>,
}

impl WriteBufs {
    pub fn new(chunks: Vec<Bytes>) -> WriteBufs {
        let iov = chunks
            .iter()
            .map(|c| libc::iovec {
                iov_base: c.as_ptr() as *mut libc::c_void,
                iov_len: c.len(),
            })
            .collect();
        WriteBufs { chunks, iov }
    }

    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// Skips `n` written bytes; returns whether bytes remain.
    pub fn advance(&mut self, mut n: usize) -> bool {
        let mut done = 0;
        while done < self.iov.len() && n >= self.iov[done].iov_len {
            n -= self.iov[done].iov_len;
            done += 1;
        }
        self.iov.drain(..done);
        self.chunks.drain(..done);
        if let Some(first) = self.iov.first_mut() {
            // SAFETY: n < iov_len, so the new base stays inside the chunk.
            first.iov_base = unsafe { (first.iov_base as *mut u8).add(n) } as *mut libc::c_void;
            first.iov_len -= n;
        }
        !self.iov.is_empty()
    }
}

pub struct WriteDone;

impl OneshotOutputTransform for WriteDone {
    type Output = (io::Result<usize>, WriteBufs);
    type StoredData = WriteBufs;
    fn transform_oneshot_output(self, bufs: WriteBufs, cqe: cqueue::Entry) -> Self::Output {
        (result(&cqe).map(|n| n as usize), bufs)
    }
}

pub type WriteOp = InFlightOneshot<WriteBufs, WriteDone>;

/// Writes what remains of `bufs` with one IORING_OP_WRITEV.
pub fn writev(fd: RawFd, bufs: WriteBufs) -> WriteOp {
    let sqe = opcode::Writev::new(types::Fd(fd), bufs.iov.as_ptr(), bufs.iov.len() as u32).build();
    UnsubmittedOneshot::new(bufs, WriteDone, sqe).submit()
}

/// Where the kernel writes an accepted connection's address.
pub struct AcceptAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl AcceptAddr {
    pub fn new() -> Box<AcceptAddr> {
        Box::new(AcceptAddr {
            // SAFETY: all-zero is a valid sockaddr_storage.
            storage: unsafe { std::mem::zeroed() },
            len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        })
    }

    pub fn peer(&self) -> SocketAddr {
        crate::driver::peer_addr(&self.storage, self.len)
    }
}

pub struct AcceptDone;

impl OneshotOutputTransform for AcceptDone {
    type Output = (io::Result<RawFd>, Box<AcceptAddr>);
    type StoredData = Box<AcceptAddr>;
    fn transform_oneshot_output(self, addr: Box<AcceptAddr>, cqe: cqueue::Entry) -> Self::Output {
        (result(&cqe).map(|fd| fd as RawFd), addr)
    }
}

pub type AcceptOp = InFlightOneshot<Box<AcceptAddr>, AcceptDone>;

pub fn accept(listen_fd: RawFd, mut addr: Box<AcceptAddr>) -> AcceptOp {
    addr.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let sqe = opcode::Accept::new(
        types::Fd(listen_fd),
        &mut addr.storage as *mut libc::sockaddr_storage as *mut libc::sockaddr,
        &mut addr.len,
    )
    .flags(libc::SOCK_CLOEXEC)
    .build();
    UnsubmittedOneshot::new(addr, AcceptDone, sqe).submit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_writes_resume_at_the_right_byte() {
        let mut w = WriteBufs::new(vec![
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"defg"),
        ]);
        assert!(w.advance(4));
        assert_eq!(w.iov.len(), 1);
        let rest =
            unsafe { std::slice::from_raw_parts(w.iov[0].iov_base as *const u8, w.iov[0].iov_len) };
        assert_eq!(rest, b"efg");
        assert!(!w.advance(3));
    }
}
