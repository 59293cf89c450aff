//! The shim binary's three actions: `start` (hand containerd an address), `serve` (the
//! proxy), and `delete` (clean up after a dead shim). Process and file side effects live
//! here, one job a module; the decisions they follow are in [`crate::bootstrap`],
//! [`crate::proxy`] and [`crate::create`].
//!
//! - [`start`](start()): start the downstream, bind our socket and spawn our proxy.
//! - [`serve`](serve()): the proxy itself, until containerd and the downstream are done.
//! - [`delete`](delete()): the downstream's `delete`, and clean-up after a dead proxy.
//! - `events`: the exits of a dead downstream's processes, reported to containerd.
//! - `runner`: runs the downstream binary for `start` and `delete`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_gpu_fsutil::{FileLock, LockError};

use sha2::{Digest, Sha256};

use crate::bootstrap::{Flags, ReplyError};
use crate::create::SANDBOX_ID;
use kata_gpu_plan::settings::{Settings, SettingsError};

mod delete;
mod events;
mod runner;
mod serve;
mod start;

pub use delete::{delete, delete_with};
pub(crate) use runner::run_downstream;
pub use serve::{serve, serve_with};
pub use start::{start, start_with};

/// Environment of the proxy: the downstream's address.
const ENV_DOWNSTREAM: &str = "KATA_GPU_DOWNSTREAM_ADDRESS";
/// Environment of the proxy: the downstream's Task API version.
const ENV_DOWNSTREAM_VERSION: &str = "KATA_GPU_DOWNSTREAM_VERSION";
/// Environment of the proxy: our socket, whose listening end `start` binds and
/// hands the proxy as its standard input.
const ENV_SOCKET: &str = "KATA_GPU_SOCKET";
/// The action our own `start` gives the proxy it spawns.
pub const SERVE_ACTION: &str = "serve";

/// Why `start` or `delete` failed; printed as containerd's error for the pod.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The settings file is unusable.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The downstream binary is missing.
    #[error("the downstream shim {} does not exist; install Kata (or set `downstream` in {})", path.display(), settings_hint(settings))]
    DownstreamMissing {
        /// The binary.
        path: PathBuf,
        /// The settings file in use.
        settings: Option<PathBuf>,
    },
    /// The downstream's `start` ran past its time.
    #[error("the downstream shim {} did not finish `start` within {seconds} s; it was killed", path.display())]
    DownstreamTimeout {
        /// The binary.
        path: PathBuf,
        /// The limit.
        seconds: u64,
    },
    /// The downstream's `start` failed.
    #[error("the downstream shim {} failed `{action}` ({status}): {output}", path.display())]
    DownstreamFailed {
        /// The binary.
        path: PathBuf,
        /// `start` or `delete`.
        action: &'static str,
        /// Its exit status.
        status: String,
        /// What it printed.
        output: String,
    },
    /// The downstream's reply made no sense.
    #[error("{}: {source}", path.display())]
    DownstreamReply {
        /// The binary.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ReplyError,
    },
    /// The proxy was started without what `start` hands it.
    #[error("the proxy was started {0}; only the shim's own `start` starts it")]
    ProxyStartedWrongly(String),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A socket path longer than a Unix socket may be.
    #[error("socket path {} is too long for a Unix socket; set a shorter state_dir", .0.display())]
    SocketPathTooLong(PathBuf),
}

fn settings_hint(path: &Option<PathBuf>) -> String {
    path.as_ref().map_or_else(
        || kata_gpu_plan::settings::SYSTEM_SETTINGS.to_owned(),
        |p| p.display().to_string(),
    )
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShimError {
    let what = what.into();
    move |source| ShimError::Io { what, source }
}

/// Our socket for a sandbox: `<state_dir>/s/<sha256(kata-gpu:address/namespace/group)>`.
/// A name of our own, so that we never find (and stop serving on) Kata's socket.
pub fn socket_path(settings: &Settings, flags: &Flags, group: &str) -> Result<PathBuf, ShimError> {
    let digest = Sha256::digest(
        format!("kata-gpu:{}/{}/{}", flags.address, flags.namespace, group).as_bytes(),
    );
    let path = settings
        .state_dir
        .join(kata_gpu_fsutil::layout::PROXY_SOCKETS_DIR)
        .join(kata_gpu_fsutil::hex(&digest));
    if path.as_os_str().len() > 107 {
        return Err(ShimError::SocketPathTooLong(path));
    }
    Ok(path)
}

/// The sandbox a bundle's container belongs to: CRI's sandbox id, or the id itself.
fn group_of(bundle: &Path, id: &str) -> String {
    fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["annotations"][SANDBOX_ID].as_str().map(str::to_owned))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| id.to_owned())
}

