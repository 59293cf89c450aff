//! The proxy: takes the listening socket `start` bound, serves containerd through
//! [`crate::relay`] until both sides have shut down, and reports a dead downstream.

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::bootstrap::Flags;
use crate::create::PlanHook;
use crate::proxy::{CreateHook, Proxy, Verdict};
use crate::proxy_record::downstream_record;
use kata_gpu_plan::profile::Profile;
use kata_gpu_plan::settings::Settings;

use super::events::publish_exits;
use super::{
    io, lock_group, remove_dead_socket, ShimError, ENV_DOWNSTREAM, ENV_DOWNSTREAM_VERSION,
    ENV_SOCKET, GROUP_LOCK_WAIT,
};

/// The proxy: relays containerd's Task calls to the downstream until both have
/// shut down. Never returns.
pub fn serve(profile: Profile, flags: &Flags) -> Result<(), ShimError> {
    let (settings, _) = Settings::load(profile)?;
    let plan_hook = PlanHook {
        profile,
        settings: settings.clone(),
        namespace: flags.namespace.clone(),
    };
    serve_with(&settings, flags, Box::new(plan_hook))
}

/// [`serve`] with given settings and Create hook.
pub fn serve_with(
    settings: &Settings,
    flags: &Flags,
    hook: Box<dyn CreateHook>,
) -> Result<(), ShimError> {
    let env = |k: &str| {
        std::env::var(k).map_err(|_| ShimError::Io {
            what: format!("the proxy was started without {k}"),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })
    };
    let downstream = env(ENV_DOWNSTREAM)?;
    let version = env(ENV_DOWNSTREAM_VERSION)?;
    let version: u32 = match version.parse() {
        Ok(v @ 2..=3) => v,
        _ => {
            return Err(ShimError::ProxyStartedWrongly(format!(
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
    // A Shutdown answered for a dead downstream ends us once no task of it is left (each
    // task's Delete comes with one); one the downstream answered ends us when the
    // downstream exits (the monitor below), and one it declined does not.
    let after_shutdown: crate::relay::AfterShutdown = Arc::new(move || {
        if after_shutdown_proxy.is_dead() && after_shutdown_proxy.is_idle() {
            exit_cleanly(&exit_socket, &exit_downstream, &after_shutdown_proxy);
        }
    });
    let connect: crate::relay::Connect = {
        let downstream_socket = downstream_socket.clone();
        Arc::new(move || UnixStream::connect(&downstream_socket))
    };
    {
        let (connect, proxy) = (Arc::clone(&connect), Arc::clone(&proxy));
        std::thread::Builder::new()
            .name("accept".to_owned())
            .spawn(move || crate::relay::serve(listener, connect, proxy, after_shutdown))
            .map_err(io("cannot start the proxy's accept thread"))?;
    }
    tracing::info!(
        "serving on {} for downstream {downstream} (task API v{version})",
        socket.display()
    );

    crate::relay::watch(&connect, &proxy);
    remove_dead_socket(&downstream_socket);
    let tracked = match proxy.downstream_closed() {
        Verdict::ShutDown => {
            tracing::info!("downstream shut down; exiting");
            exit_cleanly(&socket, &downstream_socket, &proxy);
        }
        Verdict::Died(tracked) => tracked,
    };
    // A process whose exit already passed through was reported by the downstream itself.
    let running: Vec<_> = tracked.into_iter().filter(|t| t.exited.is_none()).collect();
    tracing::error!(
        "the downstream shim exited unexpectedly; reporting {} process(es) as exited",
        running.len()
    );
    publish_exits(&flags.namespace, &running);
    // Keep answering (for the dead) until containerd shuts us down, or until nobody is
    // left to call: containerd holds a connection to every shim it knows, so none for
    // ABANDONED_AFTER means it forgot us (it ran `delete` for a shim it could not load, or
    // it is down, and then its reload runs `delete` when it finds our socket gone).
    proxy.wait_abandoned(ABANDONED_AFTER, None);
    tracing::warn!(
        "no containerd connection for {} s since the downstream died; exiting",
        ABANDONED_AFTER.as_secs()
    );
    proxy.abandon();
    exit_cleanly(&socket, &downstream_socket, &proxy);
}

/// How long a proxy whose downstream died waits with no containerd connection before it
/// exits: longer than containerd takes to restart and reload its shims.
const ABANDONED_AFTER: Duration = Duration::from_secs(30);

fn exit_cleanly(socket: &Path, downstream_socket: &Path, proxy: &Proxy) -> ! {
    remove_dead_socket(downstream_socket);
    // Under the group's lock: the `start` that spawned us holds it until it has written our
    // record, so a proxy that exits at once never has its record written after it went.
    let lock = lock_group(socket, GROUP_LOCK_WAIT).ok();
    // The record goes first, so that a `delete` never finds it beside a proxy that has
    // already gone and mistakes a clean exit for a dead proxy.
    let _ = fs::remove_file(downstream_record(socket));
    // containerd (1.6 and later) waits for the connection to close after Shutdown, so exit
    // as soon as every Shutdown's answer has left, but not before: the downstream may close
    // its side while we are still writing its answer back. Bounded only in case of a bug.
    proxy.wait_shutdowns_answered(Duration::from_secs(1));
    let _ = fs::remove_file(socket);
    if let Some(lock) = lock {
        let _ = fs::remove_file(lock.path());
    }
    std::process::exit(0)
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
        return Err(ShimError::ProxyStartedWrongly(format!(
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
