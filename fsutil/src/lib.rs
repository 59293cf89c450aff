//! Atomic file writes: a reader (containerd, Kata, a CDI registry) sees the old file or the
//! new one, never half of one, and a crash leaves one of the two; and the file locks that
//! keep two writers apart; and paths under a host root that never leave it; and where
//! installed artifact sets live ([`layout`]), and the hex digests that name files and
//! sockets ([`hex`]).

pub mod glob;
pub mod layout;
mod lock;
mod root;

pub use lock::{FileLock, LockError};
pub use root::resolve_in_root;

use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path` through a temp file in the same directory, fsync and rename,
/// then fsyncs the directory so the rename survives a crash. The file gets `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_with(path, bytes, mode, None)
}

/// [`write_atomic`] for a file that other tools own too (containerd's config): the new file
/// keeps the mode, owner and group of the one it replaces, so an edit never widens or
/// narrows who may read it; `mode` only applies to a file that does not exist yet.
pub fn replace_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    match fs::symlink_metadata(path) {
        Ok(old) => write_with(
            path,
            bytes,
            old.permissions().mode() & 0o7777,
            Some((old.uid(), old.gid())),
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => write_with(path, bytes, mode, None),
        Err(e) => Err(e),
    }
}

/// Creates `dir` and its missing parents with `mode`, whatever the umask of whoever runs us
/// (an installer under `umask 000` must not leave a directory that others can write and so
/// fill with runtimes, devices or records). Directories that exist are left as they are.
pub fn create_dirs(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    // DirBuilder applies the umask on top of `mode`; with `umask 000` it gives `mode` itself.
    fs::DirBuilder::new().recursive(true).mode(mode).create(dir)
}

/// An error and its causes on one line, each cause once: gRPC and I/O errors nest the
/// reason (a refused connection, a missing socket) two or three sources deep, and the
/// one-line messages users read must carry it.
pub fn error_line(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !out.contains(&said) {
            out.push_str(": ");
            out.push_str(&said);
        }
        cause = c.source();
    }
    out
}

/// Lowercase hex of `bytes`: the digests that name files and sockets (artifact sets, the
/// proxy's sockets). The one copy: no hex crate is in the dependency tree for this.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Copies the file `src` to `dst` as [`write_atomic`] writes (streamed, not read whole):
/// for an executable that a daemon may start at any moment (containerd running a shim),
/// which must find the old binary or the new one, never half of one.
pub fn copy_atomic(src: &Path, dst: &Path, mode: u32) -> io::Result<()> {
    let mut from = fs::File::open(src)?;
    write_from(dst, &mut from, mode, None)
}

/// Points the symlink `link` at `target`, replacing whatever `link` was in one rename, so
/// that a lookup of `link` finds the old entry or the new link, never nothing.
pub fn symlink_atomic(target: &Path, link: &Path) -> io::Result<()> {
    let (dir, tmp) = temp_beside(link)?;
    std::os::unix::fs::symlink(target, &tmp)?;
    let result = fs::rename(&tmp, link).and_then(|()| fs::File::open(dir)?.sync_all());
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The directory of `path` and a fresh temp name in it.
fn temp_beside(path: &Path) -> io::Result<(&Path, std::path::PathBuf)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    Ok((dir, tmp))
}

fn write_with(
    path: &Path,
    mut bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    write_from(path, &mut bytes, mode, owner)
}

fn write_from(
    path: &Path,
    from: &mut dyn io::Read,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let (dir, tmp) = temp_beside(path)?;
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        io::copy(from, &mut file)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(super::hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(super::hex(&[]), "");
    }

    #[test]
    fn an_error_line_carries_each_cause_once() {
        let inner = io::Error::new(io::ErrorKind::NotFound, "no such socket");
        let outer = io::Error::other(inner);
        // io::Error::other shows its inner error as its own text and as its source.
        assert_eq!(super::error_line(&outer), "no such socket");
        #[derive(Debug)]
        struct Wrap(io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("cannot connect")
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let wrapped = Wrap(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
        assert_eq!(super::error_line(&wrapped), "cannot connect: refused");
    }

    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_replace_whole_files_and_leave_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.toml");
        write_atomic(&path, b"one", 0o600).expect("first write");
        write_atomic(&path, b"two", 0o644).expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert_eq!(
            fs::metadata(&path).expect("stat").permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(
            fs::read_dir(dir.path()).expect("ls").count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn a_replacement_keeps_the_mode_of_the_file_it_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        replace_atomic(&path, b"new", 0o600).expect("create");
        assert_eq!(
            fs::metadata(&path).expect("stat").permissions().mode() & 0o7777,
            0o600
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        replace_atomic(&path, b"again", 0o600).expect("replace");
        assert_eq!(fs::read(&path).expect("read"), b"again");
        assert_eq!(
            fs::metadata(&path).expect("stat").permissions().mode() & 0o7777,
            0o640
        );
    }

    #[test]
    fn a_copy_and_a_link_replace_what_was_there_and_leave_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        fs::write(&src, b"new binary").expect("src");
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).expect("mkdir");
        let dst = bin.join("shim");
        fs::write(&dst, b"old").expect("old");
        copy_atomic(&src, &dst, 0o755).expect("copy");
        assert_eq!(fs::read(&dst).expect("read"), b"new binary");
        assert_eq!(
            fs::metadata(&dst).expect("stat").permissions().mode() & 0o7777,
            0o755
        );
        let link = bin.join("alias");
        fs::write(&link, b"a file first").expect("file");
        symlink_atomic(Path::new("shim"), &link).expect("link");
        assert_eq!(fs::read_link(&link).expect("link"), Path::new("shim"));
        symlink_atomic(Path::new("shim"), &link).expect("again");
        assert_eq!(fs::read(&link).expect("through"), b"new binary");
        assert_eq!(fs::read_dir(&bin).expect("ls").count(), 2, "no temp left");
        let err = copy_atomic(&dir.path().join("absent"), &dst, 0o755).expect_err("absent");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(fs::read(&dst).expect("read"), b"new binary");
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err =
            write_atomic(&dir.path().join("missing/a.toml"), b"x", 0o644).expect_err("no dir");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 0);
        assert!(
            write_atomic(Path::new("/"), b"x", 0o644).is_err(),
            "no file name"
        );
    }
}
