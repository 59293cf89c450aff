//! GetPreferredAllocation's choice, as pure logic: keep a request inside one NUMA node, and
//! among the nodes that can hold it take the one with the fewest free devices (best fit), so
//! that whole sets stay free for larger requests. On an HGX board the GPUs of one NUMA node
//! are the set behind one CPU socket's PCIe switches; a 4-GPU request gets a whole set and a
//! 2-GPU request is packed beside an earlier one instead of splitting a free set.

use std::collections::BTreeMap;

use crate::inventory::PluginDevice;

/// The ids to prefer: `must` first (those known), then up to `size` from `available`, in
/// the order of `devices`. Unknown ids are never returned.
pub fn preferred(
    devices: &[PluginDevice],
    available: &[String],
    must: &[String],
    size: usize,
) -> Vec<String> {
    let known = |id: &String| devices.iter().any(|d| &d.id == id);
    let mut chosen: Vec<String> = must.iter().filter(|id| known(id)).cloned().collect();
    chosen.dedup();
    if chosen.len() >= size {
        chosen.truncate(size);
        return chosen;
    }
    let mut need = size - chosen.len();
    // Free devices by NUMA node (None sorts first: a host that does not say).
    let mut free: BTreeMap<Option<u32>, Vec<&PluginDevice>> = BTreeMap::new();
    for d in devices {
        if available.contains(&d.id) && !chosen.contains(&d.id) {
            free.entry(d.numa).or_default().push(d);
        }
    }
    // Devices that must be included pin the NUMA node when they share one.
    let pinned: Vec<Option<u32>> = devices
        .iter()
        .filter(|d| chosen.contains(&d.id))
        .map(|d| d.numa)
        .collect();
    let mut order: Vec<Option<u32>> = free.keys().copied().collect();
    if let Some(node) = pinned.first().filter(|n| pinned.iter().all(|p| p == *n)) {
        order.sort_by_key(|k| k != node);
    } else {
        // Best fit first: the smallest node that holds the whole request; then, when none
        // does, the largest nodes first so the request spans as few as possible.
        let fits = |k: &Option<u32>| free[k].len() >= need;
        order.sort_by_key(|k| {
            if fits(k) {
                (0, free[k].len())
            } else {
                (1, usize::MAX - free[k].len())
            }
        });
    }
    for node in order {
        for d in &free[&node] {
            if need == 0 {
                break;
            }
            chosen.push(d.id.clone());
            need -= 1;
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use kata_gpu_plan::Bdf;

    fn dev(id: &str, numa: Option<u32>) -> PluginDevice {
        PluginDevice {
            id: id.to_owned(),
            names: vec![id.to_owned()],
            node: format!("/dev/vfio/devices/vfio{id}"),
            bdf: "0000:01:00.0".parse::<Bdf>().expect("bdf"),
            group: 1,
            numa,
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    /// The HGX shape: 0-3 on NUMA node 0, 4-7 on node 1.
    fn hgx() -> Vec<PluginDevice> {
        (0..8)
            .map(|i| dev(&i.to_string(), Some(if i < 4 { 0 } else { 1 })))
            .collect()
    }

    #[test]
    fn a_request_stays_inside_one_numa_node() {
        let all = ids(&["0", "1", "2", "3", "4", "5", "6", "7"]);
        assert_eq!(preferred(&hgx(), &all, &[], 4), ids(&["0", "1", "2", "3"]));
        // Node 0 has 3 free, node 1 has 4: a 3-GPU request fits node 0 exactly.
        let avail = ids(&["1", "2", "3", "4", "5", "6", "7"]);
        assert_eq!(preferred(&hgx(), &avail, &[], 3), ids(&["1", "2", "3"]));
        // A 4-GPU request does not fit node 0 any more: the whole of node 1.
        assert_eq!(
            preferred(&hgx(), &avail, &[], 4),
            ids(&["4", "5", "6", "7"])
        );
    }

    #[test]
    fn small_requests_are_packed_so_whole_sets_stay_free() {
        // Node 0 has 2 free, node 1 is whole: 2 GPUs come from node 0.
        let avail = ids(&["2", "3", "4", "5", "6", "7"]);
        assert_eq!(preferred(&hgx(), &avail, &[], 2), ids(&["2", "3"]));
        assert_eq!(preferred(&hgx(), &avail, &[], 1), ids(&["2"]));
    }

    #[test]
    fn must_include_pins_its_node_and_unknown_ids_are_dropped() {
        let all = ids(&["0", "1", "2", "3", "4", "5", "6", "7", "99"]);
        assert_eq!(
            preferred(&hgx(), &all, &ids(&["5", "99"]), 2),
            ids(&["5", "4"])
        );
        assert_eq!(preferred(&hgx(), &all, &ids(&["6", "1"]), 1), ids(&["6"]));
    }

    #[test]
    fn a_request_larger_than_a_node_spans_the_fewest_nodes() {
        let all = ids(&["0", "1", "2", "3", "4", "5", "6", "7"]);
        let got = preferred(&hgx(), &all, &[], 6);
        assert_eq!(got, ids(&["0", "1", "2", "3", "4", "5"]));
        let avail = ids(&["0", "4", "5", "6"]);
        assert_eq!(
            preferred(&hgx(), &avail, &[], 4),
            ids(&["4", "5", "6", "0"])
        );
        // Never more than there is.
        assert_eq!(preferred(&hgx(), &ids(&["1"]), &[], 3), ids(&["1"]));
    }
}
