//! What the host is, read once per command: the platform, its NVIDIA functions listed once
//! (with their cdevs and IOMMU-group neighbours), the CDI specs they call for, the CDI specs
//! installed and other tools' of our kinds, and the host's processes. Every view of a
//! command reads this one value ([`HostFacts`]); the node's facts (`facts`) add a
//! profile's status and the sandboxes.

use std::path::{Path, PathBuf};

use cdi::registry::{Registry, RegistryConfig};
use kata_gpu_plan::host::{CpuMemory, Host, PciFunction, Platform};
use kata_gpu_plan::host_spec::{host_specs_of, HostSpecs};
use kata_gpu_plan::vfio::{foreign_in_group, Foreign};

use crate::processes::{self, Process};

/// One NVIDIA GPU or NVSwitch of the host, with what passing it through depends on.
#[derive(Clone, Debug)]
pub struct Device {
    /// The function.
    pub function: PciFunction,
    /// Its `vfioN` cdev.
    pub cdev: Option<String>,
    /// Functions of its IOMMU group, not NVIDIA's, that `vfio bind` would take from the
    /// host (and so refuses without `--force`).
    pub foreign: Vec<Foreign>,
}

/// What the host is, read once: every part that can fail holds its failure in words, so
/// that one unreadable part costs only the views that need it.
#[derive(Debug)]
pub struct HostFacts {
    /// `--host-root`.
    pub root: PathBuf,
    /// KVM, the IOMMU, the TEE.
    pub platform: Platform,
    /// The host's CPUs and memory, as sandbox sizing reads them.
    pub cpu_memory: CpuMemory,
    /// The NVIDIA GPUs and NVSwitches, in address order.
    pub devices: Result<Vec<Device>, String>,
    /// The CDI specs the host's passthrough devices call for (`kata-gpu cdi generate`'s).
    pub specs: Result<HostSpecs, String>,
    /// The CDI specs installed on the host, as containerd and the shim read them.
    pub registry: Registry,
    /// Other tools' CDI specs of our kinds (file, kind), which make ours unusable.
    pub foreign_specs: Vec<(PathBuf, String)>,
    /// The host's processes (sandboxes' proxies, Kata shims and QEMUs; the device plugin).
    pub processes: Vec<Process>,
}

impl HostFacts {
    /// Reads the host under `root`, listing its PCI functions once.
    pub fn gather(root: &Path) -> HostFacts {
        let host = Host::new(root);
        let functions = host
            .pci_functions()
            .map_err(|e| format!("cannot list PCI functions: {e}"));
        let specs = functions
            .as_ref()
            .map(|all| host_specs_of(&host, all))
            .map_err(Clone::clone);
        let devices = functions.and_then(|all| devices(&host, all));
        HostFacts {
            root: root.to_path_buf(),
            platform: host.platform(),
            cpu_memory: host.cpu_memory(),
            devices,
            specs,
            registry: Registry::new(RegistryConfig::under_root(root)),
            foreign_specs: crate::coexist::foreign_specs(root),
            processes: processes::scan(root),
        }
    }

    /// The pid of a `kata-gpu device-plugin` running on the host.
    pub fn device_plugin(&self) -> Option<u32> {
        self.processes
            .iter()
            .find(|p| {
                p.program() == "kata-gpu" && p.argv.iter().skip(1).any(|a| a == "device-plugin")
            })
            .map(|p| p.pid)
    }

    /// The host under the root, for what the facts do not hold (a device's BARs, its cdev
    /// node).
    pub fn host(&self) -> Host {
        Host::new(&self.root)
    }
}

/// The NVIDIA GPUs and NVSwitches among `functions`, with their cdevs and what else of
/// their IOMMU groups `vfio bind` would take from the host.
fn devices(host: &Host, functions: Vec<PciFunction>) -> Result<Vec<Device>, String> {
    functions
        .into_iter()
        .filter(|f| f.is_nvidia_gpu() || f.is_nvswitch())
        .map(|f| {
            let foreign = match f.iommu_group {
                Some(g) => foreign_in_group(host, g)
                    .map_err(|e| format!("cannot read IOMMU group {g}: {e}"))?,
                None => Vec::new(),
            };
            Ok(Device {
                cdev: host.vfio_cdev(f.bdf).map(|(name, _)| name),
                foreign,
                function: f,
            })
        })
        .collect()
}