pub(super) use crate::proxy::task_service;

/// Whether something listens on `socket`, asked without waiting: a listener whose accept
/// queue is full (a live proxy under load) counts, where a blocking connect would wait for
/// it to make room.
pub(crate) fn is_listening(socket: &Path) -> bool {
    use nix::errno::Errno;
    use nix::sys::socket::{connect, socket as new_socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let Ok(addr) = nix::sys::socket::UnixAddr::new(socket) else {
        return false;
    };
    let Ok(fd) = new_socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        // Cannot ask (out of descriptors): take it as alive, so that nothing is replaced.
        return true;
    };
    matches!(
        connect(fd.as_raw_fd(), &addr),
        Ok(()) | Err(Errno::EAGAIN | Errno::EINPROGRESS)
    )
}

/// How long a `start`, a `delete` or an exiting proxy waits for another holder of a
/// group's lock (see [`lock_group`]).
const GROUP_LOCK_WAIT: Duration = Duration::from_secs(5);

/// The lock beside a group's socket: `start`'s take-over of the socket, and every removal
/// of the socket, its record and the lock file itself, happen under it.
pub(crate) fn group_lock_path(socket: &Path) -> PathBuf {
    socket.with_extension("lock")
}

/// Takes the group's lock, waiting at most `wait` for another holder.
pub(crate) fn lock_group(socket: &Path, wait: Duration) -> Result<FileLock, ShimError> {
    let path = group_lock_path(socket);
    // A holder may remove the file while we wait on it: then take the new one.
    for _ in 0..3 {
        let lock = FileLock::acquire(&path, true, wait, Duration::from_millis(5)).map_err(
            |e| match e {
                LockError::Busy { waited } => ShimError::Io {
                    what: format!(
                        "another start or delete of this sandbox held {} for {} ms; retry, or remove that file if no shim of the sandbox runs",
                        path.display(),
                        waited.as_millis()
                    ),
                    source: std::io::ErrorKind::WouldBlock.into(),
                },
                LockError::Io(source) => ShimError::Io {
                    what: format!("cannot lock {}", path.display()),
                    source,
                },
            },
        )?;
        if lock.is_current() {
            return Ok(lock);
        }
    }
    Err(ShimError::Io {
        what: format!("{} was removed each time it was locked", path.display()),
        source: std::io::ErrorKind::WouldBlock.into(),
    })
}

/// Removes a finished group's socket and, holding its lock, the lock file (which stays when
/// the lock cannot be had in time: removing a lock file someone holds would let a third
/// party take a new one beside them).
pub(crate) fn remove_group_socket(socket: &Path) {
    let lock = lock_group(socket, GROUP_LOCK_WAIT);
    let _ = fs::remove_file(socket);
    if let Ok(lock) = lock {
        let _ = fs::remove_file(lock.path());
    }
}

/// Removes the downstream's socket once the downstream has closed its connection to us (it
/// has exited, or is exiting and may still hold the listening fd, so whether something still
/// listens is no test). Kata's and runc's shims remove, when they exit, the socket the
/// bundle's `address` names, which is ours since `start` rewrote it: their own would stay in
/// `/run/containerd/s` for every sandbox. No other downstream can be serving that path: while
/// we run, a `start` of this group finds our socket and starts nothing.
fn remove_dead_socket(socket: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if !fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
        return;
    }
    match fs::remove_file(socket) {
        Ok(()) => tracing::info!("removed the downstream's socket {}", socket.display()),
        Err(e) => tracing::warn!(
            "cannot remove the downstream's socket {}: {e}",
            socket.display()
        ),
    }
}
