//! A reboot on a simulated host: `install` writes and enables the boot unit; the reboot
//! wipes the runtime state (`/run`, `/var/run/cdi`) and hands the GPU back to the driver
//! the kernel probes first (nvidia, `driver_override` gone); the unit's `ExecStart`
//! commands, run in order, make the node what it was, as doctor sees it.

mod common;

use std::fs;
use std::path::PathBuf;

use common::{exec_starts, kata_gpu, text};
use kata_gpu_tests::{SimHost, VfioMode};

const HANDLER: &str = "kata-qemu-nvidia-gpu-snp";
const GPU: &str = "0000:41:00.0";

/// doctor's verdict lines (with `$ROOT` for the root), checks only.
fn doctor(sim: &SimHost) -> Vec<String> {
    let out = kata_gpu(sim, &["doctor", "--containerd", "/nonexistent/containerd"]);
    text(&out)
        .replace(&sim.root().display().to_string(), "$ROOT")
        .lines()
        .filter(|l| !l.starts_with(HANDLER))
        .map(str::to_owned)
        .collect()
}

#[test]
fn after_a_reboot_the_boot_units_commands_make_the_node_what_it_was() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let from = common::built().display().to_string();
    let out = kata_gpu(&sim, &["binaries", "install", "--from", &from]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = kata_gpu(&sim, &["install", "--config-version", "2"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    let unit_host = format!("/etc/systemd/system/kata-gpu-{HANDLER}.service");
    assert!(
        said.contains(&format!(
            "boot:         wrote {}{unit_host} (enabled in multi-user.target): at boot, before containerd.service, `vfio bind {GPU}` and `cdi generate`",
            sim.root().display()
        )),
        "{said}"
    );
    let unit = fs::read_to_string(sim.path(&unit_host)).expect("unit");
    let link = sim.path(&format!(
        "etc/systemd/system/multi-user.target.wants/kata-gpu-{HANDLER}.service"
    ));
    assert_eq!(
        fs::read_link(&link).expect("enabled"),
        PathBuf::from(format!("../kata-gpu-{HANDLER}.service"))
    );
    assert!(
        unit.contains("\nBefore=containerd.service kubelet.service\n"),
        "{unit}"
    );
    let execs = exec_starts(&unit);
    assert_eq!(
        execs,
        [
            vec!["/usr/local/bin/kata-gpu", "vfio", "bind", GPU],
            vec!["/usr/local/bin/kata-gpu", "cdi", "generate"],
        ],
        "{unit}"
    );
    let before = doctor(&sim);
    assert!(
        before
            .iter()
            .any(|l| l.starts_with("ok    cdi: host spec present")),
        "{before:?}"
    );

    common::reboot(&sim, GPU);
    let after = doctor(&sim);
    assert!(
        after
            .iter()
            .any(|l| l.starts_with(&format!("FAIL  gpu {GPU}: 10de:2331 driver nvidia"))),
        "{after:?}"
    );
    assert!(
        !sim.path("var/run/cdi/nvidia.com-pgpu.yaml").exists(),
        "the host spec survived the reboot"
    );

    common::run_unit(&sim, &execs, GPU);
    assert_eq!(
        doctor(&sim),
        before,
        "the node after the reboot differs from before"
    );

    // uninstall takes the unit and its link away.
    let out = kata_gpu(&sim, &["uninstall"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "boot:         removed {}{unit_host}",
            sim.root().display()
        )),
        "{}",
        text(&out)
    );
    assert!(!sim.path(&unit_host).exists());
    assert!(fs::symlink_metadata(&link).is_err(), "link left");
}
