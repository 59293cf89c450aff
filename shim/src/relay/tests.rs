//! The relay over socketpairs: a scripted downstream and a scripted containerd drive every
//! failure path on purpose, and each test asserts the answer containerd gets and what is
//! left on disk.

use super::*;
use std::fs;
use std::path::PathBuf;
use std::sync::mpsc;

use containerd_shim_protos::api::Status as TaskStatus;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim::shim::{
    ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, PidsRequest, PidsResponse, ShutdownRequest, StateRequest, StateResponse,
    WaitRequest, WaitResponse,
};
use ttrpc::Code;

use crate::create::PlanHook;
use crate::proxy::{CreateHook, Verdict, DEAD_EXIT_STATUS, TASK_V2};
use kata_gpu_plan::settings::Settings;

/// Generous bound on any one step, so that a broken relay fails a test instead of
/// hanging it; nothing is ordered by it.
const STEP: Duration = Duration::from_secs(30);

/// Writes each created sandbox's state as the real hook does; deletes it through the
/// real [`PlanHook`]. Takes `slow` milliseconds to plan, as a slow host would.
struct StateHook(PlanHook, Arc<std::sync::atomic::AtomicU64>);

impl CreateHook for StateHook {
    fn on_create(&self, request: CreateTaskRequest) -> Result<CreateTaskRequest, String> {
        std::thread::sleep(Duration::from_millis(self.1.load(Ordering::SeqCst)));
        let dir = self.0.sandbox_dir(&request.id)?;
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        fs::write(dir.join("configuration.toml"), "[hypervisor.qemu]\n")
            .map_err(|e| e.to_string())?;
        Ok(request)
    }

    fn on_deleted(&self, id: &str) {
        self.0.on_deleted(id);
    }
}

/// A request as the scripted downstream received it.
struct Call {
    stream: u32,
    request: Request,
    to: UnixStream,
}

impl Call {
    fn reply(&self, message: &impl Message) {
        let mut response = Response::init_status(ttrpc::get_status(Code::OK, ""));
        response.set_payload(message.write_to_bytes().expect("encode"));
        self.reply_with(&response);
    }

    fn reply_with(&self, response: &Response) {
        let bytes = response.write_to_bytes().expect("encode");
        let mut to = self.to.try_clone().expect("clone");
        write_frame(&mut to, self.stream, RESPONSE, 0, &bytes).expect("reply");
    }
}

/// A downstream played by the test: every connection's requests come to the test in
/// order; it answers, holds, or exits (closes every connection and refuses new ones).
struct Scripted {
    refuse: AtomicBool,
    open: Mutex<Vec<UnixStream>>,
    calls: Mutex<mpsc::Sender<Call>>,
}

