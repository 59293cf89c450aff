//! The Task proxy's decisions: every method of containerd's Task service, called under the
//! v2 or the v3 service name, goes to the downstream under the name it serves. Only
//! `Create` is decoded (to hand Kata the per-sandbox config); everything else passes
//! through untouched, with the caller's deadline and metadata, and downstream errors keep
//! their status codes. The bytes travel through [`crate::relay`].

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use containerd_shim_protos::api::Status as TaskStatus;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{EnumOrUnknown, Message, MessageField};
use containerd_shim_protos::shim::shim::{
    CreateTaskRequest, CreateTaskResponse, DeleteRequest, DeleteResponse, ExecProcessRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, WaitResponse,
};
use ttrpc::proto::ResponseInit;
use ttrpc::{get_status, Code, Request, Response};

/// The Task service as containerd 1.6/1.7 and Kata name it.
pub const TASK_V2: &str = "containerd.task.v2.Task";
/// The Task service as containerd 2.x names it.
pub const TASK_V3: &str = "containerd.task.v3.Task";

/// Every method of the Task service (identical in v2 and v3).
pub const METHODS: [&str; 17] = [
    "State",
    "Create",
    "Start",
    "Delete",
    "Pids",
    "Pause",
    "Resume",
    "Checkpoint",
    "Kill",
    "Exec",
    "ResizePty",
    "CloseIO",
    "Update",
    "Wait",
    "Stats",
    "Connect",
    "Shutdown",
];

/// What the wrapper does to a `Create` before forwarding it.
pub trait CreateHook: Send + Sync {
    /// Returns the request to forward, or the one-line reason the Create fails.
    fn on_create(&self, request: CreateTaskRequest) -> Result<CreateTaskRequest, String>;
    /// Called after the downstream deleted task `id` (sandbox state may go).
    fn on_deleted(&self, id: &str);
}

/// A process the downstream runs for us, remembered so that its exit can be reported
/// if the downstream dies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    /// The task (container) id.
    pub container_id: String,
    /// The exec id, or the container id for the init process.
    pub exec_id: String,
    /// Its pid, once started.
    pub pid: u32,
    /// The bundle of an init process (empty for an exec).
    pub bundle: String,
}

/// Cleans up after a task of a dead downstream (e.g. the downstream's own `delete`);
/// returns the `DeleteResponse` bytes to answer with.
pub type DeadTaskCleanup = Box<dyn Fn(&Tracked) -> Option<Vec<u8>> + Send + Sync>;

/// A request on its way to the downstream: what its answer is needed for.
#[derive(Debug)]
pub struct Pending {
    method: String,
    payload: Vec<u8>,
    created: Option<(String, String)>,
}

impl Pending {
    /// The Task method.
    pub fn method(&self) -> &str {
        &self.method
    }
}

/// State shared by every handler.
pub struct Proxy {
    service: String,
    hook: Box<dyn CreateHook>,
    dead: AtomicBool,
    shut_down: AtomicBool,
    /// Set once a Shutdown's answer has been written back to containerd.
    shutdown_answered: (Mutex<bool>, std::sync::Condvar),
    tracked: Mutex<BTreeMap<(String, String), Tracked>>,
    dead_cleanup: Mutex<Option<DeadTaskCleanup>>,
    died_at: Mutex<Option<Timestamp>>,
    downstream_name: String,
}

/// The exit status reported for the tasks of a downstream that died.
pub const DEAD_EXIT_STATUS: u32 = 255;

fn status_response(code: Code, message: impl ToString) -> Response {
    Response::init_status(get_status(code, message))
}

impl Proxy {
    /// The proxy's state for a downstream that serves Task API `version`.
    pub fn new(version: u32, hook: Box<dyn CreateHook>, downstream_name: String) -> Arc<Self> {
        Arc::new(Self {
            service: if version >= 3 { TASK_V3 } else { TASK_V2 }.to_owned(),
            hook,
            dead: AtomicBool::new(false),
            shut_down: AtomicBool::new(false),
            shutdown_answered: (Mutex::new(false), std::sync::Condvar::new()),
            tracked: Mutex::new(BTreeMap::new()),
            dead_cleanup: Mutex::new(None),
            died_at: Mutex::new(None),
            downstream_name,
        })
    }

    /// Sets how a dead downstream's task is cleaned up when containerd deletes it.
    pub fn set_dead_cleanup(&self, cleanup: DeadTaskCleanup) {
        if let Ok(mut slot) = self.dead_cleanup.lock() {
            *slot = Some(cleanup);
        }
    }

