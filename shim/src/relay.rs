//! The wire side of the proxy: ttrpc frames relayed between each containerd connection and
//! a connection of its own to the downstream, with no thread hand-off on the way. Request
//! frames are decoded only to rename the service (and, for Create, to run the hook);
//! response frames pass through as they came, stream ids and all.
//!
//! The failure paths are decided by state, never by a timer: the downstream closing its
//! connection answers what waits on it (a Shutdown accepted, anything else as for a dead
//! downstream, from the call's own request); containerd hanging up lets the calls that
//! change the wrapper's bookkeeping finish first; a downstream that cannot be reached is
//! retried within the caller's deadline, then answered UNAVAILABLE with nothing touched.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use containerd_shim_protos::protobuf::Message;
use ttrpc::proto::ResponseInit;
use ttrpc::{Request, Response};

use crate::proxy::{Pending, Proxy};

/// Length of a ttrpc frame header: length, stream id, type, flags.
const HEADER: usize = 10;
/// The largest frame ttrpc allows.
const MAX_FRAME: usize = 4 << 20;
const REQUEST: u8 = 1;
const RESPONSE: u8 = 2;

/// One ttrpc frame.
struct Frame {
    stream: u32,
    kind: u8,
    flags: u8,
    payload: Vec<u8>,
}

fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut header = [0u8; HEADER];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("ttrpc frame of {len} bytes"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some(Frame {
        stream: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
        kind: header[8],
        flags: header[9],
        payload,
    }))
}

