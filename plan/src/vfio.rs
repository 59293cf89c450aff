//! Binding NVIDIA GPUs and NVSwitches to `vfio-pci`, and handing them back, through sysfs
//! under a root (ARCHITECTURE.md, "VFIO and PCI").
//!
//! A group passes through whole, so binding a GPU binds every function of its IOMMU group
//! except host and PCI bridges. Planning is pure (it reads the host and says what it would
//! write); [`apply`] performs the writes through the [`Sysfs`] seam, reads every
//! function's driver back, and puts a group back whole when one of its functions does not
//! move. The driver a function had before is recorded under `/var/lib/kata-gpu/vfio/<bdf>`
//! so that unbinding can give it back.
//!
//! A group that holds a function not NVIDIA's (an NVMe drive or a NIC on a board without
//! ACS) is refused unless forced, naming each such function and its driver. A function
//! that would move while in use is refused, naming the process or the mount: one holding
//! `/dev/nvidia*` open while the GPU is on the `nvidia` driver, its `/dev/vfio/<group>` or
//! `/dev/vfio/devices/vfioN` while it is on `vfio-pci`, any device node the kernel made for
//! it (`/dev/nvme0n1p1`) held open or mounted, or a network interface of it that is up.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io;
use std::path::PathBuf;

use serde::Serialize;

use crate::host::{Bdf, Host, HostError, PciFunction};

mod apply;
mod guard;
mod sysfs;

pub use apply::apply;
pub use guard::Foreign;
pub use sysfs::{KernelSysfs, Sysfs};

/// The VFIO driver.
pub const VFIO_PCI: &str = "vfio-pci";
/// Where the previous drivers are recorded, one file per function.
pub const STATE_DIR: &str = "/var/lib/kata-gpu/vfio";

/// Why a bind or unbind is refused.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// The host could not be read.
    #[error(transparent)]
    Host(#[from] HostError),
    /// A named device is neither an NVIDIA GPU nor an NVSwitch.
    #[error("{bdf} ({id}, class {class:06x}) is not an NVIDIA GPU or NVSwitch; name a GPU or NVSwitch (`kata-gpu vfio bind` with no address takes them all)")]
    NotNvidia {
        /// The device.
        bdf: Bdf,
        /// `vendor:device`.
        id: String,
        /// Its class code.
        class: u32,
    },
    /// A device without an IOMMU group.
    #[error("{bdf} has no IOMMU group: the IOMMU is off; {fix}")]
    NoIommuGroup {
        /// The device.
        bdf: Bdf,
        /// How to turn the IOMMU on, for this CPU and command line.
        fix: String,
    },
    /// A device some process holds open.
    #[error("{bdf} is in use by pid {pid} ({comm}), which holds {node} open; stop it and retry")]
    InUse {
        /// The device.
        bdf: Bdf,
        /// The process.
        pid: u32,
        /// Its command name.
        comm: String,
        /// The device node it holds.
        node: String,
    },
    /// A device node of a function that would move is mounted.
    #[error("{bdf} is in use: {node} is mounted on {at}; unmount it and retry")]
    Mounted {
        /// The device.
        bdf: Bdf,
        /// The device node.
        node: String,
        /// Where it is mounted.
        at: String,
    },
    /// A block device of a function that would move is claimed exclusively by someone
    /// else: a mount (in any mount namespace), md, device-mapper, an exclusive opener.
    #[error("{bdf} is in use: {node} is claimed (mounted, in md or device-mapper, or opened exclusively, in some mount namespace); unmount or release it and retry")]
    Claimed {
        /// The device.
        bdf: Bdf,
        /// The block device node.
        node: String,
    },
    /// A device node of a function that would move is used as swap.
    #[error("{bdf} is in use: {node} is swap; swapoff {node} and retry")]
    Swap {
        /// The device.
        bdf: Bdf,
        /// The device node.
        node: String,
    },
    /// A network interface of a function that would move is up.
    #[error("{bdf} is in use: its network interface {iface} is up; take it down (ip link set {iface} down) and retry")]
    InterfaceUp {
        /// The device.
        bdf: Bdf,
        /// The interface.
        iface: String,
    },
    /// Functions not NVIDIA's share a group with a target: binding would take them from
    /// the host (the boot disk or the NIC, on a board without ACS).
    #[error("{}", guard::foreign_message(.0))]
    Foreign(Vec<Foreign>),
    /// A sysfs or state file could not be written.
    #[error("cannot write {value:?} to {}: {error}; run as root on the host", path.display())]
    Write {
        /// The path, under the root.
        path: PathBuf,
        /// What was to be written.
        value: String,
        /// Why (in the message, before its fix, so no source of its own).
        error: io::Error,
    },
    /// A function whose `driver` link, read back after its writes, is not where they
    /// should have put it: the kernel did not carry them out.
    #[error("{bdf} is on {}, expected {expected}: {hint}", now.as_deref().unwrap_or("no driver"))]
    NotMoved {
        /// The function.
        bdf: String,
        /// The driver it is on now.
        now: Option<String>,
        /// Where it should be.
        expected: String,
        /// The likely cause and where to look.
        hint: String,
    },
    /// A step failed, and its group was put back as it was (or as far as it could be).
    #[error("{cause}; {}", put_back(*group, not_restored, done))]
    GroupPutBack {
        /// Why the step failed.
        cause: Box<VfioError>,
        /// The group put back.
        group: Option<u32>,
        /// Why functions of the group could not be put back, one error each.
        not_restored: Vec<VfioError>,
        /// The groups finished before it, which stay as they now are.
        done: Vec<u32>,
    },
}

