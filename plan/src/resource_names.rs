//! The extended-resource names the device plugin advertises, and how the shim maps them back
//! to CDI kinds.
//!
//! By default they are NVIDIA's sandbox device plugin's, so that NVIDIA's documented pods
//! (`resources.limits: nvidia.com/GH100_H100_PCIE: 1`) schedule unchanged: `nvidia.com/` and
//! the device's pci.ids name, upper-cased, with `/`, `.` and whitespace turned to `_` and
//! every other character but letters, digits and `_` dropped (`GH100 [H100 PCIe]` →
//! `GH100_H100_PCIE`). The pci.ids names come from the node (`/usr/share/misc/pci.ids` or
//! `/usr/share/hwdata/pci.ids` under the host root); without the file, a built-in table of
//! the Hopper ids whose names are known; without either, `NVIDIA_<device id>` (upper-case
//! hex, `nvidia.com/NVIDIA_2339`). With `resource_naming = "pgpu"` the names are the CDI
//! kinds themselves, `nvidia.com/pgpu` and `nvidia.com/nvswitch`.
//!
//! Whatever the resource name, the device ids are the host spec's names, and the CDI name of
//! a device is `<its kind>=<id>`.

use std::path::Path;

use serde::Deserialize;

use crate::host::{Host, HostError, PciFunction, NVIDIA};
use crate::host_spec::{NVSWITCH_KIND, PGPU_KIND};

/// Where pci.ids is looked for, under the host root, in order.
pub const PCI_IDS_PATHS: [&str; 2] = ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"];

/// pci.ids names of the Hopper devices kata-gpu passes through, for nodes without pci.ids.
pub const BUILTIN_NAMES: [(u16, &str); 6] = [
    (0x2322, "GH100 [H800 PCIe]"),
    (0x2330, "GH100 [H100 SXM5 80GB]"),
    (0x2331, "GH100 [H100 PCIe]"),
    (0x2335, "GH100 [H200 SXM 141GB]"),
    (0x233b, "GH100 [H200 NVL]"),
    (0x22a3, "GH100 [H100 NVSwitch]"),
];

/// How resources are named.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Naming {
    /// NVIDIA's sandbox device plugin's: one resource per device model, from pci.ids.
    #[default]
    Nvidia,
    /// The CDI kinds: `nvidia.com/pgpu`, `nvidia.com/nvswitch`.
    Pgpu,
}

impl std::str::FromStr for Naming {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nvidia" => Ok(Self::Nvidia),
            "pgpu" => Ok(Self::Pgpu),
            other => Err(format!(
                "resource naming {other:?} is neither \"nvidia\" (NVIDIA's sandbox device plugin's names) nor \"pgpu\" (nvidia.com/pgpu, nvidia.com/nvswitch)"
            )),
        }
    }
}

