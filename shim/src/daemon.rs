//! The shim's three lives: `start` (hand containerd an address), the serving daemon (the
//! proxy), and `delete` (clean up after a dead shim). Process and file side effects live
//! here; the decisions they follow are in [`crate::bootstrap`], [`crate::proxy`] and
//! [`crate::create`].

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_shim_protos::events::task::TaskExit;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim::shim::DeleteResponse;
use sha2::{Digest, Sha256};

use crate::bootstrap::{encode_reply, parse_reply, reply_form, Flags, ReplyError};
use crate::create::{Sandboxer, SANDBOX_ID};
use crate::proxy::{now, CreateHook, Proxy, Tracked, Verdict, DEAD_EXIT_STATUS};
use crate::server_record::{downstream_record, server_alive, DownstreamRecord};
use kata_gpu_plan::profile::Profile;
use kata_gpu_plan::settings::{Settings, SettingsError};

/// Environment of the serving daemon: the downstream's address.
const ENV_DOWNSTREAM: &str = "KATA_GPU_DOWNSTREAM_ADDRESS";
/// Environment of the serving daemon: the downstream's Task API version.
const ENV_DOWNSTREAM_VERSION: &str = "KATA_GPU_DOWNSTREAM_VERSION";
/// Environment of the serving daemon: our socket, whose listening end `start` binds and
/// hands the daemon as its standard input.
const ENV_SOCKET: &str = "KATA_GPU_SOCKET";
/// The action our own `start` gives the daemon it spawns.
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
    /// Our own daemon was started without what `start` hands it.
    #[error("the wrapper's server was started {0}; only the shim's own `start` starts it")]
    ServerStartedWrongly(String),
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
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let path = settings.state_dir.join("s").join(hex);
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

/// Runs the downstream binary with our own arguments, environment and stdin, in the
/// bundle; returns its stdout. Kills it after `timeout`.
pub(crate) fn run_downstream(
    settings: &Settings,
    settings_path: &Option<PathBuf>,
    args: &[String],
    stdin: &[u8],
    action: &'static str,
    env: &[(&str, String)],
    cwd: Option<&Path>,
) -> Result<Vec<u8>, ShimError> {
    let path = settings.downstream.clone();
    let mut command = Command::new(&path);
    if let Some(dir) = cwd {
        command.current_dir(dir);
    }
    let mut child = command
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ShimError::DownstreamMissing {
                path: path.clone(),
                settings: settings_path.clone(),
            },
            _ => ShimError::Io {
                what: format!("cannot run {}", path.display()),
                source: e,
            },
        })?;
    if let Some(mut input) = child.stdin.take() {
        // A shim that does not read its stdin must not make us fail.
        let _ = input.write_all(stdin);
    }
    // Each stream on a thread of its own, in chunks, so that neither pipe fills while the
    // other is read, and so that what was printed is at hand even if a process the
    // downstream left behind keeps a pipe open (then its end never comes).
    let (chunks, output) = std::sync::mpsc::channel::<(bool, Vec<u8>)>();
    for (is_stdout, stream) in [
        (
            true,
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ),
        (
            false,
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ),
    ] {
        let (Some(mut stream), chunks) = (stream, chunks.clone()) else {
            continue;
        };
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = stream.read(&mut buf) {
                if chunks.send((is_stdout, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        });
    }
    drop(chunks);
    let seconds = settings.start_timeout_seconds;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    // Waited for on a thread, so that its exit is seen at once rather than at a poll.
    let pid = child.id();
    let (done, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait());
    });
    let status = match exited.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(status) => status.map_err(io(format!("cannot wait for {}", path.display())))?,
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = exited.recv_timeout(Duration::from_secs(1));
            return Err(ShimError::DownstreamTimeout { path, seconds });
        }
    };
    // Its output ends with it, unless something it started holds a pipe: then what was
    // printed by the deadline is the answer.
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    loop {
        match output.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((true, chunk)) => stdout.extend_from_slice(&chunk),
            Ok((false, chunk)) => stderr.extend_from_slice(&chunk),
            Err(_) => break,
        }
    }
    if !status.success() {
        let output = String::from_utf8_lossy(if stderr.is_empty() { &stdout } else { &stderr })
            .trim()
            .to_owned();
        return Err(ShimError::DownstreamFailed {
            path,
            action,
            status: status.to_string(),
            output,
        });
    }
    Ok(stdout)
}

