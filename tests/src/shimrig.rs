//! A proxy shim under test in front of a private containerd: the shim binary on
//! containerd's PATH, a simulated H100 host with its CDI spec, a base Kata config, the
//! proxy's settings, and (optionally) the recording downstream. Shared by the tests that
//! drive the proxy through `ctr` and through the CRI API.

use std::fs;
use std::path::PathBuf;
use std::process::Output;

use crate::katans::{KataNs, Vsock};
use crate::{
    busybox_rootfs, workspace_bin, Containerd, Kata, PrivateContainerd, SimHost, VfioMode,
    WriteCdiSpecs,
};

/// The runtime type of the snp profile.
pub const RUNTIME: &str = "io.containerd.kata-qemu-nvidia-gpu-snp.v2";
/// The proxy binary of the snp profile.
pub const SHIM: &str = "containerd-shim-kata-qemu-nvidia-gpu-snp-v2";
/// What every profile's proxy binary name starts with.
pub const SHIM_FAMILY: &str = "containerd-shim-kata-qemu-nvidia-gpu";

/// How a profile's proxy binary is put where containerd finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    /// A symbolic link to the built binary (its path resolves to the snp name).
    Link,
    /// A copy of the built binary under the profile's name.
    Copy,
}

/// Stands for the simulated host's CDI spec directory in a CRI table given to
/// [`Rig::on_with_cri`], so that containerd (with CDI on) reads the spec the proxy reads.
pub const CDI_SPEC_DIR: &str = "@CDI_SPEC_DIR@";

/// Which downstream the proxy talks to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Downstream {
    /// runc's shim directly (`downstream_kind = "runc"`).
    Runc,
    /// The recording shim, which records what Kata would see, then runc.
    Recording,
    /// Kata 3.30's own shim (`downstream_kind = "kata"`), with containerd in a
    /// [`KataNs`]: a syslog socket, stand-ins for the base config's files, and no
    /// `/dev/vhost-vsock`, so that Kata's Create loads our config and stops there.
    Kata,
    /// Kata 4.1's Rust shim (runtime-rs, `downstream_kind = "kata-rs"`), in a [`KataNs`]
    /// like [`Downstream::Kata`], on our runtime-rs snp template as the base: its Create
    /// loads our config and stops at the vsock.
    KataRs,
}

impl Downstream {
    /// Whether this is one of Kata's shims, run in a [`KataNs`].
    pub fn is_kata(self) -> bool {
        matches!(self, Self::Kata | Self::KataRs)
    }
}

/// The proxy shim in front of a private containerd, and everything it needs.
pub struct Rig {
    /// The directory of the rig: settings, state, records.
    pub work: tempfile::TempDir,
    /// The simulated host the proxy reads.
    sim: SimHost,
    /// The busybox root file system.
    pub rootfs: PathBuf,
    /// The private containerd.
    pub ctrd: PrivateContainerd,
    /// The namespace containerd and Kata run in, for [`Downstream::Kata`]: its syslog.
    pub kata_ns: Option<KataNs>,
}

impl Rig {
    /// A rig whose containerd has the CRI plugin off.
    pub fn new(downstream: Downstream, extra_settings: &str) -> Self {
        Self::build(Containerd::Debian, downstream, extra_settings, None)
    }

    /// As [`Rig::new`] on containerd `release`, with that release's runc shim downstream.
    pub fn on(release: Containerd, downstream: Downstream, extra_settings: &str) -> Self {
        Self::build(release, downstream, extra_settings, None)
    }

    /// A rig on containerd `release` with runtime-rs downstream as `kata-gpu install
    /// --kata-runtime rs` leaves a node: `base` is the installed base config, and
    /// `installed_settings` the class's shim settings file it wrote, which the proxy reads
    /// as it is, with only the rig's `state_dir`, `host_root` and `base_config` added. Its
    /// `downstream` path is made, inside Kata's namespace, a link to the runtime-rs part.
    pub fn on_installed_rs(release: Containerd, base: &str, installed_settings: &str) -> Self {
        Self::build_from(
            release,
            Downstream::KataRs,
            "",
            None,
            Some((base, installed_settings)),
        )
    }

