//! The guest physical address width a sandbox needs, and what the host can give.
//!
//! Kata sets no root-port reserves and never reads a BAR size, so the guest kernel places
//! every BAR itself (Kata's kernel parameters `pci=realloc pci=nocrs`): above the guest's
//! RAM, inside the CPU's physical address width. QEMU gives a named CPU model (SNP's
//! `EPYC-v4`) 40 bits unless `cpu_features` says `phys-bits=N`; an H100's 128 GiB BAR1
//! and 32 MiB BAR3 need a 192 GiB bridge window each, so eight of them do not fit in 1 TiB.

use super::kata::VmSize;
use super::PassthroughDevice;
use crate::host::Bar;
use crate::profile::Tee;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The width QEMU gives a named CPU model without `phys-bits` or `host-phys-bits`.
pub const QEMU_DEFAULT_PHYS_BITS: u8 = 40;

/// Where the guest's RAM (and, for guests with memory hotplug, QEMU's device-memory
/// region) ends: the 64-bit PCI space starts above it. q35 keeps 2 GiB of a large RAM
/// below 4 GiB and maps the rest from 4 GiB; the hotplug region starts at the next GiB
/// and holds `maxmem - ram` plus 1 GiB of alignment room per slot.
pub fn ram_top(size: &VmSize, slots: u32) -> u64 {
    let ram = u64::from(size.memory_mib) * MIB;
    let low = if ram >= 0xb000_0000 { 0x8000_0000 } else { ram };
    let mut top = 4 * GIB + (ram - low);
    if let Some(max) = size.max_memory_mib {
        let base = top.div_ceil(GIB) * GIB;
        top = base + (max * MIB).saturating_sub(ram) + u64::from(slots) * GIB;
    }
    top
}

/// The 64-bit prefetchable bridge window a root port needs for BARs of these sizes, and
/// its alignment, as Linux sizes it (`pbus_size_mem`): the sum rounded up to the smallest
/// alignment that still fits every BAR at its own alignment (`calculate_mem_align`).
pub fn bridge_window(bars: &[u64]) -> Option<(u64, u64)> {
    let bars: Vec<u64> = bars
        .iter()
        .map(|b| b.max(&MIB).next_power_of_two())
        .collect();
    let largest = bars.iter().copied().max()?;
    let max_order = (largest / MIB).trailing_zeros();
    let mut aligns = vec![0u64; max_order as usize + 1];
    for b in &bars {
        aligns[(b / MIB).trailing_zeros() as usize] += b;
    }
    let (mut sum, mut min_align) = (0u64, 0u64);
    for (order, add) in aligns.iter().enumerate() {
        let align = MIB << order;
        if sum == 0 {
            min_align = align;
        } else if (sum + min_align).div_ceil(min_align) * min_align < align {
            min_align = align >> 1;
        }
        sum += add;
    }
    Some((sum.div_ceil(min_align) * min_align, min_align))
}

/// What the guest's address space must hold, and the width that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressNeed {
    /// Where RAM (and the hotplug region) ends.
    pub ram_top: u64,
    /// The 64-bit windows, one per device with 64-bit prefetchable BARs: (size, alignment).
    pub windows: Vec<(u64, u64)>,
    /// The end of the last window, placed largest alignment first above `ram_top`.
    pub end: u64,
    /// The physical address bits that hold `end`.
    pub bits: u8,
}

/// The address width the sandbox's guest needs for its RAM and every device's 64-bit
/// prefetchable BARs.
pub fn need(size: &VmSize, slots: u32, devices: &[PassthroughDevice]) -> AddressNeed {
    need_for_bars(size, slots, devices.iter().map(|d| d.bars.as_slice()))
}

/// [`need`] for devices given by their BARs, one list per device (one root port each).
pub fn need_for_bars<'a>(
    size: &VmSize,
    slots: u32,
    devices: impl IntoIterator<Item = &'a [Bar]>,
) -> AddressNeed {
    let top = ram_top(size, slots);
    let mut windows: Vec<(u64, u64)> = devices
        .into_iter()
        .filter_map(|bars| {
            let sizes: Vec<u64> = bars
                .iter()
                .filter(|b| b.is_prefetchable_64() && b.size > 0)
                .map(|b| b.size)
                .collect();
            bridge_window(&sizes)
        })
        .collect();
    windows.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let mut end = top;
    for (size, align) in &windows {
        end = end.div_ceil(*align) * align + size;
    }
    let bits = (64 - (end - 1).leading_zeros()).max(32) as u8;
    AddressNeed {
        ram_top: top,
        windows,
        end,
        bits,
    }
}