pub(crate) fn is_listening(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}

/// Binds `socket` for a new server, or finds that a server (running, or being started by
/// a concurrent `start`: its socket is bound before its process runs) serves it already:
/// `None`. A socket left by a server that is gone is replaced, under a lock on its
/// directory so that two `start`s never both replace it.
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
    if let Some(listener) = bind(socket)? {
        return Ok(Some(listener));
    }
    let dir = socket.parent().unwrap_or(Path::new("/"));
    let handle = fs::File::open(dir).map_err(io(format!("cannot open {}", dir.display())))?;
    let _lock = nix::fcntl::Flock::lock(handle, nix::fcntl::FlockArg::LockExclusive).map_err(
        |(_, errno)| ShimError::Io {
            what: format!("cannot lock {}", dir.display()),
            source: errno.into(),
        },
    )?;
    // A live socket is only ever replaced under the lock, after this check, so a bind that
    // fails again means another `start` bound it in between: check again.
    for _ in 0..3 {
        if is_listening(socket) {
            return Ok(None);
        }
        let _ = fs::remove_file(socket);
        if let Some(listener) = bind(socket)? {
            return Ok(Some(listener));
        }
    }
    Err(ShimError::Io {
        what: format!("cannot take over {}", socket.display()),
        source: std::io::ErrorKind::AddrInUse.into(),
    })
}

/// `start`: starts (or finds) the downstream, starts (or finds) our server, writes the
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
/// recording shim too): the server it spawns is this same binary with action `serve`.
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

/// Starts (or finds) our server in front of `downstream` and points the bundle at it;
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
    if let Some(listener) = take_socket(&socket)? {
        // As containerd's own shim library does: the socket is bound here and its listening
        // end handed to the server, so that containerd may connect the moment `start`
        // returns, and a concurrent `start` of the group finds it taken.
        let exe = std::env::current_exe().map_err(io("cannot find our own binary"))?;
        let mut daemon_args: Vec<String> = vec![
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
            daemon_args.push("-debug".into());
        }
        daemon_args.push(SERVE_ACTION.into());
        let mut command = Command::new(exe);
        // The name we were run as: it selects the profile (through a link too, which
        // `current_exe` resolves).
        if let Some(arg0) = std::env::args_os().next() {
            command.arg0(arg0);
        }
        let spawned = command
            .args(&daemon_args)
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
        let mut server = match spawned {
            Ok(server) => server,
            Err(e) => {
                let _ = fs::remove_file(&socket);
                return Err(ShimError::Io {
                    what: "cannot start the wrapper's server".to_owned(),
                    source: e,
                });
            }
        };
        // Written once per server: a pod's later containers reach the same downstream.
        let record = DownstreamRecord {
            version: downstream.version,
            address: downstream.address.clone(),
            server_pid: Some(server.id()),
        };
        let record_path = downstream_record(&socket);
        if let Err(e) =
            kata_gpu_fsutil::write_atomic(&record_path, record.to_string().as_bytes(), 0o600)
        {
            // Without its record a server cannot be told from a dead one: none at all.
            let _ = server.kill();
            let _ = server.wait();
            let _ = fs::remove_file(&socket);
            return Err(ShimError::Io {
                what: format!("cannot write {}", record_path.display()),
                source: e,
            });
        }
    }
    let address = format!("unix://{}", socket.display());
    // After the downstream wrote its own: containerd reconnects through this file.
    kata_gpu_fsutil::write_atomic(&bundle.join("address"), address.as_bytes(), 0o644).map_err(
        io(format!("cannot write {}", bundle.join("address").display())),
    )?;
    Ok(address)
}