    /// A rig on containerd `release` whose containerd runs CRI with `cri_table` (in that
    /// release's format) as its CRI plugin table.
    pub fn on_with_cri(
        release: Containerd,
        downstream: Downstream,
        extra_settings: &str,
        cri_table: &str,
    ) -> Self {
        Self::build(release, downstream, extra_settings, Some(cri_table))
    }

    fn build(
        release: Containerd,
        downstream: Downstream,
        extra_settings: &str,
        cri: Option<&str>,
    ) -> Self {
        Self::build_from(release, downstream, extra_settings, cri, None)
    }

    /// [`Rig::build`], with an installed base config and shim settings (`(base,
    /// settings)`) in place of the template and the rig's own downstream.
    fn build_from(
        release: Containerd,
        downstream: Downstream,
        extra_settings: &str,
        cri: Option<&str>,
        installed: Option<(&str, &str)>,
    ) -> Self {
        let runc_shim = match release.runc_shim() {
            Ok(path) => path.display().to_string(),
            Err(missing) => panic!("precondition not met: {}. Run `make deps`.", missing.0),
        };
        let work = tempfile::Builder::new()
            .prefix("shimrig")
            .tempdir()
            .expect("tempdir");
        let w = work.path();
        let bin = w.join("bin");
        fs::create_dir_all(&bin).expect("mkdir bin");
        std::os::unix::fs::symlink(workspace_bin("kata-gpu-shim", SHIM), bin.join(SHIM))
            .expect("link shim");
        let sim = SimHost::h100_pcie(VfioMode::Iommufd);
        sim.write_cdi_specs();
        // runtime-rs refuses our Go runtime's template: our runtime-rs template is its base.
        let runtime = match downstream {
            Downstream::KataRs => kata_gpu_configs::KataRuntime::Rs,
            _ => kata_gpu_configs::KataRuntime::Go,
        };
        let mut base = match installed {
            Some((base, _)) => base.to_owned(),
            None => kata_gpu_configs::template_for("snp", runtime)
                .expect("template")
                .to_owned(),
        };
        if downstream.is_kata() {
            // Kata logs which config it loaded only at debug level.
            let mut doc: kata_gpu_configs::toml_edit::DocumentMut =
                base.parse().expect("template parses");
            doc["runtime"]["enable_debug"] = kata_gpu_configs::toml_edit::value(true);
            base = doc.to_string();
        }
        let base = base.as_str();
        fs::write(w.join("base.toml"), base).expect("base config");
        let (downstream_path, kind) = match downstream {
            Downstream::Runc => (runc_shim.clone(), "runc"),
            Downstream::Recording => (
                workspace_bin("kata-gpu-tests", "recording-shim")
                    .display()
                    .to_string(),
                "kata",
            ),
            Downstream::Kata => match Kata::find() {
                Ok(kata) => (kata.shim().display().to_string(), "kata"),
                Err(missing) => panic!("precondition not met: {}. Run `make deps`.", missing.0),
            },
            Downstream::KataRs => match crate::KataRs::find() {
                Ok(kata) => (kata.shim().display().to_string(), "kata-rs"),
                Err(missing) => panic!("precondition not met: {}. Run `make deps`.", missing.0),
            },
        };
        let own = format!(
            "state_dir = \"{st}\"\nhost_root = \"{root}\"\nbase_config = \"{base}\"\n{extra_settings}",
            st = w.join("st").display(),
            root = sim.root().display(),
            base = w.join("base.toml").display(),
        );
        let settings = match installed {
            Some((_, settings)) => format!("{settings}{own}"),
            None => {
                format!("downstream = \"{downstream_path}\"\ndownstream_kind = \"{kind}\"\n{own}")
            }
        };
        fs::write(w.join("shim.toml"), settings).expect("settings");
        fs::write(
            w.join("recorder.toml"),
            format!(
                "downstream = \"{runc_shim}\"\ndownstream_kind = \"runc\"\nstate_dir = \"{}\"\n",
                w.join("rst").display()
            ),
        )
        .expect("recorder settings");
        fs::create_dir_all(w.join("records")).expect("records dir");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let env = [
            ("PATH", path),
            (
                "KATA_GPU_SHIM_CONFIG",
                w.join("shim.toml").display().to_string(),
            ),
            (
                "RECORDING_SHIM_CONFIG",
                w.join("recorder.toml").display().to_string(),
            ),
            (
                "RECORDING_SHIM_DIR",
                w.join("records").display().to_string(),
            ),
        ];
        let mut kata_ns = downstream.is_kata().then(|| kata_ns_for(base));
        if let (Some((_, settings)), Some(ns)) = (installed, kata_ns.as_mut()) {
            let doc: kata_gpu_configs::toml_edit::DocumentMut =
                settings.parse().expect("installed settings parse");
            let at = doc
                .get("downstream")
                .and_then(|v| v.as_str())
                .expect("installed settings name a downstream");
            ns.link(at, &downstream_path);
        }
        let cdi_dir = sim.path("var/run/cdi").display().to_string();
        let table = cri.map(|t| t.replace(CDI_SPEC_DIR, &cdi_dir));
        let ctrd = match (&kata_ns, &table) {
            (Some(ns), _) => PrivateContainerd::start_release_under(
                release,
                table.is_some(),
                table.as_deref().unwrap_or_default(),
                &env,
                ns.launcher(Vsock::None),
                vec!["--log-level".into(), "debug".into()],
            ),
            (None, Some(t)) => PrivateContainerd::start_release_cri(release, t, &env),
            (None, None) => PrivateContainerd::start_release(release, "", &env),
        };
        let rootfs = busybox_rootfs(w);
        Self {
            work,
            sim,
            rootfs,
            ctrd,
            kata_ns,
        }
    }