/// The guest width `cpu_features` gives a CPU model: `host` (and `host-phys-bits=on`)
/// take the host's width under KVM; a named model gets `phys-bits=N` or QEMU's 40.
pub fn guest_bits(model: &str, cpu_features: &str, host_bits: Option<u8>) -> Option<u8> {
    let features: Vec<&str> = cpu_features.split(',').map(str::trim).collect();
    if model == "host" || features.contains(&"host-phys-bits=on") {
        return host_bits;
    }
    let set = features
        .iter()
        .rev()
        .find_map(|f| f.strip_prefix("phys-bits="))
        .and_then(|n| n.parse().ok());
    Some(set.unwrap_or(QEMU_DEFAULT_PHYS_BITS))
}

/// The most bits a guest of `tee` can use on this host, and why, when the host's width is
/// known: SNP loses `reduced_phys_bits` and must stay below the C-bit; a TDX guest's top
/// address bit is its shared bit.
pub fn host_limit(tee: Tee, host_bits: u8, cbitpos: u8, reduced: u8) -> (u8, String) {
    match tee {
        Tee::SevSnp => {
            let after = host_bits.saturating_sub(reduced);
            let limit = if cbitpos > 0 {
                after.min(cbitpos)
            } else {
                after
            };
            (
                limit,
                format!(
                    "{host_bits} host bits less {reduced} reduced by SEV, below the C-bit at {cbitpos}"
                ),
            )
        }
        Tee::Tdx => (
            host_bits.saturating_sub(1),
            format!("{host_bits} host bits less TDX's shared bit"),
        ),
        Tee::None => (host_bits, format!("{host_bits} host bits")),
    }
}

/// `cpu_features` with `phys-bits=bits` in place of any `phys-bits` it had, the rest kept
/// in order.
pub fn with_phys_bits(cpu_features: &str, bits: u8) -> String {
    let mut out: Vec<String> = cpu_features
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty() && !f.starts_with("phys-bits="))
        .map(str::to_owned)
        .collect();
    out.push(format!("phys-bits={bits}"));
    out.join(",")
}

/// A size in the largest binary unit that divides it (`192 GiB`, `32 MiB`).
pub fn human(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (GIB, "GiB"),
        (MIB, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (unit, name) in UNITS {
        if bytes >= unit && bytes % unit == 0 {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_sized_as_linux_sizes_bridge_windows() {
        let h100 = [128 * GIB, 32 * MIB];
        assert_eq!(bridge_window(&h100), Some((192 * GIB, 64 * GIB)));
        assert_eq!(bridge_window(&[128 * GIB]), Some((128 * GIB, 128 * GIB)));
        assert_eq!(bridge_window(&[32 * MIB]), Some((32 * MIB, 32 * MIB)));
        assert_eq!(bridge_window(&[16 * 1024]), Some((MIB, MIB)));
        assert_eq!(bridge_window(&[]), None);
    }

    #[test]
    fn ram_ends_where_q35_maps_it() {
        let size = |mib, max| VmSize {
            vcpus: 1,
            max_vcpus: 1,
            memory_mib: mib,
            max_memory_mib: max,
        };
        assert_eq!(ram_top(&size(8192, None), 10), 10 * GIB);
        assert_eq!(ram_top(&size(2048, None), 10), 4 * GIB);
        // Hotplug: 8 GiB RAM, 24 GiB maxmem, 10 slots: the region ends 16 + 10 GiB later.
        assert_eq!(ram_top(&size(8192, Some(24 * 1024)), 10), 36 * GIB);
    }

    #[test]
    fn phys_bits_are_read_and_replaced() {
        assert_eq!(guest_bits("EPYC-v4", "pmu=off", Some(52)), Some(40));
        assert_eq!(
            guest_bits("EPYC-v4", "pmu=off,phys-bits=43", Some(52)),
            Some(43)
        );
        assert_eq!(
            guest_bits("EPYC-v4", "host-phys-bits=on", Some(48)),
            Some(48)
        );
        assert_eq!(guest_bits("host", "pmu=off", Some(46)), Some(46));
        assert_eq!(with_phys_bits("pmu=off", 42), "pmu=off,phys-bits=42");
        assert_eq!(
            with_phys_bits("phys-bits=41,pmu=off", 42),
            "pmu=off,phys-bits=42"
        );
        assert_eq!(with_phys_bits("", 41), "phys-bits=41");
        assert_eq!(host_limit(Tee::SevSnp, 52, 51, 1).0, 51);
        assert_eq!(host_limit(Tee::SevSnp, 48, 47, 5).0, 43);
        assert_eq!(host_limit(Tee::Tdx, 52, 0, 0).0, 51);
    }
}
