//! The core's provided-buffer group: the read buffers the kernel picks from
//! when a receive completes.
//!
//! Every connection's pending receive names the group instead of a buffer,
//! so a core needs as many buffers as it has receives completing between two
//! turns of its loop, not as many as it has connections. Consumed buffers are
//! handed back to the kernel (re-provided) in batches of [`RETURN_BATCH`],
//! adjacent ids in one operation, or sooner when the kernel's share runs low:
//! a hand-back is an operation whose completion would otherwise cost the core
//! a wake-up per message. If the group runs dry anyway, a receive fails with
//! ENOBUFS and the driver re-arms it after the buffers are back.

use slab::Slab;

use super::ops::{self, ProvideOp};

/// Buffer size: a heartbeat, an ack or a Bind fit in one; longer frames
/// arrive over several receives and are reassembled by the engine.
pub const BUF_LEN: usize = 4096;
/// Buffers per core (2 MiB): enough for the receives that complete between
/// two turns of the loop; a burst beyond it costs a re-armed receive, not an
/// error.
pub const BUFS: u16 = 512;
const GROUP: u16 = 0;
/// Consumed buffers kept before handing them back.
pub const RETURN_BATCH: usize = 32;

pub struct ProvidedBufs {
    /// Leaked on purpose: the kernel may write into a provided buffer until
    /// the ring itself is gone, which is after the core's state is dropped.
    region: &'static mut [u8],
    /// Ids consumed and handled, to hand back.
    returning: Vec<u16>,
    /// Buffers the kernel holds (provided, not yet used by a receive).
    in_kernel: usize,
    /// PROVIDE_BUFFERS operations in flight (polled to free their slots).
    pub ops: Slab<ProvideOp>,
}

impl ProvidedBufs {
    pub fn new() -> ProvidedBufs {
        ProvidedBufs {
            region: {
                let region = Box::leak(vec![0u8; BUF_LEN * BUFS as usize].into_boxed_slice());
                // Touch every page now: the kernel fills the buffers in turn,
                // so they are resident soon anyway, and a fixed cost per core
                // should show at start, not as growth per session.
                for page in region.chunks_mut(4096) {
                    // SAFETY: a volatile write to memory we own.
                    unsafe { std::ptr::write_volatile(page.as_mut_ptr(), 0) };
                }
                region
            },
            returning: (0..BUFS).collect(),
            in_kernel: 0,
            ops: Slab::new(),
        }
    }

    pub fn group(&self) -> u16 {
        GROUP
    }

    /// The `n` bytes the kernel received into buffer `id`.
    pub fn filled(&self, id: u16, n: usize) -> &[u8] {
        let start = id as usize * BUF_LEN;
        &self.region[start..start + n.min(BUF_LEN)]
    }

    /// Buffer `id` is free again (after its bytes were handled).
    pub fn give_back(&mut self, id: u16) {
        self.in_kernel = self.in_kernel.saturating_sub(1);
        self.returning.push(id);
    }

    /// Hands consumed buffers back to the kernel if a batch is ready, the
    /// kernel runs low, or `force`; adjacent ids in one operation each.
    /// `submitted` polls each new operation once (its completion only needs
    /// collecting, to free tokio-uring's slot). Returns how many operations.
    pub fn flush(
        &mut self,
        force: bool,
        mut submitted: impl FnMut(usize, &mut ProvideOp),
    ) -> usize {
        let low = self.in_kernel < BUFS as usize / 4;
        if self.returning.is_empty() || !(force || low || self.returning.len() >= RETURN_BATCH) {
            return 0;
        }
        self.in_kernel += self.returning.len();
        self.returning.sort_unstable();
        self.returning.dedup();
        let mut n = 0;
        let mut i = 0;
        while i < self.returning.len() {
            let first = self.returning[i];
            let mut count = 1;
            while i + count < self.returning.len()
                && self.returning[i + count] == first + count as u16
            {
                count += 1;
            }
            let addr = self
                .region
                .as_mut_ptr()
                .wrapping_add(first as usize * BUF_LEN);
            // SAFETY: the region is never freed, and we read a buffer only
            // between its completion and this hand-back.
            let op = unsafe { ops::provide(addr, BUF_LEN, count as u16, GROUP, first) };
            let idx = self.ops.insert(op);
            submitted(idx, &mut self.ops[idx]);
            n += 1;
            i += count;
        }
        self.returning.clear();
        n
    }
}