/// Asks a downstream to shut down (it does only when it runs no task).
fn shutdown_downstream(downstream: &crate::bootstrap::ShimAddress, id: &str) {
    let Ok(client) = ttrpc::Client::connect(&downstream.address) else {
        return;
    };
    let service = if downstream.version >= 3 {
        crate::proxy::TASK_V3
    } else {
        crate::proxy::TASK_V2
    };
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

/// Reports each process of a dead downstream as exited (status 255) to containerd.
fn publish_exits(namespace: &str, tracked: &[Tracked]) {
    let Ok(address) = std::env::var("TTRPC_ADDRESS") else {
        tracing::error!("TTRPC_ADDRESS is not set; cannot report the dead downstream's tasks");
        return;
    };
    let address = if address.contains("://") {
        address
    } else {
        format!("unix://{address}")
    };
    let client = match ttrpc::Client::connect(&address) {
        Ok(c) => containerd_shim_protos::shim_sync::EventsClient::new(c),
        Err(e) => {
            tracing::error!("cannot reach containerd at {address} to report exits: {e}");
            return;
        }
    };
    for t in tracked {
        let exit = TaskExit {
            container_id: t.container_id.clone(),
            id: t.exec_id.clone(),
            pid: t.pid,
            exit_status: DEAD_EXIT_STATUS,
            exited_at: MessageField::some(now()),
            ..TaskExit::default()
        };
        let Ok(value) = exit.write_to_bytes() else {
            continue;
        };
        let request = ForwardRequest {
            envelope: MessageField::some(Envelope {
                timestamp: MessageField::some(now()),
                namespace: namespace.to_owned(),
                topic: containerd_shim_protos::topics::TASK_EXIT_EVENT_TOPIC.to_owned(),
                event: MessageField::some(Any {
                    type_url: "containerd.events.TaskExit".to_owned(),
                    value,
                    ..Any::default()
                }),
                ..Envelope::default()
            }),
            ..ForwardRequest::default()
        };
        match client.forward(ttrpc::context::with_timeout(5_000_000_000), &request) {
            Ok(_) => tracing::warn!(
                "reported {}/{} exited ({DEAD_EXIT_STATUS})",
                t.container_id,
                t.exec_id
            ),
            Err(e) => tracing::error!("cannot report {}/{} exited: {e}", t.container_id, t.exec_id),
        }
    }
}

fn exit_cleanly(socket: &Path, downstream_socket: &Path, proxy: &Proxy) -> ! {
    remove_dead_socket(downstream_socket);
    // The record goes first, so that a `delete` never finds it beside a server that has
    // already gone and mistakes a clean exit for a dead wrapper.
    let _ = fs::remove_file(downstream_record(socket));
    // containerd (1.6 and later) waits for the connection to close after Shutdown, so exit
    // as soon as every Shutdown's answer has left, but not before: the downstream may close
    // its side while we are still writing its answer back. Bounded only in case of a bug.
    proxy.wait_shutdowns_answered(Duration::from_secs(1));
    let _ = fs::remove_file(socket);
    std::process::exit(0)
}

/// How long `delete` may spend cleaning up after a dead wrapper, all calls together:
/// containerd kills a `delete` that takes 5 s, and the downstream's own delete runs after.
const ORPHAN_BUDGET: Duration = Duration::from_secs(2);

/// Cleans task `id` up in a downstream whose wrapper is gone (containerd cannot reach it
/// any more): kill, delete, and for the sandbox itself, shut the downstream down.
fn cleanup_orphan(socket: &Path, record: DownstreamRecord, id: &str, last: bool) {
    let DownstreamRecord {
        version, address, ..
    } = record;
    let record_path = downstream_record(socket);
    let Ok(client) = ttrpc::Client::connect(&address) else {
        return;
    };
    let service = if version >= 3 {
        crate::proxy::TASK_V3
    } else {
        crate::proxy::TASK_V2
    };
    let deadline = Instant::now() + ORPHAN_BUDGET;
    let call = |method: &str, payload: Vec<u8>| {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ttrpc::Error::Others(format!("{method}: out of time")));
        }
        client.request(ttrpc::Request {
            service: service.to_owned(),
            method: method.to_owned(),
            payload,
            timeout_nano: i64::try_from(left.as_nanos()).unwrap_or(i64::MAX),
            ..ttrpc::Request::default()
        })
    };
    use containerd_shim_protos::shim::shim::{DeleteRequest, KillRequest, ShutdownRequest};
    let kill = KillRequest {
        id: id.to_owned(),
        signal: 9,
        all: true,
        ..Default::default()
    };
    let _ = call("Kill", kill.write_to_bytes().unwrap_or_default());
    let delete = DeleteRequest {
        id: id.to_owned(),
        ..Default::default()
    };
    // The init process takes a moment to be reaped after SIGKILL; a task the downstream
    // does not know (already deleted) is done.
    loop {
        match call("Delete", delete.write_to_bytes().unwrap_or_default()) {
            Ok(_) => break,
            Err(ttrpc::Error::RpcStatus(s)) if s.code() == ttrpc::Code::NOT_FOUND => break,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break,
        }
    }
    if last {
        let _ = fs::remove_file(&record_path);
        let shutdown = ShutdownRequest {
            id: id.to_owned(),
            now: true,
            ..Default::default()
        };
        // The downstream exits while answering; a closed connection is the expected reply.
        let _ = call("Shutdown", shutdown.write_to_bytes().unwrap_or_default());
        remove_dead_socket(Path::new(address.trim_start_matches("unix://")));
    }
}

