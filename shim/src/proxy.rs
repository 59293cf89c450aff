//! The Task proxy's decisions: every method of containerd's Task service, called under the
//! v2 or the v3 service name, goes to the downstream under the name it serves. `Create`'s
//! request is decoded and rewritten by the [`CreateHook`] (to hand Kata the per-sandbox
//! config); the successful answers to `Create`, `Start`, `Exec` and `Delete` are read, never
//! changed, to know which processes the downstream runs; everything else passes through
//! untouched, with the caller's deadline and metadata, and downstream errors keep their
//! status codes. Once the downstream is dead, `Connect`, `Delete`, `State`, `Wait`, `Kill`
//! and `Shutdown` are answered here for its tasks. The bytes travel through [`crate::relay`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use containerd_shim_protos::api::Status as TaskStatus;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{EnumOrUnknown, Message, MessageField};
use containerd_shim_protos::shim::shim::{
    ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, ExecProcessRequest, StartRequest, StartResponse, StateRequest, StateResponse,
    WaitRequest, WaitResponse,
};
use ttrpc::proto::ResponseInit;
use ttrpc::{get_status, Code, Request, Response};

/// The Task service as containerd 1.6/1.7 and Kata name it.
pub const TASK_V2: &str = "containerd.task.v2.Task";
/// The Task service as containerd 2.x names it.
pub const TASK_V3: &str = "containerd.task.v3.Task";

/// What the proxy does to a `Create` before forwarding it.
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
    /// Its exit, once a Wait's answer passed through: status, and when (seconds, nanos).
    pub exited: Option<(u32, i64, i32)>,
}

impl Tracked {
    /// Its exit status and time: the one that passed through, else the downstream's death
    /// (`DEAD_EXIT_STATUS` at `died`).
    fn exit(&self, died: &Timestamp) -> (u32, Timestamp) {
        match self.exited {
            Some((status, seconds, nanos)) => (
                status,
                Timestamp {
                    seconds,
                    nanos,
                    ..Timestamp::default()
                },
            ),
            None => (DEAD_EXIT_STATUS, died.clone()),
        }
    }
}

/// A request on its way to the downstream: what its answer is needed for, and what to
/// answer in its place if the downstream goes away first.
#[derive(Debug)]
pub struct Pending {
    method: String,
    /// The request's own payload (the Task message, not the ttrpc envelope).
    payload: Vec<u8>,
    created: Option<(String, String)>,
    deadline: Option<Instant>,
}

impl Pending {
    /// The Task method.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request's payload: the Task message, e.g. a `DeleteRequest`.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// When the caller stops waiting for the answer, if it said.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the answer changes the proxy's bookkeeping (the processes the downstream
    /// runs, the sandbox's state), so that it is worth waiting for when nobody else does.
    pub fn records(&self) -> bool {
        matches!(self.method.as_str(), "Create" | "Start" | "Exec" | "Delete")
    }

    /// Whether the answer is read at all ([`Proxy::complete`]): the calls that change the
    /// bookkeeping, and Wait, whose exit is kept. Every other answer passes through
    /// undecoded.
    pub fn reads_answer(&self) -> bool {
        self.records() || self.method == "Wait"
    }
}

/// What the downstream's going away means, decided by [`Proxy::downstream_closed`].
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It closed with no task left: it shut down; exit.
    ShutDown,
    /// It died running these processes: report them exited, answer for them, and exit at
    /// containerd's Shutdown.
    Died(Vec<Tracked>),
}

/// A flag that is waited for.
#[derive(Default)]
struct Signal {
    set: Mutex<bool>,
    changed: Condvar,
}

impl Signal {
    fn raise(&self) {
        if let Ok(mut set) = self.set.lock() {
            *set = true;
            self.changed.notify_all();
        }
    }

    fn is_set(&self) -> bool {
        self.set.lock().map(|s| *s).unwrap_or(true)
    }