impl Scripted {
    fn connect(&self) -> io::Result<UnixStream> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        let (ours, mut theirs) = UnixStream::pair()?;
        self.open.lock().expect("lock").push(theirs.try_clone()?);
        let calls = self.calls.lock().expect("lock").clone();
        std::thread::spawn(move || {
            while let Ok(Some(frame)) = read_frame(&mut theirs) {
                let request = Request::parse_from_bytes(&frame.payload).expect("a request");
                let to = theirs.try_clone().expect("clone");
                if calls
                    .send(Call {
                        stream: frame.stream,
                        request,
                        to,
                    })
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(ours)
    }

    /// Exits: closes every connection, refuses new ones.
    fn exit(&self) {
        self.refuse.store(true, Ordering::SeqCst);
        for s in self.open.lock().expect("lock").drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The relay between a test playing containerd and a scripted downstream, with the
/// proxy's monitor, over socketpairs; the sandboxes' state in a temp dir.
struct Rig {
    proxy: Arc<Proxy>,
    down: Arc<Scripted>,
    calls: mpsc::Receiver<Call>,
    connect: Connect,
    /// What the proxy's after-shutdown would have run for (it exits when dead).
    after_shutdown: mpsc::Receiver<()>,
    shutdown_done: mpsc::Sender<()>,
    verdict: mpsc::Receiver<Verdict>,
    state: tempfile::TempDir,
    /// How long the hook takes to plan a Create, in milliseconds.
    slow: Arc<std::sync::atomic::AtomicU64>,
}

fn rig() -> Rig {
    let state = tempfile::tempdir().expect("tempdir");
    let (tx, calls) = mpsc::channel();
    let down = Arc::new(Scripted {
        refuse: AtomicBool::new(false),
        open: Mutex::new(Vec::new()),
        calls: Mutex::new(tx),
    });
    let plan_hook = PlanHook {
        profile: kata_gpu_plan::Profile::Snp,
        settings: Settings {
            state_dir: state.path().to_path_buf(),
            ..Settings::default()
        },
        namespace: "default".to_owned(),
    };
    let slow = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let proxy = Proxy::new(
        2,
        Box::new(StateHook(plan_hook, Arc::clone(&slow))),
        "scripted".to_owned(),
    );
    let d = Arc::clone(&down);
    let connect: Connect = Arc::new(move || d.connect());
    // The monitor's connection is made before the test starts, as the proxy's is.
    let watched = Mutex::new(Some(connect().expect("monitor connects")));
    let monitor: Connect = Arc::new(move || {
        watched
            .lock()
            .expect("lock")
            .take()
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    });
    let (tx, verdict) = mpsc::channel();
    let p = Arc::clone(&proxy);
    std::thread::spawn(move || {
        watch(&monitor, &p);
        let _ = tx.send(p.downstream_closed());
    });
    // Another sandbox of the namespace, served by another proxy.
    let other = state.path().join("default/pod-other");
    fs::create_dir_all(&other).expect("mkdir");
    fs::write(other.join("configuration.toml"), "x").expect("config");
    let (shutdown_done, after_shutdown) = mpsc::channel();
    Rig {
        proxy,
        down,
        calls,
        connect,
        after_shutdown,
        shutdown_done,
        verdict,
        state,
        slow,
    }
}

impl Rig {
    /// A new containerd connection, relayed on a thread as [`serve`] does.
    fn containerd(&self) -> Containerd {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        ours.set_read_timeout(Some(STEP)).expect("timeout");
        let (connect, proxy) = (Arc::clone(&self.connect), Arc::clone(&self.proxy));
        let done = Mutex::new(self.shutdown_done.clone());
        let after: AfterShutdown = Arc::new(move || {
            let _ = done.lock().map(|d| d.send(()));
        });
        std::thread::spawn(move || relay(theirs, &connect, &proxy, &after));
        Containerd {
            conn: ours,
            next: 1,
        }
    }

    fn next_call(&self) -> Call {
        self.calls
            .recv_timeout(STEP)
            .expect("the downstream got a call")
    }

    /// Waits for the after-shutdown hook to run, as it does once a Shutdown's answer left.
    fn after_shutdown_ran(&self) -> bool {
        self.after_shutdown.recv_timeout(STEP).is_ok()
    }

    fn verdict(&self) -> Verdict {
        self.verdict
            .recv_timeout(STEP)
            .expect("the monitor decided")
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.state.path().join("default").join(id)
    }

    /// Creates task `id` through the relay, the downstream answering with `pid`.
    fn create(&self, c: &mut Containerd, id: &str, pid: u32) {
        let create = CreateTaskRequest {
            id: id.into(),
            bundle: "/nowhere".into(),
            ..Default::default()
        };
        c.send("Create", &create, Duration::ZERO);
        let call = self.next_call();
        assert_eq!(call.request.method, "Create");
        call.reply(&CreateTaskResponse {
            pid,
            ..Default::default()
        });
        let (_, res) = c.answer();
        assert_eq!(code(&res), Code::OK);
        assert!(self.dir(id).join("configuration.toml").is_file());
    }
}

struct Containerd {
    conn: UnixStream,
    next: u32,
}

impl Containerd {
    fn send(&mut self, method: &str, message: &impl Message, timeout: Duration) -> u32 {
        let request = Request {
            service: TASK_V2.into(),
            method: method.into(),
            payload: message.write_to_bytes().expect("encode"),
            timeout_nano: i64::try_from(timeout.as_nanos()).expect("fits"),
            ..Request::default()
        };
        let stream = self.next;
        self.next += 2;
        let bytes = request.write_to_bytes().expect("encode");
        write_frame(&mut self.conn, stream, REQUEST, 0, &bytes).expect("send");
        stream
    }

    fn answer(&mut self) -> (u32, Response) {
        let frame = read_frame(&mut self.conn)
            .expect("an answer in time")
            .expect("an answer, not the end");
        assert_eq!(frame.kind, RESPONSE);
        let response = Response::parse_from_bytes(&frame.payload).expect("a response");
        (frame.stream, response)
    }

    /// Answers by stream id, in any order.
    fn answers(&mut self, n: usize) -> HashMap<u32, Response> {
        (0..n).map(|_| self.answer()).collect()
    }
}

fn code(response: &Response) -> Code {
    response.status.as_ref().map_or(Code::OK, |s| s.code())
}

fn decode<M: Message>(response: &Response) -> M {
    assert_eq!(code(response), Code::OK, "{response:?}");
    M::parse_from_bytes(&response.payload).expect("decode")
}

fn by_id(id: &str) -> DeleteRequest {
    DeleteRequest {
        id: id.into(),
        ..Default::default()
    }
}

fn state_of(id: &str) -> StateRequest {
    StateRequest {
        id: id.into(),
        ..Default::default()
    }
}

fn wait_for(id: &str) -> WaitRequest {
    WaitRequest {
        id: id.into(),
        ..Default::default()
    }
}

fn pids_in(id: &str) -> PidsRequest {
    PidsRequest {
        id: id.into(),
        ..Default::default()
    }
}

fn ids(verdict: &Verdict) -> Vec<String> {
    match verdict {
        Verdict::ShutDown => Vec::new(),
        Verdict::Died(t) => t.iter().map(|t| t.container_id.clone()).collect(),
    }
}

fn has_eof(stream: &mut UnixStream) -> bool {
    stream.set_read_timeout(Some(STEP)).expect("timeout");
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

#[test]
fn a_downstream_that_closes_answers_delete_state_and_wait_from_their_own_requests() {
    let rig = rig();
    let mut c = rig.containerd();
    rig.create(&mut c, "pod-a", 42);
    rig.create(&mut c, "pod-c", 43);
    let delete = c.send("Delete", &by_id("pod-c"), Duration::ZERO);
    let state = c.send("State", &state_of("pod-a"), Duration::ZERO);
    let wait = c.send("Wait", &wait_for("pod-a"), Duration::ZERO);
    for _ in 0..3 {
        rig.next_call();
    }
    rig.down.exit();
    let mut answers = c.answers(3);
    let deleted: DeleteResponse = decode(&answers.remove(&delete).expect("Delete answered"));
    assert_eq!((deleted.pid, deleted.exit_status), (43, DEAD_EXIT_STATUS));
    let st: StateResponse = decode(&answers.remove(&state).expect("State answered"));
    assert_eq!(
        (
            st.id.as_str(),
            st.pid,
            st.status.enum_value(),
            st.exit_status
        ),
        ("pod-a", 42, Ok(TaskStatus::STOPPED), DEAD_EXIT_STATUS)
    );
    let waited: WaitResponse = decode(&answers.remove(&wait).expect("Wait answered"));
    assert_eq!(waited.exit_status, DEAD_EXIT_STATUS);
    assert!(
        ids(&rig.verdict()).contains(&"pod-a".to_owned()),
        "a death, pod-a reported"
    );
    // The deleted task's state went; the running one's and the other sandbox's stay.
    assert!(!rig.dir("pod-c").exists());
    assert!(rig.dir("pod-a").join("configuration.toml").is_file());
    assert!(rig.dir("pod-other").join("configuration.toml").is_file());
    assert!(
        rig.after_shutdown.try_recv().is_err(),
        "no Shutdown was answered"
    );
}

#[test]
fn after_a_death_calls_are_answered_for_the_task_they_name() {
    let rig = rig();
    let mut c = rig.containerd();
    rig.create(&mut c, "pod-a", 42);
    rig.down.exit();
    assert_eq!(ids(&rig.verdict()), ["pod-a"]);
    // A new connection, as after a containerd restart: the downstream cannot be reached.
    let mut c = rig.containerd();
    let state = c.send("State", &state_of("pod-a"), Duration::ZERO);
    let (stream, res) = c.answer();
    let st: StateResponse = decode(&res);
    assert_eq!(
        (stream, st.pid, st.exit_status),
        (state, 42, DEAD_EXIT_STATUS)
    );
    // An empty id names no task and removes nothing.
    c.send("Delete", &by_id(""), Duration::ZERO);
    assert_eq!(code(&c.answer().1), Code::INVALID_ARGUMENT);
    assert!(rig.dir("pod-a").is_dir() && rig.dir("pod-other").is_dir());
    c.send("Delete", &by_id("pod-a"), Duration::ZERO);
    let deleted: DeleteResponse = decode(&c.answer().1);
    assert_eq!((deleted.pid, deleted.exit_status), (42, DEAD_EXIT_STATUS));
    assert!(!rig.dir("pod-a").exists());
    assert!(rig.dir("pod-other").join("configuration.toml").is_file());
    c.send("Shutdown", &ShutdownRequest::default(), Duration::ZERO);
    assert_eq!(code(&c.answer().1), Code::OK);
    assert!(rig.after_shutdown_ran(), "a dead proxy exits here");
    assert!(rig.proxy.is_dead());
}

#[test]
fn after_a_death_connect_answers_with_the_pids_it_had() {
    let rig = rig();
    let mut c = rig.containerd();
    rig.create(&mut c, "pod-a", 42);
    rig.down.exit();
    assert_eq!(ids(&rig.verdict()), ["pod-a"]);
    let connect = ConnectRequest {
        id: "pod-a".into(),
        ..Default::default()
    };
    // containerd's connection (Connect comes before every Wait), then a new one, as when
    // containerd reloads its shims after a restart.
    for mut c in [c, rig.containerd()] {
        c.send("Connect", &connect, Duration::ZERO);
        let res: ConnectResponse = decode(&c.answer().1);
        // The downstream was this process's end of a socketpair.
        assert_eq!((res.shim_pid, res.task_pid), (std::process::id(), 42));
        c.send("Wait", &wait_for("pod-a"), Duration::ZERO);
        let waited: WaitResponse = decode(&c.answer().1);
        assert_eq!(waited.exit_status, DEAD_EXIT_STATUS);
    }
    assert!(rig.dir("pod-a").join("configuration.toml").is_file());
}

#[test]
fn a_dead_proxy_that_no_containerd_connection_reaches_gives_up_its_tasks() {
    let rig = rig();
    let mut c = rig.containerd();
    rig.create(&mut c, "pod-a", 42);
    rig.down.exit();
    assert_eq!(ids(&rig.verdict()), ["pod-a"]);
    let idle = Duration::from_millis(100);
    assert!(
        !rig.proxy
            .wait_abandoned(idle, Some(Instant::now() + Duration::from_millis(500))),
        "containerd still holds its connection: it may call again"
    );
    // containerd forgets the shim (or goes away): its connection closes.
    c.conn.shutdown(std::net::Shutdown::Both).expect("hang up");
    assert!(rig.proxy.wait_abandoned(idle, Some(Instant::now() + STEP)));
    rig.proxy.abandon();
    assert!(!rig.dir("pod-a").exists());
    assert!(rig.dir("pod-other").join("configuration.toml").is_file());
}

#[test]
fn kata_exiting_on_shutdown_without_a_reply_is_a_shutdown() {
    let rig = rig();
    let mut c = rig.containerd();
    rig.create(&mut c, "pod-a", 42);
    c.send("Delete", &by_id("pod-a"), Duration::ZERO);
    rig.next_call().reply(&DeleteResponse {
        pid: 42,
        exit_status: 0,
        ..Default::default()
    });
    let deleted: DeleteResponse = decode(&c.answer().1);
    assert_eq!(deleted.exit_status, 0);
    assert!(!rig.dir("pod-a").exists());
    c.send(
        "Shutdown",
        &ShutdownRequest {
            id: "pod-a".into(),
            ..Default::default()
        },
        Duration::ZERO,
    );
    assert_eq!(rig.next_call().request.method, "Shutdown");
    rig.down.exit(); // Kata's os.Exit(0)
    assert_eq!(code(&c.answer().1), Code::OK);
    assert_eq!(rig.verdict(), Verdict::ShutDown);
    assert!(rig.proxy.wait_shutdowns_answered(STEP));
    assert!(rig.after_shutdown_ran());
    assert!(!rig.proxy.is_dead());
    assert!(rig.dir("pod-other").join("configuration.toml").is_file());
}

#[test]
fn declined_shutdowns_leave_a_later_crash_a_crash() {
    let rig = rig();
    let mut c = rig.containerd();
    rig.create(&mut c, "pod-a", 42);
    rig.create(&mut c, "app", 43);
    // Kata declines a Shutdown while it runs tasks, by replying; twice, as in a pod
    // whose containers go one by one.
    for _ in 0..2 {
        c.send("Shutdown", &ShutdownRequest::default(), Duration::ZERO);
        rig.next_call()
            .reply(&containerd_shim_protos::protobuf::well_known_types::empty::Empty::new());
        assert_eq!(code(&c.answer().1), Code::OK);
        assert!(rig.after_shutdown_ran());
    }
    assert!(
        rig.proxy.wait_shutdowns_answered(STEP),
        "nothing left waiting"
    );
    rig.down.exit();
    let mut died = ids(&rig.verdict());
    died.sort();
    assert_eq!(died, ["app", "pod-a"], "reported, not taken for a shutdown");
    assert!(rig.proxy.is_dead());
}

#[test]
fn a_downstream_that_refuses_connections_is_retried_then_unavailable_with_nothing_touched() {
    let rig = rig();
    rig.down.refuse.store(true, Ordering::SeqCst);
    let mut c = rig.containerd();
    let create = CreateTaskRequest {
        id: "pod-x".into(),
        bundle: "/nowhere".into(),
        ..Default::default()
    };
    c.send("Create", &create, Duration::from_millis(300));
    let (_, res) = c.answer();
    assert_eq!(code(&res), Code::UNAVAILABLE, "{res:?}");
    assert!(!rig.dir("pod-x").exists(), "the hook did not run");
    assert!(!rig.proxy.is_dead() && !rig.proxy.is_gone());
    // Reachable again: the same connection goes on.
    rig.down.refuse.store(false, Ordering::SeqCst);
    c.send("Create", &create, Duration::from_secs(5));
    rig.next_call().reply(&CreateTaskResponse {
        pid: 7,
        ..Default::default()
    });
    assert_eq!(code(&c.answer().1), Code::OK);
    assert!(rig.dir("pod-x").join("configuration.toml").is_file());
    // Refused, and then seen exiting while the call retries: answered as for the dead.
    rig.down.refuse.store(true, Ordering::SeqCst);
    let mut c2 = rig.containerd();
    c2.send("Wait", &wait_for("pod-x"), Duration::ZERO);
    rig.down.exit();
    let waited: WaitResponse = decode(&c2.answer().1);
    assert_eq!(waited.exit_status, DEAD_EXIT_STATUS);
    assert_eq!(ids(&rig.verdict()), ["pod-x"]);
}

#[test]
fn answers_out_of_order_reach_their_callers() {
    let rig = rig();
    let mut c = rig.containerd();
    rig.create(&mut c, "pod-a", 42);
    let wait = c.send("Wait", &wait_for("pod-a"), Duration::ZERO);
    let pids = c.send("Pids", &pids_in("pod-a"), Duration::ZERO);
    let delete = c.send("Delete", &by_id("pod-a"), Duration::ZERO);
    let (w, p, d) = (rig.next_call(), rig.next_call(), rig.next_call());
    assert_eq!((w.stream, p.stream, d.stream), (wait, pids, delete));
    d.reply(&DeleteResponse {
        pid: 42,
        exit_status: 9,
        ..Default::default()
    });
    p.reply(&PidsResponse::default());
    w.reply(&WaitResponse {
        exit_status: 9,
        ..Default::default()
    });
    let mut answers = c.answers(3);
    let deleted: DeleteResponse = decode(&answers.remove(&delete).expect("Delete"));
    let waited: WaitResponse = decode(&answers.remove(&wait).expect("Wait"));
    let _: PidsResponse = decode(&answers.remove(&pids).expect("Pids"));
    assert_eq!((deleted.exit_status, waited.exit_status), (9, 9));
    assert!(!rig.dir("pod-a").exists() && rig.dir("pod-other").is_dir());
    // An error keeps its code and removes nothing.
    rig.create(&mut c, "pod-b", 44);
    c.send("Delete", &by_id("pod-b"), Duration::ZERO);
    rig.next_call()
        .reply_with(&Response::init_status(ttrpc::get_status(
            Code::FAILED_PRECONDITION,
            "running",
        )));
    assert_eq!(code(&c.answer().1), Code::FAILED_PRECONDITION);
    assert!(rig.dir("pod-b").is_dir());
}

#[test]
fn containerd_hanging_up_mid_delete_lets_the_delete_finish_and_touches_nothing_else() {
    let rig = rig();
    let mut c = rig.containerd();
    rig.create(&mut c, "pod-a", 42);
    c.send("Wait", &wait_for("pod-a"), Duration::ZERO);
    c.send("Delete", &by_id("pod-a"), Duration::ZERO);
    let _wait = rig.next_call();
    let delete = rig.next_call();
    // containerd restarts: its connection closes with both calls in flight.
    c.conn.shutdown(std::net::Shutdown::Both).expect("hang up");
    // The Delete still finishes downstream; its answer is taken note of.
    delete.reply(&DeleteResponse {
        pid: 42,
        ..Default::default()
    });
    // Then the downstream connection is let go, though the Wait never got an answer.
    let mut down = delete.to.try_clone().expect("clone");
    assert!(
        has_eof(&mut down),
        "the relay closed its downstream connection"
    );
    assert!(
        !rig.dir("pod-a").exists(),
        "the finished Delete removed its state"
    );
    assert!(rig.dir("pod-other").join("configuration.toml").is_file());
    assert!(!rig.proxy.is_dead());
}

#[test]
fn containerd_hanging_up_and_then_the_downstream_dying_decides_nothing() {
    let rig = rig();
    let mut c = rig.containerd();
    rig.create(&mut c, "pod-a", 42);
    c.send("Delete", &by_id("pod-a"), Duration::ZERO);
    let _delete = rig.next_call();
    c.conn.shutdown(std::net::Shutdown::Both).expect("hang up");
    rig.down.exit();
    // Nobody was answered for, so nothing was deleted: the task is reported exited and
    // its state waits for containerd's own Delete.
    assert_eq!(ids(&rig.verdict()), ["pod-a"]);
    let mut c = rig.containerd();
    c.send("State", &state_of("pod-a"), Duration::ZERO);
    let _: StateResponse = decode(&c.answer().1);
    assert!(rig.dir("pod-a").join("configuration.toml").is_file());
    assert!(rig.dir("pod-other").join("configuration.toml").is_file());
}

#[test]
fn a_bad_frame_from_containerd_closes_both_sides() {
    let rig = rig();
    let mut c = rig.containerd();
    rig.create(&mut c, "pod-a", 42);
    c.send("Pids", &pids_in("pod-a"), Duration::ZERO);
    let call = rig.next_call();
    let huge = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 9, REQUEST, 0];
    c.conn.write_all(&huge).expect("write");
    let mut down = call.to.try_clone().expect("clone");
    assert!(has_eof(&mut down), "the downstream connection was closed");
    assert!(has_eof(&mut c.conn), "containerd's connection was closed");
}

#[test]
fn watching_ends_when_the_downstream_exits() {
    let rig = rig();
    rig.down.exit();
    assert_eq!(
        rig.verdict(),
        Verdict::ShutDown,
        "no task: nothing to report"
    );
}

#[test]
fn frames_round_trip() {
    let mut buf = Vec::new();
    write_frame(&mut buf, 7, REQUEST, 0, b"hello").expect("write");
    assert_eq!(&buf[..10], &[0, 0, 0, 5, 0, 0, 0, 7, 1, 0]);
    let frame = read_frame(&mut &buf[..]).expect("read").expect("a frame");
    assert_eq!(
        (frame.stream, frame.kind, frame.payload.as_slice()),
        (7, REQUEST, &b"hello"[..])
    );
    assert!(read_frame(&mut &b""[..]).expect("eof").is_none());
    let huge = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0];
    assert!(read_frame(&mut &huge[..]).is_err());
}

#[test]
fn out_of_file_descriptors_the_accept_loop_backs_off_and_then_accepts() {
    let window = Duration::from_millis(300);
    let until = Instant::now() + window;
    let (mut tries, mut handled) = (0usize, 0usize);
    let (_ours, theirs) = UnixStream::pair().expect("socketpair");
    let mut pending = Some(theirs);
    accept_loop(
        || {
            tries += 1;
            if Instant::now() < until {
                Err(io::Error::from_raw_os_error(nix::libc::EMFILE))
            } else {
                Ok(pending.take())
            }
        },
        |_| handled += 1,
    );
    // Backing off (1 ms doubling to 100 ms) makes about 9 tries in 300 ms; a spin, millions.
    assert!(tries < 50, "{tries} accepts in {window:?} of EMFILE");
    assert_eq!(handled, 1, "the connection queued meanwhile was taken");
}

#[test]
fn a_connection_no_thread_can_be_started_for_is_closed_and_the_next_is_served() {
    let rig = rig();
    let (mut refused, theirs1) = UnixStream::pair().expect("socketpair");
    let (ours, theirs2) = UnixStream::pair().expect("socketpair");
    ours.set_read_timeout(Some(STEP)).expect("timeout");
    let (connect, proxy) = (Arc::clone(&rig.connect), Arc::clone(&rig.proxy));
    let after: AfterShutdown = Arc::new(|| {});
    std::thread::spawn(move || {
        let mut conns = vec![theirs2, theirs1];
        // Every try for the first connection fails, as when out of threads.
        FAIL_SPAWNS.with(|n| n.set(5));
        accept_loop(
            || Ok(conns.pop()),
            |conn| {
                let (connect, proxy, after) =
                    (Arc::clone(&connect), Arc::clone(&proxy), Arc::clone(&after));
                spawn_relay(conn, move |conn| {
                    let _ = relay(conn, &connect, &proxy, &after);
                });
            },
        );
    });
    assert!(has_eof(&mut refused), "the first connection was closed");
    let mut c = Containerd {
        conn: ours,
        next: 1,
    };
    rig.create(&mut c, "pod-a", 42);
    assert!(!rig.proxy.is_dead() && !rig.proxy.is_gone());
}

#[test]
fn a_call_whose_answers_cannot_get_a_thread_is_unavailable_and_the_next_goes_through() {
    let rig = rig();
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    ours.set_read_timeout(Some(STEP)).expect("timeout");
    let (connect, proxy) = (Arc::clone(&rig.connect), Arc::clone(&rig.proxy));
    let after: AfterShutdown = Arc::new(|| {});
    std::thread::spawn(move || {
        // The downstream connection made at once, and the one made for the first call.
        FAIL_SPAWNS.with(|n| n.set(2));
        relay(theirs, &connect, &proxy, &after)
    });
    let mut c = Containerd {
        conn: ours,
        next: 1,
    };
    let create = CreateTaskRequest {
        id: "pod-x".into(),
        bundle: "/nowhere".into(),
        ..Default::default()
    };
    c.send("Create", &create, Duration::from_millis(300));
    let (_, res) = c.answer();
    assert_eq!(code(&res), Code::UNAVAILABLE, "{res:?}");
    assert!(!rig.dir("pod-x").exists(), "the hook did not run");
    rig.create(&mut c, "pod-x", 7);
}

#[test]
fn a_create_gets_what_is_left_of_its_deadline_and_none_once_it_has_passed() {
    let rig = rig();
    let mut c = rig.containerd();
    rig.slow.store(200, Ordering::SeqCst);
    let create = |id: &str| CreateTaskRequest {
        id: id.into(),
        bundle: "/nowhere".into(),
        ..Default::default()
    };
    // Planning outlasts the deadline: refused, nothing forwarded, nothing left.
    c.send("Create", &create("pod-late"), Duration::from_millis(100));
    let (_, res) = c.answer();
    assert_eq!(code(&res), Code::DEADLINE_EXCEEDED, "{res:?}");
    assert!(!rig.dir("pod-late").exists(), "the planned state went");
    // Within the deadline: forwarded with what is left of it.
    let deadline = Duration::from_secs(10);
    c.send("Create", &create("pod-a"), deadline);
    let call = rig.next_call();
    assert_eq!(
        call.request.method, "Create",
        "the late Create never reached the downstream"
    );
    let forwarded = Duration::from_nanos(u64::try_from(call.request.timeout_nano).expect("set"));
    assert!(
        forwarded <= deadline - Duration::from_millis(200),
        "forwarded with {forwarded:?} of {deadline:?} after 200 ms of planning"
    );
    assert!(forwarded > Duration::ZERO);
    call.reply(&CreateTaskResponse {
        pid: 42,
        ..Default::default()
    });
    assert_eq!(code(&c.answer().1), Code::OK);
}

#[test]
fn an_exit_that_passed_through_is_kept_after_the_downstream_dies() {
    use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
    let rig = rig();
    let mut c = rig.containerd();
    rig.create(&mut c, "pod-a", 42);
    rig.create(&mut c, "app", 43);
    c.send("Wait", &wait_for("app"), Duration::ZERO);
    let at = Timestamp {
        seconds: 1_000,
        nanos: 5,
        ..Timestamp::default()
    };
    rig.next_call().reply(&WaitResponse {
        exit_status: 0,
        exited_at: MessageField::some(at.clone()),
        ..Default::default()
    });
    assert_eq!(decode::<WaitResponse>(&c.answer().1).exit_status, 0);
    rig.down.exit();
    let mut died = ids(&rig.verdict());
    died.sort();
    assert_eq!(died, ["app", "pod-a"]);
    let mut c = rig.containerd();
    c.send("State", &state_of("app"), Duration::ZERO);
    let st: StateResponse = decode(&c.answer().1);
    assert_eq!(
        (st.exit_status, st.exited_at.seconds, st.exited_at.nanos),
        (0, 1_000, 5),
        "the exit that passed through, not the downstream's death"
    );
    c.send("Wait", &wait_for("app"), Duration::ZERO);
    assert_eq!(decode::<WaitResponse>(&c.answer().1).exit_status, 0);
    c.send("Wait", &wait_for("pod-a"), Duration::ZERO);
    assert_eq!(
        decode::<WaitResponse>(&c.answer().1).exit_status,
        DEAD_EXIT_STATUS,
        "still running when the downstream died"
    );
    c.send("Delete", &by_id("app"), Duration::ZERO);
    let deleted: DeleteResponse = decode(&c.answer().1);
    assert_eq!((deleted.pid, deleted.exit_status), (43, 0));
}

#[test]
fn a_crash_while_a_shutdown_waits_with_tasks_left_is_a_crash() {
    let rig = rig();
    let mut c = rig.containerd();
    rig.create(&mut c, "pod-a", 42);
    rig.create(&mut c, "app", 43);
    // containerd's Shutdown after some other task's Delete; Kata, still running both,
    // would decline it, but crashes first.
    c.send("Shutdown", &ShutdownRequest::default(), Duration::ZERO);
    assert_eq!(rig.next_call().request.method, "Shutdown");
    rig.down.exit();
    let mut died = ids(&rig.verdict());
    died.sort();
    assert_eq!(
        died,
        ["app", "pod-a"],
        "reported exited, not taken for a shutdown"
    );
    assert_eq!(code(&c.answer().1), Code::OK);
    assert!(rig.proxy.is_dead() && !rig.proxy.is_idle());
    c.send("State", &state_of("app"), Duration::ZERO);
    let st: StateResponse = decode(&c.answer().1);
    assert_eq!((st.pid, st.exit_status), (43, DEAD_EXIT_STATUS));
}

/// Issue 29 item 3: a Create the downstream refuses leaves no task, so its sandbox's
/// state goes at once. runtime-rs answers the Delete that follows with an error (it never
/// had the container), and containerd 2.x need not run the shim's `delete` after a clean
/// Shutdown: before, the state stayed.
#[test]
fn a_create_the_downstream_refuses_leaves_no_sandbox_state() {
    let rig = rig();
    let mut c = rig.containerd();
    let create = CreateTaskRequest {
        id: "pod-a".into(),
        bundle: "/nowhere".into(),
        ..Default::default()
    };
    c.send("Create", &create, Duration::ZERO);
    let call = rig.next_call();
    assert_eq!(call.request.method, "Create");
    call.reply_with(&Response::init_status(ttrpc::get_status(
        Code::UNKNOWN,
        "start vm: generate vhost vsock cid failed",
    )));
    let (_, res) = c.answer();
    assert_eq!(code(&res), Code::UNKNOWN);
    assert!(
        !rig.dir("pod-a").exists(),
        "the refused sandbox's state is left"
    );
}

#[test]
fn a_downstreams_multi_line_error_reaches_containerd_in_one_line_with_its_code() {
    let rig = rig();
    let mut c = rig.containerd();
    let create = CreateTaskRequest {
        id: "pod-rs".into(),
        bundle: "/nowhere".into(),
        ..Default::default()
    };
    // As runtime-rs answers: the Debug form of its error, causes and a backtrace.
    let said = "Others(\"start sandbox\\n\\nCaused by:\\n    0: start vm\\n    1: no vsock\\n\\nStack backtrace:\\n   0: <unknown>\")";
    c.send("Create", &create, Duration::ZERO);
    rig.next_call()
        .reply_with(&Response::init_status(ttrpc::get_status(
            Code::INTERNAL,
            said,
        )));
    let (_, res) = c.answer();
    assert_eq!(code(&res), Code::INTERNAL);
    assert_eq!(
        res.status.as_ref().map(|s| s.message.as_str()),
        Some("start sandbox: start vm: no vsock")
    );
    // A one-line error passes as it came.
    c.send("Delete", &by_id("pod-rs"), Duration::ZERO);
    rig.next_call()
        .reply_with(&Response::init_status(ttrpc::get_status(
            Code::NOT_FOUND,
            "pod-rs: not found",
        )));
    let (_, res) = c.answer();
    assert_eq!(
        (code(&res), res.status.as_ref().map(|s| s.message.as_str())),
        (Code::NOT_FOUND, Some("pod-rs: not found"))
    );
}
