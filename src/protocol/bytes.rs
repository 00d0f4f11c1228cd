//! A bounded cursor for decoding untrusted bytes.
//!
//! `bytes::Buf` panics when asked for more than is there; every decoder of
//! bytes from the network or disk goes through [`Reader`] instead, which turns
//! every shortfall, oversize length or bad value into a [`DecodeError`] that
//! names the field. Writing uses `bytes::BufMut` directly.

// Sizes and counts here come from the network or the disk: no silent
// truncation (tests may build what they like).
#![cfg_attr(not(test), warn(clippy::cast_possible_truncation))]

use thiserror::Error;

/// Why a byte sequence could not be decoded. `what` names the field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("truncated input: {what} needs {needed} bytes at offset {offset}, only {available} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// How many bytes it needs.
        needed: usize,
        /// How many were left.
        available: usize,
    },
    /// A length prefix is over the bound for that field.
    #[error("{what} is {len} long, over the limit of {max}")]
    TooLong {
        /// The field.
        what: &'static str,
        /// The length found.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// A field holds a value outside its domain (an unknown tag, say).
    #[error("{what} has the invalid value {value}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// A text field is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    NotUtf8 {
        /// The field.
        what: &'static str,
    },
    /// Bytes are left over after a complete structure.
    #[error("{count} unexpected bytes after {what}")]
    Trailing {
        /// The structure.
        what: &'static str,
        /// How many bytes were left.
        count: usize,
    },
}

/// A read cursor over a byte slice that never panics. Integers are little-endian.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

macro_rules! read_int {
    ($name:ident, $ty:ty) => {
        #[doc = concat!("Reads a little-endian `", stringify!($ty), "`.")]
        pub fn $name(&mut self, what: &'static str) -> Result<$ty, DecodeError> {
            Ok(<$ty>::from_le_bytes(self.array(what)?))
        }
    };
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Offset of the next byte to read.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated {
                what,
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Takes the next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    read_int!(u8, u8);
    read_int!(u16, u16);
    read_int!(u32, u32);
    read_int!(u64, u64);
    read_int!(i64, i64);

    /// Reads a `u32` length prefix, checks it against `max`, then takes that many bytes.
    pub fn bytes_u32(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(what)?;
        if u64::from(len) > max as u64 {
            return Err(DecodeError::TooLong { what, len: u64::from(len), max: max as u64 });
        }
        self.bytes(len as usize, what)
    }

    /// Reads a `u16` length prefix, checks it against `max`, then takes that many bytes.
    pub fn bytes_u16(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u16(what)?;
        if usize::from(len) > max {
            return Err(DecodeError::TooLong { what, len: u64::from(len), max: max as u64 });
        }
        self.bytes(usize::from(len), what)
    }

    /// Reads a `u16`-prefixed UTF-8 string of at most `max` bytes.
    pub fn str_u16(&mut self, what: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes_u16(what, max)?).map_err(|_| DecodeError::NotUtf8 { what })
    }

    /// Fails unless every byte has been read.
    pub fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::Trailing { what, count }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn reads_what_bufmut_wrote() {
        let mut v = Vec::new();
        v.put_u8(7);
        v.put_u16_le(513);
        v.put_u64_le(u64::MAX - 1);
        v.put_u16_le(3);
        v.put_slice(b"abc");
        let mut r = Reader::new(&v);
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.u16("b").unwrap(), 513);
        assert_eq!(r.u64("c").unwrap(), u64::MAX - 1);
        assert_eq!(r.str_u16("d", 10).unwrap(), "abc");
        r.finish("all").unwrap();
    }

    #[test]
    fn every_shortfall_is_an_error() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert!(matches!(r.u32("x"), Err(DecodeError::Truncated { what: "x", needed: 4, available: 3, .. })));
        let mut r = Reader::new(&[5, 0, b'a']);
        assert!(matches!(r.str_u16("s", 100), Err(DecodeError::Truncated { .. })));
        let mut r = Reader::new(&[5, 0, b'a']);
        assert!(matches!(r.str_u16("s", 2), Err(DecodeError::TooLong { len: 5, max: 2, .. })));
        let mut r = Reader::new(&[1, 0, 0xff]);
        assert_eq!(r.str_u16("s", 2), Err(DecodeError::NotUtf8 { what: "s" }));
    }
}
