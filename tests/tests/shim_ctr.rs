//! The proxy shim driven by a real containerd 1.6 through `ctr`, with runc's real v2 shim
//! downstream in Kata's place: GPU sandboxes get their per-sandbox Kata config, refusals say
//! why, load leaves nothing behind. The Task calls a user makes, on every containerd
//! release, are in `shim_ctr_matrix.rs`.

use std::fs;

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::shim::ShutdownRequest;
use kata_gpu_plan::Profile;
use kata_gpu_tests::kata_host::{as_the_plan_shows, kata_argv};
use kata_gpu_tests::parts::KataQemuArgs;
use kata_gpu_tests::shimrig::{
    err, out, pids_of, wait_for_exit, wait_until, Downstream, Install, Rig, SHIM,
};

/// The shim setting `ctr` users (no kubelet) name their devices under.
const ANNOTATION_MODE: &str = "device_source = \"annotations\"\n";

#[test]
fn a_gpu_sandbox_gets_its_devices_and_kata_sees_its_config() {
    // `ctr` on a node without kubelet: devices by annotation, an explicit setting.
    let rig = Rig::new(
        Downstream::Recording,
        "kbs_address = \"http://kbs.example:8080\"\ndevice_source = \"annotations\"\n",
    );
    let gpu_id = Rig::id("gpu");
    let o = rig.run(
        &["-d", "--annotation", "cdi.k8s.io/gpu=nvidia.com/pgpu=0"],
        &gpu_id,
        &["/bin/busybox", "sleep", "300"],
    );
    assert!(o.status.success(), "{}\n{}", err(&o), rig.ctrd.log());
    let config = rig.state_dir(&gpu_id).join("configuration.toml");
    let text = fs::read_to_string(&config).expect("per-sandbox config");
    assert!(text.contains("pcie_root_port = 1"), "{text}");
    assert!(
        text.contains("cold_plug_vfio = \"root-port\"")
            && text.contains("hot_plug_vfio = \"no-port\""),
        "{text}"
    );
    assert!(
        text.contains("agent.aa_kbc_params=cc_kbc::http://kbs.example:8080"),
        "{text}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&config).expect("stat").permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::metadata(config.parent().expect("dir"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    let record: serde_json::Value = serde_json::from_slice(
        &fs::read(rig.work.path().join(format!("records/{gpu_id}.json"))).expect("recorded Create"),
    )
    .expect("json");
    assert_eq!(record["options_type_url"], "runtimeoptions.v1.Options");
    assert_eq!(record["config_path"], config.display().to_string());

    let ls = rig.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "ls",
        &gpu_id,
        "/bin/busybox",
        "ls",
        "/dev/vfio/devices",
    ]);
    assert_eq!(out(&ls).trim(), "vfio0", "{}", err(&ls));
    let plan: serde_json::Value =
        serde_json::from_slice(&fs::read(rig.state_dir(&gpu_id).join("plan.json")).expect("plan"))
            .expect("json");
    assert_eq!(plan["devices"][0]["bdf"], "0000:41:00.0");
    // The QEMU command line in the plan is what Kata's own code makes of the config the
    // shim wrote, for this host (kata-qemu-args; the sandbox's id written as a pattern).
    if let Some(tool) = kata_gpu_tests::available(
        "a_gpu_sandbox_gets_its_devices_and_kata_sees_its_config",
        KataQemuArgs::find(),
    ) {
        let (argv, _) = kata_argv(&tool, &config, rig.sim(), &["/dev/vfio/devices/vfio0"], &[])
            .unwrap_or_else(|e| panic!("Kata refused the shim's config: {e}"));
        let planned: Vec<String> = plan["qemu_args"]
            .as_array()
            .expect("qemu_args")
            .iter()
            .map(|a| {
                a.as_str()
                    .expect("a string")
                    .replace(&format!("sandbox-{gpu_id}"), "sandbox-<sandbox id>")
                    .replace(&format!("/{gpu_id}/"), "/<sandbox id>/")
            })
            .collect();
        assert_eq!(as_the_plan_shows(&argv), planned);
    }

    rig.kill_and_remove(&gpu_id, "SIGKILL");
    rig.assert_clean();
}

