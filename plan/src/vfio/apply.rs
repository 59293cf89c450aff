//! Carrying out a bind or unbind plan, one IOMMU group at a time and all-or-nothing per
//! group: every function's `driver` link is read back after its writes, and when one
//! does not end where it should, the functions of its group already changed are put
//! back as they were (driver, `driver_override`, record), so that nothing a user had
//! is lost and no group is left half on vfio-pci.

use std::fs;
use std::io;

use super::sysfs::{Sysfs, UNBIND_TIMEOUT};
use super::{guard, write, Step, VfioError, Write, STATE_DIR, VFIO_PCI};
use crate::host::Host;

/// Where a function ends after its step.
enum Expected<'a> {
    /// On this driver.
    Driver(&'a str),
    /// Without a driver, as it was before a bind.
    NoDriver,
    /// Off vfio-pci: a plan without a record lets the kernel pick.
    OffVfio,
}

/// The driver a function is bound to now, from its `driver` link.
fn current_driver(host: &Host, bdf: &str) -> Option<String> {
    fs::read_link(host.path(&format!("/sys/bus/pci/devices/{bdf}/driver")))
        .ok()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// What to tell the user when a function is not where it should be.
fn hint(host: &Host, expected: &Expected<'_>) -> String {
    match expected {
        Expected::Driver(d) if !host.path(&format!("/sys/bus/pci/drivers/{d}")).exists() => {
            format!("the {d} driver is not loaded (modprobe {d})")
        }
        Expected::Driver(d) => format!("{d} did not take it, see dmesg for why"),
        Expected::NoDriver => "its driver did not let it go, see dmesg for why".to_owned(),
        Expected::OffVfio => format!("{VFIO_PCI} kept it, see dmesg for why"),
    }
}

/// Reads the function's `driver` link back and refuses a mismatch, naming both drivers.
/// `refused` (a sysfs write the kernel refused) fails it even on a match: the step's
/// writes did not all happen, and it becomes the hint.
fn check_driver(
    host: &Host,
    bdf: &str,
    expected: &Expected<'_>,
    refused: Option<String>,
) -> Result<(), VfioError> {
    let now = current_driver(host, bdf);
    let ok = match expected {
        Expected::Driver(d) => now.as_deref() == Some(*d),
        Expected::NoDriver => now.is_none(),
        Expected::OffVfio => now.as_deref() != Some(VFIO_PCI),
    };
    if ok && refused.is_none() {
        return Ok(());
    }
    Err(VfioError::NotMoved {
        bdf: bdf.to_owned(),
        now,
        expected: match expected {
            Expected::Driver(d) => (*d).to_owned(),
            Expected::NoDriver => "no driver".to_owned(),
            Expected::OffVfio => format!("any driver but {VFIO_PCI}, or none"),
        },
        hint: refused.unwrap_or_else(|| hint(host, expected)),
    })
}

/// Writes or (with `None`) removes one of our record files.
fn write_record(host: &Host, path: &str, value: Option<&str>) -> Result<(), VfioError> {
    let full = host.path(path);
    let err = |error| VfioError::Write {
        path: full.clone(),
        value: value.unwrap_or_default().to_owned(),
        error,
    };
    let Some(text) = value else {
        return match fs::remove_file(&full) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(err(e)),
            _ => Ok(()),
        };
    };
    // Explicit modes, whatever the umask: a record others could write would let them
    // choose the driver a device goes back to.
    if let Some(parent) = full.parent() {
        kata_gpu_fsutil::create_dirs(parent, 0o755).map_err(err)?;
    }
    kata_gpu_fsutil::write_atomic(&full, text.as_bytes(), 0o644).map_err(err)
}

