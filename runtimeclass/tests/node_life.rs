//! The README's "Run it on a node", every command of it, in order, on a simulated H100
//! host whose containerd is a private one (Debian's 1.6, CRI on) reading the host's
//! `/etc/containerd/config.toml`: install, reboot, upgrade, logs, remove. Where the README
//! says `--restart` (systemctl on a real node), the test restarts that containerd itself,
//! as `install` tells an admin to under `--host-root`.

mod common;

use std::fs;
use std::process::Output;

use common::{exec_starts, kata_gpu, make, text, tree};
use kata_gpu_tests::{PrivateContainerd, SimHost, VfioMode};

const HANDLER: &str = "kata-qemu-nvidia-gpu-snp";
const GPU: &str = "0000:41:00.0";

#[track_caller]
fn ok(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
    text(out)
}

/// Every file and link under the root (directories left out), `sys`, `dev` and `proc`
/// excepted.
fn files(sim: &SimHost) -> Vec<String> {
    let root = sim.root().display().to_string();
    tree(sim.root())
        .into_iter()
        .filter(|l| !l.ends_with('/'))
        .map(|l| l.replacen(&root, "", 1))
        .filter(|l| {
            !["/sys/", "/dev/", "/proc/"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect()
}

#[test]
fn a_node_from_make_install_to_removal_as_the_readme_says() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let config = sim.path("etc/containerd/config.toml");
    let mut ctrd = PrivateContainerd::start_cri_reading(
        &config,
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_apparmor = true\n  restrict_oom_score_adj = true\n",
        &[],
    );
    let original = fs::read_to_string(&config).expect("config");
    // The socket as the host's config names it, inside the root.
    let sock = sim.path(ctrd.address().to_string_lossy().trim_start_matches('/'));
    fs::create_dir_all(sock.parent().expect("parent")).expect("mkdir");
    std::os::unix::fs::symlink(ctrd.address(), &sock).expect("link the socket");
    // Kata's shim, where the shim's settings name it by default (a stand-in: its presence
    // is what is checked; Kata itself is tested in tests/tests/shim_kata.rs).
    let kata = sim.path("opt/kata/bin/containerd-shim-kata-v2");
    fs::create_dir_all(kata.parent().expect("parent")).expect("mkdir");
    fs::write(&kata, "#!/bin/sh\n").expect("kata");
    let before = files(&sim);
    let src = tempfile::tempdir().expect("tempdir");
    let set = common::artifact_set(&src.path().join("v1"), "kernel 1");
    let bin_dir = common::built();

    // ## Install
    let said = ok(&make("install", &sim, &bin_dir));
    assert!(said.contains("installed"), "{said}");
    let said = ok(&kata_gpu(&sim, &["vfio", "bind"]));
    assert!(
        said.contains("0 function(s) bound to vfio-pci, 2 unchanged") || said.contains("unchanged"),
        "{said}"
    );
    let said = ok(&kata_gpu(&sim, &["install", "--artifacts", &set]));
    assert!(said.contains("restart the containerd that reads"), "{said}");
    // Registered in the file, not yet served: the running containerd is asked, not the file.
    let out = kata_gpu(&sim, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (
            status["registered"].clone(),
            status["loaded"].clone(),
            status["restart_pending"].clone()
        ),
        (true.into(), false.into(), true.into()),
        "{status}"
    );
    ctrd.restart();
    let said = ok(&kata_gpu(&sim, &["status"]));
    assert!(said.contains("loaded:          yes"), "{said}");
    assert!(said.contains(&format!("serves {HANDLER}")), "{said}");
    let said = ok(&kata_gpu(&sim, &["doctor"]));
    assert!(said.contains(&format!("{HANDLER}: 0 failed")), "{said}");
    let labels = ok(&kata_gpu(&sim, &["doctor", "--labels"]));
    assert!(
        labels
            .lines()
            .any(|l| l == "nvidia.com/cc.ready.state=true"),
        "{labels}"
    );
    // The RuntimeClass selects what the labels set.
    let manifests =
        fs::read_to_string(sim.path(&format!("var/lib/kata-gpu/manifests/{HANDLER}.yaml")))
            .expect("manifests");
    assert!(
        manifests.contains("nvidia.com/cc.ready.state: 'true'"),
        "{manifests}"
    );

    // ## Reboot
    let unit =
        fs::read_to_string(sim.path(&format!("etc/systemd/system/kata-gpu-{HANDLER}.service")))
            .expect("unit");
    common::reboot(&sim, GPU);
    common::run_unit(&sim, &exec_starts(&unit), GPU);
    ctrd.restart();
    let said = ok(&kata_gpu(&sim, &["doctor"]));
    assert!(said.contains(&format!("{HANDLER}: 0 failed")), "{said}");

    // ## Upgrade: the binaries, then a new artifact set; the old set stays for rollback.
    ok(&make("install", &sim, &bin_dir));
    let set2 = common::artifact_set(&src.path().join("v2"), "kernel 2");
    let said = ok(&kata_gpu(&sim, &["install", "--artifacts", &set2]));
    assert!(said.contains("artifacts:    installed sha256-"), "{said}");
    let said = ok(&kata_gpu(&sim, &["artifacts", "list"]));
    assert_eq!(said.matches("sha256-").count(), 2, "{said}");
    ok(&kata_gpu(&sim, &["status"]));

    // ## Logs and bug reports
    let report = src.path().join("report");
    let said = ok(&kata_gpu(
        &sim,
        &["report", "--output", &report.display().to_string()],
    ));
    for f in [
        format!("var/lib/kata-gpu/state/{HANDLER}.json"),
        "etc/containerd/config.toml".to_owned(),
        "var/run/cdi/nvidia.com-pgpu.yaml".to_owned(),
        format!("etc/systemd/system/kata-gpu-{HANDLER}.service"),
        "status-snp.json".to_owned(),
    ] {
        assert!(report.join(&f).is_file(), "{f} not in the report: {said}");
    }

    // ## Remove: (drain, delete the objects,) unbind, uninstall, make uninstall.
    common::vfio(
        &sim,
        &["vfio", "unbind", GPU],
        &format!("{GPU} 10de:2331 group 40: vfio-pci → nvidia"),
    );
    let said = ok(&kata_gpu(&sim, &["uninstall", "--purge"]));
    assert!(
        said.contains("vfio:         no function bound by kata-gpu vfio bind"),
        "{said}"
    );
    ctrd.restart();
    let out = kata_gpu(&sim, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (
            status["registered"].clone(),
            status["loaded"].clone(),
            status["restart_pending"].clone()
        ),
        (false.into(), false.into(), false.into()),
        "{status}"
    );
    // Restarted by hand (not --restart): uninstall once more forgets the restart it owed.
    let said = ok(&kata_gpu(&sim, &["uninstall"]));
    assert!(
        said.contains(&format!("no longer serves {HANDLER}: no restart needed")),
        "{said}"
    );
    ok(&make("uninstall", &sim, &bin_dir));
    assert_eq!(fs::read_to_string(&config).expect("config"), original);
    // Nothing of kata-gpu's is left but the lock file in /run/lock (a tmpfs).
    let left: Vec<String> = files(&sim)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    assert_eq!(left, ["/run/lock/kata-gpu.lock 0"], "{said}");
}

#[test]
fn report_refuses_a_directory_that_exists_and_writes_nothing_into_it() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("mine"), "the admin's").expect("write");
    let out = kata_gpu(
        &sim,
        &["report", "--output", &dir.path().display().to_string()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "kata-gpu: {} exists: name a new directory for the report; nothing was written\n",
            dir.path().display()
        )
    );
    assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
}
