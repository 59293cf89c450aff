//! `delete`: the downstream's own `delete`, and, when our proxy died, the clean-up of its
//! orphaned downstream through the downstream's API.

use std::fs;
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

use super::{group_of, remove_dead_socket, run_downstream, socket_path, task_service, ShimError};

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

/// How long `delete` may spend cleaning up after a dead proxy, all calls together:
/// containerd kills a `delete` that takes 5 s, and the downstream's own delete runs after.
const ORPHAN_BUDGET: Duration = Duration::from_secs(2);

/// Cleans task `id` up in a downstream whose proxy is gone (containerd cannot reach it
/// any more): kill, delete, and for the sandbox itself, shut the downstream down.
fn cleanup_orphan(socket: &Path, record: DownstreamRecord, id: &str, last: bool) {
    let DownstreamRecord {
        version, address, ..
    } = record;
    let record_path = downstream_record(socket);
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
