//! A reboot on a simulated host: `install` writes and enables the boot unit; the reboot
//! wipes the runtime state (`/run`, `/var/run/cdi`) and hands the GPU back to the driver
//! the kernel probes first (nvidia, `driver_override` gone); the unit's `ExecStart`
//! commands, run in order, make the node what it was, as doctor sees it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kata_gpu_shim::host::{Bdf, Host};
use kata_gpu_shim::vfio::{self, Sysfs, Targets};
use kata_gpu_tests::{SimHost, VfioMode};

const HANDLER: &str = "kata-qemu-nvidia-gpu-snp";
const GPU: &str = "0000:41:00.0";

fn kata_gpu(sim: &SimHost, args: &[&str]) -> Output {
    kata_gpu_tests::run_on_host(env!("CARGO_BIN_EXE_kata-gpu"), sim, args)
}

fn text(o: &Output) -> String {
    kata_gpu_tests::output_text(o)
}

/// The simulated host's kernel, acting on sysfs writes as the real one does.
struct Kernel<'a>(&'a SimHost);

impl Sysfs for Kernel<'_> {
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        self.0.kernel_write(path, value)
    }
}

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

/// Wipes what a reboot wipes: the tmpfs `/run` (and `/var/run`), the vfio binding.
fn reboot(sim: &SimHost) {
    for dir in ["run", "var/run"] {
        let _ = fs::remove_dir_all(sim.path(dir));
    }
    sim.set_driver(GPU, Some("nvidia"));
    let _ = fs::remove_file(sim.path(&format!("sys/bus/pci/devices/{GPU}/driver_override")));
}

#[test]
fn after_a_reboot_the_boot_units_commands_make_the_node_what_it_was() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let built = kata_gpu_tests::workspace_bin(
        "kata-gpu-shim",
        "containerd-shim-kata-qemu-nvidia-gpu-snp-v2",
    );
    let from = built.parent().expect("dir").display().to_string();
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
    let execs: Vec<Vec<String>> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecStart="))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
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

    reboot(&sim);
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

    // The unit's commands, in order, as the host runs them: the installed kata-gpu. The
    // simulated kernel moves no device for another process, so the bind runs the same
    // library calls as `kata-gpu vfio bind` in this process, with the simulated kernel;
    // the binary's own plan for it is checked first.
    let installed = sim.path("usr/local/bin/kata-gpu");
    for argv in &execs {
        assert_eq!(argv[0], "/usr/local/bin/kata-gpu");
        let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
        if args[..2] == ["vfio", "bind"] {
            let out = kata_gpu(&sim, &[&args[..], &["--dry-run"]].concat());
            assert!(
                text(&out).contains(&format!("{GPU} 10de:2331 group 40: nvidia → vfio-pci")),
                "{}",
                text(&out)
            );
            let bdfs: Vec<Bdf> = args[2..].iter().map(|b| b.parse().expect("bdf")).collect();
            let host = Host::new(sim.root());
            let steps = vfio::plan_bind(&host, Targets::Named(&bdfs), false).expect("plan");
            vfio::apply(&host, &Kernel(&sim), &steps).expect("bind");
        } else {
            let out = Command::new(&installed)
                .args(&args)
                .arg("--host-root")
                .arg(sim.root())
                .output()
                .expect("run the unit's command");
            assert_eq!(out.status.code(), Some(0), "{argv:?}: {}", text(&out));
        }
    }
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