    /// The simulated host the proxy reads.
    pub fn sim(&self) -> &SimHost {
        &self.sim
    }

    /// Adds an H100 PCIe (10de:2331) at `bdf` in IOMMU group `group` to the simulated host
    /// and rewrites its CDI specs (devices are indexed in address order).
    pub fn add_gpu(&mut self, bdf: &str, group: u32) {
        self.sim.add_exposed(
            &kata_gpu_simhost::Function::hopper(bdf, 0x2331, group, 0),
            VfioMode::Iommufd,
        );
        self.sim.write_cdi_specs();
    }

    /// Puts the proxy where containerd finds it under `profile`'s binary name, as a link
    /// or as a copy (replacing what was there).
    pub fn install_as(&self, profile: kata_gpu_plan::Profile, how: Install) {
        let built = workspace_bin("kata-gpu-shim", SHIM);
        let at = self.work.path().join("bin").join(profile.shim_binary());
        let _ = fs::remove_file(&at);
        match how {
            Install::Link => std::os::unix::fs::symlink(&built, &at).expect("link shim"),
            Install::Copy => {
                fs::copy(&built, &at).expect("copy shim");
            }
        }
    }

    /// Our processes (and the downstream's) still running, by command line.
    pub fn leftover_processes(&self) -> Vec<String> {
        let w = self.work.path().display().to_string();
        let mut leftovers = Vec::new();
        for entry in fs::read_dir("/proc").expect("proc").flatten() {
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let environ = String::from_utf8_lossy(
                &fs::read(entry.path().join("environ")).unwrap_or_default(),
            )
            .into_owned();
            if (text.contains(SHIM_FAMILY)
                || text.contains("recording-shim")
                || text.contains("containerd-shim-runc-v2")
                || text.contains("containerd-shim-kata-v2"))
                && environ.contains(&w)
            {
                leftovers.push(text);
            }
        }
        leftovers
    }

