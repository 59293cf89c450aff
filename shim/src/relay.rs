//! The wire side of the proxy: ttrpc frames relayed between each containerd connection and
//! a connection of its own to the downstream, with no thread hand-off on the way. Request
//! frames are decoded to learn the method, and re-encoded only to rename the service or
//! for Create's hook; response frames pass through as they came, stream ids and all, and
//! are decoded only for the calls whose bookkeeping needs them.
//!
//! The failure paths are decided by state, never by a timer: the downstream closing its
//! connection answers what waits on it (a Shutdown accepted, anything else as for a dead
//! downstream, from the call's own request); containerd hanging up lets the calls that
//! change the proxy's bookkeeping finish first; a downstream that cannot be reached is
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

/// How long, once containerd has hung up, the proxy still waits for the answers that
/// change its bookkeeping (a Delete that the downstream is still carrying out), when the
/// calls set no deadline.
const HANGUP_WAIT: Duration = Duration::from_secs(60);

/// Serves containerd connections from `listener` until the process exits.
pub fn serve(listener: UnixListener, connect: Connect, proxy: Arc<Proxy>, after: AfterShutdown) {
    accept_loop(
        || listener.accept().map(|(conn, _)| Some(conn)),
        |conn| {
            let (connect, proxy, after) =
                (Arc::clone(&connect), Arc::clone(&proxy), Arc::clone(&after));
            spawn_relay(conn, move |conn| {
                if let Err(e) = relay(conn, &connect, &proxy, &after) {
                    tracing::debug!("connection ended: {e}");
                }
            });
        },
    );
}

/// The longest pause between accepts while the process (or the system) is out of file
/// descriptors or memory.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);

/// Accepts connections and hands each to `handle`, until `accept` gives `None` (never, on
/// a listener). Out of file descriptors (EMFILE, ENFILE) or memory, the pending connection
/// stays queued and the loop backs off (1 ms doubling to [`ACCEPT_BACKOFF_MAX`]) instead of
/// spinning on the same error; other errors are the one connection's (e.g. ECONNABORTED).
fn accept_loop(
    mut accept: impl FnMut() -> io::Result<Option<UnixStream>>,
    mut handle: impl FnMut(UnixStream),
) {
    let mut pause = Duration::ZERO;
    loop {
        match accept() {
            Ok(Some(conn)) => {
                pause = Duration::ZERO;
                handle(conn);
            }
            Ok(None) => return,
            Err(e) if out_of_resources(&e) => {
                if pause.is_zero() {
                    tracing::warn!("cannot accept a containerd connection: {e}; backing off");
                }
                pause = (pause * 2).clamp(Duration::from_millis(1), ACCEPT_BACKOFF_MAX);
                std::thread::sleep(pause);
            }
            Err(e) => tracing::debug!("accept: {e}"),
        }
    }
}

fn out_of_resources(e: &io::Error) -> bool {
    use nix::libc::{EMFILE, ENFILE, ENOBUFS, ENOMEM};
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
}

/// Runs `f` on a thread of its own; when no thread can be started (out of memory or of
/// the process's thread limit), retries for a while, then gives up on the connection
/// alone: it is closed, and the proxy goes on serving the others.
fn spawn_relay(conn: UnixStream, f: impl FnOnce(UnixStream) + Send + 'static) {
    let f = Arc::new(Mutex::new(Some((conn, f))));
    let mut pause = Duration::from_millis(10);
    for attempt in 0..5 {
        let job = Arc::clone(&f);
        let spawned = spawn_thread("relay", move || {
            if let Some((conn, f)) = job.lock().ok().and_then(|mut j| j.take()) {
                f(conn);
            }
        });
        match spawned {
            Ok(()) => return,
            Err(e) if attempt == 4 => {
                tracing::error!(
                    "cannot start a thread for a containerd connection: {e}; closing it"
                );
            }
            Err(_) => {
                std::thread::sleep(pause);
                pause *= 2;
            }
        }
    }
    // Dropping the connection closes it: containerd sees a shim it cannot talk to.
}

