//! [`PrivateContainerd`] starts a containerd (Debian's 1.6, or one of the [`Containerd`]
//! releases `make deps` unpacks) with its own root, state and sockets under a temp dir, so
//! that tests never touch a system containerd, and stops it on drop.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::parts::Containerd;

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
    release: Containerd,
    bin: PathBuf,
    /// The config file it reads.
    config: PathBuf,
    /// A command containerd runs under (e.g. in a private mount namespace), or empty;
    /// then arguments for containerd besides `--config`.
    launcher: (Vec<OsString>, Vec<OsString>),
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
        Self::launch(Containerd::Debian, false, extra, env)
    }

    /// As [`PrivateContainerd::start_with`], with containerd `release` (its own `ctr` and
    /// runc shim first on its `PATH`). `extra` is in that release's config format: version 2
    /// tables for 1.x, version 3 tables for 2.x. Panics if the release is not unpacked.
    pub fn start_release(release: Containerd, extra: &str, env: &[(&str, String)]) -> Self {
        Self::launch(release, false, extra, env)
    }

    /// As [`PrivateContainerd::start_release`] with the CRI plugins on.
    pub fn start_release_cri(release: Containerd, extra: &str, env: &[(&str, String)]) -> Self {
        Self::launch(release, true, extra, env)
    }

    /// As [`PrivateContainerd::start_release`], with containerd run as the last argument of
    /// `launcher` (which must exec it, so that signals reach containerd), e.g.
    /// [`crate::katans::KataNs::launcher`], and given `args` (e.g. `--log-level debug`, which
    /// containerd hands its shims as `-debug`); with `cri`, the CRI plugins on (Kata behind
    /// a pod's runtime handler, in Kata's namespace).
    pub fn start_release_under(
        release: Containerd,
        cri: bool,
        extra: &str,
        env: &[(&str, String)],
        launcher: Vec<OsString>,
        args: Vec<OsString>,
    ) -> Self {
        Self::launch_under(release, cri, extra, env, (launcher, args))
    }

    /// As [`PrivateContainerd::start_with`] with the CRI plugin on; `extra` holds its
    /// `[plugins."io.containerd.grpc.v1.cri"]` table (sandbox image, runtimes).
    pub fn start_cri(extra: &str, env: &[(&str, String)]) -> Self {
        Self::launch(Containerd::Debian, true, extra, env)
    }

    fn launch(release: Containerd, cri: bool, extra: &str, env: &[(&str, String)]) -> Self {
        Self::launch_under(release, cri, extra, env, (Vec::new(), Vec::new()))
    }

    /// As [`PrivateContainerd::start_cri`] (containerd 1.6, CRI on), reading its config from
    /// `config` (written there first, its directory made): the main config of a simulated
    /// host, which `kata-gpu` then registers into as an admin's would be. Root, state and
    /// socket stay in the private directory.
    pub fn start_cri_reading(config: &Path, extra: &str, env: &[(&str, String)]) -> Self {
        Self::launch_full(
            Containerd::Debian,
            true,
            extra,
            env,
            (Vec::new(), Vec::new()),
            Some(config),
        )
    }

    fn launch_under(
        release: Containerd,
        cri: bool,
        extra: &str,
        env: &[(&str, String)],
        launcher: (Vec<OsString>, Vec<OsString>),
    ) -> Self {
        Self::launch_full(release, cri, extra, env, launcher, None)
    }

    fn launch_full(
        release: Containerd,
        cri: bool,
        extra: &str,
        env: &[(&str, String)],
        launcher: (Vec<OsString>, Vec<OsString>),
        config_at: Option<&Path>,
    ) -> Self {
        require(is_root(), "root is needed to start containerd");
        require(on_path("runc"), "runc is not on PATH");
        let bin = match release.bin_dir() {
            Ok(bin) => bin,
            Err(missing) => panic!("precondition not met: {}. Run `make deps`.", missing.0),
        };
        let dir = tempfile::Builder::new()
            .prefix("ctrd")
            .tempdir()
            .expect("tempdir for containerd");
        let base = dir.path();
        let config_path = config_at.map_or_else(|| base.join("config.toml"), Path::to_path_buf);
        if let Some(parent) = config_path.parent() {
            fs::create_dir_all(parent).expect("mkdir for the containerd config");
        }
        fs::write(&config_path, config(release, cri, base, extra))
            .expect("write containerd config");
        // The release's own runc shim comes first, before any shim under test the caller
        // put on PATH.
        let path = env
            .iter()
            .find(|(k, _)| *k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_default();
        let mut env: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| *k != "PATH")
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        env.push(("PATH".to_owned(), format!("{}:{path}", bin.display())));
        let child = Self::spawn(&launcher, &bin, base, &config_path, &env);
        let mut me = Self {
            dir,
            child,
            env,
            release,
            bin,
            config: config_path,
            launcher,
        };
        me.wait_ready(Duration::from_secs(20));
        me
    }

    fn spawn(
        (launcher, args): &(Vec<OsString>, Vec<OsString>),
        bin: &Path,
        base: &Path,
        config: &Path,
        env: &[(String, String)],
    ) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(base.join("containerd.log"))
            .expect("log file");
        let containerd = bin.join("containerd");
        let mut cmd = match launcher.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&containerd);
                c
            }
            None => Command::new(&containerd),
        };
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(args)
            .arg("--config")
            .arg(config)
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
        self.child = Self::spawn(
            &self.launcher,
            &self.bin,
            self.dir.path(),
            &self.config,
            &self.env,
        );
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

    /// Which release it is.
    pub fn release(&self) -> Containerd {
        self.release
    }

    /// The folder of its `containerd`, `ctr` and runc shim.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Imports an OCI-layout tar into the `k8s.io` namespace (CRI's), as an admin does with
    /// `ctr images import`; panics with ctr's words and containerd's log when it fails.
    pub fn import(&self, archive: &Path) {
        let o = self.ctr(&[
            "-n",
            "k8s.io",
            "images",
            "import",
            &archive.display().to_string(),
        ]);
        assert!(
            o.status.success(),
            "ctr images import {}: {}\n{}",
            archive.display(),
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
    }

    /// Runs `ctr --address <ours> args…` with the release's own `ctr`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new(self.bin.join("ctr"))
            .arg("--address")
            .arg(self.address())
            .args(args)
            .output()
            .expect("run ctr")
    }
}