    /// Runs `ctr` against the containerd of the rig.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctrd.ctr(args)
    }

    /// `ctr run` through the proxy, with the given leading flags and command. `id` must
    /// come from [`Rig::id`]: runc's state root is shared by every containerd on the host.
    pub fn run(&self, flags: &[&str], id: &str, command: &[&str]) -> Output {
        self.run_as(RUNTIME, flags, id, command)
    }

    /// [`Rig::run`] under another runtime type (another profile's).
    pub fn run_as(&self, runtime: &str, flags: &[&str], id: &str, command: &[&str]) -> Output {
        let rootfs = self.rootfs.display().to_string();
        let mut args: Vec<&str> = vec!["run", "--runtime", runtime];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--rootfs", &rootfs, id]);
        args.extend_from_slice(command);
        self.ctr(&args)
    }

    /// A container id unique to this test process.
    pub fn id(name: &str) -> String {
        format!("{name}-{}", std::process::id())
    }

    /// Sends `signal` to the task `id`, waits until it has stopped, then removes it with
    /// [`Rig::remove_stopped`]: the teardown the tests end with, one place that asserts
    /// every step, since a step that fails silently would leave a task or a process behind
    /// for [`Rig::assert_clean`] to blame on the proxy. Returns the output of
    /// `ctr tasks delete`, which reports the exit status.
    #[track_caller]
    pub fn kill_and_remove(&self, id: &str, signal: &str) -> Output {
        let o = self.ctr(&["tasks", "kill", "-s", signal, id]);
        assert!(
            o.status.success(),
            "ctr tasks kill -s {signal} {id}: {}",
            err(&o)
        );
        wait_for_exit(self, id);
        self.remove_stopped(id)
    }

    /// Deletes the stopped task `id` and then its container, asserting that each step
    /// succeeds. Returns the output of `ctr tasks delete`, which reports the exit status.
    #[track_caller]
    pub fn remove_stopped(&self, id: &str) -> Output {
        let deleted = self.ctr(&["tasks", "delete", id]);
        assert!(
            deleted.status.success(),
            "ctr tasks delete {id}: {}",
            err(&deleted)
        );
        let o = self.ctr(&["containers", "delete", id]);
        assert!(
            o.status.success(),
            "ctr containers delete {id}: {}",
            err(&o)
        );
        deleted
    }

    /// Asserts that `o`, the `ctr run` of `id`, failed saying `reason`, then deletes the
    /// container the failed run leaves in containerd's metadata (which may already be gone,
    /// so its result is not checked).
    #[track_caller]
    pub fn assert_refused(&self, o: &Output, id: &str, reason: &str) {
        assert!(!o.status.success(), "ctr run {id} succeeded");
        assert!(err(o).contains(reason), "{}", err(o));
        let _ = self.ctr(&["containers", "delete", id]);
    }

    /// The sockets of the downstreams the running proxies talk to, from the records beside
    /// the proxies' sockets (`VERSION ADDRESS [PID]`).
    pub fn downstream_sockets(&self) -> Vec<PathBuf> {
        let dir = self.work.path().join("st/s");
        let mut sockets = Vec::new();
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "downstream") {
                let record = fs::read_to_string(entry.path()).unwrap_or_default();
                if let Some(address) = record.split_whitespace().nth(1) {
                    sockets.push(PathBuf::from(address.trim_start_matches("unix://")));
                }
            }
        }
        sockets
    }

    /// The state of the proxy for a sandbox.
    pub fn state_dir(&self, id: &str) -> PathBuf {
        self.work.path().join("st/default").join(id)
    }

    /// No process of ours or of the downstream runs, no socket or state is left. Shims
    /// exit just after answering Shutdown, so give them a moment (generous: a loaded
    /// machine schedules them late).
    pub fn assert_clean(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline && !self.leftover_processes().is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let leftovers = self.leftover_processes();
        assert!(leftovers.is_empty(), "processes left behind: {leftovers:?}");
        let w = self.work.path().display().to_string();
        for dir in ["st/s", "rst/s"] {
            let p = self.work.path().join(dir);
            let left: Vec<_> = fs::read_dir(&p)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "sockets left in {}: {left:?}", p.display());
        }
        let st = self.work.path().join("st/default");
        let left: Vec<_> = fs::read_dir(&st)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "sandbox state left: {left:?}");
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let ours: Vec<&str> = mounts.lines().filter(|l| l.contains(&w)).collect();
        assert!(ours.is_empty(), "mounts left: {ours:?}");
    }
}