#[cfg(test)]
thread_local! {
    /// How many of this thread's next thread starts fail, as when out of threads.
    static FAIL_SPAWNS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Starts a named thread, or says why it cannot.
fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    #[cfg(test)]
    if FAIL_SPAWNS.with(|n| n.replace(n.get().saturating_sub(1))) > 0 {
        return Err(io::Error::from_raw_os_error(nix::libc::EAGAIN));
    }
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map(drop)
}

/// Blocks until the downstream's socket closes (it exited), through a connection of its
/// own on which nothing is ever sent; at once if it cannot be reached. The connection's
/// peer tells the proxy the downstream's pid.
pub fn watch(connect: &Connect, proxy: &Proxy) {
    let Ok(mut stream) = connect() else {
        return;
    };
    if let Some(pid) = peer_pid(&stream) {
        proxy.set_downstream_pid(pid);
    }
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The pid of the process at the other end of `stream` (`SO_PEERCRED`).
pub(crate) fn peer_pid(stream: &UnixStream) -> Option<u32> {
    let cred =
        nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    u32::try_from(cred.pid()).ok()
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
        spawn_thread("answers", move || {
            pump_back(from, &up, &waiting, &proxy, &*after);
        })?;
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
        bytes: &[u8],
        pending: Pending,
    ) -> Result<(), Pending> {
        {
            let Ok(mut calls) = self.calls.0.lock() else {
                return Err(pending);
            };
            if calls.closed {
                return Err(pending);
            }
            calls.by_stream.insert(stream, pending);
        }
        if write_frame(&mut self.stream, stream, REQUEST, flags, bytes).is_err() {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
        Ok(())
    }
}

/// Ends a containerd connection on every way out of [`relay`]: the answers that change the
/// proxy's bookkeeping are still waited for (bounded by their deadlines), then both
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
    from: UnixStream,
    up: &Upstream,
    waiting: &(Mutex<Calls>, Condvar),
    proxy: &Proxy,
    after_shutdown: &(dyn Fn() + Send + Sync),
) {
    let (lock, settled) = waiting;
    // Buffered: a frame's header and payload in one read.
    let mut from = io::BufReader::new(from);
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
        let mut rewritten = None;
        if let Some(p) = pending.filter(Pending::reads_answer) {
            if let Ok(mut response) = Response::parse_from_bytes(&frame.payload) {
                rewritten = condense(&mut response);
                proxy.complete(p, &response);
            }
        }
        let payload = rewritten.as_deref().unwrap_or(&frame.payload);
        // After containerd hung up, answers are still read for their bookkeeping.
        let written = !up.gone.load(Ordering::SeqCst)
            && up
                .writer
                .lock()
                .map_err(|_| io::Error::other("poisoned writer"))
                .and_then(|mut w| {
                    write_frame(&mut *w, frame.stream, frame.kind, frame.flags, payload)
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

/// A failed answer's message in one line ([`crate::one_line`]), re-encoded; `None` when it
/// passes as it came (its code is never changed).
fn condense(response: &mut Response) -> Option<Vec<u8>> {
    let status = response.status.as_mut()?;
    if status.code() == ttrpc::Code::OK {
        return None;
    }
    status.message = crate::one_line::one_line(&status.message)?;
    response.write_to_bytes().ok()
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
    let _counted = proxy.connection_opened();
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
        // No thread for its answers: tried again at the first call.
        hangup.link = Link::open(stream, &up, proxy, after_shutdown).ok();
    }
    // Buffered: a frame's header and payload in one read.
    let mut reader = io::BufReader::new(conn);
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
        let service_renamed = request.service != proxy.service();
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
            match connect_until(connect, proxy, until)
                .and_then(|stream| Link::open(stream, &up, proxy, after_shutdown))
            {
                Ok(link) => hangup.link = Some(link),
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
                Ok(pending) => match link.send(
                    frame.stream,
                    frame.flags,
                    // As containerd sent it, unless the service was renamed or Create's
                    // request rewritten.
                    &if method == "Create" || service_renamed {
                        match request.write_to_bytes() {
                            Ok(bytes) => bytes,
                            Err(e) => {
                                let answer = status(
                                    ttrpc::Code::INTERNAL,
                                    format!("cannot encode the request: {e}"),
                                );
                                respond(&up.writer, frame.stream, &answer)?;
                                continue;
                            }
                        }
                    } else {
                        frame.payload
                    },
                    pending,
                ) {
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
mod tests;
