//! The sandbox plan: from a sandbox's OCI spec, the CDI registry and the host, decide which
//! PCI functions pass through, on which PCIe topology, and what Kata must be told.
//!
//! Pure apart from reading the host (through its root): the same code serves the shim at
//! `Create` and `kata-gpu plan`, so that what a user previews is what a pod gets.

pub mod address;
pub mod allocated;
mod error;
mod groups;
pub mod kata;
mod report;
mod rules;
pub mod sizing;
mod vm;

use std::collections::BTreeMap;

use cdi::{parse_cdi_annotations, QualifiedName, Registry};
use kata_gpu_configs::Overrides;
use oci_spec::runtime::Spec as OciSpec;
use serde::Serialize;

pub use error::{PlanError, MAX_DEVICES};
pub use kata::{KataValues, VmHost, VmSize, Workload};
pub use report::PlanView;
pub use vm::{room, AddressPlan, Room, VmPlan};

use crate::host::{Bar, Bdf, Host, VfioNode};
use crate::profile::{Profile, Tee};

/// Device ids (vendor 10de) of GPUs that run in confidential-computing mode.
pub const CC_CAPABLE_GPUS: [u16; 7] = [0x2330, 0x2331, 0x2322, 0x2324, 0x2335, 0x2339, 0x233d];

/// The pod annotation through which a pod may size the guest's memory.
pub use kata_gpu_configs::DEFAULT_MEMORY_ANNOTATION;

/// The confidential guest's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeeSettings {
    /// SEV C-bit position (CPUID 0x8000001F EBX[5:0]); 51 on EPYC Milan and Genoa.
    pub cbitpos: u8,
    /// Physical address bits lost to encryption.
    pub reduced_phys_bits: u8,
    /// SNP guest policy; 0x30000 = SMT allowed, reserved bit 17 set.
    pub snp_policy: u64,
}

impl Default for TeeSettings {
    fn default() -> Self {
        Self {
            cbitpos: crate::host::cpu_cbitpos().unwrap_or(51),
            reduced_phys_bits: 1,
            snp_policy: 0x30000,
        }
    }
}

/// What the node's administrator allows, beyond what the base config says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Lowest `default_memory` a pod may ask for, MiB.
    pub memory_min_mib: u32,
    /// Highest `default_memory` a pod may ask for, MiB.
    pub memory_max_mib: u32,
    /// Highest `default_memory` a pod without a memory limit may ask for, MiB (a pod with
    /// one is bounded by it).
    pub memory_without_limit_max_mib: u32,
    /// Highest `default_vcpus` a pod without a CPU limit may ask for (a pod with one is
    /// bounded by it).
    pub vcpus_without_limit_max: u32,
    /// Kernel parameters every sandbox gets (e.g. `agent.aa_kbc_params=cc_kbc::<KBS url>`).
    pub kernel_params: Vec<String>,
    /// Refuse (rather than warn about) GPUs that are not CC-capable under `snp`/`tdx`.
    pub refuse_non_cc_gpus: bool,
    /// The confidential guest's parameters.
    pub tee: TeeSettings,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            memory_min_mib: 2048,
            memory_max_mib: 1024 * 1024,
            memory_without_limit_max_mib: 16384,
            vcpus_without_limit_max: 8,
            kernel_params: Vec::new(),
            refuse_non_cc_gpus: false,
            tee: TeeSettings::default(),
        }
    }
}

/// Why a function passes through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A CDI device the pod asked for, through this node.
    Requested {
        /// The CDI name.
        device: String,
        /// The VFIO node in its spec.
        node: String,
    },
    /// A VFIO node already in the OCI spec (e.g. injected by containerd's own CDI support).
    SpecNode {
        /// The node.
        node: String,
    },
    /// Another member of the IOMMU group of a requested function.
    GroupMember {
        /// The requested function it goes with.
        of: String,
    },
}

/// One PCI function that passes through, in the order of its root port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassthroughDevice {
    /// Its address.
    pub bdf: Bdf,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Class code.
    pub class: u32,
    /// Its IOMMU group.
    pub group: u32,
    /// NUMA node.
    pub numa_node: Option<u32>,
    /// `vfioN` in iommufd mode.
    pub cdev: Option<String>,
    /// Its BARs, to size the root port's windows.
    pub bars: Vec<Bar>,
    /// Why it passes through.
    pub reason: Reason,
}

/// Everything a sandbox gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxPlan {
    /// The profile planned for.
    pub profile: Profile,
    /// The CDI devices asked for, in annotation order.
    pub requested: Vec<QualifiedName>,
    /// The functions that pass through, in root-port order.
    pub devices: Vec<PassthroughDevice>,
    /// The VM Kata will start: its QEMU command line, size and address space.
    pub vm: VmPlan,
    /// What Kata's configuration must change.
    pub overrides: Overrides,
    /// Findings that do not stop the sandbox.
    pub warnings: Vec<String>,
}

