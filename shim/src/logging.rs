//! Logs of the proxy, into the bundle's `log` FIFO that containerd reads, with
//! the namespace and sandbox id on every line so that a node's journal can be grepped.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

/// A writer that prefixes each line with fixed fields.
#[derive(Clone)]
struct Prefixed {
    prefix: Arc<str>,
    sink: Arc<Mutex<Sink>>,
}

/// The log FIFO, and how many lines it had no room for since the last one written.
struct Sink {
    file: File,
    dropped: u64,
}

struct Line {
    prefix: Arc<str>,
    sink: Arc<Mutex<Sink>>,
    buf: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The most a pipe takes in one write, all or nothing (POSIX `PIPE_BUF` on Linux).
const PIPE_BUF: usize = 4096;

/// `prefix` + `text` as one line of at most [`PIPE_BUF`] bytes, ending in a newline (a
/// longer one is cut, and says so).
fn one_line(prefix: &str, text: &[u8]) -> Vec<u8> {
    const CUT: &[u8] = b" [cut]\n";
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    let mut line = Vec::with_capacity((prefix.len() + text.len() + 1).min(PIPE_BUF));
    line.extend_from_slice(prefix.as_bytes());
    line.extend_from_slice(text);
    if line.len() < PIPE_BUF {
        line.push(b'\n');
    } else {
        line.truncate(PIPE_BUF - CUT.len());
        line.extend_from_slice(CUT);
    }
    line
}

impl Sink {
    /// Writes `line` whole in one write, or not at all: a FIFO full (EAGAIN) or closed must
    /// never stop the shim, nor leave half a line for the next to run into.
    fn put(&mut self, prefix: &str, text: &[u8]) {
        if self.dropped > 0 {
            let note = format!(
                "{} log line(s) dropped: the log FIFO was full",
                self.dropped
            );
            if !self.write_line(&one_line(prefix, note.as_bytes())) {
                self.dropped += 1;
                return;
            }
            self.dropped = 0;
        }
        if !self.write_line(&one_line(prefix, text)) {
            self.dropped += 1;
        }
    }

    fn write_line(&mut self, line: &[u8]) -> bool {
        loop {
            match self.file.write(line) {
                Ok(n) => return n == line.len(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if let Ok(mut sink) = self.sink.lock() {
            sink.put(&self.prefix, &self.buf);
        }
    }
}

impl<'a> MakeWriter<'a> for Prefixed {
    type Writer = Line;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            prefix: Arc::clone(&self.prefix),
            sink: Arc::clone(&self.sink),
            buf: Vec::new(),
        }
    }
}

/// Sends logs to `./log` (the bundle's FIFO) when it can be opened; otherwise nowhere,
/// since the proxy's stderr is /dev/null. `debug` raises the level.
pub fn init(namespace: &str, sandbox: &str, debug: bool) {
    // Non-blocking open: a FIFO nobody reads must not hang the shim.
    let Ok(file) = OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open("log")
    else {
        return;
    };
    let writer = Prefixed {
        prefix: format!("namespace={namespace} sandbox={sandbox} ").into(),
        sink: Arc::new(Mutex::new(Sink { file, dropped: 0 })),
    };
    let level = if debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .with_max_level(level)
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_full_log_fifo_gets_whole_lines_or_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let nonblocking = nix::fcntl::OFlag::O_NONBLOCK.bits();
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(nonblocking)
            .open(&fifo)
            .expect("reader");
        let mut writer = OpenOptions::new()
            .write(true)
            .custom_flags(nonblocking)
            .open(&fifo)
            .expect("writer");
        // Fill the pipe but for 100 bytes.
        let size = nix::fcntl::fcntl(&writer, nix::fcntl::FcntlArg::F_GETPIPE_SZ).expect("size");
        let fill = usize::try_from(size).expect("size") - 100;
        writer.write_all(&vec![b'.'; fill]).expect("fill");
        let sink = Arc::new(Mutex::new(Sink {
            file: writer,
            dropped: 0,
        }));
        let line = |text: &str| {
            let mut l = Line {
                prefix: "ns=x ".into(),
                sink: Arc::clone(&sink),
                buf: Vec::new(),
            };
            l.write_all(text.as_bytes()).expect("buffer");
        };
        // Longer than a pipe takes in one write: a plain write puts in what fits.
        line(&format!("{}\n", "a".repeat(2 * PIPE_BUF)));
        let mut got = Vec::new();
        reader.read_to_end(&mut got).ok();
        assert_eq!(
            got.len(),
            fill,
            "nothing of the line that did not fit was written"
        );
        line("after\n");
        got.clear();
        reader.read_to_end(&mut got).ok();
        assert_eq!(
            String::from_utf8_lossy(&got),
            "ns=x 1 log line(s) dropped: the log FIFO was full\nns=x after\n"
        );
        let long = one_line("p ", &vec![b'x'; 3 * PIPE_BUF]);
        assert_eq!(long.len(), PIPE_BUF);
        assert!(long.ends_with(b" [cut]\n"));
    }
}
