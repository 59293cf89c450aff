//! How a plan reads: as text for people (`kata-gpu plan`, golden files) and as JSON.

use std::fmt;

use serde::Serialize;

use super::address::human;
use super::vm::AddressPlan;
use super::{Reason, SandboxPlan};

/// A plan as JSON-friendly values.
#[derive(Debug, Serialize)]
pub struct PlanView {
    profile: &'static str,
    handler: &'static str,
    requested: Vec<String>,
    devices: Vec<DeviceView>,
    vm: VmView,
    qemu_path: String,
    qemu_args: Vec<String>,
    overrides: OverridesView,
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct DeviceView {
    root_port: String,
    bdf: String,
    id: String,
    class: String,
    iommu_group: u32,
    numa_node: Option<u32>,
    cdev: Option<String>,
    reason: Reason,
}

#[derive(Debug, Serialize)]
struct VmView {
    vcpus: u32,
    max_vcpus: u32,
    memory_mib: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_memory_mib: Option<u64>,
    address: AddressPlan,
}

#[derive(Debug, Serialize)]
struct OverridesView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pcie_root_port: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cold_plug_vfio: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hot_plug_vfio: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_memory: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_features: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    kernel_params_append: Vec<String>,
}

impl SandboxPlan {
    /// The plan as JSON-friendly values.
    pub fn view(&self) -> PlanView {
        PlanView {
            profile: self.profile.name(),
            handler: self.profile.handler(),
            requested: self.requested.iter().map(ToString::to_string).collect(),
            devices: self
                .devices
                .iter()
                .enumerate()
                .map(|(i, d)| DeviceView {
                    root_port: format!("rp{i}"),
                    bdf: d.bdf.to_string(),
                    id: format!("{:04x}:{:04x}", d.vendor, d.device),
                    class: format!("{:06x}", d.class),
                    iommu_group: d.group,
                    numa_node: d.numa_node,
                    cdev: d.cdev.clone(),
                    reason: d.reason.clone(),
                })
                .collect(),
            vm: VmView {
                vcpus: self.vm.size.vcpus,
                max_vcpus: self.vm.size.max_vcpus,
                memory_mib: self.vm.size.memory_mib,
                max_memory_mib: self.vm.size.max_memory_mib,
                address: self.vm.address.clone(),
            },
            qemu_path: self.vm.qemu_path.clone(),
            qemu_args: self.vm.args.clone(),
            overrides: OverridesView {
                pcie_root_port: self.overrides.pcie_root_port,
                cold_plug_vfio: self.overrides.cold_plug_vfio.clone(),
                hot_plug_vfio: self.overrides.hot_plug_vfio.clone(),
                default_memory: self.overrides.default_memory,
                cpu_features: self.overrides.cpu_features.clone(),
                kernel_params_append: self.overrides.kernel_params_append.clone(),
            },
            warnings: self.warnings.clone(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Requested { device, node } => write!(f, "requested as {device} ({node})"),
            Reason::SpecNode { node } => write!(f, "device node {node} in the container spec"),
            Reason::GroupMember { of } => write!(f, "same IOMMU group as {of}"),
        }
    }
}

impl fmt::Display for SandboxPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "profile: {} ({})",
            self.profile.name(),
            self.profile.handler()
        )?;
        let requested: Vec<String> = self.requested.iter().map(ToString::to_string).collect();
        writeln!(
            f,
            "requested: {}",
            if requested.is_empty() {
                "none".to_owned()
            } else {
                requested.join(", ")
            }
        )?;
        writeln!(f, "devices: {}", self.devices.len())?;
        for (i, d) in self.devices.iter().enumerate() {
            let numa = d.numa_node.map_or("-".to_owned(), |n| n.to_string());
            writeln!(
                f,
                "  rp{i}  {}  {:04x}:{:04x}  class {:06x}  group {}  numa {numa}  {}  {}",
                d.bdf,
                d.vendor,
                d.device,
                d.class,
                d.group,
                d.cdev.as_deref().unwrap_or("legacy-group"),
                d.reason
            )?;
        }
        let size = &self.vm.size;
        write!(
            f,
            "vm: {} vCPU (max {}), {} MiB",
            size.vcpus, size.max_vcpus, size.memory_mib
        )?;
        if let Some(max) = size.max_memory_mib {
            write!(f, " (hotplug up to {max} MiB)")?;
        }
        writeln!(f)?;
        writeln!(f, "guest physical address bits: {}", self.vm.address)?;
        writeln!(
            f,
            "qemu (as Kata 3.30 starts it; <...> is drawn by Kata at start):"
        )?;
        writeln!(f, "  {}", self.vm.qemu_path)?;
        let mut args = self.vm.args.iter().peekable();
        while let Some(arg) = args.next() {
            match args.next_if(|v| !v.starts_with('-')) {
                Some(value) => writeln!(f, "  {arg} {value}")?,
                None => writeln!(f, "  {arg}")?,
            }
        }
        writeln!(f, "kata overrides ([hypervisor.qemu]):")?;
        let o = &self.overrides;
        let mut any = false;
        if let Some(v) = o.pcie_root_port {
            writeln!(f, "  pcie_root_port = {v}")?;
            any = true;
        }
        for (key, value) in [
            ("cold_plug_vfio", &o.cold_plug_vfio),
            ("hot_plug_vfio", &o.hot_plug_vfio),
        ] {
            if let Some(v) = value {
                writeln!(f, "  {key} = {v:?}")?;
                any = true;
            }
        }
        if let Some(v) = o.default_memory {
            writeln!(f, "  default_memory = {v}")?;
            any = true;
        }
        if let Some(v) = &o.cpu_features {
            writeln!(f, "  cpu_features = {v:?}")?;
            any = true;
        }
        if !o.kernel_params_append.is_empty() {
            writeln!(
                f,
                "  kernel_params += {:?}",
                o.kernel_params_append.join(" ")
            )?;
            any = true;
        }
        if !any {
            writeln!(f, "  none")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

impl fmt::Display for AddressPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "needs {} (RAM to {}",
            self.needed_bits,
            human(self.ram_top)
        )?;
        if let Some((size, _)) = self.windows.first() {
            let n = self.windows.len();
            write!(
                f,
                ", {n} 64-bit bridge window{} of up to {}",
                if n == 1 { "" } else { "s" },
                human(*size)
            )?;
        }
        write!(f, "), guest gets ")?;
        match self.guest_bits {
            Some(b) => write!(f, "{b}")?,
            None => write!(f, "the host's width")?,
        }
        if self.wrote_phys_bits {
            write!(f, " (phys-bits in cpu_features)")?;
        }
        match &self.host_limit {
            Some((bits, why)) => write!(f, ", host allows {bits} ({why})"),
            None => write!(
                f,
                ", host's width unknown (no address sizes in /proc/cpuinfo)"
            ),
        }
    }
}
