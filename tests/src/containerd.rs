//! [`PrivateContainerd`] starts the Debian containerd with its own root, state and sockets
//! under a temp dir, so that tests never touch a system containerd, and stops it on drop.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Panics with a message that says what to install or how to run, when a precondition
/// of a real-parts test is not met. Such tests never skip silently.
pub fn require(condition: bool, what: &str) {
    assert!(
        condition,
        "precondition not met: {what}. Run `make deps` and the tests as root, as CI does."
    );
}

/// Whether `program` is on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// A containerd of our own, started for one test.
pub struct PrivateContainerd {
    dir: tempfile::TempDir,
    child: Child,
    env: Vec<(String, String)>,
}

impl PrivateContainerd {
    /// Starts containerd with `extra` appended to a minimal version-2 config (CRI off) and
    /// waits until it answers. Panics if root or the binaries are missing.
    pub fn start(extra: &str) -> Self {
        Self::start_with(extra, &[])
    }

    /// As [`PrivateContainerd::start`], with extra environment for containerd (and so for
    /// the shims it starts), e.g. a `PATH` that holds a shim under test.
    pub fn start_with(extra: &str, env: &[(&str, String)]) -> Self {
        Self::launch(false, extra, env)
    }

    /// As [`PrivateContainerd::start_with`] with the CRI plugin on; `extra` holds its
    /// `[plugins."io.containerd.grpc.v1.cri"]` table (sandbox image, runtimes).
    pub fn start_cri(extra: &str, env: &[(&str, String)]) -> Self {
        Self::launch(true, extra, env)
    }

    fn launch(cri: bool, extra: &str, env: &[(&str, String)]) -> Self {
        require(is_root(), "root is needed to start containerd");
        for program in ["containerd", "ctr", "runc", "containerd-shim-runc-v2"] {
            require(on_path(program), &format!("{program} is not on PATH"));
        }
        let dir = tempfile::Builder::new()
            .prefix("ctrd")
            .tempdir()
            .expect("tempdir for containerd");
        let base = dir.path();
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             {disabled}\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n{extra}",
            disabled = if cri {
                ""
            } else {
                "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
            },
            root = base.join("root").display(),
            state = base.join("state").display(),
            sock = base.join("containerd.sock").display(),
        );
        fs::write(base.join("config.toml"), config).expect("write containerd config");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let child = Self::spawn(base, &env);
        let mut me = Self { dir, child, env };
        me.wait_ready(Duration::from_secs(20));
        me
    }

    fn spawn(base: &Path, env: &[(String, String)]) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(base.join("containerd.log"))
            .expect("log file");
        Command::new("containerd")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("--config")
            .arg(base.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd")
    }

    /// Stops containerd (SIGTERM, as systemd does) and starts it again on the same root,
    /// state and config; the shims it started keep running, as on a node.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(self.dir.path(), &self.env);
        self.wait_ready(Duration::from_secs(20));
    }

    fn stop(&mut self) {
        let _ = nix_kill_term(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_ready(&mut self, limit: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("containerd exited with {status}; its log:\n{}", self.log());
            }
            if self.ctr(&["version"]).status.success() {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "containerd did not answer within {limit:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The directory holding its config, root, state, sockets and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its gRPC socket.
    pub fn address(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr --address <ours> args…`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.address())
            .args(args)
            .output()
            .expect("run ctr")
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // The effective uid is in /proc/self/status ("Uid: real effective saved fs").
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn nix_kill_term(pid: u32) -> io::Result<()> {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other("kill -TERM failed"))
    }
}

/// A minimal root file system: busybox-static as `/bin/busybox` and `/bin/sh`.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    require(
        on_path("busybox"),
        "busybox (Debian's busybox-static) is not on PATH",
    );
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        fs::create_dir_all(rootfs.join(d)).expect("mkdir rootfs");
    }
    let busybox = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|p| p.join("busybox"))
        .find(|p| p.is_file())
        .expect("busybox on PATH");
    fs::copy(busybox, rootfs.join("bin/busybox")).expect("copy busybox");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).expect("symlink sh");
    rootfs
}
