//! The seam between `kata-gpu vfio` and the kernel: every sysfs attribute write goes
//! through [`Sysfs`], so that tests can stand in a kernel that moves devices between
//! drivers as the real one does, or refuses to.

use std::fs;
use std::io::{self, Write as _};
use std::path::Path;

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

impl Sysfs for KernelSysfs {
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
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

/// A simulated host's kernel, for tests: [`kata_gpu_simhost::SimHost::kernel_write`].
#[cfg(test)]
pub(crate) struct SimKernel<'a>(pub(crate) &'a kata_gpu_simhost::SimHost);

#[cfg(test)]
impl Sysfs for SimKernel<'_> {
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        self.0.kernel_write(path, value)
    }
}