/// How far a failed group was put back, for [`VfioError::GroupPutBack`].
fn put_back(group: Option<u32>, not_restored: &[VfioError], done: &[u32]) -> String {
    let which = group.map_or("the function".to_owned(), |g| format!("group {g}"));
    let mut out = if not_restored.is_empty() {
        format!("{which} was put back as it was")
    } else {
        let why: Vec<String> = not_restored.iter().map(ToString::to_string).collect();
        format!("{which} could not be put back whole: {}", why.join("; "))
    };
    if !done.is_empty() {
        let groups: Vec<String> = done.iter().map(ToString::to_string).collect();
        let (noun, verb) = if done.len() == 1 {
            ("group", "stays")
        } else {
            ("groups", "stay")
        };
        out.push_str(&format!(
            " ({noun} {}, done before it, {verb} done)",
            groups.join(", ")
        ));
    }
    out
}

/// Which devices a command acts on.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    /// Every NVIDIA GPU and NVSwitch on the host.
    All,
    /// These devices (each with its IOMMU group).
    Named(&'a [Bdf]),
}

/// One file write, at an absolute host path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Write {
    /// The host path (`/sys/bus/pci/devices/0000:41:00.0/driver_override`).
    pub path: String,
    /// What is written.
    pub value: String,
}

impl fmt::Display for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "echo {:?} > {}", self.value.trim_end(), self.path)
    }
}

/// What happens to one function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    /// The function's address.
    pub bdf: String,
    /// Its IOMMU group.
    pub group: Option<u32>,
    /// `vendor:device`.
    pub id: String,
    /// The driver it is on now.
    pub driver: Option<String>,
    /// The driver it will be on (`None`: whichever the kernel picks).
    pub to: Option<String>,
    /// The writes, in order; empty when there is nothing to do.
    pub writes: Vec<Write>,
}

impl Step {
    /// Whether the function is already where it should be.
    pub fn is_noop(&self) -> bool {
        self.writes.is_empty()
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = self.group.map_or("-".to_owned(), |g| g.to_string());
        let from = self.driver.as_deref().unwrap_or("no driver");
        let to = self.to.as_deref().unwrap_or("the kernel's default driver");
        if self.is_noop() {
            write!(
                f,
                "{} {} group {group}: already on {from}",
                self.bdf, self.id
            )
        } else {
            write!(f, "{} {} group {group}: {from} → {to}", self.bdf, self.id)
        }
    }
}

fn pci_dir(bdf: Bdf) -> String {
    format!("/sys/bus/pci/devices/{bdf}")
}

fn state_path(bdf: Bdf) -> String {
    format!("{STATE_DIR}/{bdf}")
}

