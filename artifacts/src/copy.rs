//! Copying a file while hashing it, in one read pass. Large files are pipelined: this
//! thread reads and writes, a helper hashes the same buffers, so the copy costs about
//! max(hash, read + write) rather than their sum.

use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::thread;

use crate::digest::{Hasher, Sha256Digest};

/// The buffer size of one read.
const CHUNK: usize = 1 << 20;
/// Buffers in flight between the copying thread and the hashing one.
const BUFFERS: usize = 4;

/// Which side of a copy failed.
#[derive(Debug)]
pub(crate) enum CopyError {
    /// Reading the source.
    Read(io::Error),
    /// Writing the destination.
    Write(io::Error),
}

/// Copies everything `reader` yields to `out`, hashing it on the way; `written` hears the
/// running total after each write (to start write-back early).
pub(crate) fn copy_hashing(
    reader: &mut dyn Read,
    out: &mut dyn Write,
    size_hint: u64,
    written: &mut dyn FnMut(u64),
) -> Result<(u64, Sha256Digest), CopyError> {
    if size_hint < 4 * CHUNK as u64 {
        return copy_inline(reader, out);
    }
    let (to_hash, hash_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(BUFFERS);
    let (to_free, free_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
    thread::scope(|s| {
        let hashing = s.spawn(move || {
            let mut h = Hasher::new();
            for (buf, n) in hash_rx {
                h.update(&buf[..n]);
                // The copier may have finished and gone; then the buffer is just dropped.
                let _ = to_free.send(buf);
            }
            h.finish()
        });
        let mut total = 0u64;
        let mut spare = BUFFERS;
        let result = loop {
            let mut buf = if spare > 0 {
                spare -= 1;
                vec![0u8; CHUNK]
            } else {
                match free_rx.recv() {
                    Ok(b) => b,
                    Err(_) => {
                        break Err(CopyError::Read(io::Error::other("hashing thread stopped")))
                    }
                }
            };
            let n = match fill(reader, &mut buf) {
                Ok(n) => n,
                Err(e) => break Err(CopyError::Read(e)),
            };
            if n == 0 {
                break Ok(());
            }
            if let Err(e) = out.write_all(&buf[..n]) {
                break Err(CopyError::Write(e));
            }
            total += n as u64;
            written(total);
            if to_hash.send((buf, n)).is_err() {
                break Err(CopyError::Read(io::Error::other("hashing thread stopped")));
            }
        };
        drop(to_hash);
        let digest = hashing
            .join()
            .map_err(|_| CopyError::Read(io::Error::other("hashing thread panicked")));
        result?;
        Ok((total, digest?))
    })
}

fn copy_inline(
    reader: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<(u64, Sha256Digest), CopyError> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; CHUNK.min(256 << 10)];
    let mut total = 0u64;
    loop {
        let n = fill(reader, &mut buf).map_err(CopyError::Read)?;
        if n == 0 {
            return Ok((total, h.finish()));
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}

/// Reads until `buf` is full or the input ends.
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_paths_copy_and_hash_every_byte() {
        for len in [0usize, 10, CHUNK + 7, 9 * CHUNK + 3] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut out = Vec::new();
            let (n, d) =
                copy_hashing(&mut &data[..], &mut out, len as u64, &mut |_| {}).expect("in memory");
            assert_eq!(n as usize, len);
            assert_eq!(out, data);
            assert_eq!(d, Sha256Digest::of(&data));
        }
    }

    #[test]
    fn a_failing_writer_is_reported_as_such() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::StorageFull))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let data = vec![1u8; 8 * CHUNK];
        let r = copy_hashing(&mut &data[..], &mut Full, data.len() as u64, &mut |_| {});
        assert!(matches!(r, Err(CopyError::Write(_))), "{r:?}");
    }
}
