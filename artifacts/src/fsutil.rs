//! The file-system edge: durable writes, atomic link switches, the store lock, free space.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{io_at, Error, Result};

/// Nanoseconds since the Unix epoch.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A name no other process or call of this one uses: `<prefix><pid>-<ns>-<n>`.
pub(crate) fn unique_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}{}-{}-{}",
        std::process::id(),
        now_ns(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Flushes a directory's entries to disk.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir, "sync directory"))
}

/// The mode of every directory the store creates: the umask only takes bits away, so
/// under `umask 000` the store is still not writable by others.
pub(crate) const DIR_MODE: u32 = 0o755;

/// Creates `dir` and its parents, each [`DIR_MODE`].
pub(crate) fn create_dirs(dir: &Path) -> Result<()> {
    kata_gpu_fsutil::create_dirs(dir, DIR_MODE).map_err(io_at(dir, "create directory"))
}

/// Creates the directory `dir` (its parent must exist), [`DIR_MODE`].
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_at(dir, "create directory"))
}

/// Writes `bytes` to a new file `path` (which must not exist), with `mode`; not synced
/// (see [`sync_files`]).
pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_at(path, "create"))?;
    f.write_all(bytes).map_err(io_at(path, "write"))
}

/// Flushes files, then directories, to disk. Done once for a whole set rather than file
/// by file: the first fsync commits the file system's journal for all of them, so the
/// others find little left to do.
pub(crate) fn sync_files<'a>(
    files: impl IntoIterator<Item = &'a PathBuf>,
    dirs: impl IntoIterator<Item = &'a PathBuf>,
) -> Result<()> {
    for f in files {
        File::open(f)
            .and_then(|f| f.sync_all())
            .map_err(io_at(f, "sync"))?;
    }
    for d in dirs {
        fsync_dir(d)?;
    }
    Ok(())
}

/// Opens a new file for writing (it must not exist).
pub(crate) fn create_new(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_at(path, "create"))
}

/// Asks the kernel to start writing a range of `file` to disk now, without waiting for it
/// (`POSIX_FADV_DONTNEED` starts write-back of dirty pages; pages still dirty or under
/// write-back stay cached). A hint: errors are ignored, the final fsync is what counts.
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    if let (Ok(o), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) {
        let _ = posix_fadvise(file, o, l, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    }
}

/// Sets a file's permission bits.
pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_at(path, "set permissions on"))
}

/// Points the links `dir/<name>` at their targets, in order, each atomically: a link under
/// a temporary name renamed over the old one; then the directory is synced once. Readers
/// see each link's old target or its new one, never none.
pub(crate) fn switch_links(dir: &Path, links: &[(&str, &str)]) -> Result<()> {
    for (name, target) in links {
        let tmp = dir.join(unique_name(&format!(".{name}.tmp-")));
        symlink(target, &tmp).map_err(io_at(&tmp, "create link"))?;
        let dest = dir.join(name);
        if let Err(e) = fs::rename(&tmp, &dest) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(&dest, "replace link", e));
        }
    }
    fsync_dir(dir)
}

/// Swaps two directories atomically (`renameat2(RENAME_EXCHANGE)`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn exchange(a: &Path, b: &Path) -> Result<()> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE)
        .map_err(|e| Error::io(b, "swap in the fresh copy of", e.into()))
}

/// Swaps two directories through a third name (not atomic where `renameat2` is missing).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn exchange(a: &Path, b: &Path) -> Result<()> {
    let tmp = b.with_file_name(unique_name(crate::layout::TRASH_PREFIX));
    fs::rename(b, &tmp).map_err(io_at(b, "move aside"))?;
    fs::rename(a, b).map_err(io_at(b, "move into place"))?;
    fs::rename(&tmp, a).map_err(io_at(a, "move aside"))
}

/// Reads a link's target as a plain string; `None` when there is no link.
pub(crate) fn read_link(path: &Path) -> Result<Option<String>> {
    match fs::read_link(path) {
        Ok(t) => Ok(Some(t.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, "read link", e)),
    }
}

/// Removes a file or link if it exists.
pub(crate) fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(path, "remove", e)),
        _ => Ok(()),
    }
}

/// Removes a directory tree; read-only files inside do not stop it.
pub(crate) fn remove_tree(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(dir, "remove", e)),
        _ => Ok(()),
    }
}

/// Bytes free under `dir` for an unprivileged writer.
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    let avail: u64 = s.blocks_available();
    Some(avail.saturating_mul(s.fragment_size()))
}

/// The store lock, held until dropped.
#[derive(Debug)]
pub struct Lock(kata_gpu_fsutil::FileLock);

impl Lock {
    /// Takes the lock file `path` (created if missing), exclusively or shared, waiting up to
    /// `timeout` for another holder to let go.
    pub(crate) fn take(path: &Path, exclusive: bool, timeout: Duration) -> Result<Lock> {
        kata_gpu_fsutil::FileLock::acquire(path, exclusive, timeout, Duration::from_millis(50))
            .map(Lock)
            .map_err(|e| match e {
                kata_gpu_fsutil::LockError::Busy { .. } => Error::Locked {
                    lock: path.to_path_buf(),
                },
                kata_gpu_fsutil::LockError::Io(e) => Error::io(path, "lock", e),
            })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}
