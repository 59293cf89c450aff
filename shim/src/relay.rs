//! The wire side of the proxy: ttrpc frames relayed between each containerd connection and
//! a connection of its own to the downstream, with no thread hand-off on the way. Request
//! frames are decoded only to rename the service (and, for Create, to run the hook);
//! response frames pass through as they came, stream ids and all.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

/// Requests sent downstream and not answered yet, by stream id.
type InFlight = Arc<Mutex<HashMap<u32, Pending>>>;

/// Serves containerd connections from `listener` until the process exits. `after_shutdown`
/// runs once the answer to a Shutdown has been written.
pub fn serve(
    listener: UnixListener,
    downstream: PathBuf,
    proxy: Arc<Proxy>,
    after_shutdown: Arc<dyn Fn() + Send + Sync>,
) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let (downstream, proxy, after_shutdown) = (
            downstream.clone(),
            Arc::clone(&proxy),
            Arc::clone(&after_shutdown),
        );
        std::thread::spawn(move || {
            if let Err(e) = relay(conn, &downstream, &proxy, &after_shutdown) {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

/// Answers downstream replies back to containerd; when the downstream goes away, answers
/// what is still in flight as for a dead downstream.
fn pump_back(
    mut from: UnixStream,
    to: &Mutex<UnixStream>,
    inflight: &InFlight,
    proxy: &Proxy,
    after_shutdown: &(dyn Fn() + Send + Sync),
) {
    while let Ok(Some(frame)) = read_frame(&mut from) {
        let pending = if frame.kind == RESPONSE {
            inflight
                .lock()
                .ok()
                .and_then(|mut m| m.remove(&frame.stream))
        } else {
            None
        };
        let shutdown = pending.as_ref().is_some_and(|p| p.method() == "Shutdown");
        if let Some(p) = pending {
            if let Ok(response) = Response::parse_from_bytes(&frame.payload) {
                proxy.complete(p, &response);
            }
        }
        let written = to
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
            });
        if written.is_err() {
            return;
        }
        if shutdown {
            after_shutdown();
        }
    }
    // The downstream is gone (or this connection to it broke): answer what waits.
    let waiting: Vec<(u32, Pending)> = inflight
        .lock()
        .map(|mut m| m.drain().collect())
        .unwrap_or_default();
    for (stream, pending) in waiting {
        let shutdown = pending.method() == "Shutdown";
        let _ = respond(to, stream, &proxy.answer_dead(pending.method(), &[]));
        if shutdown {
            after_shutdown();
        }
    }
}

fn relay(
    conn: UnixStream,
    downstream: &Path,
    proxy: &Arc<Proxy>,
    after_shutdown: &Arc<dyn Fn() + Send + Sync>,
) -> io::Result<()> {
    let writer = Arc::new(Mutex::new(conn.try_clone()?));
    let inflight: InFlight = Arc::new(Mutex::new(HashMap::new()));
    let mut down = UnixStream::connect(downstream).ok();
    if let Some(d) = &down {
        let (from, to, inflight, proxy, after) = (
            d.try_clone()?,
            Arc::clone(&writer),
            Arc::clone(&inflight),
            Arc::clone(proxy),
            Arc::clone(after_shutdown),
        );
        std::thread::spawn(move || pump_back(from, &to, &inflight, &proxy, &*after));
    }
    let mut reader = conn;
    while let Some(frame) = read_frame(&mut reader)? {
        if frame.kind != REQUEST {
            continue;
        }
        let mut request = match Request::parse_from_bytes(&frame.payload) {
            Ok(r) => r,
            Err(e) => {
                let answer = Response::init_status(ttrpc::get_status(
                    ttrpc::Code::INVALID_ARGUMENT,
                    format!("bad ttrpc request: {e}"),
                ));
                respond(&writer, frame.stream, &answer)?;
                continue;
            }
        };
        let method = request.method.clone();
        let answer = match (&mut down, proxy.prepare(&method, &mut request)) {
            (_, Err(answer)) => Some(answer),
            (None, Ok(_)) => Some(proxy.answer_dead(&method, &frame.payload)),
            (Some(d), Ok(pending)) => {
                if let Ok(mut m) = inflight.lock() {
                    m.insert(frame.stream, pending);
                }
                let bytes = request.write_to_bytes().map_err(io::Error::other)?;
                match write_frame(d, frame.stream, REQUEST, frame.flags, &bytes) {
                    Ok(()) => None,
                    Err(_) => {
                        let _ = inflight.lock().map(|mut m| m.remove(&frame.stream));
                        Some(proxy.answer_dead(&method, &frame.payload))
                    }
                }
            }
        };
        if let Some(answer) = answer {
            respond(&writer, frame.stream, &answer)?;
            if method == "Shutdown" && proxy.is_shut_down() {
                after_shutdown();
            }
        }
    }
    // containerd hung up: let the downstream see it too.
    if let Some(d) = down {
        let _ = d.shutdown(std::net::Shutdown::Both);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
