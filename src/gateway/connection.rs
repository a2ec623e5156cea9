//! The two tasks behind one connection: a reader and, while there is something
//! to send, a writer.
//!
//! The reader waits for readability without holding a buffer (see
//! `readiness.rs`), borrows a pooled buffer for one read, and hands the bytes to
//! the core. Everything it does after waking is boxed, so the task an idle
//! connection parks is only as large as the poll future. The writer exists only
//! while frames are queued, so writes from the reader, the timer and other
//! cores are serialised without a lock.

use std::os::fd::AsRawFd;
use std::rc::Rc;

use tokio_uring::net::TcpStream;

use super::core::Core;
use super::readiness;

pub(super) async fn read_loop(core: Rc<Core>, slot: usize, sid: u64, stream: Rc<TcpStream>) {
    let fd = stream.as_raw_fd();
    loop {
        let polled = readiness::readable(fd).await;
        if !core.is_open(slot, sid) {
            break;
        }
        if polled.is_err() {
            core.transport_closed(slot, sid, "io_error");
            break;
        }
        if !Box::pin(read_once(&core, slot, sid, &stream)).await {
            break;
        }
    }
    core.reader_done(slot, sid);
}

async fn read_once(core: &Rc<Core>, slot: usize, sid: u64, stream: &TcpStream) -> bool {
    match core
        .reads
        .read_with(stream, |bytes| core.on_bytes(slot, sid, bytes))
        .await
    {
        Ok(keep) => keep,
        Err(_) => {
            core.transport_closed(slot, sid, "io_error");
            false
        }
    }
}

pub(super) async fn write_loop(core: Rc<Core>, slot: usize, sid: u64, stream: Rc<TcpStream>) {
    while let Some(bytes) = core.next_outbound(slot, sid) {
        let (res, _) = stream.write_all(bytes).await;
        if res.is_err() {
            core.transport_closed(slot, sid, "io_error");
            // Let next_outbound clear `writing` and remove the entry if due.
        }
    }
}