impl Drop for Rig {
    /// A failed test still stops what it started: kill and delete every task.
    fn drop(&mut self) {
        let tasks = out(&self.ctr(&["tasks", "ls", "-q"]));
        for id in tasks.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
            let _ = self.ctr(&["tasks", "delete", "--force", id]);
        }
        let containers = out(&self.ctr(&["containers", "ls", "-q"]));
        for id in containers.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let _ = self.ctr(&["containers", "delete", id]);
        }
    }
}

/// A namespace in which the files `base` names exist: its QEMU (a link to the QEMU on
/// `PATH`), kernel, image and firmware.
fn kata_ns_for(base: &str) -> KataNs {
    let qemu = match crate::parts::qemu() {
        Ok(path) => path,
        Err(missing) => panic!("precondition not met: {}. Run `make deps`.", missing.0),
    };
    let doc: kata_gpu_configs::toml_edit::DocumentMut = base.parse().expect("base config");
    let qemu_table = &doc["hypervisor"]["qemu"];
    let mut ns = KataNs::new();
    if let Some(path) = qemu_table.get("path").and_then(|v| v.as_str()) {
        ns.link(path, &qemu);
    }
    for key in ["kernel", "image", "initrd", "firmware"] {
        if let Some(path) = qemu_table.get(key).and_then(|v| v.as_str()) {
            if !path.is_empty() {
                ns.stub(path);
            }
        }
    }
    // runtime-rs's NVIDIA configs cold-plug extension images, checked at load.
    if let Some(images) = qemu_table
        .get("guest_extension_images")
        .and_then(|v| v.as_array_of_tables())
    {
        for image in images.iter() {
            if let Some(path) = image.get("path").and_then(|v| v.as_str()) {
                ns.stub(path);
            }
        }
    }
    ns
}

/// The stdout of a command as text.
pub fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The stderr of a command as text.
pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Waits until `ctr tasks ls` shows the task stopped (within a bound meant only to fail a
/// test that would otherwise hang; how fast it happens is a benchmark figure).
pub fn wait_for_exit(rig: &Rig, id: &str) {
    wait_until(&format!("task {id} stopped"), || {
        out(&rig.ctr(&["tasks", "ls"]))
            .lines()
            .any(|l| l.starts_with(id) && l.contains("STOPPED"))
    });
}

/// Polls `condition` until it holds; panics naming `what` after a minute, a bound meant
/// only to fail a test that would otherwise hang, never to order events.
#[track_caller]
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within a minute: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Pids of processes whose command line has all of `needles` and that belong to this rig.
pub fn pids_of(rig: &Rig, needles: &[&str]) -> Vec<u32> {
    let w = rig.work.path().display().to_string();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").expect("proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline =
            String::from_utf8_lossy(&fs::read(entry.path().join("cmdline")).unwrap_or_default())
                .replace('\0', " ");
        let environ =
            String::from_utf8_lossy(&fs::read(entry.path().join("environ")).unwrap_or_default())
                .into_owned();
        if needles.iter().all(|n| cmdline.contains(n)) && environ.contains(&w) {
            pids.push(pid);
        }
    }
    pids
}