/// What the plan is made from.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    /// The runtime class's profile.
    pub profile: Profile,
    /// The sandbox's OCI spec, with the pod's annotations.
    pub oci: &'a OciSpec,
    /// The CDI registry of the host.
    pub registry: &'a Registry,
    /// The host.
    pub host: &'a Host,
    /// Values of the base Kata config.
    pub base: &'a KataValues,
    /// The sandbox's id, where known: Kata names the VM after it.
    pub sandbox_id: Option<&'a str>,
    /// The administrator's policy.
    pub policy: &'a Policy,
}

/// A VFIO node to pass through, and why.
struct NodeRequest {
    node: String,
    reason: Reason,
}

fn is_vfio_node(path: &str) -> bool {
    path.starts_with("/dev/vfio/") && path != "/dev/vfio/vfio"
}

/// The VFIO nodes asked for: CDI devices in annotation order, then nodes in the spec.
fn vfio_requests(
    input: &PlanInput<'_>,
    requested: &[QualifiedName],
) -> Result<Vec<NodeRequest>, PlanError> {
    let mut out: Vec<NodeRequest> = Vec::new();
    let resolved = input.registry.resolve(requested)?;
    for (name, d) in requested.iter().zip(&resolved) {
        allocated::check_device(input.host, name, d)?;
        let nodes = d
            .spec
            .spec
            .container_edits
            .device_nodes
            .iter()
            .chain(&d.device.container_edits.device_nodes);
        for n in nodes {
            let host_path = n.host_path.clone().unwrap_or_else(|| n.path.clone());
            if is_vfio_node(&host_path) && !out.iter().any(|r| r.node == host_path) {
                out.push(NodeRequest {
                    node: host_path,
                    reason: Reason::Requested {
                        device: name.to_string(),
                        node: n.path.clone(),
                    },
                });
            }
        }
    }
    let spec_nodes = input
        .oci
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
        .map(|d| d.path().display().to_string());
    for node in spec_nodes {
        if is_vfio_node(&node) && !out.iter().any(|r| r.node == node) {
            out.push(NodeRequest {
                reason: Reason::SpecNode { node: node.clone() },
                node,
            });
        }
    }
    Ok(out)
}

fn check_tee(profile: Profile, platform: &crate::host::Platform) -> Result<(), PlanError> {
    match profile.tee() {
        Tee::SevSnp if !platform.sev_snp => Err(PlanError::TeeUnavailable {
            profile,
            tee: "AMD SEV-SNP",
            file: "/sys/module/kvm_amd/parameters/sev_snp",
            fix:
                "enable SEV-SNP in the firmware and load kvm_amd with sev_snp=1, or use profile gpu",
        }),
        Tee::Tdx if !platform.tdx => Err(PlanError::TeeUnavailable {
            profile,
            tee: "Intel TDX",
            file: "/sys/module/kvm_intel/parameters/tdx",
            fix: "enable TDX in the firmware and load kvm_intel with tdx=1, or use profile gpu",
        }),
        _ => Ok(()),
    }
}

/// The guest memory the pod asks for, if it does, checked against the policy.
fn requested_memory(oci: &OciSpec, policy: &Policy) -> Result<Option<u32>, PlanError> {
    let Some(value) = oci
        .annotations()
        .as_ref()
        .and_then(|a| a.get(DEFAULT_MEMORY_ANNOTATION))
    else {
        return Ok(None);
    };
    let refuse = |problem| PlanError::Memory {
        key: DEFAULT_MEMORY_ANNOTATION.to_owned(),
        value: value.clone(),
        problem,
        min: policy.memory_min_mib,
        max: policy.memory_max_mib,
    };
    let mib: u32 = value
        .trim()
        .parse()
        .map_err(|_| refuse("not a whole number of MiB"))?;
    if mib < policy.memory_min_mib {
        return Err(refuse("below the minimum"));
    }
    if mib > policy.memory_max_mib {
        return Err(refuse("above the maximum"));
    }
    Ok(Some(mib))
}

/// Adds every needed member of `bdf`'s group (all but host and PCI bridges), checked.
fn add_group(
    input: &PlanInput<'_>,
    group: u32,
    first: &Reason,
    devices: &mut Vec<PassthroughDevice>,
) -> Result<(), PlanError> {
    let confidential = input.profile.confidential();
    let leader = match first {
        Reason::Requested { device, .. } => device.clone(),
        Reason::SpecNode { node } | Reason::GroupMember { of: node } => node.clone(),
    };
    for bdf in input.host.iommu_group_members(group)? {
        if devices.iter().any(|d| d.bdf == bdf) {
            continue;
        }
        let f = input
            .host
            .pci_function(bdf)
            .map_err(|_| PlanError::MissingGroupMember { group, bdf })?;
        if f.is_bridge() {
            continue;
        }
        if f.driver.as_deref() != Some("vfio-pci") {
            return Err(PlanError::NotBoundToVfio {
                bdf,
                id: f.id(),
                driver: f.driver.unwrap_or_else(|| "no driver".to_owned()),
            });
        }
        let cdev = input.host.vfio_cdev(bdf).map(|(name, _)| name);
        if confidential && cdev.is_none() {
            return Err(PlanError::NoCdev { bdf });
        }
        let reason = if devices.iter().any(|d| d.group == group) {
            Reason::GroupMember { of: leader.clone() }
        } else {
            first.clone()
        };
        devices.push(PassthroughDevice {
            bdf,
            vendor: f.vendor,
            device: f.device,
            class: f.class,
            group,
            numa_node: f.numa_node,
            cdev: if input.profile.confidential() || cdev.is_some() {
                cdev
            } else {
                None
            },
            bars: f
                .bars
                .map_err(|reason| PlanError::NoResource { bdf, reason })?,
            reason,
        });
    }
    Ok(())
}