    /// Whether the downstream has gone away.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Whether containerd asked for a Shutdown (forwarded, or answered for a dead downstream).
    pub fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::SeqCst)
    }

    /// Records that a Shutdown's answer reached containerd's connection.
    pub fn note_shutdown_answered(&self) {
        let (flag, cv) = &self.shutdown_answered;
        if let Ok(mut answered) = flag.lock() {
            *answered = true;
            cv.notify_all();
        }
    }

    /// Waits (at most `limit`) until a Shutdown's answer has been written back, so that
    /// exiting never cuts it off; true if it was.
    pub fn wait_shutdown_answered(&self, limit: std::time::Duration) -> bool {
        let (flag, cv) = &self.shutdown_answered;
        let Ok(answered) = flag.lock() else {
            return false;
        };
        cv.wait_timeout_while(answered, limit, |a| !*a)
            .map(|(a, _)| *a)
            .unwrap_or(false)
    }

    /// Forgets a Shutdown the downstream did not act on (it still runs tasks), so that a
    /// later crash is reported as one.
    pub fn shutdown_declined(&self) {
        self.shut_down.store(false, Ordering::SeqCst);
    }

    /// Marks the downstream dead and returns the processes it was running (kept, so that
    /// containerd's later Delete can clean each task up).
    pub fn mark_dead(&self) -> Vec<Tracked> {
        if let Ok(mut at) = self.died_at.lock() {
            *at = Some(now());
        }
        self.dead.store(true, Ordering::SeqCst);
        self.tracked
            .lock()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default()
    }

    /// A `WaitResponse` saying "exited with 255 when the downstream died", and that time.
    fn exited(&self) -> (Vec<u8>, Timestamp) {
        let at = self
            .died_at
            .lock()
            .ok()
            .and_then(|t| t.clone())
            .unwrap_or_else(now);
        let bytes = WaitResponse {
            exit_status: DEAD_EXIT_STATUS,
            exited_at: MessageField::some(at.clone()),
            ..WaitResponse::default()
        }
        .write_to_bytes()
        .unwrap_or_default();
        (bytes, at)
    }

    /// Answers State for a task of a dead downstream: stopped, with status 255.
    fn state_dead(&self, payload: &[u8]) -> Response {
        let Ok(req) = StateRequest::parse_from_bytes(payload) else {
            return status_response(Code::INVALID_ARGUMENT, "cannot decode StateRequest");
        };
        let exec = if req.exec_id.is_empty() {
            req.id.clone()
        } else {
            req.exec_id.clone()
        };
        let Some(t) = self
            .tracked
            .lock()
            .ok()
            .and_then(|t| t.get(&(req.id.clone(), exec)).cloned())
        else {
            return status_response(
                Code::NOT_FOUND,
                format!("{} is not known to the wrapper", req.id),
            );
        };
        let (_, at) = self.exited();
        let state = StateResponse {
            id: req.id.clone(),
            bundle: t.bundle,
            pid: t.pid,
            status: EnumOrUnknown::new(TaskStatus::STOPPED),
            exit_status: DEAD_EXIT_STATUS,
            exited_at: MessageField::some(at),
            exec_id: req.exec_id,
            ..StateResponse::default()
        };
        ok_payload(state.write_to_bytes().unwrap_or_default())
    }

    /// Answers containerd's Delete of a task whose downstream is gone: cleans it up and
    /// reports it exited (255), so that `ctr task rm` and CRI's RemoveContainer succeed.
    fn delete_dead(&self, payload: &[u8]) -> Response {
        let Ok(req) = DeleteRequest::parse_from_bytes(payload) else {
            return status_response(Code::INVALID_ARGUMENT, "cannot decode DeleteRequest");
        };
        let exec = if req.exec_id.is_empty() {
            req.id.clone()
        } else {
            req.exec_id.clone()
        };
        let tracked = self
            .tracked
            .lock()
            .ok()
            .and_then(|mut t| t.remove(&(req.id.clone(), exec)));
        let cleaned = match (&tracked, self.dead_cleanup.lock()) {
            (Some(t), Ok(cleanup)) if req.exec_id.is_empty() => cleanup.as_ref().and_then(|f| f(t)),
            _ => None,
        };
        let payload = cleaned.unwrap_or_else(|| {
            DeleteResponse {
                pid: tracked.as_ref().map_or(0, |t| t.pid),
                exit_status: DEAD_EXIT_STATUS,
                exited_at: MessageField::some(self.exited().1),
                ..DeleteResponse::default()
            }
            .write_to_bytes()
            .unwrap_or_default()
        });
        if req.exec_id.is_empty() {
            if let Ok(mut t) = self.tracked.lock() {
                t.retain(|(c, _), _| c != &req.id);
            }
            self.hook.on_deleted(&req.id);
        }
        ok_payload(payload)
    }

    /// The answer for a call while the downstream is dead: Delete, State, Wait and Kill
    /// are answered as for an exited task, Shutdown succeeds, anything else is refused.
    pub fn answer_dead(&self, method: &str, payload: &[u8]) -> Response {
        match method {
            "Shutdown" => {
                self.shut_down.store(true, Ordering::SeqCst);
                ok_empty()
            }
            "Delete" => self.delete_dead(payload),
            "State" => self.state_dead(payload),
            "Wait" => ok_payload(self.exited().0),
            "Kill" => ok_empty(),
            _ => status_response(
                Code::UNAVAILABLE,
                format!(
                    "the downstream shim ({}) has exited; its tasks were reported exited with status 255",
                    self.downstream_name
                ),
            ),
        }
    }

    /// Readies a request for the downstream: renames the service, and at Create runs the
    /// hook. Returns what to remember until the answer comes, or the answer to give now.
    pub fn prepare(&self, method: &str, req: &mut Request) -> Result<Pending, Response> {
        if self.is_dead() {
            return Err(self.answer_dead(method, &req.payload));
        }
        let mut created = None;
        if method == "Create" {
            let request = CreateTaskRequest::parse_from_bytes(&req.payload).map_err(|e| {
                status_response(
                    Code::INVALID_ARGUMENT,
                    format!("cannot decode CreateTaskRequest: {e}"),
                )
            })?;
            created = Some((request.id.clone(), request.bundle.clone()));
            let rewritten = self
                .hook
                .on_create(request)
                .map_err(|reason| status_response(Code::FAILED_PRECONDITION, reason))?;
            req.payload = rewritten.write_to_bytes().map_err(|e| {
                status_response(
                    Code::INTERNAL,
                    format!("cannot encode CreateTaskRequest: {e}"),
                )
            })?;
        }
        if method == "Shutdown" {
            // Before forwarding: the downstream may close its socket before its answer to
            // us is read, and the monitor must not take that for a crash.
            self.shut_down.store(true, Ordering::SeqCst);
        }
        req.service = self.service.clone();
        let tracked = matches!(method, "Create" | "Start" | "Exec" | "Delete");
        Ok(Pending {
            method: method.to_owned(),
            payload: if tracked {
                req.payload.clone()
            } else {
                Vec::new()
            },
            created,
        })
    }

    /// Takes note of the downstream's answer to a prepared request.
    pub fn complete(&self, pending: Pending, response: &Response) {
        let ok = response
            .status
            .as_ref()
            .is_none_or(|s| s.code() == Code::OK);
        if ok {
            self.record(
                &pending.method,
                &pending.payload,
                &response.payload,
                pending.created,
            );
        }
    }

    /// Bookkeeping of the processes the downstream runs, from successful calls.
    fn record(
        &self,
        method: &str,
        request: &[u8],
        response: &[u8],
        created: Option<(String, String)>,
    ) {
        let Ok(mut tracked) = self.tracked.lock() else {
            return;
        };
        match method {
            "Create" => {
                if let (Some((id, bundle)), Ok(res)) =
                    (created, CreateTaskResponse::parse_from_bytes(response))
                {
                    tracked.insert(
                        (id.clone(), id.clone()),
                        Tracked {
                            container_id: id.clone(),
                            exec_id: id,
                            pid: res.pid,
                            bundle,
                        },
                    );
                }
            }
            "Exec" => {
                if let Ok(req) = ExecProcessRequest::parse_from_bytes(request) {
                    tracked.insert(
                        (req.id.clone(), req.exec_id.clone()),
                        Tracked {
                            container_id: req.id,
                            exec_id: req.exec_id,
                            pid: 0,
                            bundle: String::new(),
                        },
                    );
                }
            }
            "Start" => {
                if let (Ok(req), Ok(res)) = (
                    StartRequest::parse_from_bytes(request),
                    StartResponse::parse_from_bytes(response),
                ) {
                    let exec = if req.exec_id.is_empty() {
                        req.id.clone()
                    } else {
                        req.exec_id.clone()
                    };
                    if let Some(t) = tracked.get_mut(&(req.id.clone(), exec)) {
                        t.pid = res.pid;
                    }
                }
            }
            "Delete" => {
                if let Ok(req) = DeleteRequest::parse_from_bytes(request) {
                    if req.exec_id.is_empty() {
                        tracked.retain(|(c, _), _| c != &req.id);
                        drop(tracked);
                        self.hook.on_deleted(&req.id);
                    } else {
                        tracked.remove(&(req.id.clone(), req.exec_id.clone()));
                    }
                }
            }
            _ => {}
        }
    }
}

/// The current time as a protobuf timestamp.
pub fn now() -> Timestamp {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
        ..Timestamp::default()
    }
}

fn ok_payload(payload: Vec<u8>) -> Response {
    let mut res = Response::init_status(get_status(Code::OK, ""));
    res.set_payload(payload);
    res
}

fn ok_empty() -> Response {
    ok_payload(
        containerd_shim_protos::protobuf::well_known_types::empty::Empty::new()
            .write_to_bytes()
            .unwrap_or_default(),
    )
}

/// Blocks until the downstream's socket closes (it exited), through a connection of its
/// own on which nothing is ever sent.
pub fn wait_for_close(socket: &std::path::Path) {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return;
    };
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