/// Its config: the release's config version, our root, state and sockets (shim sockets too,
/// where the release lets us), the CRI plugins off unless `cri`, then `extra`.
fn config(release: Containerd, cri: bool, base: &Path, extra: &str) -> String {
    let (version, cri_plugins) = if release.is_v2() {
        (
            3,
            r#""io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images""#,
        )
    } else {
        (2, r#""io.containerd.grpc.v1.cri""#)
    };
    let shim_sockets = if release.has_shim_socket_dir() {
        format!(
            "[plugins.\"io.containerd.shim.v1.manager\"]\n  socket_dir = \"{}\"\n",
            base.join("s").display()
        )
    } else {
        String::new()
    };
    let disabled = if cri {
        String::new()
    } else {
        format!("disabled_plugins = [{cri_plugins}]\n")
    };
    format!(
        "version = {version}\nroot = \"{root}\"\nstate = \"{state}\"\n{disabled}\
         [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
         [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n{shim_sockets}{extra}",
        root = base.join("root").display(),
        state = base.join("state").display(),
        sock = base.join("containerd.sock").display(),
    )
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn nix_kill_term(pid: u32) -> io::Result<()> {
    let pid =
        i32::try_from(pid).map_err(|_| io::Error::other(format!("pid {pid} is out of range")))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .map_err(io::Error::from)
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
