//! A group passes through whole: on a board without ACS, two GPUs (or a GPU and an
//! NVSwitch) can share an IOMMU group, and asking for one would hand the sandbox the other
//! too, outside the scheduler. So a plan whose groups hold one of our devices (an NVIDIA
//! GPU or NVSwitch) that was not asked for is refused. A legacy group node
//! (`/dev/vfio/<group>`) names its whole group, and the device plugin advertises such a
//! group as one device, so everything in it counts as asked for.

use std::collections::BTreeSet;

use super::{NodeRequest, PassthroughDevice, PlanError, PlanInput};
use crate::host::{Bdf, VfioNode, NVIDIA};

fn is_ours(d: &PassthroughDevice) -> bool {
    d.vendor == NVIDIA && (d.class >> 16 == 0x03 || d.class >> 8 == 0x0680)
}

/// Refuses `devices` when a group holds a GPU or NVSwitch that `requests` did not name.
pub(super) fn check_siblings(
    input: &PlanInput<'_>,
    requests: &[NodeRequest],
    devices: &[PassthroughDevice],
) -> Result<(), PlanError> {
    let mut asked: BTreeSet<Bdf> = BTreeSet::new();
    let mut whole: BTreeSet<u32> = BTreeSet::new();
    for r in requests {
        match input.host.vfio_node(&r.node)? {
            VfioNode::Group(g) => {
                whole.insert(g);
            }
            VfioNode::Cdev { bdf, .. } => {
                asked.insert(bdf);
            }
        }
    }
    for d in devices {
        if whole.contains(&d.group) || asked.contains(&d.bdf) || !is_ours(d) {
            continue;
        }
        let with: Vec<String> = devices
            .iter()
            .filter(|o| o.group == d.group && asked.contains(&o.bdf))
            .map(|o| o.bdf.to_string())
            .collect();
        return Err(PlanError::SiblingNotAsked {
            bdf: d.bdf,
            id: format!("{:04x}:{:04x}", d.vendor, d.device),
            group: d.group,
            with: with.join(", "),
        });
    }
    Ok(())
}
