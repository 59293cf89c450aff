//! The host's CDI specs for passthrough: every NVIDIA GPU bound to vfio-pci as kind
//! `nvidia.com/pgpu` and every NVSwitch as `nvidia.com/nvswitch`.
//!
//! Each device is named by its index (in PCI address order), by its IOMMU group, in
//! iommufd mode by its `vfioN` cdev, and by its PCI address, so a pod may ask for
//! `nvidia.com/pgpu=0`, `nvidia.com/pgpu=65`, `nvidia.com/pgpu=vfio3` or
//! `nvidia.com/pgpu=0000:41:00.0`. Indexes and cdevs move when a device is unbound or
//! rebound; the address does not, so the device plugin's ids are addresses, and the plan
//! refuses an address name whose node sysfs says is another device's (a stale spec). A name is never defined twice in one
//! spec: where a group number equals another device's index, or two devices share a group,
//! the group name is left out and a warning says so.

use std::collections::BTreeMap;

use cdi::model::{ContainerEdits, Device, DeviceNode, Spec};

use crate::host::{Host, HostError, PciFunction};

/// The kind of passthrough GPUs.
pub const PGPU_KIND: &str = "nvidia.com/pgpu";
/// The kind of passthrough NVSwitches.
pub const NVSWITCH_KIND: &str = "nvidia.com/nvswitch";
/// The version we write: the lowest that allows names starting with a digit.
pub const HOST_SPEC_VERSION: &str = "0.5.0";

/// The specs for the host, and what could not be put in them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostSpecs {
    /// One spec per kind that has devices (pgpu first).
    pub specs: Vec<Spec>,
    /// Devices left out or names not given, with the reason.
    pub warnings: Vec<String>,
}

fn numbers(dev: &str) -> Option<(i64, i64)> {
    let (major, minor) = dev.split_once(':')?;
    Some((major.trim().parse().ok()?, minor.trim().parse().ok()?))
}

/// The VFIO node a function is reached through: its iommufd cdev when it has one, else
/// its group's legacy node.
fn node_for(host: &Host, f: &PciFunction, group: u32) -> DeviceNode {
    let (path, dev) = match host.vfio_cdev(f.bdf) {
        Some((name, dev)) => (format!("/dev/vfio/devices/{name}"), Some(dev)),
        None => (
            format!("/dev/vfio/{group}"),
            std::fs::read_to_string(host.path(&format!("/sys/class/vfio/{group}/dev"))).ok(),
        ),
    };
    let numbers = dev.as_deref().and_then(numbers);
    DeviceNode {
        path,
        device_type: numbers.map(|_| "c".to_owned()),
        major: numbers.map(|n| n.0),
        minor: numbers.map(|n| n.1),
        ..DeviceNode::default()
    }
}

/// Builds one kind's spec from its functions (already in address order).
fn spec_for(
    host: &Host,
    kind: &str,
    functions: &[(PciFunction, u32)],
    warnings: &mut Vec<String>,
) -> Option<Spec> {
    if functions.is_empty() {
        return None;
    }
    let mut group_count: BTreeMap<u32, usize> = BTreeMap::new();
    for (_, g) in functions {
        *group_count.entry(*g).or_default() += 1;
    }
    let mut devices = Vec::new();
    let indexes: Vec<String> = (0..functions.len()).map(|i| i.to_string()).collect();
    for (i, (f, group)) in functions.iter().enumerate() {
        let node = node_for(host, f, *group);
        let edits = ContainerEdits {
            device_nodes: vec![node.clone()],
            ..ContainerEdits::default()
        };
        let mut names = vec![indexes[i].clone()];
        let group_name = group.to_string();
        if group_count[group] > 1 {
            warnings.push(format!(
                "{kind}: {} shares IOMMU group {group} with another device; it is not named {group_name}",
                f.bdf
            ));
        } else if indexes.contains(&group_name) && group_name != indexes[i] {
            warnings.push(format!(
                "{kind}: {} is in IOMMU group {group}, which is also another device's index; it is not named {group_name}",
                f.bdf
            ));
        } else if group_name != indexes[i] {
            names.push(group_name);
        }
        if let Some(cdev) = node.path.strip_prefix("/dev/vfio/devices/") {
            names.push(cdev.to_owned());
        }
        names.push(f.bdf.to_string());
        for name in names {
            devices.push(Device {
                name,
                container_edits: edits.clone(),
                ..Device::default()
            });
        }
    }
    Some(Spec {
        cdi_version: HOST_SPEC_VERSION.to_owned(),
        kind: kind.to_owned(),
        devices,
        ..Spec::default()
    })
}

/// The CDI specs for the host's passthrough GPUs and NVSwitches.
pub fn host_specs(host: &Host) -> Result<HostSpecs, HostError> {
    Ok(host_specs_of(host, &host.pci_functions()?))
}

/// The CDI specs for the passthrough GPUs and NVSwitches among `functions`, the host's PCI
/// functions as a caller already listed them (one listing serves every view of a command).
pub fn host_specs_of(host: &Host, functions: &[PciFunction]) -> HostSpecs {
    let mut gpus = Vec::new();
    let mut switches = Vec::new();
    let mut warnings = Vec::new();
    for f in functions.iter().cloned() {
        if !(f.is_nvidia_gpu() || f.is_nvswitch()) {
            continue;
        }
        let what = if f.is_nvswitch() { "NVSwitch" } else { "GPU" };
        match (f.driver.as_deref(), f.iommu_group) {
            (_, None) => warnings.push(format!(
                "{what} {} ({}) has no IOMMU group; enable the IOMMU to pass it through",
                f.bdf,
                f.id()
            )),
            (Some("vfio-pci"), Some(group)) => {
                if f.is_nvswitch() {
                    switches.push((f, group));
                } else {
                    gpus.push((f, group));
                }
            }
            (driver, Some(_)) => warnings.push(format!(
                "{what} {} ({}) is bound to {}, not vfio-pci; run `kata-gpu vfio bind {}` to pass it through",
                f.bdf,
                f.id(),
                driver.unwrap_or("no driver"),
                f.bdf
            )),
        }
    }
    let specs = [
        spec_for(host, PGPU_KIND, &gpus, &mut warnings),
        spec_for(host, NVSWITCH_KIND, &switches, &mut warnings),
    ]
    .into_iter()
    .flatten()
    .collect();
    HostSpecs { specs, warnings }
}