/// The serving daemon: proxies containerd's Task calls to the downstream until both have
/// shut down. Never returns.
pub fn serve(profile: Profile, flags: &Flags) -> Result<(), ShimError> {
    let (settings, _) = Settings::load(profile)?;
    let sandboxer = Sandboxer {
        profile,
        settings: settings.clone(),
        namespace: flags.namespace.clone(),
    };
    serve_with(&settings, flags, Box::new(sandboxer))
}

/// [`serve`] with given settings and Create hook.
pub fn serve_with(
    settings: &Settings,
    flags: &Flags,
    hook: Box<dyn CreateHook>,
) -> Result<(), ShimError> {
    let env = |k: &str| {
        std::env::var(k).map_err(|_| ShimError::Io {
            what: format!("the server was started without {k}"),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })
    };
    let downstream = env(ENV_DOWNSTREAM)?;
    let version = env(ENV_DOWNSTREAM_VERSION)?;
    let version: u32 = match version.parse() {
        Ok(v @ 2..=3) => v,
        _ => {
            return Err(ShimError::ServerStartedWrongly(format!(
                "with downstream task API version {version:?} (2 or 3)"
            )))
        }
    };
    let socket = PathBuf::from(env(ENV_SOCKET)?);
    let listener = inherited_listener(&socket)?;
    crate::logging::init(&flags.namespace, &flags.id, flags.debug);

    let proxy = Proxy::new(version, hook, settings.downstream.display().to_string());
    let downstream_socket = PathBuf::from(downstream.trim_start_matches("unix://"));
    let (exit_socket, exit_downstream) = (socket.clone(), downstream_socket.clone());
    let after_shutdown_proxy = Arc::clone(&proxy);
    // A Shutdown answered for a dead downstream ends us; one the downstream answered ends
    // us when the downstream exits (the monitor below), and one it declined does not.
    let after_shutdown: crate::relay::AfterShutdown = Arc::new(move || {
        if after_shutdown_proxy.is_dead() {
            exit_cleanly(&exit_socket, &exit_downstream, &after_shutdown_proxy);
        }
    });
    let connect: crate::relay::Connect = {
        let downstream_socket = downstream_socket.clone();
        Arc::new(move || UnixStream::connect(&downstream_socket))
    };
    {
        let (connect, proxy) = (Arc::clone(&connect), Arc::clone(&proxy));
        std::thread::spawn(move || crate::relay::serve(listener, connect, proxy, after_shutdown));
    }
    tracing::info!(
        "serving on {} for downstream {downstream} (task API v{version})",
        socket.display()
    );

    crate::relay::watch(&connect);
    remove_dead_socket(&downstream_socket);
    let tracked = match proxy.downstream_closed() {
        Verdict::ShutDown => {
            tracing::info!("downstream shut down; exiting");
            exit_cleanly(&socket, &downstream_socket, &proxy);
        }
        Verdict::Died(tracked) => tracked,
    };
    tracing::error!(
        "the downstream shim exited unexpectedly; reporting {} process(es) as exited",
        tracked.len()
    );
    publish_exits(&flags.namespace, &tracked);
    // Keep answering (for the dead) until containerd shuts us down.
    loop {
        std::thread::park();
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

/// The listening socket `start` bound for us, handed over as our standard input (which
/// then reads /dev/null).
fn inherited_listener(socket: &Path) -> Result<UnixListener, ShimError> {
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(io("cannot take the listening socket from stdin"))?;
    let listener = UnixListener::from(fd);
    let bound = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf));
    if bound.as_deref() != Some(socket) {
        return Err(ShimError::ServerStartedWrongly(format!(
            "without its listening socket {} on stdin",
            socket.display()
        )));
    }
    let null = fs::File::open("/dev/null").map_err(io("cannot open /dev/null"))?;
    nix::unistd::dup2_stdin(null).map_err(|e| ShimError::Io {
        what: "cannot point stdin at /dev/null".to_owned(),
        source: e.into(),
    })?;
    Ok(listener)
}

