//! What to tell an operator whose IOMMU is off, by CPU vendor. The kernel's documented
//! switches differ: `intel_iommu=on` turns Intel's VT-d on (off by default in many
//! kernels), while AMD's IOMMU is on by default and `amd_iommu=` has no `on` value (its
//! values are `off`, `fullflush`, `force_isolation`, …). Whatever the vendor, an
//! `iommu=off`, `amd_iommu=off` or `intel_iommu=off` on the command line keeps it off, and
//! the fix is to remove it.

use std::fmt;

/// The CPU's maker, from `vendor_id` in `/proc/cpuinfo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuVendor {
    /// `AuthenticAMD`.
    Amd,
    /// `GenuineIntel`.
    Intel,
    /// Anything else, or `/proc/cpuinfo` unreadable.
    Unknown,
}

impl CpuVendor {
    /// The vendor `/proc/cpuinfo` names in its first `vendor_id` line.
    pub fn from_cpuinfo(text: &str) -> CpuVendor {
        let id = text.lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "vendor_id").then(|| value.trim())
        });
        match id {
            Some("AuthenticAMD") => CpuVendor::Amd,
            Some("GenuineIntel") => CpuVendor::Intel,
            _ => CpuVendor::Unknown,
        }
    }
}

impl fmt::Display for CpuVendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CpuVendor::Amd => "AMD",
            CpuVendor::Intel => "Intel",
            CpuVendor::Unknown => "unknown",
        })
    }
}

/// The kernel parameters on `cmdline` that turn the IOMMU off: `iommu=off`, and
/// `amd_iommu=` or `intel_iommu=` with `off` among their comma-separated values.
pub fn iommu_off_params(cmdline: &str) -> Vec<&str> {
    cmdline
        .split_ascii_whitespace()
        .filter(|p| match p.split_once('=') {
            Some(("iommu", v)) => v == "off",
            Some(("amd_iommu" | "intel_iommu", v)) => v.split(',').any(|o| o == "off"),
            _ => false,
        })
        .collect()
}

/// How to turn the IOMMU on, as one clause for an error or a doctor fix: remove what turns
/// it off; then, on Intel, add `intel_iommu=on`; on AMD nothing is to be added (it is on
/// by default), so the firmware setting is what is left.
pub fn iommu_fix(vendor: CpuVendor, cmdline: &str) -> String {
    let off = iommu_off_params(cmdline);
    let intel_on = cmdline
        .split_ascii_whitespace()
        .any(|p| p == "intel_iommu=on");
    let add_intel = vendor == CpuVendor::Intel && !intel_on;
    if !off.is_empty() {
        let remove = format!("remove {} from the kernel command line", off.join(" "));
        return if add_intel {
            format!("{remove}, add intel_iommu=on, and reboot")
        } else {
            format!("{remove} and reboot")
        };
    }
    match vendor {
        CpuVendor::Intel if add_intel => {
            "add intel_iommu=on to the kernel command line and reboot (and enable VT-d in the \
             firmware setup)"
                .to_owned()
        }
        CpuVendor::Intel => "enable VT-d in the firmware setup and reboot".to_owned(),
        CpuVendor::Amd => "enable the IOMMU (AMD-Vi) in the firmware setup and reboot; the \
                           kernel turns it on by itself, no parameter is needed"
            .to_owned(),
        CpuVendor::Unknown => "enable the IOMMU in the firmware setup; on Intel also add \
                               intel_iommu=on to the kernel command line; then reboot"
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fix_follows_the_vendor_and_the_command_line() {
        use CpuVendor::{Amd, Intel, Unknown};
        let table = [
            (Amd, "ro quiet", "enable the IOMMU (AMD-Vi) in the firmware setup and reboot; the kernel turns it on by itself, no parameter is needed"),
            (Amd, "ro amd_iommu=off", "remove amd_iommu=off from the kernel command line and reboot"),
            (Amd, "ro iommu=off amd_iommu=fullflush,off", "remove iommu=off amd_iommu=fullflush,off from the kernel command line and reboot"),
            (Amd, "ro intel_iommu=off", "remove intel_iommu=off from the kernel command line and reboot"),
            (Intel, "ro quiet", "add intel_iommu=on to the kernel command line and reboot (and enable VT-d in the firmware setup)"),
            (Intel, "ro intel_iommu=on", "enable VT-d in the firmware setup and reboot"),
            (Intel, "ro intel_iommu=off", "remove intel_iommu=off from the kernel command line, add intel_iommu=on, and reboot"),
            (Intel, "ro iommu=off intel_iommu=on", "remove iommu=off from the kernel command line and reboot"),
            (Unknown, "", "enable the IOMMU in the firmware setup; on Intel also add intel_iommu=on to the kernel command line; then reboot"),
        ];
        for (vendor, cmdline, fix) in table {
            assert_eq!(iommu_fix(vendor, cmdline), fix, "{vendor} {cmdline:?}");
            assert!(!iommu_fix(vendor, cmdline).contains("amd_iommu=on"));
        }
    }

    #[test]
    fn the_vendor_comes_from_cpuinfo() {
        let table = [
            (
                "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n",
                CpuVendor::Amd,
            ),
            (
                "processor\t: 0\nvendor_id\t: GenuineIntel\n",
                CpuVendor::Intel,
            ),
            ("vendor_id\t: HygonGenuine\n", CpuVendor::Unknown),
            ("", CpuVendor::Unknown),
        ];
        for (text, vendor) in table {
            assert_eq!(CpuVendor::from_cpuinfo(text), vendor, "{text:?}");
        }
    }
}