/// The hint for an unbind of `bdf` that did not finish in time: who holds it, if anyone
/// can be seen to.
fn unbind_stuck(host: &Host, bdf: &str) -> String {
    let driver = current_driver(host, bdf).unwrap_or_else(|| "its driver".to_owned());
    let holder = bdf
        .parse()
        .ok()
        .and_then(|b| host.pci_function(b).ok())
        .and_then(|f| guard::holder_of(host, &f));
    let who = match holder {
        Some((pid, comm, node)) => format!("pid {pid} ({comm}) holds {node} open; stop it"),
        None => "no process is seen holding it (a kernel user, see dmesg); free it".to_owned(),
    };
    format!(
        "unbinding it from {driver} did not finish within {UNBIND_TIMEOUT:?}: {who} (the \
         unbind then finishes and leaves the function on no driver) and run vfio bind again"
    )
}

/// Performs writes in order (sysfs ones through the seam, records directly), stopping at
/// the first sysfs write the kernel refuses. A permission error is returned as such (run
/// as root); any other refusal (`ENODEV`, `EBUSY`) comes back as the hint for the
/// read-back, which says where the function ended up; an unbind that did not finish in
/// time, as one naming who holds the function.
fn perform(host: &Host, sysfs: &dyn Sysfs, writes: &[Write]) -> Result<Option<String>, VfioError> {
    for w in writes {
        if w.path.starts_with(STATE_DIR) {
            // A plan writes "" to forget a record.
            let value = Some(w.value.as_str()).filter(|v| !v.is_empty());
            write_record(host, &w.path, value)?;
            continue;
        }
        let full = host.path(&w.path);
        match sysfs.write(&full, &w.value) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
                return Err(VfioError::Write {
                    path: full,
                    value: w.value.clone(),
                    error,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut && w.path.ends_with("/unbind") => {
                return Ok(Some(unbind_stuck(host, w.value.trim())))
            }
            Err(e) => return Ok(Some(format!("the kernel refused `{w}` ({e}), see dmesg"))),
        }
    }
    Ok(None)
}

/// A function as it was before its step: what putting it back restores.
struct Before {
    bdf: String,
    driver: Option<String>,
    driver_override: Option<String>,
    record: Option<String>,
}

impl Before {
    fn read(host: &Host, bdf: &str) -> Self {
        let read = |path: &str| fs::read_to_string(host.path(path)).ok();
        let driver_override = read(&format!("/sys/bus/pci/devices/{bdf}/driver_override"))
            .map(|t| t.trim().to_owned())
            // The kernel shows an unset override as "(null)".
            .filter(|t| !t.is_empty() && t != "(null)");
        Self {
            bdf: bdf.to_owned(),
            driver: current_driver(host, bdf),
            driver_override,
            record: read(&format!("{STATE_DIR}/{bdf}")),
        }
    }

    /// Puts the function back: the override first (a leftover `vfio-pci` override keeps
    /// any other driver from matching), then the driver, then the record (even when the
    /// driver would not move: it is ours); and reads the driver back.
    fn restore(&self, host: &Host, sysfs: &dyn Sysfs) -> Result<(), VfioError> {
        let bdf = self.bdf.as_str();
        let over = self.driver_override.as_deref().unwrap_or("\n");
        let mut writes = vec![write(
            format!("/sys/bus/pci/devices/{bdf}/driver_override"),
            over,
        )];
        let now = current_driver(host, bdf);
        if now != self.driver {
            if let Some(d) = now {
                writes.push(write(format!("/sys/bus/pci/drivers/{d}/unbind"), bdf));
            }
            if let Some(d) = &self.driver {
                writes.push(write(format!("/sys/bus/pci/drivers/{d}/bind"), bdf));
            }
        }
        let refused = perform(host, sysfs, &writes);
        write_record(host, &format!("{STATE_DIR}/{bdf}"), self.record.as_deref())?;
        let expected = match &self.driver {
            Some(d) => Expected::Driver(d),
            None => Expected::NoDriver,
        };
        check_driver(host, bdf, &expected, refused?)
    }
}

/// Performs one step's writes and reads the function's driver back. A function that
/// will be unbound from a driver is checked for use once more first, right before its
/// writes: what opened or mounted it since the plan was made stops it here; and its block
/// devices are claimed exclusively from that check until its writes are done, so none can
/// be mounted in between (the kernel has no such claim for a GPU's character devices).
fn apply_step(host: &Host, sysfs: &dyn Sysfs, step: &Step) -> Result<(), VfioError> {
    let unbinds = step.writes.iter().any(|w| w.path.ends_with("/unbind"));
    // Held until the step is done: its block devices cannot be mounted meanwhile.
    let mut _claims = Vec::new();
    if unbinds && current_driver(host, &step.bdf).is_some() {
        if let Some(f) = step
            .bdf
            .parse()
            .ok()
            .and_then(|b| host.pci_function(b).ok())
        {
            guard::check_not_in_use(host, &f)?;
            _claims = guard::claim(host, &f)?;
        }
    }
    let refused = perform(host, sysfs, &step.writes)?;
    let expected = match &step.to {
        Some(d) => Expected::Driver(d),
        None => Expected::OffVfio,
    };
    check_driver(host, &step.bdf, &expected, refused)
}

/// Performs the steps through `sysfs` ([`super::KernelSysfs`] on a real host), group by
/// group in the order the plan names them. A group whose step fails is put back whole
/// before the error returns; groups finished before it stay done, and the error says
/// which.
pub fn apply(host: &Host, sysfs: &dyn Sysfs, steps: &[Step]) -> Result<(), VfioError> {
    let mut groups: Vec<Option<u32>> = Vec::new();
    for s in steps.iter().filter(|s| !s.is_noop()) {
        if !groups.contains(&s.group) {
            groups.push(s.group);
        }
    }
    for (i, &group) in groups.iter().enumerate() {
        let mut before: Vec<Before> = Vec::new();
        for step in steps.iter().filter(|s| s.group == group && !s.is_noop()) {
            before.push(Before::read(host, &step.bdf));
            if let Err(cause) = apply_step(host, sysfs, step) {
                let not_restored = before
                    .iter()
                    .rev()
                    .filter_map(|b| b.restore(host, sysfs).err())
                    .collect();
                return Err(VfioError::GroupPutBack {
                    cause: Box::new(cause),
                    group,
                    not_restored,
                    done: groups[..i].iter().flatten().copied().collect(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::sysfs::SimKernel;
    use super::super::{plan_bind, plan_unbind, Targets};
    use super::*;
    use crate::host::Bdf;
    use kata_gpu_simhost::SimHost;

    const GPU: &str = "0000:41:00.0";
    const AUDIO: &str = "0000:41:00.1";

    fn bdf(s: &str) -> Bdf {
        s.parse().expect("bdf")
    }

    /// A file under the simulated root, `None` when absent.
    fn read(sim: &SimHost, rel: &str) -> Option<String> {
        fs::read_to_string(sim.path(rel)).ok()
    }

    fn override_of(sim: &SimHost, f: &str) -> Option<String> {
        read(sim, &format!("sys/bus/pci/devices/{f}/driver_override"))
    }

    fn record_of(sim: &SimHost, f: &str) -> Option<String> {
        read(sim, &format!("var/lib/kata-gpu/vfio/{f}"))
    }

    /// The audio-bridge preset with its GPU on nvidia and its audio function on
    /// snd_hda_intel, as a host looks before its first bind.
    fn group_on_host_drivers() -> SimHost {
        let sim = SimHost::gpu_with_audio_and_bridge();
        sim.set_driver(GPU, Some("nvidia"));
        sim.set_driver(AUDIO, Some("snd_hda_intel"));
        sim
    }

    fn bind(sim: &SimHost) -> Result<(), VfioError> {
        let host = Host::new(sim.root());
        let steps = plan_bind(&host, Targets::Named(&[bdf(GPU)]), false).expect("plan");
        apply(&host, &SimKernel(sim), &steps)
    }

    #[test]
    fn a_driver_that_does_not_take_the_device_is_one_clear_line() {
        let sim = SimHost::gpu_bound_to_nvidia();
        sim.refuse(VFIO_PCI, GPU);
        let e = bind(&sim).expect_err("vfio-pci refused it");
        assert_eq!(
            e.to_string(),
            "0000:41:00.0 is on no driver, expected vfio-pci: the vfio-pci driver is not \
             loaded (modprobe vfio-pci); group 40 was put back as it was"
        );
        assert!(
            matches!(&e, VfioError::GroupPutBack { cause, not_restored, .. }
            if matches!(**cause, VfioError::NotMoved { .. }) && not_restored.is_empty())
        );
        assert_eq!(sim.driver(GPU).as_deref(), Some("nvidia"));
        assert_eq!(override_of(&sim, GPU).as_deref(), Some("\n"));
        assert_eq!(record_of(&sim, GPU), None);
    }

    #[test]
    fn a_group_whose_second_function_fails_is_put_back_whole() {
        let sim = group_on_host_drivers();
        sim.refuse(VFIO_PCI, AUDIO);
        let e = bind(&sim).expect_err("vfio-pci refused the audio function");
        let shown = e.to_string();
        assert_eq!(
            shown,
            "0000:41:00.1 is on no driver, expected vfio-pci: vfio-pci did not take it, see \
             dmesg for why; group 40 was put back as it was"
        );
        assert!(!shown.contains('\n'), "{shown}");
        // The GPU had moved to vfio-pci before the audio function failed: both are back.
        assert_eq!(sim.driver(GPU).as_deref(), Some("nvidia"));
        assert_eq!(sim.driver(AUDIO).as_deref(), Some("snd_hda_intel"));
        for f in [GPU, AUDIO] {
            assert_eq!(override_of(&sim, f).as_deref(), Some("\n"), "{f}");
            assert_eq!(record_of(&sim, f), None, "{f}");
        }
        assert_eq!(
            read(&sim, "sys/bus/pci/drivers/vfio-pci/unbind").as_deref(),
            Some(GPU)
        );
        assert_eq!(sim.driver("0000:40:01.1").as_deref(), Some("pcieport"));
        assert_eq!(override_of(&sim, "0000:40:01.1"), None);

        // Once vfio-pci takes it, the same bind goes through.
        let sim = group_on_host_drivers();
        bind(&sim).expect("bind");
        assert_eq!(sim.driver(AUDIO).as_deref(), Some(VFIO_PCI));
    }

    #[test]
    fn a_function_that_cannot_be_put_back_is_named() {
        let sim = group_on_host_drivers();
        sim.refuse(VFIO_PCI, AUDIO);
        sim.refuse("nvidia", GPU);
        let e = bind(&sim).expect_err("refused");
        let shown = e.to_string();
        assert!(
            shown.starts_with("0000:41:00.1 is on no driver, expected vfio-pci: "),
            "{shown}"
        );
        assert!(
            shown.contains(
                "; group 40 could not be put back whole: 0000:41:00.0 is on no driver, \
                 expected nvidia: the kernel refused `echo \"0000:41:00.0\" > \
                 /sys/bus/pci/drivers/nvidia/bind` (No such device (os error 19)), see dmesg"
            ),
            "{shown}"
        );
        assert!(!shown.contains('\n'), "{shown}");
        // What could be put back was: the audio function, the GPU's override and record.
        assert_eq!(sim.driver(AUDIO).as_deref(), Some("snd_hda_intel"));
        assert_eq!(sim.driver(GPU), None);
        assert_eq!(override_of(&sim, GPU).as_deref(), Some("\n"));
        assert_eq!(record_of(&sim, GPU), None);
    }

    #[test]
    fn an_unbind_the_old_driver_refuses_leaves_the_group_on_vfio() {
        let sim = group_on_host_drivers();
        bind(&sim).expect("bind");
        sim.refuse("snd_hda_intel", AUDIO);
        let host = Host::new(sim.root());
        let steps = plan_unbind(&host, Targets::Named(&[bdf(GPU)])).expect("plan");
        let e = apply(&host, &SimKernel(&sim), &steps).expect_err("refused");
        let shown = e.to_string();
        assert!(
            shown.starts_with(
                "0000:41:00.1 is on no driver, expected snd_hda_intel: the kernel refused \
                 `echo \"0000:41:00.1\" > /sys/bus/pci/drivers/snd_hda_intel/bind`"
            ),
            "{shown}"
        );
        assert!(
            shown.ends_with("; group 40 was put back as it was"),
            "{shown}"
        );
        for (f, was) in [(GPU, "nvidia\n"), (AUDIO, "snd_hda_intel\n")] {
            assert_eq!(sim.driver(f).as_deref(), Some(VFIO_PCI), "{f}");
            assert_eq!(override_of(&sim, f).as_deref(), Some(VFIO_PCI), "{f}");
            assert_eq!(record_of(&sim, f).as_deref(), Some(was), "{f}");
        }
    }

    /// The in-use check runs again right before a function's unbind, not only when the
    /// plan was made: a process that opened the GPU since stops the bind, and its group is
    /// left as it was.
    #[test]
    fn a_device_opened_after_the_plan_is_not_unbound() {
        let sim = SimHost::gpu_bound_to_nvidia();
        let host = Host::new(sim.root());
        let steps = plan_bind(&host, Targets::Named(&[bdf(GPU)]), false).expect("plan");
        sim.hold_open(4242, "nvidia-smi", "/dev/nvidia0");
        let e = apply(&host, &SimKernel(&sim), &steps).expect_err("in use");
        assert_eq!(
            e.to_string(),
            "0000:41:00.0 is in use by pid 4242 (nvidia-smi), which holds /dev/nvidia0 open; \
             stop it and retry; group 40 was put back as it was"
        );
        assert_eq!(sim.driver(GPU).as_deref(), Some("nvidia"));
        assert_eq!(record_of(&sim, GPU), None);
        assert_ne!(override_of(&sim, GPU).as_deref(), Some(VFIO_PCI));
    }

    /// With --force, a disk of the group mounted after the plan is not unbound under the
    /// mount either.
    #[test]
    fn a_disk_mounted_after_the_plan_is_not_unbound() {
        let sim = SimHost::gpu_with_nvme_in_group();
        let host = Host::new(sim.root());
        let steps = plan_bind(&host, Targets::All, true).expect("plan");
        sim.mount("/dev/nvme0n1p1", "/mnt");
        let e = apply(&host, &SimKernel(&sim), &steps).expect_err("mounted");
        assert!(
            e.to_string().starts_with(
                "0000:42:00.0 is in use: /dev/nvme0n1p1 is mounted on /mnt; unmount it and retry"
            ),
            "{e}"
        );
        assert_eq!(sim.driver("0000:42:00.0").as_deref(), Some("nvme"));
        assert_eq!(sim.driver(GPU).as_deref(), Some("nvidia"));
    }

    /// A loop device, detached when dropped: a real block device the kernel can claim.
    struct Loop {
        dev: String,
        _file: tempfile::NamedTempFile,
    }

    impl Loop {
        fn new() -> Self {
            assert!(
                nix::unistd::geteuid().is_root(),
                "precondition not met: root is needed for a loop device. Run the tests as root, \
                 as CI does."
            );
            let file = tempfile::NamedTempFile::new().expect("tempfile");
            file.as_file().set_len(1 << 20).expect("size");
            let out = std::process::Command::new("losetup")
                .args(["-f", "--show"])
                .arg(file.path())
                .output()
                .expect("run losetup");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            Self { dev, _file: file }
        }
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.dev])
                .status();
        }
    }

    /// With --force, a disk claimed after the plan (a mount claims its block device
    /// exclusively, in whatever mount namespace, and so do md and device-mapper) is not
    /// unbound: the bind claims each block device of the function itself, from the check
    /// to the end of the unbind, and a claim it cannot take stops it.
    #[test]
    fn a_disk_claimed_after_the_plan_is_not_unbound() {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let the_loop = Loop::new();
        let sim = SimHost::gpu_with_nvme_in_group();
        // The simulated partition is the loop device.
        let node = sim.path("dev/nvme0n1p1");
        fs::remove_file(&node).expect("rm");
        let rdev = fs::metadata(&the_loop.dev).expect("stat loop").rdev();
        nix::sys::stat::mknod(
            &node,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            rdev,
        )
        .expect("mknod");
        let host = Host::new(sim.root());
        let steps = plan_bind(&host, Targets::All, true).expect("plan");
        let claim = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_EXCL)
            .open(&the_loop.dev)
            .expect("claim the loop device");
        let e = apply(&host, &SimKernel(&sim), &steps).expect_err("claimed");
        assert!(
            e.to_string().starts_with(
                "0000:42:00.0 is in use: /dev/nvme0n1p1 is claimed (mounted, in md or \
                 device-mapper, or opened exclusively, in some mount namespace); unmount or \
                 release it and retry"
            ),
            "{e}"
        );
        assert_eq!(sim.driver("0000:42:00.0").as_deref(), Some("nvme"));
        assert_eq!(sim.driver(GPU).as_deref(), Some("nvidia"));
        // Planned now, the claim is seen before anything is written.
        let e = plan_bind(&host, Targets::All, true).expect_err("claimed");
        assert!(e.to_string().contains("/dev/nvme0n1p1 is claimed"), "{e}");

        // Released, the same bind goes through: its own claims do not stop it.
        drop(claim);
        let steps = plan_bind(&host, Targets::All, true).expect("plan");
        apply(&host, &SimKernel(&sim), &steps).expect("bind");
        assert_eq!(sim.driver("0000:42:00.0").as_deref(), Some(VFIO_PCI));
    }

    /// An unbind that does not finish (nvidia's remove waits for whoever opened the GPU in
    /// the last instant) is given up on, and the refusal names the holder.
    #[test]
    fn an_unbind_that_does_not_finish_names_the_holder() {
        let sim = SimHost::gpu_bound_to_nvidia();
        sim.stall_unbind(GPU, 777, "nvidia-persiste", "/dev/nvidia0");
        let e = bind(&sim).expect_err("stalled");
        assert_eq!(
            e.to_string(),
            "0000:41:00.0 is on nvidia, expected vfio-pci: unbinding it from nvidia did not \
             finish within 30s: pid 777 (nvidia-persiste) holds /dev/nvidia0 open; stop it \
             (the unbind then finishes and leaves the function on no driver) and run vfio \
             bind again; group 40 was put back as it was"
        );
        assert_eq!(sim.driver(GPU).as_deref(), Some("nvidia"));
    }

    #[test]
    fn groups_done_before_a_failure_stay_done_and_are_named() {
        let sim = SimHost::hgx_8x_h100();
        for f in ["0000:18:00.0", "0000:2a:00.0"] {
            sim.set_driver(f, Some("nvidia"));
        }
        sim.refuse(VFIO_PCI, "0000:2a:00.0");
        let host = Host::new(sim.root());
        let steps = plan_bind(&host, Targets::All, false).expect("plan");
        let e = apply(&host, &SimKernel(&sim), &steps).expect_err("refused");
        assert!(
            e.to_string().ends_with(
                "; group 31 was put back as it was (group 30, done before it, stays done)"
            ),
            "{e}"
        );
        assert_eq!(sim.driver("0000:18:00.0").as_deref(), Some(VFIO_PCI));
        assert_eq!(sim.driver("0000:2a:00.0").as_deref(), Some("nvidia"));
    }
}
