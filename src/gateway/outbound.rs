//! A connection's queue of bytes to send.
//!
//! Frames are kept as `Bytes` chunks so that one encoded push is shared by
//! every recipient (a broadcast to a million sessions is one allocation plus a
//! reference count per session). Empty, the queue allocates nothing: idle
//! connections pay only its inline size.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::protocol::{EncodeError, Frame};

#[derive(Default)]
pub struct Outbound {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Outbound {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Queues an already encoded frame (shared, not copied).
    pub fn push(&mut self, bytes: Bytes) {
        self.len += bytes.len();
        self.chunks.push_back(bytes);
    }

    /// Encodes and queues a frame of this connection's own (replies, closes).
    pub fn encode(&mut self, frame: &Frame) -> Result<(), EncodeError> {
        let mut buf = BytesMut::with_capacity(frame.encoded_len());
        frame.encode(&mut buf)?;
        self.push(buf.freeze());
        Ok(())
    }

    /// Drops the oldest queued frames (whole frames: the stream stays valid)
    /// until at most `limit` bytes are queued, keeping at least the newest.
    /// Returns how many were dropped.
    pub fn drop_oldest(&mut self, limit: usize) -> u64 {
        let mut dropped = 0;
        while self.len > limit && self.chunks.len() > 1 {
            let c = self.chunks.pop_front().expect("more than one chunk");
            self.len -= c.len();
            dropped += 1;
        }
        dropped
    }

    /// Drops everything queued and frees the queue's memory.
    pub fn clear(&mut self) {
        *self = Outbound::default();
    }

    /// Takes everything queued as one buffer for a single write: a lone chunk
    /// is handed over as is (no copy), several are joined.
    pub fn take(&mut self) -> Option<Bytes> {
        let out = match self.chunks.len() {
            0 => return None,
            1 => self.chunks.pop_front(),
            _ => {
                let mut joined = BytesMut::with_capacity(self.len);
                for c in self.chunks.drain(..) {
                    joined.extend_from_slice(&c);
                }
                Some(joined.freeze())
            }
        };
        self.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_single_chunks_and_joins_several() {
        let mut o = Outbound::default();
        assert!(o.take().is_none());
        let shared = Bytes::from_static(b"push");
        o.push(shared.clone());
        let taken = o.take().unwrap();
        assert_eq!(
            taken.as_ptr(),
            shared.as_ptr(),
            "a lone chunk is not copied"
        );
        o.push(Bytes::from_static(b"ab"));
        o.encode(&Frame::ping(1)).unwrap();
        assert_eq!(o.len(), 2 + 16);
        assert_eq!(o.take().unwrap().len(), 18);
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn drop_oldest_keeps_the_newest_whole_frames() {
        let mut o = Outbound::default();
        for i in 0..5u8 {
            o.push(Bytes::from(vec![i; 10]));
        }
        assert_eq!(o.drop_oldest(25), 3);
        assert_eq!(o.len(), 20);
        assert_eq!(&o.take().unwrap()[..], &[[3u8; 10], [4u8; 10]].concat()[..]);
    }
}
