//! `kata-gpu agent` as a process on a simulated host (the pod test in
//! tests/tests/deploy_pod.rs runs it from the image): labels through NFD's features.d only
//! when doctor passes, all undone on SIGTERM to the original bytes; a failing install
//! leaves no shim and no change; a missing shim in the image changes nothing. The
//! containerd restart is tested in a private PID and mount namespace, where PID 1 is ours
//! and `systemctl` a recorder: never the machine's own.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kata_gpu_tests::shimrig::wait_until;
use kata_gpu_tests::{SimHost, VfioMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const SHIM: &str = "usr/local/bin/containerd-shim-kata-qemu-nvidia-gpu-snp-v2";
const LABELS: &str = "etc/kubernetes/node-feature-discovery/features.d/kata-gpu-snp";
const CONFIG: &str = "etc/containerd/config.toml";
const STORE: &str = "opt/nvidia-gpu-operator/artifacts/runtimeclasses/kata-qemu-nvidia-gpu-snp";

/// A host doctor passes on once installed: containerd's default config, Kata's shim, and
/// a containerd process in the host's /proc that started after any change (so no restart
/// is owed); plus an image dir with the shim and a stand-in artifact set.
fn ready_host(work: &Path) -> (SimHost, PathBuf, PathBuf) {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let put = |rel: &str, bytes: &[u8]| {
        let p = sim.path(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, bytes).expect("write");
    };
    let default = Command::new("containerd")
        .args(["config", "default"])
        .output()
        .expect("containerd config default (Debian's containerd, make deps)");
    put(CONFIG, &default.stdout);
    put("opt/kata/bin/containerd-shim-kata-v2", b"kata");
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    put("proc/stat", format!("cpu 0\nbtime {later}\n").as_bytes());
    put("proc/4242/comm", b"containerd\n");
    put(
        "proc/4242/cmdline",
        b"containerd\0--config\0/etc/containerd/config.toml\0",
    );
    put(
        "proc/4242/stat",
        format!("4242 (containerd) S{}\n", " 0".repeat(19)).as_bytes(),
    );
    let image = work.join("image-bin");
    fs::create_dir_all(&image).expect("mkdir");
    // The image's shim is the real one: doctor runs the shim containerd will run (`-v`).
    fs::copy(common::built().join(common::SNP), image.join(common::SNP)).expect("shim");
    let set = work.join("set");
    common::artifact_set(&set, "kernel");
    (sim, image, set)
}

/// A running agent, killed (SIGKILL, and so is what `unshare --kill-child` started) if a
/// test fails before it has stopped it, so that no agent outlives its test.
struct Running(Option<std::process::Child>);

impl Running {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, std::process::Child::id)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn agent(sim: &SimHost, image: &Path, set: &Path, log: &Path) -> Running {
    agent_under(&[], sim, image, Some(set), log)
}

/// The agent run as the last argument of `launcher` (empty: directly); given a launcher,
/// it may restart containerd (the launcher keeps it off the machine's own). Without `set`,
/// the agent finds its set in the image's sets (`image-sets` beside `image`), if any.
fn agent_under(
    launcher: &[&str],
    sim: &SimHost,
    image: &Path,
    set: Option<&Path>,
    log: &Path,
) -> Running {
    agent_with(launcher, sim, image, set, log, &[])
}

/// [`agent_under`] with `extra` agent arguments.
fn agent_with(
    launcher: &[&str],
    sim: &SimHost,
    image: &Path,
    set: Option<&Path>,
    log: &Path,
    extra: &[&str],
) -> Running {
    let exe = env!("CARGO_BIN_EXE_kata-gpu");
    let mut c = match launcher.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    c.arg("--host-root")
        .arg(sim.root())
        .args(["agent", "--label"])
        .args(launcher.first().map(|_| "--restart-containerd"))
        .arg("--from")
        .arg(image)
        .arg("--image-sets")
        .arg(image.with_file_name("image-sets"))
        .args(
            set.map(|s| [Path::new("--artifacts"), s])
                .into_iter()
                .flatten(),
        )
        .args(extra)
        .stdin(Stdio::null())
        .stdout(fs::File::create(log).expect("log"))
        .stderr(Stdio::piped())
        .spawn()
        .map(|c| Running(Some(c)))
        .expect("start the agent")
}

/// Sends SIGTERM to the agent (`pid`, as this process sees it) and checks it exits 0.
fn sigterm(running: Running, pid: i32, log: &Path) {
    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM");
    let out = finish(running);
    let said = fs::read_to_string(log).unwrap_or_default();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn finish(mut running: Running) -> Output {
    let child = running.0.take().expect("a running agent");
    child.wait_with_output().expect("wait for the agent")
}

#[test]
fn the_node_is_labelled_once_doctor_passes_and_unlabelled_on_sigterm() {
    let work = tempfile::tempdir().expect("tempdir");
    let (sim, image, set) = ready_host(work.path());
    let before = fs::read(sim.path(CONFIG)).expect("config");
    let log = work.path().join("agent.log");
    let child = agent(&sim, &image, &set, &log);
    let read = || fs::read_to_string(&log).unwrap_or_default();
    wait_until("the agent waits", || read().contains("waiting for SIGTERM"));
    let labels = fs::read_to_string(sim.path(LABELS)).unwrap_or_else(|e| panic!("{e}: {}", read()));
    for want in [
        "feature.node.kubernetes.io/kata-gpu.snp-ready=true\n",
        "nvidia.com/gpu.workload.config=vm-passthrough\n",
        "nvidia.com/cc.capable=true\n",
    ] {
        assert!(labels.contains(want), "{want} not in {labels}");
    }
    assert!(
        fs::read(sim.path(SHIM)).expect("shim")
            == fs::read(image.join("containerd-shim-kata-qemu-nvidia-gpu-snp-v2"))
                .expect("image's shim"),
        "the host's shim is not the image's"
    );
    // containerd (in the host's /proc) started after the change: no restart is owed.
    assert!(!read().contains("restart it"), "{}", read());
    assert_ne!(fs::read(sim.path(CONFIG)).expect("config"), before);

    let pid = i32::try_from(child.id()).expect("pid");
    sigterm(child, pid, &log);
    assert!(!sim.path(LABELS).exists(), "labels left");
    assert!(!sim.path(SHIM).exists(), "shim left");
    assert!(
        fs::read(sim.path(CONFIG)).expect("config") == before,
        "{}",
        read()
    );
}

/// With no --artifacts, the agent installs the profile's set that `make image ARTIFACTS=…`
/// put into the image (at /artifacts/snp there; here under --image-sets).
#[test]
fn the_set_in_the_image_is_installed_by_default() {
    let work = tempfile::tempdir().expect("tempdir");
    let (sim, image, set) = ready_host(work.path());
    let sets = work.path().join("image-sets");
    fs::create_dir_all(&sets).expect("mkdir");
    fs::rename(&set, sets.join("snp")).expect("move the set into the image");
    let log = work.path().join("agent.log");
    let child = agent_under(&[], &sim, &image, None, &log);
    let read = || fs::read_to_string(&log).unwrap_or_default();
    wait_until("the agent waits", || read().contains("waiting for SIGTERM"));
    assert!(
        read().contains(&format!("artifact set {}/snp\n", sets.display())),
        "{}",
        read()
    );
    assert_eq!(
        fs::read(sim.path(&format!(
            "{STORE}/current/vmlinuz-6.12-nvidia-gpu-confidential"
        )))
        .unwrap_or_else(|e| panic!("{e}: {}", read())),
        b"kernel"
    );
    let pid = i32::try_from(child.id()).expect("pid");
    sigterm(child, pid, &log);
}

#[test]
fn a_failing_install_leaves_no_shim_and_no_change() {
    let work = tempfile::tempdir().expect("tempdir");
    let (sim, image, set) = ready_host(work.path());
    fs::write(sim.path(CONFIG), "version = 2\n[plugins\n").expect("break the config");
    let log = work.path().join("agent.log");
    let out = finish(agent(&sim, &image, &set, &log));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    // The step as the agent ran it, under its --host-root.
    assert!(
        err.starts_with(&format!(
            "kata-gpu: kata-gpu --host-root {} install failed: ",
            sim.root().display()
        )),
        "{err}"
    );
    assert!(err.contains("config.toml"), "{err}");
    assert!(!sim.path(SHIM).exists(), "shim left after a failed install");
    assert!(!sim.path(LABELS).exists());
    assert_eq!(
        fs::read_to_string(sim.path(CONFIG)).expect("config"),
        "version = 2\n[plugins\n"
    );
}

#[test]
fn an_image_without_the_shim_changes_nothing() {
    let work = tempfile::tempdir().expect("tempdir");
    let (sim, image, set) = ready_host(work.path());
    fs::remove_file(image.join("containerd-shim-kata-qemu-nvidia-gpu-snp-v2")).expect("rm");
    let err = refused_untouched(work.path(), &sim, &image, &set);
    assert_eq!(
        err.lines().next().unwrap_or_default(),
        format!(
            "kata-gpu: cannot read {}/containerd-shim-kata-qemu-nvidia-gpu-snp-v2: No such file or directory (os error 2)",
            image.display()
        )
    );
}

/// Runs the agent, which must refuse (exit 1) before it changes anything on the host:
/// containerd's config as it was, no shim placed, no install record. What it said on stderr.
fn refused_untouched(work: &Path, sim: &SimHost, image: &Path, set: &Path) -> String {
    let before = fs::read(sim.path(CONFIG)).expect("config");
    let out = finish(agent(sim, image, set, &work.join("agent.log")));
    assert_eq!(out.status.code(), Some(1));
    assert!(fs::read(sim.path(CONFIG)).expect("config") == before);
    assert!(!sim.path(SHIM).exists());
    assert!(!sim.path("var/lib/kata-gpu").exists(), "install ran");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An image whose shim is not this kata-gpu's (another release, another program) is
/// refused before anything changes on the host: containerd would run it for every pod.
#[test]
fn an_image_whose_shim_is_not_ours_changes_nothing() {
    let work = tempfile::tempdir().expect("tempdir");
    let (sim, image, set) = ready_host(work.path());
    let shim = image.join(common::SNP);
    fs::write(
        &shim,
        "#!/bin/sh\necho containerd-shim-kata-qemu-nvidia-gpu-snp-v2 0.0.9\n",
    )
    .expect("write");
    fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    assert_eq!(
        refused_untouched(work.path(), &sim, &image, &set),
        format!(
            "kata-gpu: {} -v says \"containerd-shim-kata-qemu-nvidia-gpu-snp-v2 0.0.9\", not the kata-gpu {} shim for kata-qemu-nvidia-gpu-snp; the image is broken; nothing was installed\n",
            shim.display(),
            env!("CARGO_PKG_VERSION")
        )
    );
}

/// `--kata-runtime rs`: the agent installs the class with runtime-rs behind the proxy (its
/// settings file in the store, from a runtime-rs artifact set), labels the node once doctor
/// passes, and on SIGTERM gives the node back byte for byte.
#[test]
fn an_agent_for_runtime_rs_installs_its_settings_and_takes_them_away() {
    let work = tempfile::tempdir().expect("tempdir");
    let (sim, image, set) = ready_host(work.path());
    fs::remove_file(set.join("configuration-qemu-nvidia-gpu-snp.toml")).expect("rm");
    fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../configs/templates/configuration-qemu-nvidia-gpu-snp-runtime-rs.toml"
        ),
        set.join("configuration-qemu-nvidia-gpu-snp-runtime-rs.toml"),
    )
    .expect("runtime-rs config");
    let rs = sim.path("opt/kata/runtime-rs/bin/containerd-shim-kata-v2");
    fs::create_dir_all(rs.parent().expect("parent")).expect("mkdir");
    fs::write(&rs, b"runtime-rs").expect("runtime-rs stand-in");
    let before = fs::read(sim.path(CONFIG)).expect("config");
    let log = work.path().join("agent.log");
    let child = agent_with(
        &[],
        &sim,
        &image,
        Some(&set),
        &log,
        &["--kata-runtime", "rs"],
    );
    let read = || fs::read_to_string(&log).unwrap_or_default();
    wait_until("the agent labels the node", || {
        read().contains("waiting for SIGTERM")
    });
    let settings = sim.path(&format!("{STORE}/shim.toml"));
    let text = fs::read_to_string(&settings).unwrap_or_else(|e| panic!("{e}: {}", read()));
    assert!(text.contains("downstream_kind = \"kata-rs\""), "{text}");
    assert!(
        text.contains("downstream = \"/opt/kata/runtime-rs/bin/containerd-shim-kata-v2\""),
        "{text}"
    );
    let pid = i32::try_from(child.id()).expect("pid");
    sigterm(child, pid, &log);
    assert!(!settings.exists(), "{}", read());
    assert!(fs::read(sim.path(CONFIG)).expect("config") == before);
}

/// Labels a killed agent left (SIGKILL runs no uninstall) are taken off when the next
/// agent starts, and come back only once doctor passes.
#[test]
fn labels_a_killed_agent_left_stay_off_until_doctor_passes() {
    let work = tempfile::tempdir().expect("tempdir");
    let (sim, image, set) = ready_host(work.path());
    // Doctor cannot pass: Kata's shim is missing.
    fs::remove_file(sim.path("opt/kata/bin/containerd-shim-kata-v2")).expect("rm");
    let stale = sim.path(LABELS);
    fs::create_dir_all(stale.parent().expect("parent")).expect("mkdir");
    fs::write(
        &stale,
        "feature.node.kubernetes.io/kata-gpu.snp-ready=true\n",
    )
    .expect("labels");
    let log = work.path().join("agent.log");
    let child = agent(&sim, &image, &set, &log);
    let read = || fs::read_to_string(&log).unwrap_or_default();
    wait_until("the agent waits for doctor", || {
        read().contains("not ready")
    });
    assert!(
        read().contains(&format!(
            "removed the node labels a previous agent left ({})",
            stale.display()
        )),
        "{}",
        read()
    );
    assert!(!stale.exists(), "labelled while doctor fails: {}", read());
    let pid = i32::try_from(child.id()).expect("pid");
    sigterm(child, pid, &log);
}

/// A file under the shim's name on the host that is not a kata-gpu shim is not replaced:
/// one line names it, and nothing on the host changes.
#[test]
fn a_foreign_file_under_the_shims_name_is_refused_and_nothing_changes() {
    let work = tempfile::tempdir().expect("tempdir");
    let (sim, image, set) = ready_host(work.path());
    let foreign = sim.path(SHIM);
    fs::create_dir_all(foreign.parent().expect("parent")).expect("mkdir");
    fs::write(&foreign, "#!/bin/sh\necho some other shim 9.9\n").expect("write");
    fs::set_permissions(
        &foreign,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let before = fs::read(sim.path(CONFIG)).expect("config");
    let out = finish(agent(&sim, &image, &set, &work.path().join("agent.log")));
    let refusal = format!(
        "kata-gpu: {} is not the kata-gpu shim (some other shim 9.9); move it aside (containerd may run it for another runtime) and retry; nothing was installed\n",
        foreign.display()
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr), refusal);
    assert_eq!(
        fs::read_to_string(&foreign).expect("the foreign file"),
        "#!/bin/sh\necho some other shim 9.9\n"
    );
    assert!(fs::read(sim.path(CONFIG)).expect("config") == before);
    assert!(!sim.path(LABELS).exists());
    assert!(!sim.path("var/lib/kata-gpu").exists(), "install ran");
}

/// `host-exec` runs `systemctl restart UNIT` in PID 1's mount namespace, not its own: in
/// a private PID namespace whose PID 1 is a shell, from a second mount namespace below it,
/// with a `systemctl` that says which mount namespace it runs in.
#[test]
fn host_exec_enters_the_mount_namespace_of_pid_1() {
    kata_gpu_tests::require(kata_gpu_tests::is_root(), "root is needed for unshare");
    let bin = tempfile::tempdir().expect("tempdir");
    fs::write(
        bin.path().join("systemctl"),
        "#!/bin/sh\necho \"$* $(readlink /proc/self/ns/mnt)\"\n",
    )
    .expect("systemctl");
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    fs::set_permissions(bin.path().join("systemctl"), mode).expect("chmod");
    let script = r#"echo "pid1 $(readlink /proc/self/ns/mnt)"
unshare --mount -- readlink /proc/self/ns/mnt | sed 's/^/own /'
unshare --mount -- "$0" host-exec -- systemctl restart containerd | sed 's/^/host-exec /'"#;
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--", "sh", "-c", script])
        .arg(env!("CARGO_BIN_EXE_kata-gpu"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.path().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .expect("run unshare");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |tag: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{tag} ")))
            .unwrap_or_else(|| panic!("no {tag} line in {text}"))
            .to_owned()
    };
    assert_ne!(field("own"), field("pid1"), "{text}");
    assert_eq!(
        field("host-exec"),
        format!("restart containerd {}", field("pid1")),
        "{text}"
    );
}

/// Under `--host-root R`, `host-exec` enters the mount namespace `R/proc/1/ns/mnt` names
/// (in the DaemonSet, the host's `/proc` at `/host/proc`), not its own `/proc/1`'s: so the
/// node pod needs no `hostPID`. Here `R/proc/1/ns/mnt` leads to a third namespace, that of
/// a process other than PID 1, and `systemctl` says which one it ran in.
#[test]
fn host_exec_enters_the_host_roots_pid_1_not_its_own() {
    kata_gpu_tests::require(kata_gpu_tests::is_root(), "root is needed for unshare");
    let work = tempfile::tempdir().expect("tempdir");
    let bin = work.path().join("bin");
    fs::create_dir_all(&bin).expect("mkdir");
    fs::write(
        bin.join("systemctl"),
        "#!/bin/sh\necho \"$* $(readlink /proc/self/ns/mnt)\"\n",
    )
    .expect("systemctl");
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    fs::set_permissions(bin.join("systemctl"), mode).expect("chmod");
    let root = work.path().join("host");
    fs::create_dir_all(root.join("proc/1/ns")).expect("mkdir");
    // A process in a mount namespace of its own stands for the host's PID 1.
    let script = r#"unshare --mount -- sleep 30 &
other=$!
while [ "$(readlink /proc/$other/ns/mnt)" = "$(readlink /proc/self/ns/mnt)" ]; do sleep 0.01; done
echo "pid1 $(readlink /proc/1/ns/mnt)"
echo "other $(readlink /proc/$other/ns/mnt)"
ln -s /proc/$other/ns/mnt "$1/proc/1/ns/mnt"
unshare --mount -- "$0" --host-root "$1" host-exec -- systemctl restart containerd | sed 's/^/host-exec /'
kill $other"#;
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--", "sh", "-c", script])
        .arg(env!("CARGO_BIN_EXE_kata-gpu"))
        .arg(&root)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .expect("run unshare");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |tag: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{tag} ")))
            .unwrap_or_else(|| {
                panic!(
                    "no {tag} line in {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .to_owned()
    };
    assert_ne!(field("other"), field("pid1"), "{text}");
    assert_eq!(
        field("host-exec"),
        format!("restart containerd {}", field("other")),
        "{text}"
    );
}

/// `host-exec` runs nothing but `systemctl restart` of containerd's unit: any other argv
/// is refused in one line before it enters a namespace or runs anything.
#[test]
fn host_exec_refuses_any_other_command_in_one_line() {
    let bin = tempfile::tempdir().expect("tempdir");
    let ran = bin.path().join("ran");
    for name in ["systemctl", "sh", "readlink"] {
        fs::write(
            bin.path().join(name),
            format!("#!/bin/sh\necho {name} >> {}\n", ran.display()),
        )
        .expect("stand-in");
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        fs::set_permissions(bin.path().join(name), mode).expect("chmod");
    }
    for argv in [
        &["sh", "-c", "id"][..],
        &["readlink", "/proc/self/ns/mnt"],
        &["systemctl", "stop", "containerd"],
        &["systemctl", "restart", "sshd"],
        &["systemctl", "restart", "containerd", "kubelet"],
        &["systemctl", "restart", "--", "containerd"],
        &["/usr/bin/systemctl", "restart", "containerd"],
        &["systemctl", "restart"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kata-gpu"))
            .arg("host-exec")
            .arg("--")
            .args(argv)
            .env("PATH", bin.path())
            .output()
            .expect("run kata-gpu");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{argv:?}: {err}");
        assert_eq!(
            err,
            format!(
                "kata-gpu: host-exec runs only `systemctl restart UNIT` for containerd's unit \
                 (containerd, k3s, k3s-agent, rke2-server or rke2-agent, .service or not), \
                 not `{}`; run anything else on the node itself\n",
                argv.join(" ")
            ),
            "{argv:?}"
        );
        assert!(!ran.exists(), "{argv:?} ran something");
    }
}

/// The agent's `--unit` is checked before it changes anything: a unit host-exec would
/// refuse is refused at the start, in one line.
#[test]
fn the_agent_refuses_a_unit_host_exec_would_not_restart() {
    // Under a root of its own and an empty image: were the unit taken, nothing of this
    // machine's would be touched.
    let work = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_kata-gpu"))
        .arg("--host-root")
        .arg(work.path())
        .args(["agent", "--from"])
        .arg(work.path())
        .args(["--restart-containerd", "--unit", "sshd"])
        .output()
        .expect("run kata-gpu");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("sshd is not containerd's unit: name containerd, k3s, k3s-agent, rke2-server or rke2-agent"),
        "{err}"
    );
}

/// Where the agent restarts containerd in tests: the host's PID 1, whose mount namespace
/// host-exec enters, is the agent's own (PID 1 of the namespace the launcher makes), and a
/// stand-in `systemctl` records its arguments in the returned file, then runs `script`.
/// The launcher (`unshare --kill-child … env PATH=…`) execs the agent as that PID 1.
fn restart_rig(work: &Path, sim: &SimHost, script: &str) -> (PathBuf, Vec<String>) {
    fs::create_dir_all(sim.path("proc/1/ns")).expect("mkdir");
    std::os::unix::fs::symlink("/proc/1/ns/mnt", sim.path("proc/1/ns/mnt")).expect("link");
    let bin = work.join("bin");
    fs::create_dir_all(&bin).expect("mkdir");
    let calls = work.join("systemctl.calls");
    fs::write(
        bin.join("systemctl"),
        format!("#!/bin/sh\necho \"$@\" >> {}\n{script}", calls.display()),
    )
    .expect("systemctl");
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    fs::set_permissions(bin.join("systemctl"), mode).expect("chmod");
    let path = format!(
        "PATH={}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // --kill-child: a test that fails before SIGTERM leaves no agent behind when its
    // `Running` kills unshare.
    let launcher = [
        "unshare",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--",
        "env",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([path])
    .collect();
    (calls, launcher)
}

/// With --restart-containerd the agent restarts containerd after install and after
/// uninstall only when containerd (by the host's /proc) has not loaded the change: twice
/// on a host where no containerd ran since, never on one where it started after.
#[test]
fn containerd_restarts_only_when_it_has_not_loaded_the_change() {
    kata_gpu_tests::require(kata_gpu_tests::is_root(), "root is needed for unshare");
    for (started_after, want) in [
        (true, ""),
        (false, "restart containerd\nrestart containerd\n"),
    ] {
        let work = tempfile::tempdir().expect("tempdir");
        let (sim, image, set) = ready_host(work.path());
        if !started_after {
            fs::remove_dir_all(sim.path("proc")).expect("no containerd in /proc");
        }
        let (calls, launcher) = restart_rig(work.path(), &sim, "");
        let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
        let log = work.path().join("agent.log");
        let child = agent_under(&launcher, &sim, &image, Some(&set), &log);
        let read = || fs::read_to_string(&log).unwrap_or_default();
        // After a restart the stand-in systemctl did not do, doctor finds it still owed:
        // the agent waits, checking again.
        wait_until("the agent waits", || {
            read().contains("waiting for SIGTERM") || read().contains("not ready, checking again")
        });
        let first = want.split_inclusive('\n').next().unwrap_or_default();
        assert_eq!(
            fs::read_to_string(&calls).unwrap_or_default(),
            first,
            "{}",
            read()
        );
        // unshare's forked child is the agent.
        let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
            .expect("unshare's children");
        let agent: i32 = children.trim().parse().expect("one child");
        sigterm(child, agent, &log);
        assert_eq!(
            fs::read_to_string(&calls).unwrap_or_default(),
            want,
            "{}",
            read()
        );
        assert_eq!(
            read().contains("restarted containerd"),
            !started_after,
            "{}",
            read()
        );
    }
}

/// Kata's shim not yet on the node: the agent says what it waits for, never "ready", keeps
/// checking, and labels the node once doctor passes.
#[test]
fn the_agent_keeps_checking_and_labels_the_node_when_it_becomes_ready() {
    let work = tempfile::tempdir().expect("tempdir");
    let (sim, image, set) = ready_host(work.path());
    let kata = sim.path("opt/kata/bin/containerd-shim-kata-v2");
    fs::remove_file(&kata).expect("remove Kata's shim");
    let log = work.path().join("agent.log");
    let child = Command::new(env!("CARGO_BIN_EXE_kata-gpu"))
        .arg("--host-root")
        .arg(sim.root())
        .args(["agent", "--label", "--recheck-every", "1"])
        .arg("--from")
        .arg(&image)
        .arg("--image-sets")
        .arg(image.with_file_name("image-sets"))
        .arg("--artifacts")
        .arg(&set)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).expect("log"))
        .stderr(Stdio::piped())
        .spawn()
        .map(|c| Running(Some(c)))
        .expect("start the agent");
    let read = || fs::read_to_string(&log).unwrap_or_default();
    wait_until("the agent says what it waits for", || {
        read().contains("not ready, checking again in 1s")
    });
    let said = read();
    assert!(said.contains("containerd-shim-kata-v2"), "{said}");
    assert!(!said.contains("ready;"), "{said}");
    assert!(
        !sim.path(LABELS).exists(),
        "labelled while not ready: {said}"
    );

    fs::write(&kata, b"kata").expect("Kata's shim arrives");
    wait_until("the agent labels the node", || {
        read().contains("ready; waiting for SIGTERM")
    });
    let labels = fs::read_to_string(sim.path(LABELS)).unwrap_or_else(|e| panic!("{e}: {}", read()));
    assert!(
        labels.contains("nvidia.com/gpu.workload.config=vm-passthrough\n"),
        "{labels}"
    );
    let pid = i32::try_from(child.id()).expect("pid");
    sigterm(child, pid, &log);
    assert!(!sim.path(LABELS).exists(), "labels left");
}

/// The agents of two profiles, started together as the node DaemonSet starts them, restart
/// containerd once between them, after install and again after uninstall (issue 28: each
/// restarted it). The stand-in `systemctl` "restarts" containerd by giving the host's
/// `/proc` a containerd started now, so that a later check finds the change loaded.
#[test]
fn the_agents_of_two_profiles_restart_containerd_once_between_them() {
    kata_gpu_tests::require(kata_gpu_tests::is_root(), "root is needed for unshare");
    let work = tempfile::tempdir().expect("tempdir");
    let (sim, image, set) = ready_host(work.path());
    // No containerd runs: each install owes a restart.
    fs::remove_dir_all(sim.path("proc")).expect("no containerd in /proc");
    fs::copy(
        image.join(common::SNP),
        image.join("containerd-shim-kata-qemu-nvidia-gpu-v2"),
    )
    .expect("the gpu profile's shim");
    let proc = sim.path("proc");
    let (calls, launcher) = restart_rig(
        work.path(),
        &sim,
        &format!(
            "now=$(date +%s)\nmkdir -p {proc}/4242\n\
             printf 'cpu 0\\nbtime %s\\n' \"$now\" > {proc}/stat\n\
             echo containerd > {proc}/4242/comm\n\
             printf 'containerd\\0--config\\0/etc/containerd/config.toml\\0' > {proc}/4242/cmdline\n\
             printf '4242 (containerd) S{zeros}\\n' > {proc}/4242/stat\n",
            proc = proc.display(),
            zeros = " 0".repeat(19),
        ),
    );
    let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
    let logs = [work.path().join("snp.log"), work.path().join("gpu.log")];
    // As the node DaemonSet starts them: each told of the other (`--peer-profile`).
    let agents: Vec<Running> = [("snp", "gpu", &logs[0]), ("gpu", "snp", &logs[1])]
        .into_iter()
        .map(|(profile, peer, log)| {
            agent_with(
                &launcher,
                &sim,
                &image,
                Some(&set),
                log,
                &["--profile", profile, "--peer-profile", peer],
            )
        })
        .collect();
    let read = |log: &Path| fs::read_to_string(log).unwrap_or_default();
    for log in &logs {
        wait_until("both agents wait", || {
            read(log).contains("waiting for SIGTERM")
                || read(log).contains("not ready, checking again")
        });
    }
    let restarts = || fs::read_to_string(&calls).unwrap_or_default();
    assert_eq!(
        restarts(),
        "restart containerd\n",
        "{}\n{}",
        read(&logs[0]),
        read(&logs[1])
    );
    // SIGTERM to both, as a pod's deletion sends it: one more restart. (A second later:
    // the host tells a process's start to the second, so a change within the second of a
    // restart counts as loaded by it.)
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let pids: Vec<i32> = agents
        .iter()
        .map(|a| {
            let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", a.id()))
                .expect("unshare's children");
            children.trim().parse().expect("one child")
        })
        .collect();
    for pid in &pids {
        kill(Pid::from_raw(*pid), Signal::SIGTERM).expect("SIGTERM");
    }
    for (a, log) in agents.into_iter().zip(&logs) {
        let out = finish(a);
        assert!(out.status.success(), "{}", read(log));
    }
    assert_eq!(
        restarts(),
        "restart containerd\nrestart containerd\n",
        "{}\n{}",
        read(&logs[0]),
        read(&logs[1])
    );
    assert!(!sim.path("run/kata-gpu-agents").exists());
}