/// Plans a sandbox.
pub fn plan(input: &PlanInput<'_>) -> Result<SandboxPlan, PlanError> {
    let empty = BTreeMap::new();
    let annotations: BTreeMap<String, String> = input
        .oci
        .annotations()
        .as_ref()
        .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_else(|| empty.clone());
    kata_gpu_configs::check_pod_annotations(&annotations, input.profile.annotation_policy())
        .map_err(|r| PlanError::RefusedAnnotation {
            key: r.annotation,
            reason: r.reason.to_string(),
        })?;
    let requested = parse_cdi_annotations(&annotations)?;
    let memory = requested_memory(input.oci, input.policy)?;
    sizing::check_memory(input.oci, input.policy, memory)?;
    sizing::check_vcpus(input.oci, input.policy)?;
    let requests = vfio_requests(input, &requested)?;
    let mut devices: Vec<PassthroughDevice> = Vec::new();
    let mut warnings = Vec::new();

    if let Some(first) = requests.first() {
        let platform = input.host.platform();
        check_tee(input.profile, &platform)?;
        if !platform.iommu {
            return Err(PlanError::NoIommu {
                requested: first.node.clone(),
                fix: platform.iommu_fix(),
            });
        }
    }
    for r in &requests {
        let group = match input.host.vfio_node(&r.node)? {
            VfioNode::Group(g) => {
                if input.profile.confidential() {
                    return Err(PlanError::LegacyGroup {
                        node: r.node.clone(),
                    });
                }
                g
            }
            VfioNode::Cdev { bdf, .. } => {
                input
                    .host
                    .iommu_group_of(bdf)?
                    .ok_or_else(|| PlanError::NoGroup {
                        bdf,
                        fix: input.host.platform().iommu_fix(),
                    })?
            }
        };
        add_group(input, group, &r.reason, &mut devices)?;
    }
    groups::check_siblings(input, &requests, &devices)?;
    let devices = rules::kata_cold_plug(devices, &mut warnings)?;
    if devices.len() > MAX_DEVICES {
        return Err(PlanError::TooManyDevices {
            count: devices.len(),
            max: MAX_DEVICES,
            list: devices
                .iter()
                .map(|d| d.bdf.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    rules::confidential_board(input, &devices)?;
    if input.profile.confidential() {
        for d in &devices {
            let gpu = d.vendor == crate::host::NVIDIA && d.class >> 16 == 0x03;
            if gpu && !CC_CAPABLE_GPUS.contains(&d.device) {
                let id = format!("{:04x}:{:04x}", d.vendor, d.device);
                let capable = CC_CAPABLE_GPUS
                    .iter()
                    .map(|id| format!("10de:{id:04x}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                if input.policy.refuse_non_cc_gpus {
                    return Err(PlanError::NotCcCapable {
                        bdf: d.bdf,
                        id,
                        capable,
                    });
                }
                warnings.push(format!(
                    "{} ({id}) is not on the confidential-computing list ({capable}); the guest may refuse it in CC mode",
                    d.bdf
                ));
            }
        }
    }

    let mut overrides = Overrides {
        default_memory: memory,
        kernel_params_append: input.policy.kernel_params.clone(),
        ..Overrides::default()
    };
    if !devices.is_empty() {
        let ports = u32::try_from(devices.len()).unwrap_or(u32::MAX);
        overrides.pcie_root_port = Some(ports.max(input.base.pcie_root_port));
        overrides.cold_plug_vfio = Some("root-port".to_owned());
        overrides.hot_plug_vfio = Some("no-port".to_owned());
    }
    let vm = vm::shape(input, &annotations, &devices, &mut overrides, &mut warnings)?;
    Ok(SandboxPlan {
        profile: input.profile,
        vm,
        requested,
        devices,
        overrides,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_values_come_from_the_config() {
        let v = KataValues::from_config(
            "[hypervisor.qemu]\npcie_root_port = 4\ndefault_memory = 16384\ncpu_features = \"pmu=off\"\n[agent.kata]\nlaunch_process_timeout = 15\n",
        );
        assert_eq!(
            (
                v.pcie_root_port,
                v.default_memory,
                v.cpu_features.as_str(),
                v.launch_process_timeout
            ),
            (4, 16384, "pmu=off", 15)
        );
        assert_eq!(KataValues::from_config("not toml ["), KataValues::default());
        assert_eq!(
            KataValues::from_config("[hypervisor.qemu]\npcie_root_port = -1\n"),
            KataValues::default()
        );
        let debug = KataValues::from_config("[hypervisor.qemu]\nenable_debug = true\n");
        assert_eq!(debug.unmodeled, ["hypervisor.qemu.enable_debug = true"]);
    }
}