/// The driver recorded for a function before it was bound to vfio-pci: `Some(None)` when it
/// had none, `None` when nothing is recorded.
pub fn recorded_driver(host: &Host, bdf: Bdf) -> Option<Option<String>> {
    let text = fs::read_to_string(host.path(&state_path(bdf))).ok()?;
    let name = text.trim();
    Some((!name.is_empty()).then(|| name.to_owned()))
}

/// The targeted GPUs and NVSwitches, checked.
fn targets(host: &Host, targets: Targets<'_>) -> Result<Vec<PciFunction>, VfioError> {
    match targets {
        Targets::All => Ok(host
            .pci_functions()?
            .into_iter()
            .filter(|f| f.is_nvidia_gpu() || f.is_nvswitch())
            .collect()),
        Targets::Named(bdfs) => bdfs
            .iter()
            .map(|&bdf| {
                let f = host.pci_function(bdf)?;
                if f.is_nvidia_gpu() || f.is_nvswitch() {
                    Ok(f)
                } else {
                    Err(VfioError::NotNvidia {
                        bdf,
                        id: f.id(),
                        class: f.class,
                    })
                }
            })
            .collect(),
    }
}

/// Every function that passes through with the targets: their IOMMU groups less bridges.
fn group_functions(host: &Host, targets: &[PciFunction]) -> Result<Vec<PciFunction>, VfioError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for t in targets {
        let group = t.iommu_group.ok_or_else(|| VfioError::NoIommuGroup {
            bdf: t.bdf,
            fix: host.platform().iommu_fix(),
        })?;
        for bdf in host.iommu_group_members(group)? {
            if seen.insert(bdf) {
                let f = host.pci_function(bdf)?;
                if !f.is_bridge() {
                    out.push(f);
                }
            }
        }
    }
    out.sort_by_key(|f| f.bdf);
    Ok(out)
}

