//! Errors of the artifact store. Each one names the file it is about and says, in one line,
//! how to fix it; none leaves a half-written set behind.

use std::io;
use std::path::{Path, PathBuf};

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while installing, verifying, switching or pruning sets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed.
    /// (The operating system's error is part of the message, not a separate cause, so that
    /// a chain-printing caller shows one line.)
    #[error("{}: cannot {action}: {error}; {}", path.display(), io_hint(error))]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done, e.g. "read", "create".
        action: &'static str,
        /// The operating system's error.
        error: io::Error,
    },
    /// The source is none of the formats the store reads.
    #[error("{}: not a directory, .tar, .tar.gz or OCI image layout (index.json + blobs/sha256/); give one of those", path.display())]
    UnknownSource {
        /// The source given.
        path: PathBuf,
    },
    /// An entry would be written outside the set.
    #[error("{}: entry {entry:?} {reason}; nothing was installed: rebuild the source with every path inside its root", source_path.display())]
    Escape {
        /// The source (archive, directory or blob).
        source_path: PathBuf,
        /// The entry's name as the source gives it.
        entry: String,
        /// How it escapes.
        reason: String,
    },
    /// An entry of a kind a set cannot hold (device, FIFO, link to a directory, ...).
    #[error("{}: entry {entry:?} is {what}; only regular files, directories and links to files of the set are allowed", source_path.display())]
    Unsupported {
        /// The source.
        source_path: PathBuf,
        /// The entry's name.
        entry: String,
        /// What it is.
        what: String,
    },
    /// One path appears twice in a source.
    #[error("{}: entry {entry:?} appears twice; rebuild the source with each file once", source_path.display())]
    Duplicate {
        /// The source.
        source_path: PathBuf,
        /// The repeated path.
        entry: String,
    },
    /// A required role has no file.
    #[error("{}: no {role} among the files [{}]; add one", source_path.display(), files.join(", "))]
    MissingRole {
        /// The source.
        source_path: PathBuf,
        /// The role and its file-name pattern, e.g. "kernel (vmlinuz-*)".
        role: String,
        /// Every file of the source.
        files: Vec<String>,
    },
    /// Two or more files claim one role.
    #[error("{}: {} candidates for the {role}: {}; keep exactly one", source_path.display(), files.len(), files.join(", "))]
    AmbiguousRole {
        /// The source.
        source_path: PathBuf,
        /// The role.
        role: String,
        /// The candidates.
        files: Vec<String>,
    },
    /// Content does not hash to the digest its descriptor promises.
    #[error("{}: content is {actual} but its descriptor says {expected}; the blob is corrupt or was tampered with: pull the artifact again", file.display())]
    DigestMismatch {
        /// The blob.
        file: PathBuf,
        /// The digest of the descriptor.
        expected: String,
        /// The digest of the content.
        actual: String,
    },
    /// A blob's size differs from its descriptor's.
    #[error("{}: {actual} bytes but its descriptor says {expected}; the blob is truncated or was replaced: pull the artifact again", file.display())]
    SizeMismatch {
        /// The blob.
        file: PathBuf,
        /// The descriptor's size.
        expected: u64,
        /// The blob's size.
        actual: u64,
    },
    /// An OCI image layout that cannot be read as one.
    #[error("{}: {problem}", file.display())]
    Oci {
        /// The file of the layout (index.json, a manifest blob, ...).
        file: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The base Kata configuration cannot be rewritten.
    #[error("{}: {problem}", file.display())]
    Config {
        /// The configuration file as the source names it.
        file: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A source file changed between the checks and the copy.
    #[error("{}: changed while it was being installed; retry when nothing writes to the source", file.display())]
    Changed {
        /// The file.
        file: PathBuf,
    },
    /// Another command holds the store's lock.
    #[error("{}: another `kata-gpu artifacts` command holds the store lock; wait for it to finish and retry", lock.display())]
    Locked {
        /// The lock file.
        lock: PathBuf,
    },
    /// The class has no active set. Paths in errors are where a user on this machine finds
    /// them: under the host root.
    #[error("{}: no artifact set is installed (no `current` link); run `kata-gpu artifacts install SRC --class NAME`", class_dir.display())]
    NotInstalled {
        /// The class directory.
        class_dir: PathBuf,
    },
    /// There is no previous set to switch back to.
    #[error("{}: no previous set to roll back to; install the set you want instead", class_dir.display())]
    NoPrevious {
        /// The class directory.
        class_dir: PathBuf,
    },
    /// An installed set (or a link to one) is not what the store wrote.
    #[error("{}: {problem}", path.display())]
    Broken {
        /// The set directory, link or file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// Running sandboxes use the store that was to be removed.
    #[error("{}: {}; nothing was removed: stop those pods (or delete the configuration a sandbox that is gone left behind) and retry", class_dir.display(), in_use(sets, configs))]
    InUse {
        /// The class directory.
        class_dir: PathBuf,
        /// The sets the sandboxes' configurations name (empty when they name the store only
        /// through `current` or `previous`).
        sets: Vec<String>,
        /// The per-sandbox configurations naming a path in the store.
        configs: Vec<PathBuf>,
    },
    /// The runtime class name cannot be a directory name.
    #[error("runtime class {class:?} is not a plain name (letters, digits, '.', '_', '-'); use e.g. kata-qemu-nvidia-gpu-snp")]
    InvalidClass {
        /// The name given.
        class: String,
    },
    /// A configured path is not usable.
    #[error("{}: {problem}", path.display())]
    BadPath {
        /// The path.
        path: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// Not enough free space for the set.
    #[error("{}: the set needs {needed} bytes but only {available} are free; free space (e.g. `kata-gpu artifacts prune --keep 1`) and retry", dir.display())]
    NoSpace {
        /// Where the set would be written.
        dir: PathBuf,
        /// Bytes the set needs.
        needed: u64,
        /// Bytes free.
        available: u64,
    },
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(path: &Path, action: &'static str, error: io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            action,
            error,
        }
    }
}

/// A closure turning an `io::Error` into [`Error::Io`] for `path`, for `map_err`.
pub(crate) fn io_at<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(io::Error) -> Error + 'a {
    move |e| Error::io(path, action, e)
}

/// "set(s) A, B in use by C, D" for [`Error::InUse`].
fn in_use(sets: &[String], configs: &[PathBuf]) -> String {
    let configs: Vec<String> = configs.iter().map(|c| c.display().to_string()).collect();
    let what = match sets.len() {
        0 => "the store is".to_owned(),
        1 => format!("set {} is", sets[0]),
        _ => format!("sets {} are", sets.join(", ")),
    };
    format!("{what} in use by {}", configs.join(", "))
}

/// The one-line fix for an I/O error.
fn io_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound => "check the path",
        io::ErrorKind::PermissionDenied => "run as root or fix the permissions",
        io::ErrorKind::StorageFull | io::ErrorKind::FileTooLarge | io::ErrorKind::QuotaExceeded => {
            "free space under the store root (e.g. `kata-gpu artifacts prune --keep 1`) and retry"
        }
        _ => "check the file system and retry",
    }
}
