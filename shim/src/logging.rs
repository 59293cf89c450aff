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
    sink: Arc<Mutex<File>>,
}

struct Line {
    prefix: Arc<str>,
    sink: Arc<Mutex<File>>,
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

impl Drop for Line {
    fn drop(&mut self) {
        if let Ok(mut sink) = self.sink.lock() {
            let mut line = Vec::with_capacity(self.prefix.len() + self.buf.len());
            line.extend_from_slice(self.prefix.as_bytes());
            line.extend_from_slice(&self.buf);
            // A full or closed FIFO must never stop the shim.
            let _ = sink.write_all(&line);
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
        sink: Arc::new(Mutex::new(file)),
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
