//! Runs the downstream binary for `start` and `delete`: its output read as it comes, and
//! killed past the settings' time limit.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kata_gpu_plan::settings::Settings;

use super::{io, ShimError};

/// Runs the downstream binary with our own arguments, environment and stdin, in the
/// bundle; returns its stdout. Kills it after `timeout`.
pub(crate) fn run_downstream(
    settings: &Settings,
    settings_path: &Option<PathBuf>,
    args: &[String],
    stdin: &[u8],
    action: &'static str,
    env: &[(&str, String)],
    cwd: Option<&Path>,
) -> Result<Vec<u8>, ShimError> {
    let path = settings.downstream.clone();
    let mut command = Command::new(&path);
    if let Some(dir) = cwd {
        command.current_dir(dir);
    }
    let mut child = command
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ShimError::DownstreamMissing {
                path: path.clone(),
                settings: settings_path.clone(),
            },
            _ => ShimError::Io {
                what: format!("cannot run {}", path.display()),
                source: e,
            },
        })?;
    if let Some(mut input) = child.stdin.take() {
        // A shim that does not read its stdin must not make us fail.
        let _ = input.write_all(stdin);
    }
    // Each stream on a thread of its own, in chunks, so that neither pipe fills while the
    // other is read, and so that what was printed is at hand even if a process the
    // downstream left behind keeps a pipe open (then its end never comes).
    let (chunks, output) = std::sync::mpsc::channel::<(bool, Vec<u8>)>();
    for (is_stdout, stream) in [
        (
            true,
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ),
        (
            false,
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ),
    ] {
        let (Some(mut stream), chunks) = (stream, chunks.clone()) else {
            continue;
        };
        let reader = std::thread::Builder::new().spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = stream.read(&mut buf) {
                if chunks.send((is_stdout, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        });
        if let Err(e) = reader {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ShimError::Io {
                what: format!("cannot start a thread to read {}", path.display()),
                source: e,
            });
        }
    }
    drop(chunks);
    let seconds = settings.start_timeout_seconds;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    // Waited for on a thread, so that its exit is seen at once rather than at a poll.
    let pid = child.id();
    let (done, exited) = std::sync::mpsc::channel();
    let waiter = std::thread::Builder::new().spawn(move || {
        let _ = done.send(child.wait());
    });
    if let Err(e) = waiter {
        // The child went with the closure, unwaited: kill it by its pid.
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        return Err(ShimError::Io {
            what: format!("cannot start a thread to wait for {}", path.display()),
            source: e,
        });
    }
    let status = match exited.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(status) => status.map_err(io(format!("cannot wait for {}", path.display())))?,
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = exited.recv_timeout(Duration::from_secs(1));
            return Err(ShimError::DownstreamTimeout { path, seconds });
        }
    };
    // Its output ends with it, unless something it started holds a pipe: then what was
    // printed by the deadline is the answer.
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    loop {
        match output.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((true, chunk)) => stdout.extend_from_slice(&chunk),
            Ok((false, chunk)) => stderr.extend_from_slice(&chunk),
            Err(_) => break,
        }
    }
    if !status.success() {
        let output = one_line(&String::from_utf8_lossy(if stderr.is_empty() {
            &stdout
        } else {
            &stderr
        }));
        return Err(ShimError::DownstreamFailed {
            path,
            action,
            status: status.to_string(),
            output,
        });
    }
    // Kata's Rust shim exits 0 on every failure: a `start` without an address failed, and
    // its stderr says why.
    if action == "start" && String::from_utf8_lossy(&stdout).trim().is_empty() {
        let said = one_line(&String::from_utf8_lossy(&stderr));
        return Err(ShimError::DownstreamFailed {
            path,
            action,
            status: format!("{status}, but no address on stdout"),
            output: if said.is_empty() {
                "it printed nothing".to_owned()
            } else {
                said
            },
        });
    }
    Ok(stdout)
}

/// What a downstream printed on failure, as one line for containerd: an anyhow report
/// (Kata's Rust shim: a banner line, `Caused by:` and numbered causes, a stack backtrace)
/// becomes its chain of causes joined with `: `; other output, its lines so joined.
pub(crate) fn one_line(text: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Stack backtrace:") {
            break;
        }
        if line.is_empty()
            || line == "Caused by:"
            || line.starts_with("Kata Containers containerd shim")
        {
            continue;
        }
        let line = match line.split_once(": ") {
            Some((n, cause)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => cause,
            _ => line,
        };
        parts.push(line);
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    /// Issue 29 item 2: runtime-rs's report of a second `start` for one id, as it printed it.
    #[test]
    fn an_anyhow_report_becomes_its_chain_of_causes_on_one_line() {
        let report = "Kata Containers containerd shim (Rust): id: io.containerd.kata.v2, version: 4.1.0, commit: ddcb1ad\nERROR: containerd-shim-kata-v2 failed: shim start\n\nCaused by:\n    0: do start\n    1: bind address\n    2: Address already in use (os error 98)\n\nStack backtrace:\n   0: <unknown>\n   8: __libc_start_call_main\n             at ./csu/../sysdeps/nptl/libc_start_call_main.h:58:16\n";
        assert_eq!(
            one_line(report),
            "ERROR: containerd-shim-kata-v2 failed: shim start: do start: bind address: Address already in use (os error 98)"
        );
        assert_eq!(one_line("cannot open /dev/kvm\n"), "cannot open /dev/kvm");
        assert_eq!(one_line("a\n\nb: c\n"), "a: b: c");
        assert_eq!(one_line(""), "");
    }
}
