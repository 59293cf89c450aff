//! Advisory file locks that wait a bounded time: two installers (or an install and a prune)
//! never interleave, and a stuck holder becomes an error naming the lock, not a hang.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// A `flock` on a lock file, released when dropped.
#[derive(Debug)]
pub struct FileLock {
    _flock: Flock<File>,
    path: PathBuf,
}

/// Why a lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another holder kept it for the whole wait.
    Busy {
        /// How long we waited.
        waited: Duration,
    },
    /// The lock file could not be opened or locked.
    Io(io::Error),
}

impl FileLock {
    /// Takes the lock file `path` (created 0600 if missing; its directory must exist),
    /// exclusively or shared, polling every `poll` for up to `wait`.
    pub fn acquire(
        path: &Path,
        exclusive: bool,
        wait: Duration,
        poll: Duration,
    ) -> Result<FileLock, LockError> {
        let arg = if exclusive {
            FlockArg::LockExclusiveNonblock
        } else {
            FlockArg::LockSharedNonblock
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(LockError::Io)?;
        let start = Instant::now();
        loop {
            match Flock::lock(file, arg) {
                Ok(flock) => {
                    return Ok(FileLock {
                        _flock: flock,
                        path: path.to_path_buf(),
                    })
                }
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if start.elapsed() < wait => {
                    file = f;
                    std::thread::sleep(poll);
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    return Err(LockError::Busy {
                        waited: start.elapsed(),
                    })
                }
                Err((_, errno)) => return Err(LockError::Io(io::Error::from(errno))),
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file locked is still the one at [`FileLock::path`]: false once it was
    /// unlinked (or replaced) after it was opened, when the lock guards nothing any more.
    /// A lock file may be removed only by a holder of the lock; a taker that finds it
    /// removed takes it again.
    pub fn is_current(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self._flock.metadata(), std::fs::metadata(&self.path)) {
            (Ok(held), Ok(named)) => held.dev() == named.dev() && held.ino() == named.ino(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_shared_shares() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("lock");
        let ms = Duration::from_millis;
        let a = FileLock::acquire(&p, false, ms(10), ms(5)).expect("shared");
        let b = FileLock::acquire(&p, false, ms(10), ms(5)).expect("shared again");
        let busy = FileLock::acquire(&p, true, ms(40), ms(5)).expect_err("exclusive");
        assert!(matches!(busy, LockError::Busy { waited } if waited >= ms(40)));
        drop((a, b));
        let held = FileLock::acquire(&p, true, ms(10), ms(5)).expect("exclusive");
        assert_eq!(held.path(), p);
        assert!(FileLock::acquire(&p, false, ms(10), ms(5)).is_err());
        drop(held);
        FileLock::acquire(&p, false, ms(10), ms(5)).expect("after release");
        let held = FileLock::acquire(&p, true, ms(10), ms(5)).expect("exclusive");
        assert!(held.is_current());
        std::fs::remove_file(&p).expect("unlink");
        assert!(!held.is_current(), "unlinked under its holder");
        drop(held);
        let missing = FileLock::acquire(&dir.path().join("no/lock"), true, ms(1), ms(1));
        assert!(matches!(missing, Err(LockError::Io(e)) if e.kind() == io::ErrorKind::NotFound));
    }
}
