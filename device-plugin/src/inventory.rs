//! What the plugin advertises: the devices of the host CDI spec (`kata-gpu cdi generate`'s,
//! built by the same code), one entry per physical device, named by its PCI address (also
//! one of its CDI names), with what health and topology need; one resource per device model under
//! NVIDIA's sandbox device plugin's names (`nvidia.com/GH100_H100_PCIE`), or one per CDI
//! kind with `--resource-naming pgpu` ([`kata_gpu_plan::resource_names`]).

use kata_gpu_plan::host::{Host, HostError, VfioNode};
use kata_gpu_plan::host_spec::{host_specs, HostSpecs, NVSWITCH_KIND, PGPU_KIND};
use kata_gpu_plan::resource_names::{read_pci_ids, resource_name, Naming};
use kata_gpu_plan::Bdf;

/// The CDI kinds the plugin's devices are of: `<kind>=<id>` is a CDI name.
pub const RESOURCES: [&str; 2] = [PGPU_KIND, NVSWITCH_KIND];

/// One advertised device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginDevice {
    /// The device id kubelet sees: its PCI address, a name the host CDI spec gives it too,
    /// and one that an unbind or rebind of another device does not move.
    pub id: String,
    /// Every name the spec gives this device (index, group, `vfioN`, address).
    pub names: Vec<String>,
    /// Its VFIO node, as the spec names it (`/dev/vfio/devices/vfioN` or `/dev/vfio/<group>`).
    pub node: String,
    /// The PCI function.
    pub bdf: Bdf,
    /// Its IOMMU group when the inventory was taken.
    pub group: u32,
    /// Its NUMA node, if the host says.
    pub numa: Option<u32>,
}

/// One resource's devices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resource {
    /// The resource name (`nvidia.com/GH100_H100_PCIE`, or `nvidia.com/pgpu`).
    pub name: String,
    /// The CDI kind of its devices (`nvidia.com/pgpu`, `nvidia.com/nvswitch`).
    pub kind: String,
    /// Its devices, in spec order.
    pub devices: Vec<PluginDevice>,
}

impl Resource {
    /// The device with id `id`.
    pub fn device(&self, id: &str) -> Option<&PluginDevice> {
        self.devices.iter().find(|d| d.id == id)
    }

    /// The CDI name of device `id` (`<kind>=<id>`).
    pub fn cdi_name(&self, id: &str) -> String {
        format!("{}={id}", self.kind)
    }

    /// The socket file name the plugin serves this resource on.
    pub fn socket_name(&self) -> String {
        format!("kata-gpu-{}.sock", self.short())
    }

    /// The resource name after its domain (`GH100_H100_PCIE`, `pgpu`).
    pub fn short(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or(&self.name)
    }
}

/// The host's advertised devices, one [`Resource`] per resource name that has devices:
/// kinds in [`RESOURCES`] order, names in order of first device.
pub fn inventory(host: &Host, naming: Naming) -> Result<Vec<Resource>, HostError> {
    Ok(inventory_of(host, &host_specs(host)?, naming))
}

/// [`inventory`] from the host's specs as a caller already built them.
pub fn inventory_of(host: &Host, specs: &HostSpecs, naming: Naming) -> Vec<Resource> {
    let pci_ids = match naming {
        Naming::Nvidia => read_pci_ids(host.root()),
        Naming::Pgpu => None,
    };
    let mut out: Vec<Resource> = Vec::new();
    for kind in RESOURCES {
        let Some(spec) = specs.specs.iter().find(|s| s.kind == kind) else {
            continue;
        };
        let first = out.len();
        for d in &spec.devices {
            let Some(node) = d.container_edits.device_nodes.first() else {
                continue;
            };
            if let Some(known) = out[first..]
                .iter_mut()
                .flat_map(|r| r.devices.iter_mut())
                .find(|k| k.node == node.path)
            {
                known.names.push(d.name.clone());
                continue;
            }
            let Some(bdf) = function_of(host, &node.path) else {
                continue;
            };
            let Ok(f) = host.pci_function(bdf) else {
                continue;
            };
            let Some(group) = f.iommu_group else {
                continue;
            };
            let name = resource_name(naming, kind, f.device, pci_ids.as_deref());
            let resource = match out[first..].iter().position(|r| r.name == name) {
                Some(i) => &mut out[first + i],
                None => {
                    out.push(Resource {
                        name,
                        kind: kind.to_owned(),
                        devices: Vec::new(),
                    });
                    let last = out.len() - 1;
                    &mut out[last]
                }
            };
            resource.devices.push(PluginDevice {
                // Its PCI address: the name that stays the device's across rebinds.
                id: bdf.to_string(),
                names: vec![d.name.clone()],
                node: node.path.clone(),
                bdf,
                group,
                numa: f.numa_node,
            });
        }
    }
    out
}

/// The GPU or NVSwitch behind a VFIO node.
pub(crate) fn function_of(host: &Host, node: &str) -> Option<Bdf> {
    match host.vfio_node(node).ok()? {
        VfioNode::Cdev { bdf, .. } => Some(bdf),
        VfioNode::Group(group) => host.iommu_group_members(group).ok()?.into_iter().find(|b| {
            host.pci_function(*b)
                .is_ok_and(|f| f.is_nvidia_gpu() || f.is_nvswitch())
        }),
    }
}
