//! Wakers that name a connection, so one task can drive every connection of
//! a core.
//!
//! A tokio task per connection costs ~256 bytes while it is parked, which was
//! the largest share of an idle session's memory. Instead, each core runs one
//! task; the waker it gives a connection's pending operation (an io_uring
//! poll, read or write) carries the connection's token in its data word and
//! needs no allocation: waking it appends the token to the core's
//! [`WakeQueue`] and wakes the core's task, which then services exactly the
//! connections that have something to do.
//!
//! The queue is found through a fixed global table indexed by the queue id in
//! the token's top bits, so a waker is thread-safe and `Send` as the `Waker`
//! contract requires (in practice the drivers wake on their own thread).

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::{RawWaker, RawWakerVTable, Waker};

use futures_util::task::AtomicWaker;

/// A token with this bit set wakes nothing: its completion only needs to be
/// collected at the next turn (e.g. buffers handed back to the kernel).
pub const QUIET: u32 = 1 << 30;

/// Most wake queues a process creates (one per core per driver start).
const MAX_QUEUES: usize = 4096;

static QUEUES: [AtomicPtr<WakeQueue>; MAX_QUEUES] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; MAX_QUEUES];
static NEXT_QUEUE: AtomicUsize = AtomicUsize::new(0);

/// The tokens of one core whose operations completed, and the core's task.
pub struct WakeQueue {
    id: usize,
    ready: Mutex<Vec<u32>>,
    main: AtomicWaker,
}

impl WakeQueue {
    /// Creates a queue for one core. Queues live for the whole process (a
    /// waker may outlive the core that issued it); there is one per core.
    pub fn new() -> &'static WakeQueue {
        let id = NEXT_QUEUE.fetch_add(1, Ordering::Relaxed);
        assert!(id < MAX_QUEUES, "too many wake queues");
        let q: &'static WakeQueue = Box::leak(Box::new(WakeQueue {
            id,
            ready: Mutex::new(Vec::new()),
            main: AtomicWaker::new(),
        }));
        QUEUES[id].store(q as *const WakeQueue as *mut WakeQueue, Ordering::Release);
        q
    }

    /// The waker for `token`.
    pub fn waker(&'static self, token: u32) -> Waker {
        let data = ((self.id as u64) << 32 | token as u64) as usize as *const ();
        // SAFETY: the vtable functions below only decode `data` as a
        // (queue id, token) pair; nothing is dereferenced through it.
        unsafe { Waker::from_raw(RawWaker::new(data, &VTABLE)) }
    }

    /// Registers the core's task, woken whenever a token is queued.
    pub fn register(&self, waker: &Waker) {
        self.main.register(waker);
    }

    /// Moves the queued tokens into `out` (which is cleared first).
    pub fn take(&self, out: &mut Vec<u32>) {
        out.clear();
        std::mem::swap(&mut *self.ready.lock().unwrap(), out);
    }

    pub fn is_empty(&self) -> bool {
        self.ready.lock().unwrap().is_empty()
    }

    fn wake(&self, token: u32) {
        self.ready.lock().unwrap().push(token);
        if token & QUIET == 0 {
            self.main.wake();
        }
    }
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake, drop);

fn clone(data: *const ()) -> RawWaker {
    RawWaker::new(data, &VTABLE)
}

fn wake(data: *const ()) {
    let v = data as usize as u64;
    let (id, token) = ((v >> 32) as usize, v as u32);
    let q = QUEUES[id].load(Ordering::Acquire);
    if !q.is_null() {
        // SAFETY: queues are leaked, never freed.
        unsafe { &*q }.wake(token);
    }
}

fn drop(_: *const ()) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakers_queue_their_token_and_wake_the_core_task() {
        let q = WakeQueue::new();
        let woken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl std::task::Wake for Flag {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        q.register(&Waker::from(std::sync::Arc::new(Flag(woken.clone()))));
        let w = q.waker(7);
        let w2 = w.clone();
        assert!(w.will_wake(&w2));
        assert!(!w.will_wake(&q.waker(8)));
        std::thread::spawn(move || w2.wake()).join().unwrap();
        w.wake_by_ref();
        let mut got = Vec::new();
        q.take(&mut got);
        assert_eq!(got, vec![7, 7]);
        assert!(woken.load(Ordering::SeqCst));
        assert!(q.is_empty());
    }
}