/// The functions of IOMMU group `group` that binding would take from the host and that are
/// not NVIDIA's: what [`plan_bind`] refuses without `force` (for `kata-gpu doctor`).
pub fn foreign_in_group(host: &Host, group: u32) -> Result<Vec<Foreign>, VfioError> {
    let functions = host
        .iommu_group_members(group)?
        .into_iter()
        .map(|bdf| host.pci_function(bdf))
        .filter(|f| f.as_ref().map_or(true, |f| !f.is_bridge()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(guard::foreign(&functions))
}

fn write(path: String, value: &str) -> Write {
    Write {
        path,
        value: value.to_owned(),
    }
}

/// What binding the targets to vfio-pci takes: one step per function of their groups
/// (bridges stay), already-bound ones as no-ops. Refuses before any write when a target
/// is not an NVIDIA GPU or NVSwitch, has no IOMMU group, a function that would move is in
/// use, or (unless `force`) one that would move is not NVIDIA's.
pub fn plan_bind(host: &Host, which: Targets<'_>, force: bool) -> Result<Vec<Step>, VfioError> {
    let targets = targets(host, which)?;
    let functions = group_functions(host, &targets)?;
    let foreign = guard::foreign(&functions);
    if !force && !foreign.is_empty() {
        return Err(VfioError::Foreign(foreign));
    }
    let mut steps = Vec::new();
    for f in functions {
        let dir = pci_dir(f.bdf);
        let mut writes = Vec::new();
        if f.driver.as_deref() != Some(VFIO_PCI) {
            guard::check_not_in_use(host, &f)?;
            let bdf = f.bdf.to_string();
            writes.push(write(
                state_path(f.bdf),
                &format!("{}\n", f.driver.as_deref().unwrap_or("")),
            ));
            writes.push(write(format!("{dir}/driver_override"), VFIO_PCI));
            if f.driver.is_some() {
                writes.push(write(format!("{dir}/driver/unbind"), &bdf));
            }
            writes.push(write("/sys/bus/pci/drivers_probe".to_owned(), &bdf));
        }
        steps.push(Step {
            bdf: f.bdf.to_string(),
            group: f.iommu_group,
            id: f.id(),
            driver: f.driver.clone(),
            to: Some(VFIO_PCI.to_owned()),
            writes,
        });
    }
    Ok(steps)
}

/// What handing the targets back takes: every function of their groups on vfio-pci is
/// unbound, its `driver_override` cleared, and it goes to the driver recorded when it was
/// bound (or, with none recorded, to whichever the kernel probes). Others are no-ops.
pub fn plan_unbind(host: &Host, which: Targets<'_>) -> Result<Vec<Step>, VfioError> {
    let targets = targets(host, which)?;
    let functions = group_functions(host, &targets)?;
    let mut steps = Vec::new();
    for f in functions {
        let dir = pci_dir(f.bdf);
        let recorded = recorded_driver(host, f.bdf);
        let mut writes = Vec::new();
        let to = if f.driver.as_deref() == Some(VFIO_PCI) {
            guard::check_not_in_use(host, &f)?;
            let bdf = f.bdf.to_string();
            writes.push(write(format!("{dir}/driver_override"), "\n"));
            writes.push(write(format!("{dir}/driver/unbind"), &bdf));
            let prev = recorded.clone().flatten();
            match &prev {
                Some(d) => writes.push(write(format!("/sys/bus/pci/drivers/{d}/bind"), &bdf)),
                None => writes.push(write("/sys/bus/pci/drivers_probe".to_owned(), &bdf)),
            }
            prev
        } else {
            f.driver.clone()
        };
        if recorded.is_some() {
            // Forget the record, so that a later bind records afresh.
            writes.push(write(state_path(f.bdf), ""));
        }
        steps.push(Step {
            bdf: f.bdf.to_string(),
            group: f.iommu_group,
            id: f.id(),
            driver: f.driver.clone(),
            to,
            writes,
        });
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::sysfs::SimKernel;
    use super::*;
    use kata_gpu_simhost::{SimHost, VfioMode};

    fn bdf(s: &str) -> Bdf {
        s.parse().expect("bdf")
    }

    fn read(sim: &SimHost, rel: &str) -> String {
        fs::read_to_string(sim.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    #[test]
    fn binds_a_gpu_on_nvidia_and_gives_it_back() {
        let sim = SimHost::gpu_bound_to_nvidia();
        let host = Host::new(sim.root());
        let steps = plan_bind(&host, Targets::All, false).expect("plan");
        assert_eq!(steps.len(), 1);
        let paths: Vec<_> = steps[0].writes.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/var/lib/kata-gpu/vfio/0000:41:00.0",
                "/sys/bus/pci/devices/0000:41:00.0/driver_override",
                "/sys/bus/pci/devices/0000:41:00.0/driver/unbind",
                "/sys/bus/pci/drivers_probe",
            ]
        );
        apply(&host, &SimKernel(&sim), &steps).expect("apply");
        assert_eq!(
            read(&sim, "sys/bus/pci/devices/0000:41:00.0/driver_override"),
            "vfio-pci"
        );
        assert_eq!(
            read(&sim, "sys/bus/pci/drivers/nvidia/unbind"),
            "0000:41:00.0"
        );
        assert_eq!(read(&sim, "sys/bus/pci/drivers_probe"), "0000:41:00.0");
        assert_eq!(
            recorded_driver(&host, bdf("0000:41:00.0")),
            Some(Some("nvidia".to_owned()))
        );
        // The kernel moved it, and apply read that back; binding again is a no-op.
        assert_eq!(sim.driver("0000:41:00.0").as_deref(), Some(VFIO_PCI));
        let again = plan_bind(&host, Targets::All, false).expect("plan");
        assert!(again.iter().all(Step::is_noop), "{again:?}");

        let back = plan_unbind(&host, Targets::Named(&[bdf("0000:41:00.0")])).expect("unbind");
        assert_eq!(back[0].to.as_deref(), Some("nvidia"));
        apply(&host, &SimKernel(&sim), &back).expect("apply");
        assert_eq!(sim.driver("0000:41:00.0").as_deref(), Some("nvidia"));
        assert_eq!(
            read(&sim, "sys/bus/pci/devices/0000:41:00.0/driver_override"),
            "\n"
        );
        assert_eq!(
            read(&sim, "sys/bus/pci/drivers/vfio-pci/unbind"),
            "0000:41:00.0"
        );
        assert_eq!(
            read(&sim, "sys/bus/pci/drivers/nvidia/bind"),
            "0000:41:00.0"
        );
        assert_eq!(recorded_driver(&host, bdf("0000:41:00.0")), None);
    }

    #[test]
    fn the_whole_group_goes_but_not_its_bridge() {
        let sim = SimHost::gpu_with_audio_and_bridge();
        sim.set_driver("0000:41:00.0", Some("nvidia"));
        sim.set_driver("0000:41:00.1", Some("snd_hda_intel"));
        let host = Host::new(sim.root());
        let steps = plan_bind(&host, Targets::Named(&[bdf("0000:41:00.0")]), false).expect("plan");
        let bdfs: Vec<_> = steps.iter().map(|s| s.bdf.as_str()).collect();
        assert_eq!(bdfs, ["0000:41:00.0", "0000:41:00.1"]);
        assert!(steps.iter().all(|s| !s.is_noop()));
        apply(&host, &SimKernel(&sim), &steps).expect("apply");
        assert_eq!(
            read(&sim, "sys/bus/pci/drivers/snd_hda_intel/unbind"),
            "0000:41:00.1"
        );
        for f in ["0000:41:00.0", "0000:41:00.1"] {
            assert_eq!(sim.driver(f).as_deref(), Some(VFIO_PCI), "{f}");
        }
        assert_eq!(sim.driver("0000:40:01.1").as_deref(), Some("pcieport"));
    }

    #[test]
    fn an_hgx_already_on_vfio_is_a_noop_and_nvswitches_count() {
        let sim = SimHost::hgx_8x_h100();
        let host = Host::new(sim.root());
        let steps = plan_bind(&host, Targets::All, false).expect("plan");
        assert_eq!(steps.len(), 12);
        assert!(steps.iter().all(Step::is_noop));
        let sw = plan_bind(&host, Targets::Named(&[bdf("0000:05:00.0")]), false).expect("nvswitch");
        assert_eq!(sw.len(), 1);
    }

    #[test]
    fn refusals_name_the_device_and_the_cause() {
        let sim = SimHost::gpu_with_audio_and_bridge();
        let host = Host::new(sim.root());
        let e =
            plan_bind(&host, Targets::Named(&[bdf("0000:40:01.1")]), false).expect_err("refused");
        assert!(matches!(e, VfioError::NotNvidia { .. }), "{e}");
        let e =
            plan_bind(&host, Targets::Named(&[bdf("0000:99:00.0")]), false).expect_err("refused");
        assert!(e.to_string().contains("0000:99:00.0"), "{e}");

        let sim = SimHost::no_iommu();
        let host = Host::new(sim.root());
        let e = plan_bind(&host, Targets::All, false).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "0000:41:00.0 has no IOMMU group: the IOMMU is off; enable the IOMMU (AMD-Vi) in \
             the firmware setup and reboot; the kernel turns it on by itself, no parameter is \
             needed"
        );
    }

    #[test]
    fn a_gpu_in_use_is_refused_with_the_process() {
        let sim = SimHost::gpu_bound_to_nvidia();
        sim.hold_open(1234, "nvidia-smi", "/dev/nvidia0");
        let host = Host::new(sim.root());
        let e = plan_bind(&host, Targets::All, false).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "0000:41:00.0 is in use by pid 1234 (nvidia-smi), which holds /dev/nvidia0 open; stop it and retry"
        );
        assert!(!sim
            .path("sys/bus/pci/devices/0000:41:00.0/driver_override")
            .exists());

        let sim = SimHost::h100_pcie(VfioMode::Iommufd);
        sim.hold_open(77, "qemu-system-x86", "/dev/vfio/devices/vfio0");
        let host = Host::new(sim.root());
        let e = plan_unbind(&host, Targets::All).expect_err("refused");
        assert!(e.to_string().contains("pid 77 (qemu-system-x86)"), "{e}");
    }

    #[test]
    fn unbind_without_a_record_lets_the_kernel_probe() {
        let sim = SimHost::h100_pcie(VfioMode::Legacy);
        let host = Host::new(sim.root());
        let steps = plan_unbind(&host, Targets::All).expect("plan");
        assert_eq!(steps[0].to, None);
        assert_eq!(
            steps[0].writes.last().map(|w| w.path.as_str()),
            Some("/sys/bus/pci/drivers_probe")
        );
        apply(&host, &SimKernel(&sim), &steps).expect("apply");
        assert_eq!(sim.driver("0000:41:00.0"), None);
    }
}
