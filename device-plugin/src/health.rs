//! Whether an advertised device can still be handed out: still bound to vfio-pci, its VFIO
//! node still there and still its own (a rebind can give its `vfioN` to another function),
//! still in the IOMMU group it was advertised with (a changed group means the device id no
//! longer stands for what the spec said).

use kata_gpu_kubelet_api::deviceplugin::v1beta1::{Device, NumaNode, TopologyInfo};
use kata_gpu_kubelet_api::{HEALTHY, UNHEALTHY};
use kata_gpu_plan::host::Host;

use crate::inventory::{PluginDevice, Resource};

/// Why `device` is unhealthy now, or `None` when it is healthy.
pub fn problem(host: &Host, device: &PluginDevice) -> Option<String> {
    if !host.path(&device.node).exists() {
        return Some(format!("{} is gone", device.node));
    }
    if let Ok(kata_gpu_plan::host::VfioNode::Cdev { bdf, .. }) = host.vfio_node(&device.node) {
        if bdf != device.bdf {
            return Some(format!(
                "{} is now {bdf}'s, not {}'s (rebound): regenerate the host spec with `kata-gpu cdi generate` and restart the device plugin",
                device.node, device.bdf
            ));
        }
    }
    let f = match host.pci_function(device.bdf) {
        Ok(f) => f,
        Err(e) => return Some(format!("{} cannot be read: {e}", device.bdf)),
    };
    if f.driver.as_deref() != Some("vfio-pci") {
        return Some(format!(
            "{} left vfio-pci (driver now {})",
            device.bdf,
            f.driver.as_deref().unwrap_or("none")
        ));
    }
    if f.iommu_group != Some(device.group) {
        return Some(format!(
            "{} moved from IOMMU group {} to {}",
            device.bdf,
            device.group,
            f.iommu_group
                .map_or_else(|| "none".to_owned(), |g| g.to_string())
        ));
    }
    None
}

/// The list kubelet gets from ListAndWatch: every device with its health and NUMA node.
pub fn device_list(host: &Host, resource: &Resource) -> Vec<Device> {
    resource
        .devices
        .iter()
        .map(|d| Device {
            id: d.id.clone(),
            health: if problem(host, d).is_none() {
                HEALTHY
            } else {
                UNHEALTHY
            }
            .to_owned(),
            topology: d.numa.map(|n| TopologyInfo {
                nodes: vec![NumaNode { id: i64::from(n) }],
            }),
        })
        .collect()
}