#[test]
fn a_refused_plan_fails_the_create_with_its_reason_and_leaves_nothing() {
    let rig = Rig::new(Downstream::Runc, ANNOTATION_MODE);
    let nogpu_id = Rig::id("nogpu");
    let o = rig.run(
        &["--rm", "--annotation", "cdi.k8s.io/gpu=nvidia.com/pgpu=7"],
        &nogpu_id,
        &["/bin/true"],
    );
    rig.assert_refused(
        &o,
        &nogpu_id,
        "nvidia.com/pgpu=7 is not defined on this node; ask for nvidia.com/pgpu",
    );
    rig.assert_clean();
}

#[test]
fn a_refused_create_leaves_its_reason_the_sandbox_and_the_pod_in_containerds_log() {
    let rig = Rig::new(Downstream::Runc, ANNOTATION_MODE);
    let id = Rig::id("refusedlog");
    let o = rig.run(
        &[
            "--rm",
            "--annotation",
            "cdi.k8s.io/gpu=nvidia.com/pgpu=7",
            "--annotation",
            "io.kubernetes.cri.sandbox-namespace=team-a",
            "--annotation",
            "io.kubernetes.cri.sandbox-name=trainer-0",
        ],
        &id,
        &["/bin/true"],
    );
    rig.assert_refused(&o, &id, "nvidia.com/pgpu=7 is not defined on this node");
    let log = rig.ctrd.log();
    let line = log
        .lines()
        .find(|l| l.contains("refused") && l.contains("nvidia.com/pgpu=7 is not defined"))
        .unwrap_or_else(|| panic!("no refusal in containerd's log:\n{log}"));
    assert!(line.contains(&format!("sandbox={id}")), "{line}");
    assert!(line.contains("pod=team-a/trainer-0"), "{line}");
    rig.assert_clean();
}

#[test]
fn a_missing_downstream_fails_start_naming_the_path() {
    let rig = Rig::new(Downstream::Runc, "");
    let nodown_id = Rig::id("nodown");
    let settings = rig.work.path().join("shim.toml");
    let text = fs::read_to_string(&settings).expect("settings").replace(
        "/usr/bin/containerd-shim-runc-v2",
        "/nonexistent/containerd-shim-kata-v2",
    );
    fs::write(&settings, text).expect("settings");
    let o = rig.run(&["--rm"], &nodown_id, &["/bin/true"]);
    rig.assert_refused(
        &o,
        &nodown_id,
        "the downstream shim /nonexistent/containerd-shim-kata-v2 does not exist",
    );
    rig.assert_clean();
}