    fn wait_until(&self, until: Instant) -> bool {
        let Ok(mut set) = self.set.lock() else {
            return true;
        };
        while !*set {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            set = match self.changed.wait_timeout(set, left) {
                Ok((s, _)) => s,
                Err(_) => return true,
            };
        }
        true
    }
}

/// State shared by every handler.
pub struct Proxy {
    service: String,
    hook: Box<dyn CreateHook>,
    dead: AtomicBool,
    /// Raised when the downstream's socket closed (it exited), by whoever watches it.
    gone: Signal,
    /// Shutdowns forwarded and not yet answered to containerd (or dropped with its
    /// connection).
    shutdowns: (Mutex<usize>, Condvar),
    tracked: Mutex<BTreeMap<(String, String), Tracked>>,
    died_at: Mutex<Option<Timestamp>>,
    downstream_name: String,
    /// The downstream's pid, from its socket's peer credentials (0 until known).
    downstream_pid: AtomicU32,
    /// containerd connections open now; notified when the count changes.
    connections: (Mutex<usize>, Condvar),
}

/// One containerd connection, counted while it lives (see [`Proxy::wait_abandoned`]).
pub struct Connection(Arc<Proxy>);

impl Drop for Connection {
    fn drop(&mut self) {
        let (count, cv) = &self.0.connections;
        if let Ok(mut n) = count.lock() {
            *n = n.saturating_sub(1);
            cv.notify_all();
        }
    }
}

/// The exit status reported for the tasks of a downstream that died.
pub const DEAD_EXIT_STATUS: u32 = 255;

fn status_response(code: Code, message: impl ToString) -> Response {
    Response::init_status(get_status(code, message))
}

/// The Task service name a downstream of Task API `version` serves.
pub(crate) fn task_service(version: u32) -> &'static str {
    if version >= 3 {
        TASK_V3
    } else {
        TASK_V2
    }
}

impl Proxy {
    /// The proxy's state for a downstream that serves Task API `version`.
    pub fn new(version: u32, hook: Box<dyn CreateHook>, downstream_name: String) -> Arc<Self> {
        Arc::new(Self {
            service: task_service(version).to_owned(),
            hook,
            dead: AtomicBool::new(false),
            gone: Signal::default(),
            shutdowns: (Mutex::new(0), Condvar::new()),
            tracked: Mutex::new(BTreeMap::new()),
            died_at: Mutex::new(None),
            downstream_name,
            downstream_pid: AtomicU32::new(0),
            connections: (Mutex::new(0), Condvar::new()),
        })
    }

    /// Notes the downstream's pid (its socket's peer), which a dead downstream's `Connect`
    /// still answers with.
    pub fn set_downstream_pid(&self, pid: u32) {
        self.downstream_pid.store(pid, Ordering::SeqCst);
    }

    /// Counts a containerd connection until the returned guard is dropped.
    pub fn connection_opened(self: &Arc<Self>) -> Connection {
        let (count, cv) = &self.connections;
        if let Ok(mut n) = count.lock() {
            *n += 1;
            cv.notify_all();
        }
        Connection(Arc::clone(self))
    }

    /// Once the downstream is dead: waits until no containerd connection has been open for
    /// `idle` together, i.e. nobody will call again (containerd holds one connection to a
    /// shim it knows for as long as it knows it, and opens one again at once when it
    /// reloads its shims after a restart). True when that happened; false at `until`.
    pub fn wait_abandoned(&self, idle: Duration, until: Option<Instant>) -> bool {
        let (count, cv) = &self.connections;
        let Ok(mut n) = count.lock() else {
            return true;
        };
        loop {
            let now = Instant::now();
            let left = until.map_or(Duration::MAX, |u| u.saturating_duration_since(now));
            if left.is_zero() {
                return false;
            }
            if *n > 0 {
                n = match cv.wait_timeout_while(n, left, |n| *n > 0) {
                    Ok((n, _)) => n,
                    Err(_) => return true,
                };
                continue;
            }
            let quiet_since = Instant::now();
            n = match cv.wait_timeout_while(n, idle.min(left), |n| *n == 0) {
                Ok((n, _)) => n,
                Err(_) => return true,
            };
            if *n == 0 && quiet_since.elapsed() >= idle {
                return true;
            }
        }
    }

