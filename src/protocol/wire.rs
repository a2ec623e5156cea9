//! Primitive field readers and writers shared by the body codecs.
//!
//! `Reader` never panics: every read checks the remaining length and reports
//! which field was short, which becomes the text of a Malformed error.

use bytes::BufMut;

pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

pub(super) type Field<T> = Result<T, &'static str>;

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    pub(super) fn position(&self) -> usize {
        self.pos
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(super) fn bytes(&mut self, n: usize, what: &'static str) -> Field<&'a [u8]> {
        if self.remaining() < n {
            return Err(what);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Field<u8> {
        Ok(self.bytes(1, what)?[0])
    }

    pub(super) fn u16(&mut self, what: &'static str) -> Field<u16> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Field<u32> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(super) fn u64(&mut self, what: &'static str) -> Field<u64> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A string prefixed by a u8 length.
    pub(super) fn str8(&mut self, what: &'static str) -> Field<&'a str> {
        let n = self.u8(what)? as usize;
        std::str::from_utf8(self.bytes(n, what)?).map_err(|_| what)
    }

    /// A string prefixed by a u16 length.
    pub(super) fn str16(&mut self, what: &'static str) -> Field<&'a str> {
        let n = self.u16(what)? as usize;
        std::str::from_utf8(self.bytes(n, what)?).map_err(|_| what)
    }

    pub(super) fn finish(&self) -> Field<()> {
        if self.remaining() != 0 {
            return Err("trailing bytes after body");
        }
        Ok(())
    }
}

pub(super) fn put_str8(out: &mut impl BufMut, s: &str) {
    out.put_u8(s.len() as u8);
    out.put_slice(s.as_bytes());
}

pub(super) fn put_str16(out: &mut impl BufMut, s: &str) {
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}