/// `delete`: the downstream's `delete`, then our state; returns the `DeleteResponse` bytes.
/// When the wrapper itself died, its downstream is cleaned up through its own API first.
pub fn delete(
    profile: Profile,
    flags: &Flags,
    args: &[String],
    stdin: &[u8],
) -> Result<Vec<u8>, ShimError> {
    let (settings, settings_path) = Settings::load(profile)?;
    let sandboxer = Sandboxer {
        profile,
        settings: settings.clone(),
        namespace: flags.namespace.clone(),
    };
    delete_with(&settings, &settings_path, flags, args, stdin, &sandboxer)
}

/// [`delete`] with given settings; `hook` learns that the task is gone.
pub fn delete_with(
    settings: &Settings,
    settings_path: &Option<PathBuf>,
    flags: &Flags,
    args: &[String],
    stdin: &[u8],
    hook: &dyn CreateHook,
) -> Result<Vec<u8>, ShimError> {
    let bundle = flags
        .bundle
        .clone()
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_default();
    let group = group_of(&bundle, &flags.id);
    let socket = socket_path(settings, flags, &group)?;
    let record = DownstreamRecord::read(&socket);
    if !server_alive(record.as_ref(), &socket, &group) {
        // The wrapper died: nobody else can reach its downstream any more.
        if let Some(record) = record {
            cleanup_orphan(&socket, record, &flags.id, group == flags.id);
        }
        if group == flags.id {
            let _ = fs::remove_file(&socket);
        }
    }
    let response = match run_downstream(settings, settings_path, args, stdin, "delete", &[], None) {
        Ok(bytes) if DeleteResponse::parse_from_bytes(&bytes).is_ok() => bytes,
        Ok(_) | Err(_) => DeleteResponse {
            pid: 0,
            exit_status: DEAD_EXIT_STATUS,
            exited_at: MessageField::some(now()),
            ..DeleteResponse::default()
        }
        .write_to_bytes()
        .unwrap_or_default(),
    };
    hook.on_deleted(&flags.id);
    Ok(response)
}
