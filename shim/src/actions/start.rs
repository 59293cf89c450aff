//! `start`: start (or find) the downstream, bind our socket, spawn our proxy in front of
//! the downstream and point the bundle at it.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use containerd_shim_protos::protobuf::Message;

use crate::bootstrap::{encode_reply, parse_reply, reply_form, Flags};
use crate::proxy_record::{downstream_record, DownstreamRecord};
use kata_gpu_fsutil::FileLock;
use kata_gpu_plan::profile::Profile;
use kata_gpu_plan::settings::Settings;

use super::{
    group_of, io, is_listening, lock_group, run_downstream, socket_path, task_service, ShimError,
    ENV_DOWNSTREAM, ENV_DOWNSTREAM_VERSION, ENV_SOCKET, GROUP_LOCK_WAIT, SERVE_ACTION,
};

/// Binds `socket` for a new proxy, or finds that a proxy serves it already (it answers,
/// or its accept queue is full): `None`. Run under the group's lock ([`take_over`]), so
/// that two `start`s never both bind or replace it; a socket left by a proxy that is gone
/// is replaced.
fn take_socket(socket: &Path) -> Result<Option<UnixListener>, ShimError> {
    let bind = |socket: &Path| match UnixListener::bind(socket) {
        Ok(listener) => {
            fs::set_permissions(socket, fs::Permissions::from_mode(0o600))
                .map_err(io(format!("cannot restrict {}", socket.display())))?;
            Ok(Some(listener))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(None),
        Err(e) => Err(ShimError::Io {
            what: format!("cannot listen on {}", socket.display()),
            source: e,
        }),
    };
    // A bind that fails again after the removal means a `start` that does not take the
    // lock (an older one) bound it in between: check again.
    for _ in 0..3 {
        if let Some(listener) = bind(socket)? {
            return Ok(Some(listener));
        }
        if is_listening(socket) {
            return Ok(None);
        }
        let _ = fs::remove_file(socket);
    }
    Err(ShimError::Io {
        what: format!("cannot take over {}", socket.display()),
        source: std::io::ErrorKind::AddrInUse.into(),
    })
}

/// [`take_socket`] under the group's lock, waited for at most `wait`. A new listener comes
/// with the lock, to be held until the proxy's record is written; on failure, nothing of
/// ours is left.
fn take_over(socket: &Path, wait: Duration) -> Result<Option<(UnixListener, FileLock)>, ShimError> {
    let lock = lock_in_place(socket, wait)?;
    match take_socket(socket) {
        Ok(Some(listener)) => Ok(Some((listener, lock))),
        Ok(None) => Ok(None),
        Err(e) => {
            let _ = fs::remove_file(lock.path());
            Err(e)
        }
    }
}

/// Takes the group's lock, making the sockets' directory again when it has gone: it is also
/// the state directory of the containerd namespace named `s` (`<state_dir>/<namespace>`),
/// which that namespace's last sandbox removes when it goes, empty, at any moment. A
/// directory holding a lock file is never empty, so it stays while the lock is held.
fn lock_in_place(socket: &Path, wait: Duration) -> Result<FileLock, ShimError> {
    let dir = socket.parent().unwrap_or(Path::new("/"));
    let mut tries = 0;
    loop {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(format!("cannot create {}", dir.display())))?;
        match lock_group(socket, wait) {
            Err(ShimError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && tries < 3 =>
            {
                tries += 1;
            }
            other => return other,
        }
    }
}

/// Undoes a take-over whose proxy did not start: the socket and the lock file go, the lock
/// still held.
fn give_up(socket: &Path, lock: FileLock) {
    let _ = fs::remove_file(socket);
    let _ = fs::remove_file(lock.path());
}

/// `start`: starts (or finds) the downstream, starts (or finds) our proxy, writes the
/// bundle's `address`, and returns the exact bytes to print for containerd.
pub fn start(
    profile: Profile,
    flags: &Flags,
    args: &[String],
    stdin: &[u8],
) -> Result<Vec<u8>, ShimError> {
    let (settings, settings_path) = Settings::load(profile)?;
    start_with(&settings, &settings_path, flags, args, stdin)
}

/// [`start`] with given settings, for any binary built on this proxy (the tests'
/// recording shim too): the proxy it spawns is this same binary with action `serve`.
pub fn start_with(
    settings: &Settings,
    settings_path: &Option<PathBuf>,
    flags: &Flags,
    args: &[String],
    stdin: &[u8],
) -> Result<Vec<u8>, ShimError> {
    let bundle = std::env::current_dir().map_err(io("cannot find the bundle (cwd)"))?;
    let group = group_of(&bundle, &flags.id);
    let form = reply_form(
        stdin,
        flags,
        std::env::var("MAX_SHIM_VERSION").ok().as_deref(),
    );

    // runc's shim (the tests' stand-in for Kata) reads stdin as runtime options and fails on
    // a bootstrap message; Kata gets exactly what containerd sent.
    let downstream_stdin = match (form, settings.downstream_kind) {
        (crate::bootstrap::ReplyForm::Protobuf, kata_gpu_plan::settings::DownstreamKind::Runc) => {
            &[][..]
        }
        _ => stdin,
    };
    // containerd 2.3 passes its event address only inside the bootstrap message.
    let mut env: Vec<(&str, String)> = Vec::new();
    if form == crate::bootstrap::ReplyForm::Protobuf && std::env::var_os("TTRPC_ADDRESS").is_none()
    {
        if let Ok(params) =
            containerd_shim_protos::bootstrap_api::BootstrapParams::parse_from_bytes(stdin)
        {
            env.push(("TTRPC_ADDRESS", params.containerd_ttrpc_address));
        }
    }
    let reply = run_downstream(
        settings,
        settings_path,
        args,
        downstream_stdin,
        "start",
        &env,
        None,
    )?;
    let downstream = parse_reply(&reply).map_err(|source| ShimError::DownstreamReply {
        path: settings.downstream.clone(),
        source,
    })?;

    match serve_in_front(settings, flags, &group, &downstream, &env, &bundle) {
        Ok(address) => Ok(encode_reply(&address, form)),
        Err(e) => {
            // A downstream with no task exits on Shutdown (one that serves a pod's other
            // containers ignores it), so a failed start leaves nothing running.
            shutdown_downstream(&downstream, &flags.id);
            Err(e)
        }
    }
}

/// Starts (or finds) our proxy in front of `downstream` and points the bundle at it;
/// returns our address.
fn serve_in_front(
    settings: &Settings,
    flags: &Flags,
    group: &str,
    downstream: &crate::bootstrap::ShimAddress,
    env: &[(&str, String)],
    bundle: &Path,
) -> Result<String, ShimError> {
    let socket = socket_path(settings, flags, group)?;
    let dir = socket.parent().unwrap_or(Path::new("/"));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("cannot create {}", dir.display())))?;
    if let Some((listener, lock)) = take_over(&socket, GROUP_LOCK_WAIT)? {
        // As containerd's own shim library does: the socket is bound here and its listening
        // end handed to the proxy, so that containerd may connect the moment `start`
        // returns, and a concurrent `start` of the group finds it taken.
        let exe = std::env::current_exe().map_err(io("cannot find our own binary"))?;
        let mut proxy_args: Vec<String> = vec![
            "-namespace".into(),
            flags.namespace.clone(),
            "-id".into(),
            group.to_owned(),
            "-address".into(),
            flags.address.clone(),
            "-publish-binary".into(),
            flags.publish_binary.clone(),
        ];
        if flags.debug {
            proxy_args.push("-debug".into());
        }
        proxy_args.push(SERVE_ACTION.into());
        let mut command = Command::new(exe);
        // The name we were run as: it selects the profile (through a link too, which
        // `current_exe` resolves).
        if let Some(arg0) = std::env::args_os().next() {
            command.arg0(arg0);
        }
        let spawned = command
            .args(&proxy_args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env(ENV_DOWNSTREAM, &downstream.address)
            .env(ENV_DOWNSTREAM_VERSION, downstream.version.to_string())
            .env(ENV_SOCKET, &socket)
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        drop(command);
        let mut proxy_process = match spawned {
            Ok(proxy_process) => proxy_process,
            Err(e) => {
                give_up(&socket, lock);
                return Err(ShimError::Io {
                    what: "cannot start the proxy".to_owned(),
                    source: e,
                });
            }
        };
        // Written once per proxy: a pod's later containers reach the same downstream.
        let record = DownstreamRecord {
            version: downstream.version,
            address: downstream.address.clone(),
            proxy_pid: Some(proxy_process.id()),
        };
        let record_path = downstream_record(&socket);
        if let Err(e) =
            kata_gpu_fsutil::write_atomic(&record_path, record.to_string().as_bytes(), 0o600)
        {
            // Without its record a proxy cannot be told from a dead one: none at all.
            let _ = proxy_process.kill();
            let _ = proxy_process.wait();
            give_up(&socket, lock);
            return Err(ShimError::Io {
                what: format!("cannot write {}", record_path.display()),
                source: e,
            });
        }
        drop(lock);
    } else if let Some(record) = DownstreamRecord::read(&socket) {
        // Our proxy of this group talks to the downstream it recorded; one that this `start`
        // started at another address (runtime-rs does, for a container whose spec it cannot
        // read) would serve nobody and never be shut down.
        if record.address != downstream.address {
            end_stray_downstream(downstream, &flags.id);
        }
    }
    let address = format!("unix://{}", socket.display());
    // After the downstream wrote its own: containerd reconnects through this file.
    kata_gpu_fsutil::write_atomic(&bundle.join("address"), address.as_bytes(), 0o644).map_err(
        io(format!("cannot write {}", bundle.join("address").display())),
    )?;
    Ok(address)
}

