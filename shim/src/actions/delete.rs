//! `delete`: the downstream's own `delete`, and, when our proxy died, the clean-up of its
//! orphaned downstream through the downstream's API.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::shim::DeleteResponse;

use crate::bootstrap::Flags;
use crate::create::PlanHook;
use crate::proxy::{now, CreateHook, DEAD_EXIT_STATUS};
use crate::proxy_record::{downstream_record, proxy_alive, DownstreamRecord};
use kata_gpu_plan::profile::Profile;
use kata_gpu_plan::settings::Settings;

use super::{
    group_of, remove_dead_socket, remove_group_socket, run_downstream, socket_path, task_service,
    ShimError,
};

/// `delete`: the downstream's `delete`, then our state; returns the `DeleteResponse` bytes.
/// When the proxy itself died, its downstream is cleaned up through its own API first.
pub fn delete(
    profile: Profile,
    flags: &Flags,
    args: &[String],
    stdin: &[u8],
) -> Result<Vec<u8>, ShimError> {
    let (settings, settings_path) = Settings::load(profile)?;
    let plan_hook = PlanHook {
        profile,
        settings: settings.clone(),
        namespace: flags.namespace.clone(),
    };
    delete_with(&settings, &settings_path, flags, args, stdin, &plan_hook)
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
    if !proxy_alive(record.as_ref(), &socket, &group) {
        // The proxy died: nobody else can reach its downstream any more.
        match record {
            Some(record) => cleanup_orphan(&socket, record, &flags.id),
            // Nothing known to reach: only the dead proxy's socket is left.
            None if group == flags.id => remove_group_socket(&socket),
            None => {}
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

/// How long `delete` may spend cleaning up after a dead proxy, all calls together:
/// containerd kills a `delete` that takes 5 s, and the downstream's own delete runs after.
const ORPHAN_BUDGET: Duration = Duration::from_secs(2);

/// How long, after its Shutdown, a downstream is given to exit (Kata exits in the call,
/// runc's shim just after its answer); one that has not by then declined it (it still runs
/// another container of the group).
const EXIT_WAIT: Duration = Duration::from_millis(500);

/// Cleans task `id` up in a downstream whose proxy is gone (containerd cannot reach it
/// any more): kill, delete, then a Shutdown, which the downstream takes only once it runs
/// no task. The record, the downstream's socket and the proxy's go only once the
/// downstream has exited (its connection closed, or nothing listens on its socket): a
/// downstream that still runs a container of the group keeps them all, so that that
/// container's own `delete` finds it.
fn cleanup_orphan(socket: &Path, record: DownstreamRecord, id: &str) {
    let DownstreamRecord {
        version, address, ..
    } = record;
    let downstream_socket = PathBuf::from(address.trim_start_matches("unix://"));
    let forget = || {
        let _ = fs::remove_file(downstream_record(socket));
        remove_dead_socket(&downstream_socket);
        remove_group_socket(socket);
    };
    // A connection of our own, on which nothing is sent: its end is the downstream's exit.
    let mut watch = match UnixStream::connect(&downstream_socket) {
        Ok(stream) => stream,
        Err(e) if nobody_listens(&e) => return forget(),
        // Reachable perhaps, not now (a full backlog): keep everything for a later delete.
        Err(e) => {
            tracing::warn!(
                "cannot reach the orphaned downstream {}: {e}",
                downstream_socket.display()
            );
            return;
        }
    };
    let Ok(client) = ttrpc::Client::connect(&address) else {
        return;
    };
    let service = task_service(version);
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
    let shutdown = ShutdownRequest {
        id: id.to_owned(),
        now: true,
        ..Default::default()
    };
    // Kata exits while answering: a closed connection is the expected reply.
    let _ = call("Shutdown", shutdown.write_to_bytes().unwrap_or_default());
    drop(client);
    if exited(&mut watch, Instant::now() + EXIT_WAIT) {
        forget();
    } else {
        tracing::info!(
            "the orphaned downstream {} declined Shutdown: it runs another container of the group",
            downstream_socket.display()
        );
    }
}

/// Whether a connect error says that nothing listens on the socket (or it is gone).
fn nobody_listens(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
    )
}

/// Waits until the downstream's end of `watch` closes (it exited), at most until `until`.
pub(super) fn exited(watch: &mut UnixStream, until: Instant) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 64];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || watch.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match watch.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use crate::bootstrap::Flags;
    use crate::proxy_record::DownstreamRecord;
    use ttrpc::proto::ResponseInit;

    /// A downstream that behaves as Kata's shim does here: one sandbox serving several
    /// tasks; Kill and Delete per task; Shutdown declined (answered) while a task is
    /// left, otherwise taken by exiting without an answer. Its socket file stays, as
    /// Kata's own does.
    struct FakeKata {
        path: PathBuf,
        tasks: Mutex<BTreeSet<String>>,
        exited: AtomicBool,
        conns: Mutex<Vec<UnixStream>>,
    }

    impl FakeKata {
        fn start(path: PathBuf, tasks: &[&str]) -> Arc<Self> {
            let listener = UnixListener::bind(&path).expect("bind");
            let kata = Arc::new(Self {
                path,
                tasks: Mutex::new(tasks.iter().map(|t| (*t).to_owned()).collect()),
                exited: AtomicBool::new(false),
                conns: Mutex::new(Vec::new()),
            });
            let k = Arc::clone(&kata);
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if k.exited.load(Ordering::SeqCst) {
                        return; // the listener closes with us
                    }
                    let Ok(conn) = conn else { continue };
                    k.conns
                        .lock()
                        .expect("lock")
                        .push(conn.try_clone().expect("clone"));
                    let k = Arc::clone(&k);
                    std::thread::spawn(move || k.serve(conn));
                }
            });
            kata
        }

        fn serve(&self, mut conn: UnixStream) {
            loop {
                let mut header = [0u8; 10];
                if conn.read_exact(&mut header).is_err() {
                    return;
                }
                let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
                let mut payload = vec![0u8; len as usize];
                if conn.read_exact(&mut payload).is_err() {
                    return;
                }
                let Ok(request) = ttrpc::Request::parse_from_bytes(&payload) else {
                    return;
                };
                let task = |bytes: &[u8]| {
                    containerd_shim_protos::shim::shim::DeleteRequest::parse_from_bytes(bytes)
                        .map(|r| r.id)
                        .unwrap_or_default()
                };
                let ok = ttrpc::get_status(ttrpc::Code::OK, "");
                let status = match request.method.as_str() {
                    "Kill" => ok,
                    "Delete" => {
                        if self
                            .tasks
                            .lock()
                            .expect("lock")
                            .remove(&task(&request.payload))
                        {
                            ok
                        } else {
                            ttrpc::get_status(ttrpc::Code::NOT_FOUND, "no such task")
                        }
                    }
                    "Shutdown" if self.tasks.lock().expect("lock").is_empty() => {
                        self.exit();
                        return;
                    }
                    "Shutdown" => ok,
                    _ => ttrpc::get_status(ttrpc::Code::UNIMPLEMENTED, "no"),
                };
                let mut response = ttrpc::Response::init_status(status);
                if response
                    .status
                    .as_ref()
                    .is_some_and(|s| s.code() == ttrpc::Code::OK)
                {
                    response
                        .set_payload(DeleteResponse::default().write_to_bytes().expect("encode"));
                }
                let bytes = response.write_to_bytes().expect("encode");
                let mut frame = u32::try_from(bytes.len())
                    .expect("fits")
                    .to_be_bytes()
                    .to_vec();
                frame.extend_from_slice(&header[4..8]);
                frame.extend_from_slice(&[2, 0]);
                frame.extend_from_slice(&bytes);
                if conn.write_all(&frame).is_err() {
                    return;
                }
            }
        }

        /// os.Exit: every connection closes, and the listener.
        fn exit(&self) {
            self.exited.store(true, Ordering::SeqCst);
            for c in self.conns.lock().expect("lock").drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
            let _ = UnixStream::connect(&self.path); // wakes the accept loop to close it
        }

        fn is_running(&self) -> bool {
            !self.exited.load(Ordering::SeqCst)
        }
    }

    fn bundle(dir: &Path, id: &str, sandbox: &str) -> String {
        let b = dir.join(id);
        fs::create_dir_all(&b).expect("bundle");
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": { crate::create::SANDBOX_ID: sandbox },
        });
        fs::write(b.join("config.json"), spec.to_string()).expect("config.json");
        b.display().to_string()
    }

    #[test]
    fn after_a_dead_proxy_the_downstream_stays_reachable_until_its_last_container_is_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = Settings {
            state_dir: dir.path().join("st"),
            downstream: PathBuf::from("/bin/true"),
            ..Settings::default()
        };
        let hook = PlanHook {
            profile: kata_gpu_plan::Profile::Snp,
            settings: settings.clone(),
            namespace: "default".to_owned(),
        };
        let flags = |id: &str, sandbox: &str| Flags {
            namespace: "default".into(),
            address: "/run/containerd/containerd.sock".into(),
            id: id.into(),
            bundle: Some(bundle(dir.path(), id, sandbox)),
            action: Some("delete".into()),
            ..Flags::default()
        };
        let kata_socket = dir.path().join("kata.sock");
        let kata = FakeKata::start(kata_socket.clone(), &["pod", "app"]);
        // The proxy for group `pod`, killed with -9: its record names a pid that is gone.
        let socket = socket_path(&settings, &flags("pod", "pod"), "pod").expect("socket");
        fs::create_dir_all(socket.parent().expect("dir")).expect("mkdir");
        let _dead_listener = UnixListener::bind(&socket).expect("bind");
        drop(_dead_listener);
        let record = DownstreamRecord {
            version: 2,
            address: format!("unix://{}", kata_socket.display()),
            proxy_pid: Some(0x7fff_fff0),
        };
        fs::write(downstream_record(&socket), record.to_string()).expect("record");

        // The sandbox first, its app still running.
        delete_with(&settings, &None, &flags("pod", "pod"), &[], &[], &hook).expect("delete");
        assert!(kata.is_running(), "Kata declined: it still runs app");
        assert!(kata_socket.exists(), "Kata's live socket was unlinked");
        assert!(
            UnixStream::connect(&kata_socket).is_ok(),
            "Kata is reachable"
        );
        assert!(
            DownstreamRecord::read(&socket).is_some(),
            "the record is kept for app's delete"
        );

        delete_with(&settings, &None, &flags("app", "pod"), &[], &[], &hook).expect("delete");
        assert!(kata.tasks.lock().expect("lock").is_empty());
        assert!(!kata.is_running(), "the last delete shut Kata down");
        assert!(!kata_socket.exists(), "the exited Kata's socket went");
        assert!(!downstream_record(&socket).exists() && !socket.exists());
    }
}
