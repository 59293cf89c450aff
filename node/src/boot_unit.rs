//! The systemd unit that makes a node ready again after a reboot: the vfio binding is
//! runtime sysfs state and the host CDI spec lives in `/var/run/cdi` (a tmpfs), so both are
//! gone at boot. `kata-gpu-<handler>.service` runs `kata-gpu vfio bind` and `kata-gpu cdi
//! generate` before containerd starts. `install` writes and enables it (the
//! `multi-user.target.wants` link `systemctl enable` would make, made without running
//! systemctl, so that it works under `--host-root` too); `uninstall` removes both.

use std::path::{Path, PathBuf};

use kata_gpu_plan::host::{Bdf, Host};

/// Where units go, as the host sees it.
pub const UNIT_DIR: &str = "/etc/systemd/system";
/// The target that pulls the unit in at boot.
pub const WANTED_BY: &str = "multi-user.target";

/// The unit's file, as the host sees it.
pub fn unit_path(handler: &str) -> PathBuf {
    Path::new(UNIT_DIR).join(format!("kata-gpu-{handler}.service"))
}

/// The link that enables it, as the host sees it.
pub fn wants_link(handler: &str) -> PathBuf {
    let unit = unit_path(handler);
    Path::new(UNIT_DIR)
        .join(format!("{WANTED_BY}.wants"))
        .join(unit.file_name().unwrap_or_default())
}

/// The NVIDIA GPUs and NVSwitches on vfio-pci now: what the unit binds again at boot.
pub fn bound_now(host: &Host) -> Result<Vec<Bdf>, kata_gpu_plan::host::HostError> {
    Ok(host
        .pci_functions()?
        .into_iter()
        .filter(|f| {
            (f.is_nvidia_gpu() || f.is_nvswitch()) && f.driver.as_deref() == Some("vfio-pci")
        })
        .map(|f| f.bdf)
        .collect())
}

/// The unit's text: `kata_gpu` as the host runs it, the devices to bind (none: every
/// NVIDIA GPU and NVSwitch), ordered before containerd's unit.
pub fn unit_text(handler: &str, kata_gpu: &Path, bdfs: &[Bdf], containerd_unit: &str) -> String {
    let bin = kata_gpu.display();
    let devices: String = bdfs.iter().map(|b| format!(" {b}")).collect();
    format!(
        "# Written by `kata-gpu install` for {handler}; `kata-gpu uninstall` removes it.\n\
         # The vfio binding and /var/run/cdi do not survive a reboot: this puts them back\n\
         # before containerd starts, so that the node's GPU pods start again.\n\
         [Unit]\n\
         Description=kata-gpu: GPUs to vfio-pci and the host CDI spec for {handler}\n\
         After=systemd-modules-load.service local-fs.target\n\
         Before={containerd_unit}.service kubelet.service\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart={bin} vfio bind{devices}\n\
         ExecStart={bin} cdi generate\n\
         \n\
         [Install]\n\
         WantedBy={WANTED_BY}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_binds_the_named_devices_then_writes_the_spec_before_containerd() {
        let bdf: Bdf = "0000:41:00.0".parse().expect("bdf");
        let text = unit_text(
            "kata-qemu-nvidia-gpu-snp",
            Path::new("/usr/local/bin/kata-gpu"),
            &[bdf],
            "k3s-agent",
        );
        let execs: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("ExecStart="))
            .collect();
        assert_eq!(
            execs,
            [
                "/usr/local/bin/kata-gpu vfio bind 0000:41:00.0",
                "/usr/local/bin/kata-gpu cdi generate"
            ]
        );
        assert!(
            text.contains("\nBefore=k3s-agent.service kubelet.service\n"),
            "{text}"
        );
        assert_eq!(
            wants_link("h"),
            Path::new("/etc/systemd/system/multi-user.target.wants/kata-gpu-h.service")
        );
    }
}
