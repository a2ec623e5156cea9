//! Fuzz target: the Miop v1 decoder on arbitrary bytes.
//!
//! Decodes the input as a stream of frames with both `decode` (slice) and
//! `decode_buf` (BytesMut), and checks that:
//! - neither panics, and they agree frame by frame and on the final outcome;
//! - nothing claims to consume more bytes than it was given;
//! - every decoded frame re-encodes, and the re-encoding decodes to the same frame.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use miop::protocol::{decode, decode_buf, Frame, HEADER_LEN, MAX_FRAME_LEN};

fn reencode(frame: &Frame) {
    let bytes = frame.to_bytes().expect("a decoded frame must re-encode");
    assert_eq!(bytes.len(), frame.encoded_len());
    let (again, n) = decode(&bytes, MAX_FRAME_LEN)
        .expect("re-encoded frame must decode")
        .expect("re-encoded frame must be complete");
    assert_eq!(n, bytes.len());
    assert_eq!(&again, frame);
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut buf = BytesMut::from(data);
    loop {
        let a = decode(rest, MAX_FRAME_LEN);
        let before = buf.len();
        let b = decode_buf(&mut buf, MAX_FRAME_LEN);
        match (a, b) {
            (Ok(Some((fa, n))), Ok(Some(fb))) => {
                assert!(
                    n >= HEADER_LEN && n <= rest.len(),
                    "consumed {n} of {}",
                    rest.len()
                );
                assert_eq!(
                    before - buf.len(),
                    n,
                    "decode and decode_buf consumed differently"
                );
                assert_eq!(fa, fb, "decode and decode_buf disagree");
                reencode(&fa);
                rest = &rest[n..];
            }
            (Ok(None), Ok(None)) => {
                assert_eq!(&buf[..], rest, "decode_buf consumed an incomplete frame");
                break;
            }
            (Err(ea), Err(eb)) => {
                assert_eq!(ea, eb, "decode and decode_buf disagree");
                assert!(rest.len() >= HEADER_LEN, "error before a whole header");
                break;
            }
            (a, b) => panic!("decode gave {a:?}, decode_buf gave {b:?}"),
        }
    }
});
