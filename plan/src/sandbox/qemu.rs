//! QEMU arguments in the shape Kata gives them: one PCIe root port per passed-through
//! function, an iommufd object per function in iommufd mode, the vfio-pci devices on their
//! ports, and for confidential profiles the machine and guest objects.

use super::{PassthroughDevice, TeeSettings};
use crate::profile::Tee;

/// Rounds a window up to a power of two, at least 2 MiB, as root-port windows must be.
fn window(bytes: u64) -> u64 {
    bytes.max(2 << 20).next_power_of_two()
}

/// A size as QEMU's size properties accept it (`128G`, `32M`, `4096K`).
fn qemu_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    for (unit, suffix) in UNITS {
        if bytes >= unit && bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// The `-machine` and confidential `-object` arguments.
fn machine(tee: Tee, settings: &TeeSettings) -> Vec<String> {
    match tee {
        Tee::SevSnp => vec![
            "-machine".into(),
            "q35,accel=kvm,kernel_irqchip=split,confidential-guest-support=snp".into(),
            "-object".into(),
            format!(
                "sev-snp-guest,id=snp,cbitpos={},reduced-phys-bits={},kernel-hashes=on,policy={:#x}",
                settings.cbitpos, settings.reduced_phys_bits, settings.snp_policy
            ),
        ],
        Tee::Tdx => vec![
            "-machine".into(),
            "q35,accel=kvm,kernel_irqchip=split,confidential-guest-support=tdx".into(),
            "-object".into(),
            "tdx-guest,id=tdx".into(),
        ],
        Tee::None => vec!["-machine".into(), "q35,accel=kvm".into()],
    }
}

/// The root port for device `i`, with memory windows sized from its BARs so that a
/// 128 GiB BAR1 fits without guest-side reallocation.
fn root_port(i: usize, d: &PassthroughDevice) -> String {
    let mut port =
        format!("pcie-root-port,id=rp{i},bus=pcie.0,chassis=0,slot={i},multifunction=off");
    let mem32: u64 = d
        .bars
        .iter()
        .filter(|b| !b.is_prefetchable_64())
        .map(|b| b.size)
        .sum();
    let pref64: u64 = d
        .bars
        .iter()
        .filter(|b| b.is_prefetchable_64())
        .map(|b| b.size)
        .sum();
    if mem32 > 0 {
        port.push_str(&format!(",mem-reserve={}", qemu_size(window(mem32))));
    }
    if pref64 > 0 {
        port.push_str(&format!(",pref64-reserve={}", qemu_size(window(pref64))));
    }
    port
}

/// Every QEMU argument for `devices` under `tee`.
pub fn qemu_args(tee: Tee, settings: &TeeSettings, devices: &[PassthroughDevice]) -> Vec<String> {
    let mut args = machine(tee, settings);
    for (i, d) in devices.iter().enumerate() {
        args.push("-device".into());
        args.push(root_port(i, d));
    }
    for (i, d) in devices.iter().enumerate() {
        let mut device = format!("vfio-pci,host={},id=vfio{i},bus=rp{i}", d.bdf);
        if d.cdev.is_some() {
            args.push("-object".into());
            args.push(format!("iommufd,id=iommufd{i}"));
            device.push_str(&format!(",iommufd=iommufd{i}"));
        }
        device.push_str(&format!(
            ",x-pci-vendor-id={:#06x},x-pci-device-id={:#06x}",
            d.vendor, d.device
        ));
        args.push("-device".into());
        args.push(device);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_windows() {
        let table = [
            (16 << 20, "16M"),
            (128u64 << 30, "128G"),
            (3 << 10, "3K"),
            (1000, "1000"),
        ];
        for (bytes, text) in table {
            assert_eq!(qemu_size(bytes), text);
        }
        assert_eq!(window(16 << 20), 16 << 20);
        assert_eq!(window((128u64 << 30) + (32 << 20)), 256u64 << 30);
        assert_eq!(window(16 << 10), 2 << 20);
    }
}