/// A pci.ids device name as NVIDIA's sandbox device plugin turns it into a resource name.
pub fn format_name(pci_name: &str) -> String {
    pci_name
        .to_uppercase()
        .chars()
        .filter_map(|c| match c {
            '/' | '.' => Some('_'),
            c if c.is_whitespace() => Some('_'),
            c if c.is_ascii_alphanumeric() || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The device's name in pci.ids `text`, if listed under `vendor`.
pub fn lookup(text: &str, vendor: u16, device: u16) -> Option<String> {
    let vendor = format!("{vendor:04x}");
    let device = format!("{device:04x}");
    let mut in_vendor = false;
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if !line.starts_with('\t') {
            if in_vendor {
                return None;
            }
            in_vendor = line
                .get(..4)
                .is_some_and(|v| v.eq_ignore_ascii_case(&vendor));
            continue;
        }
        if !in_vendor || line.starts_with("\t\t") {
            continue;
        }
        let entry = &line[1..];
        if entry
            .get(..4)
            .is_some_and(|d| d.eq_ignore_ascii_case(&device))
        {
            let name = entry.get(4..).unwrap_or_default().trim();
            return (!name.is_empty()).then(|| name.to_owned());
        }
    }
    None
}

/// pci.ids as found on the host under `root`, if any.
pub fn read_pci_ids(root: &Path) -> Option<String> {
    PCI_IDS_PATHS
        .iter()
        .find_map(|p| std::fs::read_to_string(cdi::inject::under_root(root, p)).ok())
}

/// The CDI kind of a function kata-gpu passes through, if it is one.
pub fn kind_of(f: &PciFunction) -> Option<&'static str> {
    if f.is_nvswitch() {
        Some(NVSWITCH_KIND)
    } else if f.is_nvidia_gpu() {
        Some(PGPU_KIND)
    } else {
        None
    }
}

/// The resource name of an NVIDIA device `device` of CDI kind `kind`, given pci.ids text.
pub fn resource_name(naming: Naming, kind: &str, device: u16, pci_ids: Option<&str>) -> String {
    match naming {
        Naming::Pgpu => kind.to_owned(),
        Naming::Nvidia => {
            let name = pci_ids
                .and_then(|text| lookup(text, NVIDIA, device))
                .or_else(|| {
                    BUILTIN_NAMES
                        .iter()
                        .find(|(id, _)| *id == device)
                        .map(|(_, n)| (*n).to_owned())
                });
            match name {
                Some(n) => format!("nvidia.com/{}", format_name(&n)),
                None => format!("nvidia.com/NVIDIA_{device:04X}"),
            }
        }
    }
}

/// Every resource name the host's GPUs and NVSwitches can be advertised under (both
/// namings, and under NVIDIA's whichever of pci.ids, the built-in table and the device id
/// the plugin found: a plugin in a container may not see the node's pci.ids), with its CDI
/// kind: what the shim maps kubelet's allocations back through.
pub fn host_resources(host: &Host) -> Result<Vec<(String, &'static str)>, HostError> {
    let pci_ids = read_pci_ids(host.root());
    let mut out: Vec<(String, &'static str)> = vec![
        (PGPU_KIND.to_owned(), PGPU_KIND),
        (NVSWITCH_KIND.to_owned(), NVSWITCH_KIND),
    ];
    for f in host.pci_functions()? {
        let Some(kind) = kind_of(&f) else {
            continue;
        };
        let candidates = [
            resource_name(Naming::Nvidia, kind, f.device, pci_ids.as_deref()),
            resource_name(Naming::Nvidia, kind, f.device, None),
            format!("nvidia.com/NVIDIA_{:04X}", f.device),
        ];
        for name in candidates {
            if !out.iter().any(|(n, _)| *n == name) {
                out.push((name, kind));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_nvidias() {
        for (pci, want) in [
            ("GH100 [H100 PCIe]", "GH100_H100_PCIE"),
            ("GH100 [H100 SXM5 80GB]", "GH100_H100_SXM5_80GB"),
            ("GB100 [TS4 / B100]", "GB100_TS4___B100"),
            (
                "GA100 [A100 PCIe 40GB] (rev. a1)",
                "GA100_A100_PCIE_40GB_REV__A1",
            ),
        ] {
            assert_eq!(format_name(pci), want, "{pci}");
        }
    }

    #[test]
    fn pci_ids_then_the_builtin_table_then_the_device_id() {
        let text = "# c\n1000  Other\n\t2331  Not ours\n10de  NVIDIA Corporation\n\t2330  GH100 [H100 SXM5 80GB]\n\t\t10de 16c1  Subsystem\n\t2331  GH100 [H100 PCIe]\n\t2339  GH100 [H20]\n10df  Next\n\t2340  x\n";
        assert_eq!(
            lookup(text, NVIDIA, 0x2331).as_deref(),
            Some("GH100 [H100 PCIe]")
        );
        assert_eq!(lookup(text, NVIDIA, 0x2340), None);
        assert_eq!(
            resource_name(Naming::Nvidia, PGPU_KIND, 0x2339, Some(text)),
            "nvidia.com/GH100_H20"
        );
        assert_eq!(
            resource_name(Naming::Nvidia, NVSWITCH_KIND, 0x22a3, None),
            "nvidia.com/GH100_H100_NVSWITCH"
        );
        assert_eq!(
            resource_name(Naming::Nvidia, PGPU_KIND, 0x2339, None),
            "nvidia.com/NVIDIA_2339"
        );
        assert_eq!(
            resource_name(Naming::Pgpu, PGPU_KIND, 0x2331, Some(text)),
            "nvidia.com/pgpu"
        );
        assert!("kind".parse::<Naming>().is_err());
    }
}
