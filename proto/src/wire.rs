//! Big-endian primitives shared by the binary client protocol and the control↔edge link:
//! a bounds-checked reader over a byte slice and the matching writers.

use bytes::BufMut;

/// The input ended before a field did, or a field is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated: {0} needs more bytes")]
    Truncated(&'static str),
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("{0} bytes trailing after the body")]
    Trailing(usize),
    #[error("{0} is too long")]
    TooLong(&'static str),
}

/// A cursor over a byte slice; every read checks the bounds and names the field it was reading.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return Err(WireError::Truncated(field));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.bytes(1, field)?[0])
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        let b = self.bytes(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        let b = self.bytes(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        let b = self.bytes(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// `str8`: one length byte, then UTF-8.
    pub fn str8(&mut self, field: &'static str) -> Result<&'a str, WireError> {
        let n = self.u8(field)? as usize;
        std::str::from_utf8(self.bytes(n, field)?).map_err(|_| WireError::NotUtf8(field))
    }

    /// `str16`: two length bytes, then UTF-8.
    pub fn str16(&mut self, field: &'static str) -> Result<&'a str, WireError> {
        let n = self.u16(field)? as usize;
        std::str::from_utf8(self.bytes(n, field)?).map_err(|_| WireError::NotUtf8(field))
    }

    /// `bytes32`: four length bytes, then raw bytes; returns the byte range within the input so a
    /// caller holding the input as `Bytes` can slice it without copying.
    pub fn bytes32(&mut self, field: &'static str) -> Result<std::ops::Range<usize>, WireError> {
        let n = self.u32(field)? as usize;
        let start = self.pos;
        self.bytes(n, field)?;
        Ok(start..start + n)
    }

    /// Fails when bytes are left over after a complete body.
    pub fn finish(&self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }
}

/// Writes a `str8`; fails when `s` is longer than 255 bytes.
pub fn put_str8(out: &mut impl BufMut, s: &[u8], field: &'static str) -> Result<(), WireError> {
    let n = u8::try_from(s.len()).map_err(|_| WireError::TooLong(field))?;
    out.put_u8(n);
    out.put_slice(s);
    Ok(())
}

/// Writes a `str16`; fails when `s` is longer than 65,535 bytes.
pub fn put_str16(out: &mut impl BufMut, s: &[u8], field: &'static str) -> Result<(), WireError> {
    let n = u16::try_from(s.len()).map_err(|_| WireError::TooLong(field))?;
    out.put_u16(n);
    out.put_slice(s);
    Ok(())
}

/// Writes a `bytes32`.
pub fn put_bytes32(out: &mut impl BufMut, s: &[u8], field: &'static str) -> Result<(), WireError> {
    let n = u32::try_from(s.len()).map_err(|_| WireError::TooLong(field))?;
    out.put_u32(n);
    out.put_slice(s);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_primitive() {
        let mut out = Vec::new();
        out.put_u8(7);
        out.put_u16(0x1234);
        out.put_u32(0xdead_beef);
        out.put_u64(u64::MAX - 1);
        put_str8(&mut out, b"room", "room").unwrap();
        put_str16(&mut out, b"token", "token").unwrap();
        put_bytes32(&mut out, b"{\"a\":1}", "data").unwrap();
        let mut r = Reader::new(&out);
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.u16("b").unwrap(), 0x1234);
        assert_eq!(r.u32("c").unwrap(), 0xdead_beef);
        assert_eq!(r.u64("d").unwrap(), u64::MAX - 1);
        assert_eq!(r.str8("e").unwrap(), "room");
        assert_eq!(r.str16("f").unwrap(), "token");
        let range = r.bytes32("g").unwrap();
        assert_eq!(&out[range], b"{\"a\":1}");
        r.finish().unwrap();
    }

    #[test]
    fn names_the_field_that_is_truncated() {
        let mut r = Reader::new(&[3, b'a']);
        assert_eq!(r.str8("room"), Err(WireError::Truncated("room")));
        let r = Reader::new(&[1, 2]);
        assert_eq!(r.finish(), Err(WireError::Trailing(2)));
    }

    #[test]
    fn refuses_to_write_overlong_fields() {
        let mut out = Vec::new();
        assert_eq!(
            put_str8(&mut out, &[0; 256], "kind"),
            Err(WireError::TooLong("kind"))
        );
    }
}
