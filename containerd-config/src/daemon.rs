//! The running containerd: restart it through systemd (never SIGHUP), wait until its
//! socket answers, ask it for its version, and check what it loads with
//! `containerd config dump`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::Error;

/// The default containerd socket.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";

/// The command that restarts containerd's systemd unit.
pub fn restart_command(unit: &str) -> Vec<String> {
    vec!["systemctl".into(), "restart".into(), unit.into()]
}

/// The restart command as one shell line, for people to run.
pub fn restart_command_line(unit: &str) -> String {
    restart_command(unit).join(" ")
}

/// Runs `argv`; its combined output on success, an [`Error::Command`] otherwise.
pub fn run(argv: &[String]) -> Result<String, Error> {
    let (stdout, stderr) = run_split(argv)?;
    Ok(format!("{stdout}{stderr}"))
}

/// As [`run`], with stdout and stderr apart: for output that is parsed, which a warning
/// on stderr must not corrupt.
fn run_split(argv: &[String]) -> Result<(String, String), Error> {
    let line = argv.join(" ");
    let (program, args) = argv.split_first().ok_or_else(|| Error::Command {
        command: line.clone(),
        detail: "empty command".into(),
    })?;
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error::Command {
            command: line.clone(),
            detail: e.to_string(),
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok((stdout, stderr))
    } else {
        Err(Error::Command {
            command: line,
            detail: format!("{}: {}{}", out.status, stdout, stderr.trim()),
        })
    }
}

/// An admin's own restart command line, run through `sh -c` (a private containerd, a
/// unit systemctl does not know, a simulated host's stand-in).
pub fn shell_command(line: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), line.into()]
}

/// Restarts containerd with `command` ([`restart_command`] for its systemd unit, or
/// [`shell_command`]), then waits up to `wait` until `socket` answers; returns how long
/// the wait took.
pub fn restart(command: &[String], socket: &Path, wait: Duration) -> Result<Duration, Error> {
    run(command)?;
    wait_for_socket(socket, wait)
}

/// Whether a gRPC server answers on `socket`: it is connected to, sent the HTTP/2 client
/// preface and an empty SETTINGS frame, and must answer with a SETTINGS frame.
pub fn socket_answers(socket: &Path, timeout: Duration) -> Result<(), String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("cannot connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    s.write_all(&hello)
        .map_err(|e| format!("cannot write: {e}"))?;
    let mut frame = [0u8; 9];
    s.read_exact(&mut frame)
        .map_err(|e| format!("no HTTP/2 answer: {e}"))?;
    if frame[3] == 4 {
        Ok(())
    } else {
        Err(format!(
            "answered with frame type {} instead of SETTINGS",
            frame[3]
        ))
    }
}

/// Waits until `socket` answers (see [`socket_answers`]); returns how long it took.
pub fn wait_for_socket(socket: &Path, wait: Duration) -> Result<Duration, Error> {
    let start = Instant::now();
    loop {
        let last = match socket_answers(socket, Duration::from_millis(500)) {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) => e,
        };
        if start.elapsed() >= wait {
            return Err(Error::NoAnswer {
                path: socket.to_path_buf(),
                waited_ms: start.elapsed().as_millis(),
                last,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `containerd --version`.
pub fn containerd_version(containerd: &Path) -> Result<String, Error> {
    run(&[containerd.display().to_string(), "--version".into()]).map(|s| s.trim().to_owned())
}

/// `containerd --config <config> config dump`: the config containerd loads from that file,
/// imports merged, as TOML.
pub fn config_dump(containerd: &Path, config: &Path) -> Result<String, Error> {
    // containerd 2.1 warns on stderr about keys it no longer knows (e.g. 2.0's `plugin_dir`).
    run_split(&[
        containerd.display().to_string(),
        "--config".into(),
        config.display().to_string(),
        "config".into(),
        "dump".into(),
    ])
    .map(|(stdout, _)| stdout)
}

/// The socket a config names in `[grpc] address`, else the default.
pub fn socket_of(config_text: Option<&str>) -> PathBuf {
    config_text
        .and_then(|t| t.parse::<toml_edit::DocumentMut>().ok())
        .and_then(|d| {
            d.get("grpc")
                .and_then(|g| g.get("address"))
                .and_then(|a| a.as_str())
                .filter(|a| !a.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn the_restart_is_systemctl_on_the_unit() {
        assert_eq!(
            restart_command_line("containerd"),
            "systemctl restart containerd"
        );
        assert_eq!(
            restart_command_line("k3s-agent"),
            "systemctl restart k3s-agent"
        );
    }

    #[test]
    fn a_silent_or_absent_socket_does_not_answer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let absent = dir.path().join("none.sock");
        let err = wait_for_socket(&absent, Duration::from_millis(120)).expect_err("absent");
        assert!(err.to_string().contains("did not answer"), "{err}");
        let sock = dir.path().join("mute.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let t = std::thread::spawn(move || {
            // Accept and hang up without a word, as a socket that is no gRPC server.
            let _ = listener.accept();
        });
        let err = socket_answers(&sock, Duration::from_millis(500)).expect_err("mute");
        assert!(err.contains("no HTTP/2 answer"), "{err}");
        t.join().expect("join");
    }

    #[test]
    fn the_socket_comes_from_the_grpc_section() {
        assert_eq!(socket_of(None), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(
            socket_of(Some(
                "version = 2\n[grpc]\n  address = \"/run/k3s/containerd/containerd.sock\"\n"
            )),
            PathBuf::from("/run/k3s/containerd/containerd.sock")
        );
        assert_eq!(
            socket_of(Some("[grpc]\naddress = \"\"\n")),
            PathBuf::from(DEFAULT_SOCKET)
        );
    }
}
