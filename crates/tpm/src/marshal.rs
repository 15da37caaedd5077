//! Big-endian TPM marshalling (TPM 2.0 Part 2 §5): the few primitives the structures here need.
//!
//! A [`Reader`] never reads past its input: every read returns [`Truncated`] instead.

/// The input ended before the structure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the structure ends early")]
pub struct Truncated;

/// Reads TPM marshalled values from a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if self.rest.len() < n {
            return Err(Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, Truncated> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `TPM2B_*`: a `u16` size, then that many bytes.
    pub fn sized(&mut self) -> Result<&'a [u8], Truncated> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
    }

    /// What is left unread.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// A sized buffer (`TPM2B_*`) did not fit in its `u16` size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a TPM2B value is larger than 65535 bytes")]
pub struct TooLarge;

/// Appends `bytes` as a `TPM2B_*` (u16 size, then the bytes).
pub fn put_sized(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), TooLarge> {
    let n = u16::try_from(bytes.len()).map_err(|_| TooLarge)?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// `bytes` as a new `TPM2B_*`.
pub fn sized(bytes: &[u8]) -> Result<Vec<u8>, TooLarge> {
    let mut out = Vec::with_capacity(bytes.len() + 2);
    put_sized(&mut out, bytes)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads stop at the end of the input instead of panicking, whatever the declared sizes.
    #[test]
    fn reads_past_the_end_are_truncated() {
        let mut r = Reader::new(&[0x00, 0x05, 1, 2]);
        assert_eq!(r.sized(), Err(Truncated));
        let mut r = Reader::new(&[0x00]);
        assert_eq!(r.u16(), Err(Truncated));
        let mut r = Reader::new(&[0, 0, 0, 1, 0xAA]);
        assert_eq!(r.u32(), Ok(1));
        assert_eq!(r.rest(), &[0xAA]);
    }

    #[test]
    fn sized_round_trips() {
        let s = sized(b"abc").unwrap();
        assert_eq!(s, [0, 3, b'a', b'b', b'c']);
        assert_eq!(Reader::new(&s).sized(), Ok(&b"abc"[..]));
        assert_eq!(sized(&vec![0; 70_000]), Err(TooLarge));
    }

    proptest::proptest! {
        /// Any byte string gives a value or `Truncated`, never a panic.
        #[test]
        fn reader_is_total(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut r = Reader::new(&bytes);
            while r.sized().is_ok() && !r.is_empty() {}
        }
    }
}
