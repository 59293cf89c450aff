//! What Kata or NVIDIA's confidential-computing rules refuse, refused by the plan first
//! with the reason, before a VM is started to fail.

use super::{PassthroughDevice, PlanError, PlanInput};
use crate::host::NVIDIA;

/// Class `0x068x` (bridge class "other": NVSwitch): Kata 3.30 skips such functions when it
/// cold-plugs legacy VFIO groups (`/dev/vfio/<group>`), and fails the sandbox with
/// "unsupported device type" when a group has nothing else.
fn skipped_in_legacy_groups(d: &PassthroughDevice) -> bool {
    d.cdev.is_none() && (d.class >> 8) & 0xfff0 == 0x0680
}

/// The devices Kata really attaches: in legacy group mode, NVSwitch-class functions are
/// skipped (said in a warning); a group left with nothing is refused.
pub(super) fn kata_cold_plug(
    devices: Vec<PassthroughDevice>,
    warnings: &mut Vec<String>,
) -> Result<Vec<PassthroughDevice>, PlanError> {
    let (skipped, kept): (Vec<_>, Vec<_>) = devices.into_iter().partition(skipped_in_legacy_groups);
    for d in &skipped {
        if !kept.iter().any(|k| k.group == d.group) {
            return Err(PlanError::NvSwitchOnlyGroup {
                group: d.group,
                bdf: d.bdf,
            });
        }
        warnings.push(format!(
            "{} (class {:06x}) is in IOMMU group {} but Kata does not cold-plug class 068x functions from legacy VFIO groups: the guest will not see it (iommufd, /dev/vfio/devices/vfioN, passes it)",
            d.bdf, d.class, d.group
        ));
    }
    Ok(kept)
}

fn is_gpu(vendor: u16, class: u32) -> bool {
    vendor == NVIDIA && class >> 16 == 0x03
}

fn is_switch(vendor: u16, class: u32) -> bool {
    vendor == NVIDIA && class >> 8 == 0x0680
}

/// NVIDIA's rule for Hopper confidential computing on a board with NVSwitches: either
/// every GPU runs in CC mode and a confidential VM gets one GPU and no NVSwitch, or the
/// board runs in protected-PCIe mode and one confidential VM gets every GPU and every
/// NVSwitch. Any other set is refused.
pub(super) fn confidential_board(
    input: &PlanInput<'_>,
    devices: &[PassthroughDevice],
) -> Result<(), PlanError> {
    if !input.profile.confidential() {
        return Ok(());
    }
    let gpus = devices.iter().filter(|d| is_gpu(d.vendor, d.class)).count();
    let switches = devices
        .iter()
        .filter(|d| is_switch(d.vendor, d.class))
        .count();
    let single = gpus == 1 && switches == 0;
    if gpus + switches == 0 || single {
        return Ok(());
    }
    let functions = input.host.pci_classes()?;
    let board_switches = functions
        .iter()
        .filter(|(vendor, class)| is_switch(*vendor, *class))
        .count();
    if board_switches == 0 {
        return Ok(());
    }
    let board_gpus = functions
        .iter()
        .filter(|(vendor, class)| is_gpu(*vendor, *class))
        .count();
    if gpus == board_gpus && switches == board_switches {
        return Ok(());
    }
    Err(PlanError::PartialNvSwitchBoard {
        gpus,
        switches,
        board_gpus,
        board_switches,
    })
}
