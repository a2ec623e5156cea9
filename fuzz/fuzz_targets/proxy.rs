//! Fuzz target: the PROXY protocol header parser on arbitrary bytes.
//!
//! Parses every prefix of the input (up to one byte past the longest
//! header, beyond which nothing can change) and the whole input, and checks
//! that:
//! - nothing panics, and no header claims more bytes than it was given or
//!   than `MAX_HEADER_LEN`;
//! - `MAX_HEADER_LEN` bytes always get an answer (never Incomplete);
//! - more bytes never change an answer: once an error, the same error; once
//!   a header, the same header; Incomplete only before either;
//! - a header depends only on its own bytes (re-parsing exactly `consumed`
//!   bytes gives it again), and names a source address only when it starts
//!   with "PROXY TCP" or the v2 signature;
//! - bytes that cannot start either signature are refused at once.

#![no_main]

use libfuzzer_sys::fuzz_target;
use miop::transport::proxy::{parse, Parsed, ProxyError, MAX_HEADER_LEN};

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

fuzz_target!(|data: &[u8]| {
    let full = parse(data);
    if data.len() >= MAX_HEADER_LEN {
        assert_ne!(
            full,
            Ok(Parsed::Incomplete),
            "no answer after {} bytes",
            data.len()
        );
    }
    if let Ok(Parsed::Header { consumed, source }) = full {
        assert!(
            consumed <= data.len(),
            "consumed {consumed} of {}",
            data.len()
        );
        assert!(consumed <= MAX_HEADER_LEN, "consumed {consumed}");
        assert_eq!(
            parse(&data[..consumed]),
            full,
            "header depends on later bytes"
        );
        if source.is_some() {
            assert!(data.starts_with(b"PROXY TCP") || data.starts_with(V2_SIGNATURE));
        }
    }
    if data.first().is_some_and(|&b| b != b'P' && b != b'\r') {
        assert_eq!(full, Err(ProxyError::Missing));
    }

    // Walk the prefixes: the answer may go from Incomplete to something
    // else once, and then stays.
    let mut settled: Option<(usize, Result<Parsed, ProxyError>)> = None;
    for k in 0..=data.len().min(MAX_HEADER_LEN + 1) {
        let got = parse(&data[..k]);
        match settled {
            Some((at, answer)) => assert_eq!(got, answer, "answer at {at} bytes changed at {k}"),
            None if got != Ok(Parsed::Incomplete) => {
                if let Ok(Parsed::Header { consumed, .. }) = got {
                    assert_eq!(consumed, k, "a header answered before its last byte");
                }
                settled = Some((k, got));
            }
            None => {}
        }
    }
    match settled {
        Some((_, answer)) => assert_eq!(full, answer),
        None => assert_eq!(full, Ok(Parsed::Incomplete)),
    }
});