/// How long a stray downstream is given to exit after its Shutdown before SIGKILL.
const STRAY_EXIT_WAIT: Duration = Duration::from_millis(500);

/// Ends a downstream this `start` started and nothing will use: Shutdown, then SIGKILL if it
/// has not exited (runtime-rs ignores SIGTERM), then its socket, which runtime-rs leaves.
fn end_stray_downstream(downstream: &crate::bootstrap::ShimAddress, id: &str) {
    let path = PathBuf::from(downstream.address.trim_start_matches("unix://"));
    let Ok(mut watch) = std::os::unix::net::UnixStream::connect(&path) else {
        super::remove_dead_socket(&path);
        return;
    };
    let pid = crate::relay::peer_pid(&watch);
    shutdown_downstream(downstream, id);
    if !super::delete::exited(&mut watch, std::time::Instant::now() + STRAY_EXIT_WAIT) {
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1) {
            tracing::warn!(
                "the downstream {} that start {id} started is not used and did not exit on Shutdown; killing it (pid {pid})",
                path.display()
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    super::remove_dead_socket(&path);
}

/// Asks a downstream to shut down (it does only when it runs no task).
fn shutdown_downstream(downstream: &crate::bootstrap::ShimAddress, id: &str) {
    let Ok(client) = ttrpc::Client::connect(&downstream.address) else {
        return;
    };
    let service = task_service(downstream.version);
    let payload = containerd_shim_protos::shim::shim::ShutdownRequest {
        id: id.to_owned(),
        ..Default::default()
    }
    .write_to_bytes()
    .unwrap_or_default();
    let _ = client.request(ttrpc::Request {
        service: service.to_owned(),
        method: "Shutdown".to_owned(),
        payload,
        timeout_nano: 5_000_000_000,
        ..ttrpc::Request::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::group_lock_path;
    use nix::errno::Errno;
    use nix::sys::socket::{
        bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::sync::mpsc;
    use std::time::Instant;

    /// A listener that never accepts, its accept queue full: a live proxy under load.
    fn full_listener(path: &Path) -> (OwnedFd, Vec<OwnedFd>) {
        let addr = UnixAddr::new(path).expect("address");
        let listener = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        bind(listener.as_raw_fd(), &addr).expect("bind");
        listen(&listener, Backlog::new(0).expect("backlog")).expect("listen");
        let mut queued = Vec::new();
        loop {
            let c = socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                None,
            )
            .expect("socket");
            match connect(c.as_raw_fd(), &addr) {
                Ok(()) => queued.push(c),
                Err(Errno::EAGAIN) => break,
                Err(e) => panic!("connect: {e}"),
            }
            assert!(queued.len() < 1000, "the accept queue never filled");
        }
        (listener, queued)
    }

    #[test]
    fn a_proxy_whose_accept_queue_is_full_is_found_at_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("sock");
        let _busy = full_listener(&socket);
        let (tx, rx) = mpsc::channel();
        let s = socket.clone();
        std::thread::spawn(move || {
            let _ = tx.send(take_socket(&s).map(|l| l.is_some()));
        });
        // A blocking connect would wait until the proxy accepts: here, forever.
        let taken = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("take_socket returned while the proxy's queue was full");
        assert!(
            !taken.expect("no error"),
            "a live proxy's socket was replaced"
        );
        assert!(socket.exists());
    }

    #[test]
    fn a_start_waits_for_another_of_its_sandbox_a_bounded_time_and_says_which_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("sock");
        let held = lock_group(&socket, Duration::from_secs(1)).expect("lock");
        let started = Instant::now();
        let e = take_over(&socket, Duration::from_millis(200)).expect_err("the lock is held");
        assert!(started.elapsed() < Duration::from_secs(10));
        let message = e.to_string();
        assert!(
            message.contains("another start or delete of this sandbox held")
                && message.contains(&group_lock_path(&socket).display().to_string()),
            "{message}"
        );
        assert!(!socket.exists(), "nothing was bound outside the lock");
        drop(held);
        // A socket left by a proxy that is gone is replaced, under the lock.
        drop(UnixListener::bind(&socket).expect("bind"));
        let (_listener, lock) = take_over(&socket, Duration::from_secs(1))
            .expect("taken")
            .expect("a new listener");
        assert!(lock.is_current() && socket.exists());
        give_up(&socket, lock);
        assert!(!socket.exists() && !group_lock_path(&socket).exists());
    }
}

#[cfg(test)]
mod gone_dir_tests {
    use super::*;

    #[test]
    fn a_sockets_directory_removed_under_start_is_made_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        // As after the last sandbox of containerd namespace `s` removed `<state_dir>/s`.
        let socket = dir.path().join("s").join("sock");
        let (_listener, lock) = take_over(&socket, Duration::from_secs(1))
            .expect("taken")
            .expect("a new listener");
        assert!(socket.exists() && lock.is_current());
        give_up(&socket, lock);
    }
}
