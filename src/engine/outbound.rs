//! A connection's queue of bytes to send.
//!
//! Pushes are queued as shared `Bytes` chunks, so one encoded push is shared by
//! every recipient on a core (a broadcast is one copy per core plus a reference
//! count per session). The connection's own small frames (pongs, acks, errors)
//! are encoded into one growing tail buffer, so a burst of replies is one
//! chunk. Everything queued goes out in one gathered write
//! ([`Outbound::take_batch`]), and the bytes of that write count against the
//! connection's limit until the driver reports it written.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::protocol::{EncodeError, Frame};

/// Most chunks handed to one gathered write (well under UIO_MAXIOV).
pub const MAX_BATCH_CHUNKS: usize = 64;

#[derive(Default)]
pub struct Outbound {
    chunks: VecDeque<Bytes>,
    /// The connection's own frames, after every chunk in `chunks`.
    tail: BytesMut,
    /// Bytes in `chunks` and `tail`.
    queued: usize,
    /// Bytes handed to the driver and not yet reported written.
    in_flight: usize,
}

impl Outbound {
    /// Bytes the connection holds: queued plus being written.
    pub fn len(&self) -> usize {
        self.queued + self.in_flight
    }

    pub fn queued(&self) -> usize {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            let t = self.tail.split().freeze();
            self.chunks.push_back(t);
        }
    }

    /// Queues an already encoded frame (shared, not copied).
    pub fn push(&mut self, bytes: Bytes) {
        self.seal_tail();
        self.queued += bytes.len();
        self.chunks.push_back(bytes);
    }

    /// Encodes one of the connection's own frames at the end of the queue.
    pub fn encode(&mut self, frame: &Frame) -> Result<(), EncodeError> {
        let before = self.tail.len();
        if self.tail.capacity() - before < frame.encoded_len() {
            self.tail.reserve(frame.encoded_len().max(64));
        }
        frame.encode(&mut self.tail)?;
        self.queued += self.tail.len() - before;
        Ok(())
    }

    /// Drops the oldest queued frames (whole frames, never the batch being
    /// written: the stream stays valid) until at most `limit` bytes are held,
    /// keeping at least the newest. Returns how many were dropped.
    pub fn drop_oldest(&mut self, limit: usize) -> u64 {
        self.seal_tail();
        let mut dropped = 0;
        while self.len() > limit && self.chunks.len() > 1 {
            let c = self.chunks.pop_front().expect("more than one chunk");
            self.queued -= c.len();
            dropped += 1;
        }
        dropped
    }

    /// Drops everything queued (not what is being written).
    pub fn clear_queued(&mut self) {
        self.chunks = VecDeque::new();
        self.tail = BytesMut::new();
        self.queued = 0;
    }

    /// Moves up to [`MAX_BATCH_CHUNKS`] queued chunks into one batch for a
    /// gathered write. `None` when nothing is queued.
    pub fn take_batch(&mut self) -> Option<Vec<Bytes>> {
        self.seal_tail();
        if self.chunks.is_empty() {
            return None;
        }
        let n = self.chunks.len().min(MAX_BATCH_CHUNKS);
        let batch: Vec<Bytes> = self.chunks.drain(..n).collect();
        let bytes: usize = batch.iter().map(Bytes::len).sum();
        self.queued -= bytes;
        self.in_flight += bytes;
        if self.chunks.is_empty() {
            // Give the deque's memory back: idle connections hold none.
            self.chunks = VecDeque::new();
        }
        Some(batch)
    }

    /// The batch handed out by `take_batch` has been written.
    pub fn written(&mut self) {
        self.in_flight = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_pushes_and_coalesces_own_frames() {
        let mut o = Outbound::default();
        assert!(o.take_batch().is_none());
        let shared = Bytes::from_static(b"push");
        o.encode(&Frame::pong(1)).unwrap();
        o.encode(&Frame::pong(2)).unwrap();
        o.push(shared.clone());
        o.encode(&Frame::pong(3)).unwrap();
        assert_eq!(o.len(), 16 + 16 + 4 + 16);
        let batch = o.take_batch().unwrap();
        assert_eq!(batch.len(), 3, "two pongs in one chunk, the push, one pong");
        assert_eq!(batch[0].len(), 32);
        assert_eq!(batch[1].as_ptr(), shared.as_ptr(), "the push is not copied");
        assert_eq!(o.len(), 52, "in flight until written");
        assert_eq!(o.queued(), 0);
        o.written();
        assert!(o.is_empty());
    }

    #[test]
    fn drop_oldest_keeps_the_newest_whole_frames_and_the_batch_in_flight() {
        let mut o = Outbound::default();
        o.push(Bytes::from(vec![9u8; 10]));
        let _in_flight = o.take_batch().unwrap();
        for i in 0..5u8 {
            o.push(Bytes::from(vec![i; 10]));
        }
        assert_eq!(o.drop_oldest(35), 3, "10 in flight + 2 × 10 queued <= 35");
        assert_eq!(o.len(), 30);
        o.written();
        let b = o.take_batch().unwrap();
        assert_eq!(b.concat(), [[3u8; 10], [4u8; 10]].concat());
    }

    #[test]
    fn batches_are_capped() {
        let mut o = Outbound::default();
        for _ in 0..MAX_BATCH_CHUNKS + 3 {
            o.push(Bytes::from_static(b"x"));
        }
        assert_eq!(o.take_batch().unwrap().len(), MAX_BATCH_CHUNKS);
        o.written();
        assert_eq!(o.take_batch().unwrap().len(), 3);
    }
}
