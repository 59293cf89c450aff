//! Kata 3.30 run as it needs on a host without a syslog socket or `/dev/vhost-vsock`:
//! inside a private mount namespace (`unshare -m --propagation private`) set up by
//! `tests/scripts/kata-ns.sh`, with a tmpfs copy of `/dev` holding `busybox syslogd` on
//! `/dev/log`, and a tmpfs `/opt` holding stand-ins for the files a config names. The host's
//! `/dev` and `/opt` are never touched; the namespace and its mounts end with the command
//! run in it, its syslogd then too or, at the latest, when the [`KataNs`] is dropped.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{is_root, on_path, require, Kata};

/// What `/dev/vhost-vsock` is inside the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vsock {
    /// Absent, as on this host: Kata's config load stops with "host system doesn't support
    /// vsock", naming the config file, before QEMU starts.
    None,
    /// A directory: `stat` passes, `open` fails. Enough for an unprivileged
    /// `kata-runtime env`, which never opens it. (Never a regular file: Kata then spins.)
    Dir,
}

/// A private namespace for Kata: its folder (readable by the unprivileged user
/// `kata-runtime env` runs as), the stand-in files of `/opt`, and the syslog it writes.
pub struct KataNs {
    dir: tempfile::TempDir,
    stubs: Vec<(PathBuf, Option<PathBuf>)>,
}

impl KataNs {
    /// A namespace with nothing under `/opt` yet. Panics without root, `unshare`,
    /// `setpriv` or busybox.
    pub fn new() -> Self {
        require(is_root(), "root is needed for a private mount namespace");
        for program in ["unshare", "setpriv", "busybox", "mountpoint"] {
            require(on_path(program), &format!("{program} is not on PATH"));
        }
        let dir = tempfile::Builder::new()
            .prefix("katans")
            .tempdir()
            .expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        Self {
            dir,
            stubs: Vec::new(),
        }
    }

    /// Its folder, readable by everyone: put config files here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A small file at `path` (under `/opt`) inside the namespace.
    pub fn stub(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.stubs.push((path.into(), None));
        self
    }

    /// A symbolic link at `path` (under `/opt`) to `target` inside the namespace.
    pub fn link(&mut self, path: impl Into<PathBuf>, target: impl Into<PathBuf>) -> &mut Self {
        self.stubs.push((path.into(), Some(target.into())));
        self
    }

    /// The file syslogd writes what Kata logs to.
    pub fn syslog_path(&self) -> PathBuf {
        self.dir.path().join("syslog")
    }

    /// The pids of the syslogds its namespaces started, one a line.
    pub fn syslog_pids(&self) -> PathBuf {
        self.dir.path().join("syslog.pids")
    }

    /// What Kata has logged so far.
    pub fn syslog(&self) -> String {
        fs::read_to_string(self.syslog_path()).unwrap_or_default()
    }

    /// The command line that runs what follows it inside a fresh namespace of this kind
    /// (the script ends by exec'ing it, so it keeps the pid and gets the signals).
    pub fn launcher(&self, vsock: Vsock) -> Vec<OsString> {
        let scratch = self.dir.path().join(format!("dev-{}", unique()));
        fs::create_dir(&scratch).expect("mkdir scratch");
        let stubs = self.dir.path().join(format!("stubs-{}", unique()));
        let list: String = self
            .stubs
            .iter()
            .map(|(p, t)| match t {
                Some(t) => format!("{} {}\n", p.display(), t.display()),
                None => format!("{}\n", p.display()),
            })
            .collect();
        fs::write(&stubs, list).expect("write stub list");
        let vsock = match vsock {
            Vsock::None => "none",
            Vsock::Dir => "dir",
        };
        [
            OsString::from("unshare"),
            "-m".into(),
            "--propagation".into(),
            "private".into(),
            script().into(),
            scratch.into(),
            self.syslog_path().into(),
            vsock.into(),
            stubs.into(),
            "--".into(),
        ]
        .into()
    }

    /// `program args…` to be run inside a fresh namespace of this kind.
    pub fn command(&self, vsock: Vsock, program: &Path) -> Command {
        let launcher = self.launcher(vsock);
        let mut cmd = Command::new(&launcher[0]);
        cmd.args(&launcher[1..]).arg(program);
        cmd
    }

    /// `kata-runtime --config <config> env --json` as `nobody` (as root it would open
    /// `/dev/vhost-vsock`), with `/dev/vhost-vsock` a directory: Kata's parsed view of a
    /// config, or what it said when it refused it.
    pub fn kata_env(&self, kata: &Kata, config: &Path) -> Result<serde_json::Value, String> {
        let mut cmd = self.command(Vsock::Dir, Path::new("setpriv"));
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(kata.runtime())
            .arg("--config")
            .arg(config)
            .args(["env", "--json"]);
        let out = cmd.output().expect("run kata-runtime env");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "{}{}",
                stdout,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_str(&stdout).map_err(|e| format!("{e}: {stdout}"))
    }
}

impl Drop for KataNs {
    /// Kills every syslogd its namespaces started: one whose command dropped privileges
    /// (`kata-runtime env` as `nobody`) outlives it, since the parent-death signal is then
    /// sent by a process that may no longer signal root's syslogd.
    fn drop(&mut self) {
        let pids = fs::read_to_string(self.syslog_pids()).unwrap_or_default();
        for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Default for KataNs {
    fn default() -> Self {
        Self::new()
    }
}

/// `tests/scripts/kata-ns.sh`.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kata-ns.sh")
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