    /// The downstream binary, for messages.
    pub fn downstream_name(&self) -> &str {
        &self.downstream_name
    }

    /// Whether the downstream has gone away.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Notes that the downstream's socket closed: it exited.
    pub fn note_gone(&self) {
        self.gone.raise();
    }

    /// Whether the downstream's socket has closed.
    pub fn is_gone(&self) -> bool {
        self.gone.is_set()
    }

    /// Waits until the downstream's socket has closed, at most until `until`; true if it has.
    pub fn wait_gone(&self, until: Instant) -> bool {
        self.gone.wait_until(until)
    }

    /// A forwarded Shutdown has been answered to containerd, or dropped because containerd
    /// left: exiting no longer cuts an answer off.
    pub fn finish_shutdown(&self) {
        let (count, cv) = &self.shutdowns;
        if let Ok(mut n) = count.lock() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                cv.notify_all();
            }
        }
    }

    /// Waits (at most `limit`) until no forwarded Shutdown waits for its answer to be
    /// written back, so that exiting never cuts one off; true if none does.
    pub fn wait_shutdowns_answered(&self, limit: Duration) -> bool {
        let (count, cv) = &self.shutdowns;
        let Ok(n) = count.lock() else {
            return false;
        };
        cv.wait_timeout_while(n, limit, |n| *n > 0)
            .map(|(n, _)| *n == 0)
            .unwrap_or(false)
    }

    /// Whether the downstream runs no task that went through us (all were deleted).
    pub fn is_idle(&self) -> bool {
        self.tracked.lock().map(|t| t.is_empty()).unwrap_or(true)
    }

    /// Decides, once the downstream's socket has closed, whether it shut down or died.
    /// Kata accepts a Shutdown (by exiting without a reply) only once it runs no task, and
    /// declines it (by replying) while it does; containerd sends one after each task's
    /// Delete. So a close with no task left is a shutdown, and a close with tasks left is a
    /// death, a Shutdown in flight or not: they are returned (and kept, so that
    /// containerd's later Delete can clean each one up).
    pub fn downstream_closed(&self) -> Verdict {
        self.note_gone();
        if self.is_idle() {
            return Verdict::ShutDown;
        }
        Verdict::Died(self.mark_dead())
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

    /// When the downstream died.
    fn died_at(&self) -> Timestamp {
        self.died_at
            .lock()
            .ok()
            .and_then(|t| t.clone())
            .unwrap_or_else(now)
    }

    /// The exit of process `exec` (empty: the init) of task `id` of a dead downstream: the
    /// one that passed through in a Wait's answer, else 255 when the downstream died.
    fn exit_of(&self, id: &str, exec: &str) -> (u32, Timestamp) {
        let exec = if exec.is_empty() { id } else { exec };
        let died = self.died_at();
        self.tracked
            .lock()
            .ok()
            .and_then(|t| {
                t.get(&(id.to_owned(), exec.to_owned()))
                    .map(|t| t.exit(&died))
            })
            .unwrap_or((DEAD_EXIT_STATUS, died))
    }

    /// Answers Wait for a process of a dead downstream (see [`Proxy::exit_of`]).
    fn wait_dead(&self, payload: &[u8]) -> Response {
        let Ok(req) = WaitRequest::parse_from_bytes(payload) else {
            return status_response(Code::INVALID_ARGUMENT, "cannot decode WaitRequest");
        };
        let (exit_status, at) = self.exit_of(&req.id, &req.exec_id);
        let bytes = WaitResponse {
            exit_status,
            exited_at: MessageField::some(at),
            ..WaitResponse::default()
        }
        .write_to_bytes()
        .unwrap_or_default();
        ok_payload(bytes)
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
                format!("{} is not known to the proxy", req.id),
            );
        };
        let (exit_status, at) = t.exit(&self.died_at());
        let state = StateResponse {
            id: req.id.clone(),
            bundle: t.bundle,
            pid: t.pid,
            status: EnumOrUnknown::new(TaskStatus::STOPPED),
            exit_status,
            exited_at: MessageField::some(at),
            exec_id: req.exec_id,
            ..StateResponse::default()
        };
        ok_payload(state.write_to_bytes().unwrap_or_default())
    }

    /// Forgets the tasks of a dead downstream that nobody will delete through us (see
    /// [`Proxy::wait_abandoned`]): their state goes, as their Delete would have removed it.
    pub fn abandon(&self) {
        let ids: std::collections::BTreeSet<String> = self
            .tracked
            .lock()
            .map(|mut t| {
                std::mem::take(&mut *t)
                    .into_keys()
                    .map(|(c, _)| c)
                    .collect()
            })
            .unwrap_or_default();
        for id in ids {
            self.hook.on_deleted(&id);
        }
    }

    /// Answers Connect (containerd's `PID()`, called before every Wait and when it reloads
    /// its shims) for a dead downstream with the pids it had: the downstream's own, and the
    /// task's as its Create or Start answered (Kata answers every id, with its own pid when
    /// it has no other), so that containerd never takes this proxy for a dead one and goes
    /// on to Wait, Delete and Shutdown.
    fn connect_dead(&self, payload: &[u8]) -> Response {
        let Ok(req) = ConnectRequest::parse_from_bytes(payload) else {
            return status_response(Code::INVALID_ARGUMENT, "cannot decode ConnectRequest");
        };
        let shim_pid = match self.downstream_pid.load(Ordering::SeqCst) {
            0 => std::process::id(),
            pid => pid,
        };
        let task_pid = self
            .tracked
            .lock()
            .ok()
            .and_then(|t| t.get(&(req.id.clone(), req.id.clone())).map(|t| t.pid))
            .filter(|pid| *pid != 0)
            .unwrap_or(shim_pid);
        let answer = ConnectResponse {
            shim_pid,
            task_pid,
            ..ConnectResponse::default()
        };
        ok_payload(answer.write_to_bytes().unwrap_or_default())
    }

    /// Answers containerd's Delete of a task whose downstream is gone: cleans it up and
    /// reports it exited (255), so that `ctr task rm` and CRI's RemoveContainer succeed.
    fn delete_dead(&self, payload: &[u8]) -> Response {
        let req = match DeleteRequest::parse_from_bytes(payload) {
            Ok(req) if !req.id.is_empty() => req,
            _ => return status_response(Code::INVALID_ARGUMENT, "cannot decode DeleteRequest"),
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
        let died = self.died_at();
        let (exit_status, at) = tracked
            .as_ref()
            .map_or((DEAD_EXIT_STATUS, died.clone()), |t| t.exit(&died));
        let payload = DeleteResponse {
            pid: tracked.as_ref().map_or(0, |t| t.pid),
            exit_status,
            exited_at: MessageField::some(at),
            ..DeleteResponse::default()
        }
        .write_to_bytes()
        .unwrap_or_default();
        if req.exec_id.is_empty() {
            if let Ok(mut t) = self.tracked.lock() {
                t.retain(|(c, _), _| c != &req.id);
            }
            self.hook.on_deleted(&req.id);
        }
        ok_payload(payload)
    }

    /// The answer for a call while the downstream is dead: Delete, State, Wait and Kill
    /// are answered as for an exited task, Connect with the pids it had, Shutdown
    /// succeeds, anything else is refused.
    pub fn answer_dead(&self, method: &str, payload: &[u8]) -> Response {
        match method {
            "Shutdown" => ok_empty(),
            "Connect" => self.connect_dead(payload),
            "Delete" => self.delete_dead(payload),
            "State" => self.state_dead(payload),
            "Wait" => self.wait_dead(payload),
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

    /// The answer for a forwarded call whose downstream connection closed before the
    /// answer came, the downstream having gone: a Shutdown was accepted (Kata exits without
    /// replying), anything else is answered as for a dead downstream, from its own payload.
    pub fn answer_lost(&self, pending: &Pending) -> Response {
        self.answer_dead(&pending.method, &pending.payload)
    }

    /// The Task service name the downstream serves.
    pub fn service(&self) -> &str {
        &self.service
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
            let id = request.id.clone();
            let started = Instant::now();
            let rewritten = self
                .hook
                .on_create(request)
                .map_err(|reason| status_response(Code::FAILED_PRECONDITION, reason))?;
            // The downstream gets what is left of containerd's deadline, not all of it.
            if let Ok(timeout) = u64::try_from(req.timeout_nano) {
                if timeout > 0 {
                    let spent = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    let Some(left) = timeout.checked_sub(spent).filter(|left| *left > 0) else {
                        self.hook.on_deleted(&id);
                        return Err(status_response(
                            Code::DEADLINE_EXCEEDED,
                            format!(
                                "planning the sandbox took {} ms, past the Create's deadline of {} ms; nothing was created (retry; a slow host lookup or CDI spec directory is the usual cause)",
                                spent / 1_000_000,
                                timeout / 1_000_000
                            ),
                        ));
                    };
                    req.timeout_nano = i64::try_from(left).unwrap_or(i64::MAX);
                }
            }
            req.payload = rewritten.write_to_bytes().map_err(|e| {
                status_response(
                    Code::INTERNAL,
                    format!("cannot encode CreateTaskRequest: {e}"),
                )
            })?;
        }
        if method == "Shutdown" {
            // Counted before forwarding: the downstream may close its socket before its
            // answer reaches containerd, and the monitor must not exit before it has.
            if let Ok(mut n) = self.shutdowns.0.lock() {
                *n += 1;
            }
        }
        if req.service != self.service {
            req.service.clone_from(&self.service);
        }
        let deadline = u64::try_from(req.timeout_nano)
            .ok()
            .filter(|n| *n > 0)
            .and_then(|n| Instant::now().checked_add(Duration::from_nanos(n)));
        Ok(Pending {
            method: method.to_owned(),
            payload: req.payload.clone(),
            created,
            deadline,
        })
    }

    /// Takes note of the downstream's answer to a prepared request.
    pub fn complete(&self, pending: Pending, response: &Response) {
        if !pending.reads_answer() {
            return;
        }
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
        } else if let Some((id, _)) = pending.created {
            // A refused Create leaves no task to delete: runtime-rs then fails the Delete
            // that follows, and containerd 2.x need not run `delete` after a clean Shutdown.
            self.hook.on_deleted(&id);
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
                            exited: None,
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
                            exited: None,
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
            "Wait" => {
                if let (Ok(req), Ok(res)) = (
                    WaitRequest::parse_from_bytes(request),
                    WaitResponse::parse_from_bytes(response),
                ) {
                    let exec = if req.exec_id.is_empty() {
                        req.id.clone()
                    } else {
                        req.exec_id
                    };
                    if let Some(t) = tracked.get_mut(&(req.id, exec)) {
                        let at = res
                            .exited_at
                            .as_ref()
                            .map_or((0, 0), |t| (t.seconds, t.nanos));
                        t.exited = Some((res.exit_status, at.0, at.1));
                    }
                }
            }
            "Delete" => {
                if let Ok(req) = DeleteRequest::parse_from_bytes(request) {
                    if req.id.is_empty() {
                        // Nothing the downstream could have deleted.
                    } else if req.exec_id.is_empty() {
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
