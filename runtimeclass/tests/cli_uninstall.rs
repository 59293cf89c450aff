//! `kata-gpu uninstall` removes everything install wrote, and says what it leaves and why:
//! the shim's state while sandboxes have some, the binaries, GPUs on vfio-pci, the record
//! of a restart owed. `--purge` leaves no empty store directory; `--help` lists only what
//! uninstall uses.

mod common;

use std::fs;

use common::{kata_gpu, text};
use kata_gpu_tests::{SimHost, VfioMode};

const HANDLER: &str = "kata-qemu-nvidia-gpu-snp";

#[test]
fn uninstall_help_lists_only_what_uninstall_uses() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kata-gpu"))
        .args(["uninstall", "--help"])
        .output()
        .expect("run");
    let help = text(&out);
    for flag in [
        "--purge",
        "--profile",
        "--restart",
        "--restart-command",
        "--dry-run",
        "--containerd-config",
    ] {
        assert!(help.contains(&format!("{flag} ")), "{flag} missing: {help}");
    }
    for flag in [
        "--config-version",
        "--runtime-path",
        "--snapshotter",
        "--drop-in",
        "--overhead-memory",
        "--node-selector",
        "--skip-cdi",
        "--artifacts ",
        "--kata-gpu",
    ] {
        assert!(!help.contains(flag), "{flag} is install's: {help}");
    }
}

#[test]
fn uninstall_removes_what_install_wrote_and_names_what_it_leaves() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let src = tempfile::tempdir().expect("tempdir");
    let set = common::artifact_set(src.path(), "kernel");
    let built = kata_gpu_tests::workspace_bin(
        "kata-gpu-shim",
        "containerd-shim-kata-qemu-nvidia-gpu-snp-v2",
    );
    let from = built.parent().expect("dir").display().to_string();
    let out = kata_gpu(&sim, &["binaries", "install", "--from", &from]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = kata_gpu(
        &sim,
        &["install", "--config-version", "2", "--artifacts", &set],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // A GPU kata-gpu vfio bind moved (its record), a sandbox still running (its state).
    fs::create_dir_all(sim.path("var/lib/kata-gpu/vfio")).expect("mkdir");
    fs::write(sim.path("var/lib/kata-gpu/vfio/0000:41:00.0"), "nvidia\n").expect("record");
    let sandbox = sim.path("run/kata-gpu/k8s.io/pod-1");
    fs::create_dir_all(&sandbox).expect("mkdir");
    fs::write(sandbox.join("configuration.toml"), "# a sandbox's\n").expect("state");
    // Its proxy's socket and record, which are no sandbox (issue 28: they were counted
    // as one, "s/<hash>").
    fs::create_dir_all(sim.path("run/kata-gpu/s")).expect("mkdir");
    fs::write(sim.path("run/kata-gpu/s/0a1b"), "").expect("socket");
    fs::write(
        sim.path("run/kata-gpu/s/0a1b.downstream"),
        "2 unix:///x 7\n",
    )
    .expect("record");

    let out = kata_gpu(&sim, &["uninstall", "--purge"]);
    let said = text(&out).replace(&sim.root().display().to_string(), "$ROOT");
    assert_eq!(out.status.code(), Some(0), "{said}");
    for line in [
        format!("boot:         removed $ROOT/etc/systemd/system/kata-gpu-{HANDLER}.service and its link in $ROOT/etc/systemd/system/multi-user.target.wants"),
        format!("artifacts:    removed $ROOT/opt/nvidia-gpu-operator/artifacts/runtimeclasses/{HANDLER} (current, sha256-"),
        "sandboxes:    kept $ROOT/run/kata-gpu: state of running sandboxes (k8s.io/pod-1) and 1 running pod(s)' proxy socket(s) (2 file(s) in s/); drain the node (kubectl drain) and uninstall again".to_owned(),
        "binaries:     kept $ROOT/usr/local/bin/kata-gpu, $ROOT/usr/local/bin/containerd-shim-kata-qemu-nvidia-gpu-snp-v2, ".to_owned(),
        "vfio:         kept on vfio-pci: 0000:41:00.0 (the host may want them there; kata-gpu --host-root $ROOT vfio unbind gives them back to the driver they had)".to_owned(),
        format!("record:       kept $ROOT/var/lib/kata-gpu/state/{HANDLER}.json: containerd still runs with {HANDLER} loaded until it restarts"),
    ] {
        assert!(said.lines().any(|l| l.starts_with(&line)), "{line:?} in\n{said}");
    }
    // No empty store directory is left; /opt itself is the host's.
    assert!(!sim.path("opt/nvidia-gpu-operator").exists(), "{said}");
    assert!(sim.path("opt").exists());
    assert!(!sim
        .path(&format!("etc/systemd/system/kata-gpu-{HANDLER}.service"))
        .exists());

    // The sandbox is gone (drained): a second uninstall takes the empty state directory,
    // the shim's device-claims lock with it (no sandbox's state).
    fs::remove_dir_all(&sandbox).expect("rm");
    fs::remove_dir_all(sim.path("run/kata-gpu/s")).expect("rm");
    fs::write(sim.path("run/kata-gpu/claims.lock"), "").expect("lock");
    let out = kata_gpu(&sim, &["uninstall"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "sandboxes:    removed {}/run/kata-gpu (empty)",
            sim.root().display()
        )),
        "{}",
        text(&out)
    );
    assert!(!sim.path("run/kata-gpu").exists());
}

#[test]
fn the_shims_state_directory_stays_while_another_profile_is_installed() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    // containerd finds the shim, as after `make install`: install succeeds.
    kata_gpu_tests::place_built_shims(&sim);
    for profile in ["snp", "gpu"] {
        let out = kata_gpu(
            &sim,
            &["install", "--config-version", "2", "--profile", profile],
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    fs::create_dir_all(sim.path("run/kata-gpu/k8s.io")).expect("mkdir");
    let out = kata_gpu(&sim, &["uninstall", "--profile", "snp"]);
    assert!(
        text(&out).contains(&format!(
            "sandboxes:    kept {}/run/kata-gpu: kata-qemu-nvidia-gpu still installed uses it",
            sim.root().display()
        )),
        "{}",
        text(&out)
    );
    assert!(sim.path("run/kata-gpu/k8s.io").exists());
}