fn write_frame(
    w: &mut impl Write,
    stream: u32,
    kind: u8,
    flags: u8,
    payload: &[u8],
) -> io::Result<()> {
    let len =
        u32::try_from(payload.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.push(kind);
    frame.push(flags);
    frame.extend_from_slice(payload);
    w.write_all(&frame)
}

fn respond(to: &Mutex<UnixStream>, stream: u32, response: &Response) -> io::Result<()> {
    let bytes = response.write_to_bytes().map_err(io::Error::other)?;
    let mut w = to.lock().map_err(|_| io::Error::other("poisoned writer"))?;
    write_frame(&mut *w, stream, RESPONSE, 0, &bytes)
}

/// Opens a connection to the downstream.
pub type Connect = Arc<dyn Fn() -> io::Result<UnixStream> + Send + Sync>;

/// Runs once the answer to a Shutdown has been written back to containerd.
pub type AfterShutdown = Arc<dyn Fn() + Send + Sync>;

/// How long a call with no deadline of its own waits for the downstream to become
/// reachable, or for the verdict on a downstream connection that closed under it.
const NO_DEADLINE_WAIT: Duration = Duration::from_secs(10);

/// How long, once containerd has hung up, the wrapper still waits for the answers that
/// change its bookkeeping (a Delete that the downstream is still carrying out), when the
/// calls set no deadline.
const HANGUP_WAIT: Duration = Duration::from_secs(60);

/// Serves containerd connections from `listener` until the process exits.
pub fn serve(listener: UnixListener, connect: Connect, proxy: Arc<Proxy>, after: AfterShutdown) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let (connect, proxy, after) =
            (Arc::clone(&connect), Arc::clone(&proxy), Arc::clone(&after));
        std::thread::spawn(move || {
            if let Err(e) = relay(conn, &connect, &proxy, &after) {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

/// Blocks until the downstream's socket closes (it exited), through a connection of its
/// own on which nothing is ever sent; at once if it cannot be reached.
pub fn watch(connect: &Connect) {
    let Ok(mut stream) = connect() else {
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

/// containerd's side of one connection.
struct Upstream {
    writer: Mutex<UnixStream>,
    /// containerd hung up (set under the link's lock, see [`Hangup`]).
    gone: AtomicBool,
}

/// The calls waiting on one downstream connection.
#[derive(Default)]
struct Calls {
    by_stream: HashMap<u32, Pending>,
    /// Answers taken from `by_stream` whose bookkeeping is still being done.
    completing: usize,
    /// The connection's reader has ended: nothing more will be answered on it.
    closed: bool,
}

/// One connection to the downstream.
struct Link {
    stream: UnixStream,
    calls: Arc<(Mutex<Calls>, Condvar)>,
}

impl Link {
    fn open(
        stream: UnixStream,
        up: &Arc<Upstream>,
        proxy: &Arc<Proxy>,
        after: &AfterShutdown,
    ) -> io::Result<Link> {
        let calls: Arc<(Mutex<Calls>, Condvar)> = Arc::default();
        let (from, up, proxy, after, waiting) = (
            stream.try_clone()?,
            Arc::clone(up),
            Arc::clone(proxy),
            Arc::clone(after),
            Arc::clone(&calls),
        );
        // It ends when the connection does: [`Hangup`] shuts the connection down on every
        // way out of the relay.
        std::thread::spawn(move || pump_back(from, &up, &waiting, &proxy, &*after));
        Ok(Link { stream, calls })
    }

    fn is_closed(&self) -> bool {
        self.calls.0.lock().map(|c| c.closed).unwrap_or(true)
    }

    /// Sends a prepared request; gives the pending call back if the connection has closed
    /// (then nobody else will answer it). A failed write leaves the call to the reader,
    /// which sees the same broken connection and answers everything still waiting.
    fn send(
        &mut self,
        stream: u32,
        flags: u8,
        request: &Request,
        pending: Pending,
    ) -> Result<(), Pending> {
        let Ok(bytes) = request.write_to_bytes() else {
            return Err(pending);
        };
        {
            let Ok(mut calls) = self.calls.0.lock() else {
                return Err(pending);
            };
            if calls.closed {
                return Err(pending);
            }
            calls.by_stream.insert(stream, pending);
        }
        if write_frame(&mut self.stream, stream, REQUEST, flags, &bytes).is_err() {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
        Ok(())
    }
}

/// Ends a containerd connection on every way out of [`relay`]: the answers that change the
/// wrapper's bookkeeping are still waited for (bounded by their deadlines), then both
/// sides are shut down, which ends the downstream connection's reader too, so that no
/// thread or socket outlives the connection.
struct Hangup {
    up: Arc<Upstream>,
    conn: UnixStream,
    link: Option<Link>,
}

impl Hangup {
    /// Lets go of a downstream connection whose reader has ended (it answered what
    /// waited on it).
    fn drop_closed_link(&mut self) {
        if let Some(link) = self.link.take() {
            let _ = link.stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Hangup {
    fn drop(&mut self) {
        let Some(link) = self.link.take() else {
            self.up.gone.store(true, Ordering::SeqCst);
            let _ = self.conn.shutdown(std::net::Shutdown::Both);
            return;
        };
        let (lock, cv) = &*link.calls;
        if let Ok(mut calls) = lock.lock() {
            // Under the lock, so that the reader's notice of a settled call is not lost.
            self.up.gone.store(true, Ordering::SeqCst);
            let now = Instant::now();
            let until = calls
                .by_stream
                .values()
                .filter(|p| p.records())
                .map(|p| p.deadline().unwrap_or(now + HANGUP_WAIT))
                .max()
                .unwrap_or(now);
            while !calls.closed
                && (calls.completing > 0 || calls.by_stream.values().any(Pending::records))
            {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                calls = match cv.wait_timeout(calls, left) {
                    Ok((c, _)) => c,
                    Err(_) => break,
                };
            }
        }
        self.up.gone.store(true, Ordering::SeqCst);
        let _ = link.stream.shutdown(std::net::Shutdown::Both);
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
    }
}

/// Answers downstream replies back to containerd, after taking note of them; when the
/// downstream connection ends, answers what still waits (see [`answer_stranded`]).
fn pump_back(
    mut from: UnixStream,
    up: &Upstream,
    waiting: &(Mutex<Calls>, Condvar),
    proxy: &Proxy,
    after_shutdown: &(dyn Fn() + Send + Sync),
) {
    let (lock, settled) = waiting;
    while let Ok(Some(frame)) = read_frame(&mut from) {
        let pending = if frame.kind == RESPONSE {
            lock.lock().ok().and_then(|mut calls| {
                let p = calls.by_stream.remove(&frame.stream);
                calls.completing += usize::from(p.is_some());
                p
            })
        } else {
            None
        };
        let answered = pending.is_some();
        let shutdown = pending.as_ref().is_some_and(|p| p.method() == "Shutdown");
        if let Some(p) = pending {
            if let Ok(response) = Response::parse_from_bytes(&frame.payload) {
                proxy.complete(p, &response);
            }
        }
        // After containerd hung up, answers are still read for their bookkeeping.
        let written = !up.gone.load(Ordering::SeqCst)
            && up
                .writer
                .lock()
                .map_err(|_| io::Error::other("poisoned writer"))
                .and_then(|mut w| {
                    write_frame(
                        &mut *w,
                        frame.stream,
                        frame.kind,
                        frame.flags,
                        &frame.payload,
                    )
                })
                .is_ok();
        if answered {
            if let Ok(mut calls) = lock.lock() {
                calls.completing -= 1;
                // Someone waits for the calls to settle only once containerd hung up.
                if up.gone.load(Ordering::SeqCst) {
                    settled.notify_all();
                }
            }
        }
        if shutdown {
            proxy.finish_shutdown();
            if written {
                after_shutdown();
            }
        }
    }
    let stranded: Vec<(u32, Pending)> = lock
        .lock()
        .map(|mut calls| {
            calls.closed = true;
            settled.notify_all();
            calls.by_stream.drain().collect()
        })
        .unwrap_or_default();
    answer_stranded(stranded, up, proxy, after_shutdown);
}

/// Answers the calls left waiting on a downstream connection that closed. containerd gone:
/// nobody to answer, and nothing is decided for it. The downstream gone (its socket
/// closed, as the monitor saw): each call is answered from its own request, as for a
/// downstream that exited. Only this connection broken: UNAVAILABLE, and nothing touched.
fn answer_stranded(
    stranded: Vec<(u32, Pending)>,
    up: &Upstream,
    proxy: &Proxy,
    after_shutdown: &(dyn Fn() + Send + Sync),
) {
    if stranded.is_empty() {
        return;
    }
    // The relay may not have read containerd's end yet: look at the socket itself.
    if !up.gone.load(Ordering::SeqCst) && up.writer.lock().map_or(true, |w| hung_up(&w)) {
        up.gone.store(true, Ordering::SeqCst);
    }
    let gone = !up.gone.load(Ordering::SeqCst) && {
        let now = Instant::now();
        let until = stranded
            .iter()
            .map(|(_, p)| p.deadline().unwrap_or(now + NO_DEADLINE_WAIT))
            .max()
            .unwrap_or(now)
            .min(now + NO_DEADLINE_WAIT);
        proxy.wait_gone(until)
    };
    for (stream, pending) in stranded {
        let shutdown = pending.method() == "Shutdown";
        let written = !up.gone.load(Ordering::SeqCst) && {
            let answer = if gone {
                proxy.answer_lost(&pending)
            } else {
                status(
                    ttrpc::Code::UNAVAILABLE,
                    "the connection to the downstream shim broke before it answered; retry",
                )
            };
            respond(&up.writer, stream, &answer).is_ok()
        };
        if shutdown {
            proxy.finish_shutdown();
            if written {
                after_shutdown();
            }
        }
    }
}

/// Whether the peer of `conn` has shut its side down (closed), read or not.
fn hung_up(conn: &UnixStream) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let rdhup = PollFlags::from_bits_retain(nix::libc::POLLRDHUP);
    let mut fds = [PollFd::new(conn.as_fd(), rdhup)];
    // Only POLLRDHUP, POLLHUP, POLLERR or POLLNVAL can come back; nix gives `None` for a
    // set with POLLRDHUP, which it does not name.
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => false,
        Ok(_) => fds[0].revents().is_none_or(|r| !r.is_empty()),
        Err(_) => true,
    }
}

fn status(code: ttrpc::Code, message: impl ToString) -> Response {
    Response::init_status(ttrpc::get_status(code, message))
}

/// Connects to the downstream, retrying until `until` while it refuses; gives up early
/// once its socket is known to have closed.
fn connect_until(connect: &Connect, proxy: &Proxy, until: Instant) -> io::Result<UnixStream> {
    let mut pause = Duration::from_millis(1);
    loop {
        let error = match connect() {
            Ok(stream) => return Ok(stream),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= until || proxy.wait_gone((now + pause).min(until)) {
            return Err(error);
        }
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn relay(
    conn: UnixStream,
    connect: &Connect,
    proxy: &Arc<Proxy>,
    after_shutdown: &AfterShutdown,
) -> io::Result<()> {
    let up = Arc::new(Upstream {
        writer: Mutex::new(conn.try_clone()?),
        gone: AtomicBool::new(false),
    });
    let mut hangup = Hangup {
        up: Arc::clone(&up),
        conn: conn.try_clone()?,
        link: None,
    };
    if let Ok(stream) = connect() {
        hangup.link = Some(Link::open(stream, &up, proxy, after_shutdown)?);
    }
    let mut reader = conn;
    while let Some(frame) = read_frame(&mut reader)? {
        if frame.kind != REQUEST {
            continue;
        }
        let mut request = match Request::parse_from_bytes(&frame.payload) {
            Ok(r) => r,
            Err(e) => {
                let answer = status(
                    ttrpc::Code::INVALID_ARGUMENT,
                    format!("bad ttrpc request: {e}"),
                );
                respond(&up.writer, frame.stream, &answer)?;
                continue;
            }
        };
        let method = request.method.clone();
        // A connection whose reader has ended answers nothing more: use a new one.
        if hangup.link.as_ref().is_some_and(Link::is_closed) {
            hangup.drop_closed_link();
        }
        if hangup.link.is_none() && !proxy.is_dead() {
            let now = Instant::now();
            let until = u64::try_from(request.timeout_nano)
                .ok()
                .filter(|n| *n > 0)
                .map_or(now + NO_DEADLINE_WAIT, |n| now + Duration::from_nanos(n))
                .min(now + NO_DEADLINE_WAIT);
            match connect_until(connect, proxy, until) {
                Ok(stream) => hangup.link = Some(Link::open(stream, &up, proxy, after_shutdown)?),
                Err(e) => tracing::warn!("cannot reach the downstream shim for {method}: {e}"),
            }
        }
        let answer = match hangup.link.as_mut() {
            _ if proxy.is_dead() => Some(proxy.answer_dead(&method, &request.payload)),
            // Unreachable, and not known to have exited: nothing is decided, state untouched.
            None if !proxy.is_gone() => Some(status(
                ttrpc::Code::UNAVAILABLE,
                format!(
                    "the downstream shim ({}) cannot be reached; retry",
                    proxy.downstream_name()
                ),
            )),
            None => Some(proxy.answer_dead(&method, &request.payload)),
            Some(link) => match proxy.prepare(&method, &mut request) {
                Err(answer) => Some(answer),
                Ok(pending) => match link.send(frame.stream, frame.flags, &request, pending) {
                    Ok(()) => None,
                    Err(pending) => {
                        // The connection closed between the check and the send.
                        let answer = if proxy.wait_gone(Instant::now() + NO_DEADLINE_WAIT) {
                            proxy.answer_lost(&pending)
                        } else {
                            status(
                                ttrpc::Code::UNAVAILABLE,
                                "the connection to the downstream shim broke; retry",
                            )
                        };
                        if method == "Shutdown" {
                            proxy.finish_shutdown();
                        }
                        Some(answer)
                    }
                },
            },
        };
        if let Some(answer) = answer {
            respond(&up.writer, frame.stream, &answer)?;
            if method == "Shutdown" {
                after_shutdown();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::sync::mpsc;

    use containerd_shim_protos::api::Status as TaskStatus;
    use containerd_shim_protos::shim::shim::{
        CreateTaskRequest, CreateTaskResponse, DeleteRequest, DeleteResponse, PidsRequest,
        PidsResponse, ShutdownRequest, StateRequest, StateResponse, WaitRequest, WaitResponse,
    };
    use ttrpc::Code;

    use crate::create::Sandboxer;
    use crate::proxy::{CreateHook, Verdict, DEAD_EXIT_STATUS, TASK_V2};
    use crate::settings::Settings;

    /// Generous bound on any one step, so that a broken relay fails a test instead of
    /// hanging it; nothing is ordered by it.
    const STEP: Duration = Duration::from_secs(30);

    /// Writes each created sandbox's state as the real hook does; deletes it through the
    /// real [`Sandboxer`].
    struct StateHook(Sandboxer);

    impl CreateHook for StateHook {
        fn on_create(&self, request: CreateTaskRequest) -> Result<CreateTaskRequest, String> {
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
    /// daemon's monitor, over socketpairs; the sandboxes' state in a temp dir.
    struct Rig {
        proxy: Arc<Proxy>,
        down: Arc<Scripted>,
        calls: mpsc::Receiver<Call>,
        connect: Connect,
        /// What the daemon's after-shutdown would have run for (it exits when dead).
        after_shutdown: mpsc::Receiver<()>,
        shutdown_done: mpsc::Sender<()>,
        verdict: mpsc::Receiver<Verdict>,
        state: tempfile::TempDir,
    }

    fn rig() -> Rig {
        let state = tempfile::tempdir().expect("tempdir");
        let (tx, calls) = mpsc::channel();
        let down = Arc::new(Scripted {
            refuse: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
            calls: Mutex::new(tx),
        });
        let sandboxer = Sandboxer {
            profile: crate::Profile::Snp,
            settings: Settings {
                state_dir: state.path().to_path_buf(),
                ..Settings::default()
            },
            namespace: "default".to_owned(),
        };
        let proxy = Proxy::new(2, Box::new(StateHook(sandboxer)), "scripted".to_owned());
        let d = Arc::clone(&down);
        let connect: Connect = Arc::new(move || d.connect());
        // The monitor's connection is made before the test starts, as the daemon's is.
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
            watch(&monitor);
            let _ = tx.send(p.downstream_closed());
        });
        // Another sandbox of the namespace, served by another wrapper.
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
        let state = c.send(
            "State",
            &StateRequest {
                id: "pod-a".into(),
                ..Default::default()
            },
            Duration::ZERO,
        );
        let wait = c.send(
            "Wait",
            &WaitRequest {
                id: "pod-a".into(),
                ..Default::default()
            },
            Duration::ZERO,
        );
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
        let state = c.send(
            "State",
            &StateRequest {
                id: "pod-a".into(),
                ..Default::default()
            },
            Duration::ZERO,
        );
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
        assert!(rig.after_shutdown_ran(), "a dead wrapper exits here");
        assert!(rig.proxy.is_dead());
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
        c2.send(
            "Wait",
            &WaitRequest {
                id: "pod-x".into(),
                ..Default::default()
            },
            Duration::ZERO,
        );
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
        let wait = c.send(
            "Wait",
            &WaitRequest {
                id: "pod-a".into(),
                ..Default::default()
            },
            Duration::ZERO,
        );
        let pids = c.send(
            "Pids",
            &PidsRequest {
                id: "pod-a".into(),
                ..Default::default()
            },
            Duration::ZERO,
        );
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
        c.send(
            "Wait",
            &WaitRequest {
                id: "pod-a".into(),
                ..Default::default()
            },
            Duration::ZERO,
        );
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
        c.send(
            "State",
            &StateRequest {
                id: "pod-a".into(),
                ..Default::default()
            },
            Duration::ZERO,
        );
        let _: StateResponse = decode(&c.answer().1);
        assert!(rig.dir("pod-a").join("configuration.toml").is_file());
        assert!(rig.dir("pod-other").join("configuration.toml").is_file());
    }

    #[test]
    fn a_bad_frame_from_containerd_closes_both_sides() {
        let rig = rig();
        let mut c = rig.containerd();
        rig.create(&mut c, "pod-a", 42);
        c.send(
            "Pids",
            &PidsRequest {
                id: "pod-a".into(),
                ..Default::default()
            },
            Duration::ZERO,
        );
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
        let _ = Path::new("/");
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
}