#[test]
fn fifty_concurrent_runs_all_succeed_and_leave_nothing() {
    let rig = Rig::new(Downstream::Runc, "");
    let ids: Vec<String> = (0..50).map(|i| Rig::id(&format!("burst{i}"))).collect();
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| {
                let rig = &rig;
                s.spawn(move || {
                    let o = rig.run(&["--rm"], id, &["/bin/busybox", "echo", id]);
                    if o.status.success() && out(&o).trim() == id.as_str() {
                        None
                    } else {
                        Some(format!("{id}: {} {}", out(&o), err(&o)))
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("thread"))
            .collect()
    });
    assert!(failures.is_empty(), "{failures:#?}");
    // containerd runs our `delete` after each shim disconnects and kills it after 5 s; a
    // downstream removing our socket on its way out once made it look like a dead proxy
    // (an orphan clean-up against a downstream shutting down, killed at 5 s).
    let log = rig.ctrd.log();
    assert!(
        !log.contains("failed to clean up after shim disconnected"),
        "{log}"
    );
    rig.assert_clean();
}

/// The anonymous resident memory of a process: what a leak grows. (The file-backed part
/// is code paged in as paths first run, which varies with the machine's load.)
fn rss_anon_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("RssAnon:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn two_hundred_containers_in_one_pod_do_not_grow_the_proxy() {
    let rig = Rig::new(Downstream::Runc, "");
    let pod = Rig::id("longpod");
    let member = format!("io.kubernetes.cri.sandbox-id={pod}");
    let o = rig.run(
        &[
            "-d",
            "--annotation",
            "io.kubernetes.cri.container-type=sandbox",
            "--annotation",
            &member,
        ],
        &pod,
        &["/bin/busybox", "sleep", "600"],
    );
    assert!(o.status.success(), "{}", err(&o));
    let proxy = pids_of(&rig, &[SHIM, "serve", &format!("-id {pod}")]);
    assert_eq!(proxy.len(), 1, "{proxy:?}");
    let cycle = |i: usize| {
        let id = Rig::id(&format!("c{i}"));
        let o = rig.run(
            &[
                "--rm",
                "--annotation",
                "io.kubernetes.cri.container-type=container",
                "--annotation",
                &member,
            ],
            &id,
            &["/bin/busybox", "true"],
        );
        assert!(o.status.success(), "cycle {i}: {}", err(&o));
    };
    // The first hundred let glibc's arenas and thread-stack cache reach their working set
    // (measured: +200 KiB per 30 containers at first, +12 KiB per 30 by the 150th).
    for i in 0..100 {
        cycle(i);
    }
    let warm = rss_anon_kib(proxy[0]);
    for i in 100..200 {
        cycle(i);
    }
    let after = rss_anon_kib(proxy[0]);
    assert!(warm > 0 && after > 0);
    // A leak of 5 KiB per container would exceed this over the last hundred; the total
    // RSS growth is a figure of bench/load.sh.
    assert!(
        after <= warm + 512,
        "proxy anonymous RSS grew from {warm} KiB to {after} KiB over the last 100 containers"
    );
    rig.kill_and_remove(&pod, "SIGKILL");
    rig.assert_clean();
}

#[test]
fn a_killed_proxy_leaves_no_downstream_when_its_sandbox_is_deleted_before_its_app() {
    let rig = Rig::new(Downstream::Runc, "");
    let pod = Rig::id("orphanpod");
    let app = Rig::id("orphanapp");
    let member = format!("io.kubernetes.cri.sandbox-id={pod}");
    for (id, kind) in [(&pod, "sandbox"), (&app, "container")] {
        let kind = format!("io.kubernetes.cri.container-type={kind}");
        let o = rig.run(
            &["-d", "--annotation", &kind, "--annotation", &member],
            id,
            &["/bin/busybox", "sleep", "600"],
        );
        assert!(o.status.success(), "{id}: {}", err(&o));
    }
    let proxy = pids_of(&rig, &[SHIM, "serve", &format!("-id {pod}")]);
    assert_eq!(proxy.len(), 1, "{proxy:?}");
    let downstream = pids_of(&rig, &["containerd-shim-runc-v2", &format!("-id {pod}")]);
    assert_eq!(
        downstream.len(),
        1,
        "one downstream for the group: {downstream:?}"
    );
    let killed = std::process::Command::new("kill")
        .args(["-9", &proxy[0].to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    // containerd runs our `delete` for each task whose connection closed, in no set order;
    // deleting the sandbox first is what once left the app's downstream behind.
    for id in [&pod, &app] {
        let _ = rig.ctr(&["tasks", "delete", "--force", id]);
    }
    wait_until("the downstream exited", || {
        !std::path::Path::new(&format!("/proc/{}", downstream[0])).exists()
    });
    for id in [&pod, &app] {
        let _ = rig.ctr(&["containers", "delete", id]);
    }
    rig.assert_clean();
}

/// A tiny tmpfs mounted for the test, unmounted when dropped.
struct TinyFs(std::path::PathBuf);

impl TinyFs {
    fn mount(at: &std::path::Path) -> Self {
        fs::create_dir_all(at).expect("mount point");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(at)
            .status()
            .expect("mount");
        assert!(ok.success(), "mount tmpfs (needs root)");
        Self(at.to_path_buf())
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_state_file_system_fails_start_naming_the_cause_and_leaves_nothing() {
    let rig = Rig::new(Downstream::Runc, "");
    let state = rig.work.path().join("st");
    let tiny = TinyFs::mount(&state);
    // Fill it: the filler fails once the file system is full.
    let _ = fs::write(state.join("filler"), vec![0u8; 128 * 1024]);
    let id = Rig::id("full");
    let o = rig.run(&["--rm"], &id, &["/bin/busybox", "true"]);
    rig.assert_refused(&o, &id, "No space left on device");
    fs::remove_file(state.join("filler")).expect("rm filler");
    // What the failed start left on the full file system (nothing, once it has exited).
    let left = || {
        fs::read_dir(state.join("s"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    wait_until("no socket or record left on the state file system", || {
        left() == 0
    });
    drop(tiny);
    rig.assert_clean();
}

#[test]
fn a_containerd_restart_during_a_delete_leaves_every_other_sandbox_its_state() {
    let mut rig = Rig::new(Downstream::Recording, "");
    // The sandboxes run from an artifact set in a store (set A), as on a node: their base
    // config is the one the store rewrote to name A's files.
    let store = Store::new(&rig);
    let set_a = store.install("kernel A");
    fs::copy(store.current_config(), rig.work.path().join("base.toml")).expect("base config");
    let slow = Rig::id("slowdelete");
    let other = Rig::id("bystander");
    for id in [&slow, &other] {
        let o = rig.run(&["-d"], id, &["/bin/busybox", "sleep", "300"]);
        assert!(o.status.success(), "{}\n{}", err(&o), rig.ctrd.log());
        assert!(rig.state_dir(id).join("configuration.toml").is_file());
    }
    let o = rig.ctr(&["tasks", "kill", "-s", "SIGKILL", &slow]);
    assert!(o.status.success(), "{}", err(&o));
    wait_for_exit(&rig, &slow);
    // The downstream (the recording shim) holds its answer to the Delete: a slow Kata.
    let records = rig.work.path().join("records");
    let hold = records.join(format!("hold-delete-{slow}"));
    fs::write(&hold, "").expect("hold");
    let address = rig.ctrd.address();
    let deleting = {
        let slow = slow.clone();
        std::thread::spawn(move || {
            std::process::Command::new("ctr")
                .arg("--address")
                .arg(address)
                .args(["tasks", "delete", &slow])
                .output()
        })
    };
    wait_until("the Delete reached the downstream", || {
        records.join(format!("held-{slow}")).exists()
    });
    // containerd goes away with the Delete in flight (as `kata-gpu install --restart` does).
    rig.ctrd.restart();
    let _ = deleting.join();
    // The downstream finishes the Delete after all; the proxy takes note of it.
    fs::remove_file(&hold).expect("let the Delete go");
    wait_until("the deleted sandbox's state went", || {
        !rig.state_dir(&slow).exists()
    });
    for file in ["configuration.toml", "plan.json"] {
        assert!(
            rig.state_dir(&other).join(file).is_file(),
            "the other sandbox's {file} was removed"
        );
    }
    // A newer set B becomes current; prune keeps nothing it need not, yet keeps A: the
    // running sandbox's configuration still names it.
    let config = fs::read_to_string(rig.state_dir(&other).join("configuration.toml"))
        .expect("the other sandbox's configuration");
    assert!(
        config.contains(&store.set_dir(&set_a).display().to_string()),
        "{config}"
    );
    let set_b = store.install("kernel B");
    assert_ne!(set_a, set_b);
    let o = store.kata_gpu(&["artifacts", "prune", "--keep", "0"]);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    assert!(
        store.set_dir(&set_a).is_dir(),
        "prune removed set A while {other} runs from it: {}",
        out(&o)
    );
    // The task is gone downstream while the restarted containerd still counts its shim
    // (runc's own shim stays the same way): shut it down as containerd would have.
    let address = fs::read_to_string(
        rig.ctrd
            .dir()
            .join("state/io.containerd.runtime.v2.task/default")
            .join(&slow)
            .join("address"),
    )
    .expect("the bundle's address");
    let client = ttrpc::Client::connect(&address).expect("connect to the proxy");
    let shutdown = ShutdownRequest {
        id: slow.clone(),
        ..ShutdownRequest::default()
    };
    // The downstream exits as it answers: a closed connection is an answer too.
    let _ = client.request(ttrpc::Request {
        service: "containerd.task.v2.Task".into(),
        method: "Shutdown".into(),
        payload: shutdown.write_to_bytes().expect("encode"),
        timeout_nano: 10_000_000_000,
        ..ttrpc::Request::default()
    });
    let _ = rig.ctr(&["containers", "delete", &slow]);
    let tasks = out(&rig.ctr(&["tasks", "ls"]));
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with(&other) && l.contains("RUNNING")),
        "{tasks}"
    );
    rig.kill_and_remove(&other, "SIGKILL");
    rig.assert_clean();
}

/// Each profile's proxy, installed as `how`, run end to end on a host that offers TDX and
/// not SEV-SNP: a pod planned under another profile than its own would be refused (snp) or
/// shaped for the wrong TEE.
fn a_profile_served_as(how: Install) {
    let rig = Rig::new(Downstream::Runc, ANNOTATION_MODE);
    rig.sim().set_sev_snp(false);
    rig.sim().set_tdx(true);
    for profile in [Profile::Tdx, Profile::Gpu] {
        rig.install_as(profile, how);
        let id = Rig::id(&format!("{}-{how:?}", profile.name()).to_lowercase());
        let o = rig.run_as(
            &profile.runtime_type(),
            &["-d", "--annotation", "cdi.k8s.io/gpu=nvidia.com/pgpu=0"],
            &id,
            &["/bin/busybox", "sleep", "300"],
        );
        assert!(
            o.status.success(),
            "{profile}: {}\n{}",
            err(&o),
            rig.ctrd.log()
        );
        let plan: serde_json::Value =
            serde_json::from_slice(&fs::read(rig.state_dir(&id).join("plan.json")).expect("plan"))
                .expect("json");
        assert_eq!(plan["profile"], profile.name(), "{plan}");
        assert_eq!(plan["handler"], profile.handler(), "{plan}");
        let proxies = pids_of(
            &rig,
            &[&profile.shim_binary(), "serve", &format!("-id {id}")],
        );
        assert_eq!(
            proxies.len(),
            1,
            "{profile}: one proxy, named for it: {proxies:?}"
        );
        rig.kill_and_remove(&id, "SIGKILL");
    }
    rig.assert_clean();
}

#[test]
fn the_tdx_and_gpu_profiles_through_a_link_are_planned_as_themselves() {
    a_profile_served_as(Install::Link);
}

#[test]
fn the_tdx_and_gpu_profiles_through_a_copy_are_planned_as_themselves() {
    a_profile_served_as(Install::Copy);
}

/// An artifact store of the rig's own (`<work>/store`, the host root `/`), whose in-use scan
/// reads the proxy's state directory: what `kata-gpu artifacts` does on a node.
struct Store {
    kata_gpu: std::path::PathBuf,
    root: std::path::PathBuf,
    sandboxes: std::path::PathBuf,
    work: std::path::PathBuf,
}

impl Store {
    const CLASS: &'static str = "kata-qemu-nvidia-gpu-snp";

    fn new(rig: &Rig) -> Self {
        Self {
            kata_gpu: kata_gpu_tests::workspace_bin("kata-gpu", "kata-gpu"),
            root: rig.work.path().join("store"),
            sandboxes: rig.work.path().join("st"),
            work: rig.work.path().to_path_buf(),
        }
    }

    fn kata_gpu(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(&self.kata_gpu)
            .args(args)
            .arg("--host-root")
            .arg("/")
            .arg("--root")
            .arg(&self.root)
            .arg("--sandboxes-dir")
            .arg(&self.sandboxes)
            .output()
            .expect("run kata-gpu")
    }

    /// Installs a stand-in set whose kernel says `kernel`; returns its directory's name.
    fn install(&self, kernel: &str) -> String {
        let src = self.work.join(format!("set-{}", kernel.replace(' ', "-")));
        fs::create_dir_all(&src).expect("set dir");
        fs::write(src.join("vmlinuz-6.12-nvidia-gpu-confidential"), kernel).expect("kernel");
        fs::write(src.join("kata-containers-confidential.img"), "image").expect("image");
        fs::write(src.join("AMDSEV.fd"), "firmware").expect("firmware");
        fs::write(
            src.join("configuration-qemu-nvidia-gpu-snp.toml"),
            kata_gpu_configs::template("snp").expect("template"),
        )
        .expect("config");
        let o = self.kata_gpu(&["artifacts", "install", &src.display().to_string()]);
        assert!(o.status.success(), "{}{}", out(&o), err(&o));
        let current = fs::read_link(self.root.join(Self::CLASS).join("current")).expect("current");
        current
            .file_name()
            .expect("set name")
            .to_string_lossy()
            .into_owned()
    }

    fn current_config(&self) -> std::path::PathBuf {
        self.root
            .join(Self::CLASS)
            .join("current/configuration.toml")
    }

    fn set_dir(&self, set: &str) -> std::path::PathBuf {
        self.root.join(Self::CLASS).join(set)
    }
}
