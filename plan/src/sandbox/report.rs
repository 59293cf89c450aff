//! How a plan reads: as text for people (`kata-gpu plan`, golden files) and as JSON.

use std::fmt;

use serde::Serialize;

use super::{Reason, SandboxPlan};

/// A plan as JSON-friendly values.
#[derive(Debug, Serialize)]
pub struct PlanView {
    profile: &'static str,
    handler: &'static str,
    requested: Vec<String>,
    devices: Vec<DeviceView>,
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
struct OverridesView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pcie_root_port: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cold_plug_vfio: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hot_plug_vfio: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_memory: Option<u32>,
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
            qemu_args: self.qemu_args.clone(),
            overrides: OverridesView {
                pcie_root_port: self.overrides.pcie_root_port,
                cold_plug_vfio: self.overrides.cold_plug_vfio.clone(),
                hot_plug_vfio: self.overrides.hot_plug_vfio.clone(),
                default_memory: self.overrides.default_memory,
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
        writeln!(f, "qemu:")?;
        for pair in self.qemu_args.chunks(2) {
            writeln!(f, "  {}", pair.join(" "))?;
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
