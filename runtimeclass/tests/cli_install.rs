//! `kata-gpu install | uninstall | status` and `kata-gpu runtimeclass` on simulated GPU
//! hosts, as an admin runs them.

use std::fs;
use std::process::Output;

use kata_gpu_tests::{SimHost, VfioMode};

const HANDLER: &str = "kata-qemu-nvidia-gpu-snp";

fn kata_gpu(sim: &SimHost, args: &[&str]) -> Output {
    kata_gpu_tests::run_on_host(env!("CARGO_BIN_EXE_kata-gpu"), sim, args)
}

fn text(o: &Output) -> String {
    kata_gpu_tests::output_text(o)
}

#[test]
fn install_status_uninstall_on_an_h100_host() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    // containerd finds the shim, as after `make install`: install succeeds.
    kata_gpu_tests::place_built_shims(&sim);
    let out = kata_gpu(&sim, &["install", "--config-version", "2", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("+++ b") && said.contains("nvidia.com-pgpu.yaml"),
        "{said}"
    );
    assert!(said.contains("containerd:   would register"), "{said}");
    assert!(
        !sim.path("etc/containerd/config.toml").exists(),
        "dry-run wrote"
    );
    assert!(
        !sim.path("var/run/cdi/nvidia.com-pgpu.yaml").exists(),
        "dry-run wrote"
    );

    let out = kata_gpu(&sim, &["install", "--config-version", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("artifacts:    skipped (no --artifacts)"),
        "{said}"
    );
    assert!(said.contains(&format!("warning: {}/opt/nvidia-gpu-operator/artifacts/runtimeclasses/kata-qemu-nvidia-gpu-snp/current/configuration.toml does not exist", sim.root().display())), "{said}");
    // Under --host-root every path named is the one inside the root, the manifests line
    // names a file that exists, and no command of the real host is named.
    let root = sim.root().display().to_string();
    assert!(
        said.contains(&format!(
            "cdi:          wrote {root}/var/run/cdi/nvidia.com-pgpu.yaml"
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!("restart:      containerd must restart: restart the containerd that reads {root}/etc/containerd/config.toml")),
        "{said}"
    );
    assert!(!said.contains("systemctl"), "{said}");
    let apply = said
        .split("kubectl apply -f ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("a kubectl apply line");
    assert!(std::path::Path::new(apply).is_file(), "{apply}: {said}");
    assert!(sim.path("var/run/cdi/nvidia.com-pgpu.yaml").exists());
    let manifests =
        fs::read_to_string(sim.path(&format!("var/lib/kata-gpu/manifests/{HANDLER}.yaml")))
            .expect("manifests");
    assert!(manifests.contains("kind: RuntimeClass"), "{manifests}");
    // Only the class: `kubectl apply -f` of this file starts no workload and needs no CRD.
    assert!(!manifests.contains("\n---\n"), "{manifests}");
    for kind in ["kind: Pod", "kind: NodeFeatureRule"] {
        assert!(!manifests.contains(kind), "{manifests}");
    }
    let config = fs::read_to_string(sim.path("etc/containerd/config.toml")).expect("config");
    assert!(config.contains(&format!("runtimes.{HANDLER}]")), "{config}");

    let out = kata_gpu(&sim, &["install", "--config-version", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("cdi:          host specs up to date"),
        "{said}"
    );
    assert!(said.contains("containerd:   nothing to change"), "{said}");
    assert!(said.contains("runtimeclass: up to date"), "{said}");

    let out = kata_gpu(&sim, &["status", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "no artifacts, restart pending: {}",
        text(&out)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(status["installed"], false);
    assert_eq!(status["registered"], true);
    assert_eq!(status["restart_pending"], true);
    // No containerd runs on this host to be asked what it serves: unknown, not a guess
    // from the file (a running one is asked over CRI: node_life).
    assert_eq!(status["loaded"], serde_json::Value::Null, "{status}");
    assert!(
        status
            .to_string()
            .contains("cannot ask the running containerd what it serves"),
        "{status}"
    );

    let out = kata_gpu(&sim, &["uninstall"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("artifacts:    kept in"), "{said}");
    assert!(said.contains("uninstall --purge removes it"), "{said}");
    assert!(
        !sim.path("etc/containerd/config.toml").exists(),
        "created config left: {said}"
    );
    assert!(!sim.path("var/run/cdi/nvidia.com-pgpu.yaml").exists());
    assert!(!sim
        .path(&format!("var/lib/kata-gpu/manifests/{HANDLER}.yaml"))
        .exists());
    // All the record keeps: the restart containerd owes to unload the handler.
    let state = fs::read_to_string(sim.path(&format!("var/lib/kata-gpu/state/{HANDLER}.json")))
        .expect("state");
    let state: serde_json::Value = serde_json::from_str(&state).expect("json");
    assert_eq!(state["containerd"], serde_json::Value::Null, "{state}");
    assert_eq!(state["cdi_specs"], serde_json::json!([]), "{state}");
    assert_eq!(state["manifests"], serde_json::Value::Null, "{state}");
    assert!(state["unregistered"].is_object(), "{state}");

    let out = kata_gpu(&sim, &["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("registered:      no"), "{}", text(&out));
    assert!(
        text(&out).contains("restart pending: yes"),
        "{}",
        text(&out)
    );
}

/// A minimal artifact set: kernel, image, firmware, QEMU and Kata's base config.
fn artifact_set(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let set = dir.join("set");
    fs::create_dir_all(&set).expect("mkdir");
    for (name, body) in [
        ("vmlinuz-6.12.8-confidential", "kernel"),
        ("kata-containers-confidential.img", "image"),
        ("AMDSEV.fd", "fw"),
        ("qemu-system-x86_64", "#!qemu"),
        (
            "configuration-qemu-nvidia-gpu-snp.toml",
            "[hypervisor.qemu]\npath = \"/opt/kata/bin/qemu-system-x86_64\"\nkernel = \"/opt/kata/vmlinuz\"\nimage = \"/opt/kata/kata.img\"\nvalid_hypervisor_paths = [\"/opt/kata/bin/qemu-system-x86_64\"]\n",
        ),
    ] {
        fs::write(set.join(name), body).expect("write");
    }
    fs::set_permissions(
        set.join("qemu-system-x86_64"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    set
}

#[test]
fn install_with_artifacts_makes_status_installed_and_verified() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    // containerd finds the shim, as after `make install`: install succeeds.
    kata_gpu_tests::place_built_shims(&sim);
    let src = tempfile::tempdir().expect("tempdir");
    let set = artifact_set(src.path());
    let set = set.display().to_string();
    let out = kata_gpu(
        &sim,
        &["install", "--config-version", "2", "--artifacts", &set],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("artifacts:    installed sha256-"), "{said}");
    assert!(
        !said.contains("configuration.toml does not exist"),
        "{said}"
    );
    let out = kata_gpu(&sim, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(status["installed"], true, "{status}");
    assert_eq!(status["verified"], true, "{status}");
    assert_eq!(status["registered"], true, "{status}");
    assert_eq!(status["restart_pending"], true, "{status}");
    assert_eq!(out.status.code(), Some(1), "restart pending is a finding");
    let out = kata_gpu(
        &sim,
        &["install", "--config-version", "2", "--artifacts", &set],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("artifacts:    unchanged sha256-"),
        "{}",
        text(&out)
    );
}

/// `uninstall --purge` removes the artifact store too, but not while a sandbox runs from
/// it: that is refused before containerd's config or anything else changes.
#[test]
fn uninstall_purge_removes_the_store_unless_a_sandbox_uses_it() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    // containerd finds the shim, as after `make install`: install succeeds.
    kata_gpu_tests::place_built_shims(&sim);
    let src = tempfile::tempdir().expect("tempdir");
    let set = artifact_set(src.path()).display().to_string();
    let out = kata_gpu(
        &sim,
        &["install", "--config-version", "2", "--artifacts", &set],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let store = sim.path(&format!(
        "opt/nvidia-gpu-operator/artifacts/runtimeclasses/{HANDLER}"
    ));
    let config = fs::read_to_string(store.join("current/configuration.toml")).expect("config");
    let sandbox = sim.path("run/kata-gpu/k8s.io/pod-1");
    fs::create_dir_all(&sandbox).expect("mkdir");
    fs::write(sandbox.join("configuration.toml"), config).expect("write");

    let before = tree(sim.root());
    let out = kata_gpu(&sim, &["uninstall", "--purge"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "in use by {}/run/kata-gpu/k8s.io/pod-1/configuration.toml; nothing was removed",
            sim.root().display()
        )),
        "{said}"
    );
    assert_eq!(tree(sim.root()), before, "changed: {said}");

    fs::remove_dir_all(&sandbox).expect("rm");
    let mut said = String::new();
    for (extra, verb) in [(Some("--dry-run"), "would remove"), (None, "removed")] {
        let out = kata_gpu(
            &sim,
            &[&["uninstall", "--purge"][..], extra.as_slice()].concat(),
        );
        said = text(&out);
        assert_eq!(out.status.code(), Some(0), "{said}");
        assert!(
            said.contains(&format!(
                "artifacts:    {verb} {}/opt/nvidia-gpu-operator/artifacts/runtimeclasses/{HANDLER} (current, sha256-",
                sim.root().display()
            )),
            "{said}"
        );
        assert_eq!(store.join("current").exists(), extra.is_some(), "{said}");
    }
    assert!(!store.exists(), "store left: {said}");
    assert!(!sim.path("var/run/cdi/nvidia.com-pgpu.yaml").exists());
    let out = kata_gpu(&sim, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(status["installed"], false, "{status}");
    assert_eq!(status["registered"], false, "{status}");

    // --purge belongs to uninstall alone; install does not know it.
    let out = kata_gpu(&sim, &["install", "--purge"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("unexpected argument '--purge'"),
        "{}",
        text(&out)
    );
}

#[test]
fn install_with_artifacts_installs_them_first() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let out = kata_gpu(
        &sim,
        &[
            "install",
            "--config-version",
            "2",
            "--artifacts",
            "/nonexistent/set",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("/nonexistent/set"), "{}", text(&out));
    assert!(
        !sim.path("etc/containerd/config.toml").exists(),
        "went on after a failed step"
    );
}

#[test]
fn runtimeclass_prints_the_three_objects() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let out = kata_gpu(&sim, &["runtimeclass", "--profile", "tdx"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(yaml.matches("\n---\n").count(), 2, "{yaml}");
    assert!(
        yaml.contains("handler: kata-qemu-nvidia-gpu-tdx\n"),
        "{yaml}"
    );
    assert!(
        yaml.contains("feature.node.kubernetes.io/kata-gpu.tdx-ready: 'true'"),
        "{yaml}"
    );
    assert!(!yaml.contains("cc.ready.state"), "{yaml}");
    assert!(yaml.contains("kind: NodeFeatureRule"), "{yaml}");
    assert!(
        yaml.contains("runtimeClassName: kata-qemu-nvidia-gpu-tdx"),
        "{yaml}"
    );

    let out = kata_gpu(
        &sim,
        &[
            "runtimeclass",
            "--json",
            "--profile",
            "gpu",
            "--node-selector",
            "pool=gpu",
            "--overhead-memory",
            "4Gi",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let objects: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(objects[0]["scheduling"]["nodeSelector"]["pool"], "gpu");
    assert_eq!(objects[0]["overhead"]["podFixed"]["memory"], "4Gi");
    assert_eq!(objects[2]["kind"], "Pod");

    let out = kata_gpu(&sim, &["runtimeclass", "--overhead-cpu", "lots"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("\"lots\" is not a Kubernetes quantity"),
        "{}",
        text(&out)
    );
}

/// A refusal about containerd's config comes before anything else is written: no host CDI
/// spec, no artifacts, no manifests, no record.
#[test]
fn install_refuses_a_symlinked_containerd_config_before_writing_anything() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let real = sim.path("etc/containerd/real.toml");
    fs::create_dir_all(real.parent().expect("parent")).expect("mkdir");
    fs::write(&real, "version = 2\n").expect("write");
    std::os::unix::fs::symlink(&real, sim.path("etc/containerd/config.toml")).expect("link");
    let set = tempfile::tempdir().expect("set dir");
    let set = artifact_set(set.path());
    let before = tree(sim.root());
    let out = kata_gpu(
        &sim,
        &["install", "--artifacts", &set.display().to_string()],
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("config.toml: is a symlink to"), "{said}");
    // The node lock (taken before the record is read) is the one file that may appear.
    let lock_dir = sim.path("run");
    let after: Vec<_> = tree(sim.root())
        .into_iter()
        .filter(|(p, _, _)| !p.starts_with(&lock_dir))
        .collect();
    assert_eq!(after, before, "written: {said}");
    assert_eq!(fs::read_to_string(&real).expect("real"), "version = 2\n");
}

/// A RuntimeClass flag that is wrong is refused before install writes anything: not the
/// artifact set, the host CDI spec, the boot unit or containerd's config (the manifest is
/// install's last step, but its flags are checked first).
#[test]
fn install_refuses_a_bad_runtimeclass_flag_before_writing_anything() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let set = tempfile::tempdir().expect("set dir");
    let set = artifact_set(set.path());
    let before = tree(sim.root());
    let out = kata_gpu(
        &sim,
        &[
            "install",
            "--artifacts",
            &set.display().to_string(),
            "--overhead-memory",
            "2GB",
        ],
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("\"2GB\" is not a Kubernetes quantity"),
        "{said}"
    );
    assert_eq!(tree(sim.root()), before, "written: {said}");
}

/// Every path under `dir` with its size and modification time, sorted.
fn tree(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).expect("ls").map(|e| e.expect("entry")) {
            let m = fs::symlink_metadata(e.path()).expect("meta");
            if m.is_dir() {
                todo.push(e.path());
            }
            out.push((e.path(), m.len(), m.modified().expect("mtime")));
        }
    }
    out.sort();
    out
}

/// Issue 18 item 5: directories on the way to every file install writes (the host CDI spec
/// under /var/run, the artifact store under /opt, state and manifests under /var/lib, the
/// containerd config) are symlinks to absolute paths: each resolves inside the host root,
/// as the host sees it, and nothing outside the root is touched — by install or uninstall.
#[test]
fn install_and_uninstall_never_follow_a_symlinked_directory_out_of_the_host_root() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    // containerd finds the shim, as after `make install`: install succeeds.
    kata_gpu_tests::place_built_shims(&sim);
    let outside = tempfile::tempdir().expect("outside");
    let mut inside = Vec::new();
    for (i, linked) in ["var/run", "opt", "var/lib/kata-gpu", "etc/containerd"]
        .into_iter()
        .enumerate()
    {
        let target = outside.path().join(i.to_string());
        fs::create_dir_all(&target).expect("mkdir outside");
        let link = sim.path(linked);
        if link.is_dir() {
            // The simulated host's own (empty) /var/run/cdi goes; the link replaces it.
            fs::remove_dir_all(&link).expect("rm");
        }
        fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        inside.push(sim.root().join(target.strip_prefix("/").expect("absolute")));
    }
    let src = tempfile::tempdir().expect("set dir");
    let set = artifact_set(src.path()).display().to_string();
    let before = tree(outside.path());
    let out = kata_gpu(
        &sim,
        &["install", "--config-version", "2", "--artifacts", &set],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        tree(outside.path()),
        before,
        "install wrote outside the root"
    );
    let cdi = inside[0].join("cdi/nvidia.com-pgpu.yaml");
    assert!(cdi.is_file(), "{}: {}", cdi.display(), text(&out));
    for dir in &inside {
        assert!(dir.is_dir(), "{} not written", dir.display());
    }
    let out = kata_gpu(&sim, &["uninstall", "--purge"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        tree(outside.path()),
        before,
        "uninstall wrote outside the root"
    );
    assert!(!cdi.exists(), "the spec inside the root is removed");
}

/// Issue 18 item 6: install reads, changes and saves the node's record under the node lock,
/// so two runs never lose each other's records. While another installer holds the lock,
/// install waits, gives up naming the lock, and has written nothing — no state, no spec.
#[test]
fn install_waits_for_the_node_lock_before_it_reads_or_writes_the_record() {
    use nix::fcntl::{Flock, FlockArg};
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    // containerd finds the shim, as after `make install`: install succeeds.
    kata_gpu_tests::place_built_shims(&sim);
    let lock = sim.path("run/lock/kata-gpu.lock");
    fs::create_dir_all(lock.parent().expect("parent")).expect("mkdir");
    let file = fs::File::create(&lock).expect("lock file");
    let held = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock");
    let before = tree(sim.root());
    for args in [
        &["install", "--config-version", "2", "--lock-timeout", "1"][..],
        &["uninstall", "--lock-timeout", "1"][..],
    ] {
        let out = kata_gpu(&sim, args);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {said}");
        assert!(said.contains("another installer holds this lock"), "{said}");
        assert_eq!(
            tree(sim.root()),
            before,
            "{args:?} wrote while locked out: {said}"
        );
    }
    drop(held);
    let out = kata_gpu(
        &sim,
        &["install", "--config-version", "2", "--lock-timeout", "1"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Issue 18 item 4, for install's own files: the record naming the host CDI spec is saved
/// before the spec is written, so when the record cannot be saved nothing is written.
#[test]
fn install_records_the_cdi_spec_before_writing_it() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    // The record reads (empty) but cannot be written: it is a symlink.
    let empty = sim.path("elsewhere/empty.json");
    fs::create_dir_all(empty.parent().expect("parent")).expect("mkdir");
    fs::write(&empty, "{}\n").expect("write");
    let state = sim.path(&format!("var/lib/kata-gpu/state/{HANDLER}.json"));
    fs::create_dir_all(state.parent().expect("parent")).expect("mkdir");
    std::os::unix::fs::symlink(&empty, &state).expect("symlink");
    let out = kata_gpu(&sim, &["install", "--config-version", "2"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("is a symlink to"), "{said}");
    assert!(
        !sim.path("var/run/cdi/nvidia.com-pgpu.yaml").exists(),
        "{said}"
    );
    assert!(!sim.path("etc/containerd/config.toml").exists(), "{said}");
}
