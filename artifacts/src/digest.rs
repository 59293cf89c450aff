//! SHA-256 digests: the `sha256:<hex>` form of OCI descriptors, and a reader that hashes
//! what passes through it.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256Digest {
        Sha256Digest(Sha256::digest(bytes).into())
    }

    /// Parses 64 lowercase hex digits.
    pub fn from_hex(hex: &str) -> Option<Sha256Digest> {
        let b = hex.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Sha256Digest(out))
    }

    /// Parses the OCI form `sha256:<64 lowercase hex digits>`.
    pub fn parse_oci(s: &str) -> Option<Sha256Digest> {
        s.strip_prefix("sha256:").and_then(Sha256Digest::from_hex)
    }

    /// The 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        kata_gpu_fsutil::hex(&self.0)
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// `sha256:<hex>`, the OCI form.
impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A reader that hashes and counts every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads to the end, then returns the size and digest of everything read.
    pub fn finish(mut self) -> io::Result<(u64, Sha256Digest)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.count, Sha256Digest(self.hasher.finalize().into())))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// An incremental SHA-256.
#[derive(Default, Clone)]
pub struct Hasher(Sha256);

impl Hasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Hasher(Sha256::new())
    }
    /// Hashes `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    /// The digest of everything hashed.
    pub fn finish(self) -> Sha256Digest {
        Sha256Digest(self.0.finalize().into())
    }
}

/// Hashes everything `reader` yields.
pub fn hash_reader(reader: impl Read) -> io::Result<(u64, Sha256Digest)> {
    HashingReader::new(reader).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let d = Sha256Digest::of(b"abc");
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Sha256Digest::parse_oci(&d.to_string()), Some(d));
        assert_eq!(Sha256Digest::from_hex("BA78"), None);
        assert_eq!(Sha256Digest::parse_oci("sha512:00"), None);
        assert_eq!(Sha256Digest::parse_oci("sha256:../../etc/passwd"), None);
    }

    #[test]
    fn the_reader_hashes_what_it_reads() {
        let (n, d) = hash_reader(&b"abc"[..]).expect("in memory");
        assert_eq!((n, d), (3, Sha256Digest::of(b"abc")));
    }
}
