//! The file edge: read a config, back it up once, write it atomically keeping its mode and
//! owner, never through a symlink, and hold a lock so that two installers never interleave.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_gpu_fsutil::LockError;

use crate::error::Error;

/// The suffix of the backup taken before the first in-place edit.
pub const BACKUP_SUFFIX: &str = ".kata-gpu.bak";

/// Reads a config; `None` when it does not exist.
pub fn read_config(path: &Path) -> Result<Option<String>, Error> {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes).map(Some).map_err(|e| {
            Error::io(
                "cannot read",
                path,
                io::Error::new(io::ErrorKind::InvalidData, format!("not UTF-8: {e}")),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read", path, e)),
    }
}

/// Refuses a path that is a symlink (dangling or not). Reading through a link is harmless;
/// writing is not, so every file we are about to change goes through this first.
pub fn refuse_symlink(path: &Path) -> Result<(), Error> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(Error::Symlink {
            path: path.to_path_buf(),
            target: fs::read_link(path).unwrap_or_default(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot inspect", path, e)),
    }
}

/// The backup path of a config.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(BACKUP_SUFFIX);
    PathBuf::from(name)
}

/// Copies `path` to its backup; an existing backup is kept unless `replace` (a backup left
/// by an earlier registration is stale: the new one must hold the file as it is now).
/// Returns the backup's path when one was written.
pub fn backup(path: &Path, replace: bool) -> Result<Option<PathBuf>, Error> {
    let backup = backup_path(path);
    if (backup.exists() && !replace) || !path.exists() {
        return Ok(None);
    }
    let bytes = fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    write_atomic(&backup, &bytes, None)?;
    Ok(Some(backup))
}

/// Writes `bytes` to `path` atomically ([`kata_gpu_fsutil::replace_atomic`]: the mode and
/// owner of the file it replaces kept, else `mode`, else 0644), creating its directory. A
/// symlink is refused ([`refuse_symlink`]).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<(), Error> {
    refuse_symlink(path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        kata_gpu_fsutil::create_dirs(dir, 0o755).map_err(|e| Error::io("cannot create", dir, e))?;
    }
    kata_gpu_fsutil::replace_atomic(path, bytes, mode.unwrap_or(0o644))
        .map_err(|e| Error::io("cannot write", path, e))
}

/// Removes a file; a missing file is not an error.
pub fn remove_file(path: &Path) -> Result<bool, Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("cannot remove", path, e)),
    }
}

/// An exclusive lock on a lock file, released on drop.
#[derive(Debug)]
pub struct Lock(kata_gpu_fsutil::FileLock);

impl Lock {
    /// Takes the lock at `path` (created if needed), waiting up to `wait` for another
    /// holder to let go.
    pub fn acquire(path: &Path, wait: Duration) -> Result<Lock, Error> {
        if let Some(dir) = path.parent() {
            kata_gpu_fsutil::create_dirs(dir, 0o755)
                .map_err(|e| Error::io("cannot create", dir, e))?;
        }
        kata_gpu_fsutil::FileLock::acquire(path, true, wait, Duration::from_millis(20))
            .map(Lock)
            .map_err(|e| match e {
                LockError::Busy { waited } => Error::Locked {
                    path: path.to_path_buf(),
                    waited_ms: waited.as_millis(),
                },
                LockError::Io(e) => Error::io("cannot lock", path, e),
            })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Writes `new` over `path` only if the file still holds `old` (`None`: still absent), so
/// that an edit made by someone else between our read and our write is never lost.
pub fn replace_if_unchanged(
    path: &Path,
    old: Option<&str>,
    new: &str,
    mode: Option<u32>,
) -> Result<(), Error> {
    if read_config(path)?.as_deref() != old {
        return Err(Error::ChangedConcurrently {
            path: path.to_path_buf(),
        });
    }
    write_atomic(path, new.as_bytes(), mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_writes_keep_mode_and_refuse_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real.toml");
        fs::write(&real, "a = 1\n").expect("write");
        fs::set_permissions(&real, fs::Permissions::from_mode(0o640)).expect("chmod");
        write_atomic(&real, b"a = 2\n", None).expect("write");
        assert_eq!(fs::read_to_string(&real).expect("read"), "a = 2\n");
        assert_eq!(
            fs::metadata(&real).expect("meta").permissions().mode() & 0o777,
            0o640
        );
        for (name, to) in [
            ("config.toml", real.clone()),
            ("dangling.toml", dir.path().join("nope")),
        ] {
            let link = dir.path().join(name);
            std::os::unix::fs::symlink(&to, &link).expect("symlink");
            let err = write_atomic(&link, b"a = 3\n", None).expect_err("through a link");
            assert!(
                matches!(&err, Error::Symlink { target, .. } if *target == to),
                "{err}"
            );
            assert!(err.to_string().contains("is a symlink to"), "{err}");
            assert!(fs::symlink_metadata(&link)
                .expect("meta")
                .file_type()
                .is_symlink());
        }
        assert_eq!(fs::read_to_string(&real).expect("read"), "a = 2\n");
        assert!(!dir.path().join("nope").exists());
        let fresh = dir.path().join("sub/new.toml");
        write_atomic(&fresh, b"x", Some(0o600)).expect("new");
        assert_eq!(
            fs::metadata(&fresh).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["config.toml", "dangling.toml", "real.toml", "sub"],
            "no temp file left"
        );
    }

    #[test]
    fn the_backup_is_taken_once_and_holds_the_original() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("config.toml");
        assert_eq!(backup(&p, false).expect("absent"), None);
        fs::write(&p, "orig\n").expect("write");
        let b = backup(&p, false).expect("backup").expect("written");
        fs::write(&p, "changed\n").expect("write");
        assert_eq!(backup(&p, false).expect("again"), None);
        assert_eq!(fs::read_to_string(&b).expect("read"), "orig\n");
        assert_eq!(backup(&p, true).expect("fresh"), Some(b.clone()));
        assert_eq!(fs::read_to_string(b).expect("read"), "changed\n");
    }

    #[test]
    fn a_second_lock_waits_then_gives_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("run/lock/kata-gpu.lock");
        let held = Lock::acquire(&p, Duration::from_millis(10)).expect("first");
        let err = Lock::acquire(&p, Duration::from_millis(60)).expect_err("second");
        assert!(
            err.to_string()
                .contains("another installer holds this lock"),
            "{err}"
        );
        drop(held);
        Lock::acquire(&p, Duration::from_millis(10)).expect("after release");
    }

    #[test]
    fn a_file_changed_behind_our_back_is_not_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        fs::write(&p, "theirs\n").expect("write");
        let err = replace_if_unchanged(&p, Some("ours\n"), "new\n", None).expect_err("changed");
        assert!(matches!(err, Error::ChangedConcurrently { .. }));
        assert_eq!(fs::read_to_string(&p).expect("read"), "theirs\n");
        replace_if_unchanged(&p, Some("theirs\n"), "new\n", None).expect("same");
        assert_eq!(fs::read_to_string(&p).expect("read"), "new\n");
    }
}
