//! The seam between `kata-gpu vfio` and the kernel: every sysfs attribute write goes
//! through [`Sysfs`], so that tests can stand in a kernel that moves devices between
//! drivers as the real one does, or refuses to.

use std::fs;
use std::io::{self, Write as _};
use std::path::Path;
use std::time::Duration;

/// Writes to sysfs attributes. On a real host the kernel acts on the write itself
/// (`drivers_probe` binds, `unbind` releases) before it returns; a simulated host needs
/// a stand-in for that reaction, which is why this is a trait and not a function.
pub trait Sysfs {
    /// Writes `value` whole to the attribute at `path` (already under the host's root).
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
}

/// The real thing: a plain file write, which the kernel acts on. On a simulated host
/// nothing acts on it, so devices stay where they were.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelSysfs;

/// How long an `unbind` write may take: the kernel returns once the driver's remove has
/// finished, and nvidia's waits for every process holding the GPU open. Past this the
/// write is given up on (it finishes by itself when the holder lets go).
pub const UNBIND_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes `value` to `path` on a thread of its own, waiting at most `limit`: an
/// `io::ErrorKind::TimedOut` error when the write has not returned by then (the thread is
/// left to finish it).
pub fn write_within(path: &Path, value: &str, limit: Duration) -> io::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (path, value) = (path.to_path_buf(), value.to_owned());
    let shown = path.display().to_string();
    std::thread::Builder::new()
        .name("sysfs-write".to_owned())
        .spawn(move || {
            let _ = tx.send(KernelSysfs::write_now(&path, &value));
        })?;
    rx.recv_timeout(limit).unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("writing {shown} did not finish within {limit:?}"),
        ))
    })
}

impl KernelSysfs {
    fn write_now(path: &Path, value: &str) -> io::Result<()> {
        // `create` only matters on a simulated host: sysfs attributes already exist, and
        // the kernel takes each write whole, so truncation is moot there.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.write_all(value.as_bytes())
    }
}

impl Sysfs for KernelSysfs {
    /// A plain write; an `unbind` is bounded by [`UNBIND_TIMEOUT`].
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        if path.file_name().is_some_and(|n| n == "unbind") {
            write_within(path, value, UNBIND_TIMEOUT)
        } else {
            Self::write_now(path, value)
        }
    }
}

/// A simulated host's kernel, for tests: [`kata_gpu_simhost::SimHost::kernel_write`].
#[cfg(test)]
pub(crate) struct SimKernel<'a>(pub(crate) &'a kata_gpu_simhost::SimHost);

#[cfg(test)]
impl Sysfs for SimKernel<'_> {
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        self.0.kernel_write(path, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that never returns (a FIFO no one reads: its open blocks) is given up on
    /// after the limit, with `TimedOut`.
    #[test]
    fn a_write_that_does_not_return_is_given_up_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("unbind");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let start = std::time::Instant::now();
        let e =
            write_within(&fifo, "0000:41:00.0", Duration::from_millis(200)).expect_err("timed out");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
        // Let the left thread finish its write.
        let mut reader = fs::File::open(&fifo).expect("open the fifo for reading");
        let mut got = String::new();
        std::io::Read::read_to_string(&mut reader, &mut got).expect("read");
        assert_eq!(got, "0000:41:00.0");
        // A write that returns in time is just a write.
        let file = dir.path().join("bind");
        write_within(&file, "x", Duration::from_secs(5)).expect("write");
        assert_eq!(fs::read_to_string(&file).expect("read"), "x");
    }
}
