//! What must hold before `vfio bind` moves a function: its IOMMU group holds nothing but
//! NVIDIA functions (unless the operator forces it), and no function that moves is in
//! use — a device node of it (or a device stacked on one, as LVM stacks `dm-0`) held open
//! by a process, mounted (in the host's mount table, PID 1's, or any other namespace's) or
//! used as swap, or a network interface of it that is up. The check runs when the plan is
//! made and again right before each function's unbind ([`super::apply`]).

use std::fmt;
use std::fs;
use std::path::Path;

use super::{VfioError, VFIO_PCI};
use crate::host::{Bdf, Host, PciFunction, NVIDIA};

/// A function in a GPU's or NVSwitch's IOMMU group that is not NVIDIA's: binding the
/// group would take it from the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Foreign {
    /// Its address.
    pub bdf: Bdf,
    /// `vendor:device`.
    pub id: String,
    /// The driver it is on.
    pub driver: Option<String>,
    /// Its IOMMU group.
    pub group: Option<u32>,
}

impl fmt::Display for Foreign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let driver = self
            .driver
            .as_deref()
            .map_or("no driver".to_owned(), |d| format!("on {d}"));
        let group = self.group.map_or("-".to_owned(), |g| g.to_string());
        write!(f, "{} ({}, {driver}, group {group})", self.bdf, self.id)
    }
}

/// The one-line refusal for [`VfioError::Foreign`].
pub(super) fn foreign_message(found: &[Foreign]) -> String {
    let names: Vec<String> = found.iter().map(ToString::to_string).collect();
    let (share, are, it) = if found.len() == 1 {
        ("shares", "is not an NVIDIA function", "it")
    } else {
        ("share", "are not NVIDIA functions", "them")
    };
    format!(
        "{} {share} an IOMMU group with a GPU or NVSwitch and {are}: binding would take {it} \
         from the host; give the GPU an IOMMU group of its own (another slot, or ACS on in \
         the firmware), or pass --force to bind {it} too",
        names.join(" and ")
    )
}

/// The functions among `functions` that would move and are not NVIDIA's (a GPU's audio
/// function is NVIDIA's and goes with it; bridges never reach here).
pub(super) fn foreign(functions: &[PciFunction]) -> Vec<Foreign> {
    functions
        .iter()
        .filter(|f| f.vendor != NVIDIA && f.driver.as_deref() != Some(VFIO_PCI))
        .map(|f| Foreign {
            bdf: f.bdf,
            id: f.id(),
            driver: f.driver.clone(),
            group: f.iommu_group,
        })
        .collect()
}

/// A process holding a device node open: (pid, comm, node).
fn holder(host: &Host, wanted: &dyn Fn(&str) -> bool) -> Option<(u32, String, String)> {
    let mut pids: Vec<u32> = fs::read_dir(host.path("/proc"))
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let Ok(fds) = fs::read_dir(host.path(&format!("/proc/{pid}/fd"))) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let node = target.to_string_lossy().into_owned();
            if wanted(&node) {
                let comm = fs::read_to_string(host.path(&format!("/proc/{pid}/comm")))
                    .map(|c| c.trim().to_owned())
                    .unwrap_or_else(|_| "?".to_owned());
                return Some((pid, comm, node));
            }
        }
    }
    None
}

/// How deep under a function the kernel puts its devices (`nvme/nvme0/nvme0n1/nvme0n1p1`),
/// and how many devices may stack on one (LVM on RAID on a partition).
const MAX_DEPTH: usize = 6;

/// The `DEVNAME` a device directory's `uevent` names, as a `/dev` path.
fn devname(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join("uevent")).ok()?;
    let name = text.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
    Some(format!("/dev/{}", name.trim()))
}

/// The block devices stacked on the one at `dir` (device-mapper, md), from its
/// `holders/`, and theirs in turn, through `/sys/class/block/<name>`.
fn holders(host: &Host, dir: &Path, depth: usize, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir.join("holders")) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let held = host.path(&format!("/sys/class/block/{name}"));
        let node = devname(&held).unwrap_or_else(|| format!("/dev/{name}"));
        if out.contains(&node) {
            continue;
        }
        out.push(node);
        if depth < MAX_DEPTH {
            holders(host, &held, depth + 1, out);
        }
    }
}

/// The device nodes the kernel made for a function (`/dev/nvme0n1p1`, `/dev/dri/card1`):
/// the `DEVNAME` of every `uevent` below its sysfs directory, and of every block device
/// stacked on them (`/dev/dm-0` for LVM). Links are not followed (sysfs links back up),
/// nor child PCI functions entered.
fn device_nodes(host: &Host, bdf: Bdf) -> Vec<String> {
    fn walk(host: &Host, dir: &Path, depth: usize, out: &mut Vec<String>) {
        if let Some(node) = devname(dir) {
            out.push(node);
            holders(host, dir, 0, out);
        }
        if depth == MAX_DEPTH {
            return;
        }
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            let is_function = e
                .file_name()
                .to_str()
                .is_some_and(|n| n.parse::<Bdf>().is_ok());
            if is_dir && !is_function {
                walk(host, &e.path(), depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(host, &host.path(&super::pci_dir(bdf)), 0, &mut out);
    out.sort();
    out.dedup();
    out
}

/// A `/dev` path as the device node it leads to (`/dev/mapper/vg-root` → `/dev/dm-0`),
/// in the host's view; the path itself when it leads nowhere else.
fn resolve_dev(host: &Host, path: &str) -> String {
    let resolved = fs::canonicalize(host.path(path)).ok().and_then(|p| {
        let root = fs::canonicalize(host.root()).ok()?;
        let rel = p.strip_prefix(root).ok()?;
        Some(format!("/{}", rel.display()))
    });
    resolved.unwrap_or_else(|| path.to_owned())
}

/// The mount tables to read: PID 1's (`/proc/1/mounts`, the host's: inside a container,
/// `/proc/mounts` is the container's own), then one of every other mount namespace (a
/// container's mount of a host disk holds it as well), each process's `ns/mnt` telling
/// which namespace it is in.
fn mount_tables(host: &Host) -> Vec<String> {
    let mut pids: Vec<u32> = fs::read_dir(host.path("/proc"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|p| *p != 1)
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    let mut seen = std::collections::BTreeSet::new();
    let mut tables = Vec::new();
    for pid in std::iter::once(1).chain(pids) {
        let table = format!("/proc/{pid}/mounts");
        if let Ok(ns) = fs::read_link(host.path(&format!("/proc/{pid}/ns/mnt"))) {
            if !seen.insert(ns) {
                continue;
            }
        }
        if host.path(&table).is_file() {
            tables.push(table);
        }
    }
    tables
}

/// The first source of `table` (a mount table, `/proc/swaps`: the device is the first
/// field) that is one of `nodes`, as it is written there (with the node it leads to when
/// that differs), and the line's second field.
fn listed(host: &Host, table: &str, nodes: &[String]) -> Option<(String, String)> {
    let text = fs::read_to_string(host.path(table)).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (source, second) = (fields.next()?, fields.next()?);
        if !source.starts_with("/dev/") {
            return None;
        }
        let node = resolve_dev(host, source);
        if !nodes.contains(&node) {
            return None;
        }
        let shown = if node == source {
            node
        } else {
            format!("{source} ({node})")
        };
        Some((shown, second.to_owned()))
    })
}

/// Claims every block device of `f` exclusively (`O_EXCL` on a block device: the claim a
/// mount, md and device-mapper take, wherever they are): the claims are held as long as the
/// files returned are open, so nothing can mount the device meanwhile. A device someone
/// else holds that way is refused. Nodes that are not block devices are left alone.
pub(super) fn claim(host: &Host, f: &PciFunction) -> Result<Vec<fs::File>, VfioError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let mut held = Vec::new();
    for node in device_nodes(host, f.bdf) {
        let path = host.path(&node);
        let is_block = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_block_device());
        if !is_block {
            continue;
        }
        match fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_EXCL | nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(file) => held.push(file),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                return Err(VfioError::Claimed { bdf: f.bdf, node });
            }
            // Gone or unreadable: nothing to claim, and nothing anyone else can mount.
            Err(_) => {}
        }
    }
    Ok(held)
}

/// A network interface of the function that is up.
fn interface_up(host: &Host, bdf: Bdf) -> Option<String> {
    let dir = host.path(&format!("{}/net", super::pci_dir(bdf)));
    let mut names: Vec<String> = fs::read_dir(&dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    names
        .into_iter()
        .find(|n| fs::read_to_string(dir.join(n).join("operstate")).is_ok_and(|s| s.trim() == "up"))
}

/// The device nodes through which `f` can be in use: its own (and those stacked on
/// them), and on `vfio-pci` its group node and cdev.
fn nodes_of(host: &Host, f: &PciFunction) -> Vec<String> {
    let mut nodes = device_nodes(host, f.bdf);
    if f.driver.as_deref() == Some(VFIO_PCI) {
        nodes.extend(f.iommu_group.map(|g| format!("/dev/vfio/{g}")));
        nodes.extend(
            host.vfio_cdev(f.bdf)
                .map(|(name, _)| format!("/dev/vfio/devices/{name}")),
        );
    }
    nodes
}

/// A process holding `f` open (for a function on `nvidia`, any `/dev/nvidia*`): (pid,
/// comm, node).
pub(super) fn holder_of(host: &Host, f: &PciFunction) -> Option<(u32, String, String)> {
    let nodes = nodes_of(host, f);
    let nvidia = f.driver.as_deref() == Some("nvidia");
    let wanted = |n: &str| (nvidia && n.starts_with("/dev/nvidia")) || nodes.iter().any(|m| m == n);
    holder(host, &wanted)
}

/// Refuses a function in use: a process holds one of its device nodes open (for a
/// function on `nvidia`, any `/dev/nvidia*`; on `vfio-pci`, its group node or cdev), one
/// of them is mounted in any mount namespace, or one of its network interfaces is up.
pub(super) fn check_not_in_use(host: &Host, f: &PciFunction) -> Result<(), VfioError> {
    let nodes = nodes_of(host, f);
    if let Some((pid, comm, node)) = holder_of(host, f) {
        return Err(VfioError::InUse {
            bdf: f.bdf,
            pid,
            comm,
            node,
        });
    }
    let mounted = mount_tables(host)
        .iter()
        .find_map(|t| listed(host, t, &nodes));
    if let Some((node, at)) = mounted {
        return Err(VfioError::Mounted {
            bdf: f.bdf,
            node,
            at,
        });
    }
    // Claimed by what no table here shows (a mount in a namespace without a process left
    // to read it by, md, device-mapper): taken and let go at once.
    drop(claim(host, f)?);
    if let Some((node, _)) = listed(host, "/proc/swaps", &nodes) {
        return Err(VfioError::Swap { bdf: f.bdf, node });
    }
    if let Some(iface) = interface_up(host, f.bdf) {
        return Err(VfioError::InterfaceUp { bdf: f.bdf, iface });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{plan_bind, Targets};
    use super::*;
    use kata_gpu_simhost::Function;
    use kata_gpu_simhost::SimHost;

    const NVME: &str = "0000:42:00.0";

    /// Plans a bind of every GPU and shows the outcome as the user sees it: the moves, or
    /// the refusal.
    fn bind(sim: &SimHost, force: bool) -> Result<Vec<String>, String> {
        let host = Host::new(sim.root());
        plan_bind(&host, Targets::All, force)
            .map(|steps| {
                steps
                    .iter()
                    .filter(|s| !s.is_noop())
                    .map(ToString::to_string)
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_group_with_a_function_not_nvidias_is_refused_unless_forced() {
        let sim = SimHost::gpu_with_nvme_in_group();
        assert_eq!(
            bind(&sim, false),
            Err(
                "0000:42:00.0 (144d:a80a, on nvme, group 40) shares an IOMMU group with a \
                 GPU or NVSwitch and is not an NVIDIA function: binding would take it from \
                 the host; give the GPU an IOMMU group of its own (another slot, or ACS on in \
                 the firmware), or pass --force to bind it too"
                    .to_owned()
            )
        );
        assert_eq!(
            bind(&sim, true),
            Ok(vec![
                "0000:41:00.0 10de:2331 group 40: nvidia → vfio-pci".to_owned(),
                "0000:42:00.0 144d:a80a group 40: nvme → vfio-pci".to_owned(),
            ])
        );
    }

    #[test]
    fn every_foreign_function_is_named_with_its_driver() {
        let mut sim = SimHost::gpu_with_nvme_in_group();
        sim.add(&Function::nic("0000:43:00.0", 40));
        let e = bind(&sim, false).expect_err("refused");
        assert!(
            e.starts_with(
                "0000:42:00.0 (144d:a80a, on nvme, group 40) and 0000:43:00.0 (15b3:1021, on \
                 mlx5_core, group 40) share an IOMMU group with a GPU or NVSwitch and are not \
                 NVIDIA functions: binding would take them from the host;"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_foreign_function_already_on_vfio_pci_moves_nothing_and_passes() {
        let sim = SimHost::gpu_with_nvme_in_group();
        sim.set_driver(NVME, Some(VFIO_PCI));
        assert_eq!(
            bind(&sim, false),
            Ok(vec![
                "0000:41:00.0 10de:2331 group 40: nvidia → vfio-pci".to_owned()
            ])
        );
    }

    /// Every function that would move is checked, whatever its driver, even when forced.
    #[test]
    fn a_function_in_use_is_refused_whatever_its_driver() {
        type Setup = fn(&mut SimHost);
        let cases: [(&str, Setup, &str); 8] = [
            (
                "a partition held open",
                |sim| sim.hold_open(4242, "postgres", "/dev/nvme0n1p1"),
                "0000:42:00.0 is in use by pid 4242 (postgres), which holds /dev/nvme0n1p1 \
                 open; stop it and retry",
            ),
            (
                "the controller's char device held open",
                |sim| sim.hold_open(7, "nvme", "/dev/nvme0"),
                "0000:42:00.0 is in use by pid 7 (nvme), which holds /dev/nvme0 open; stop \
                 it and retry",
            ),
            (
                "a mounted partition",
                |sim| sim.mount("/dev/nvme0n1p1", "/"),
                "0000:42:00.0 is in use: /dev/nvme0n1p1 is mounted on /; unmount it and retry",
            ),
            (
                "a NIC whose interface is up",
                |sim| {
                    sim.add(&Function::nic("0000:43:00.0", 40));
                    sim.add_net_interface("0000:43:00.0", "ens1f0np0", true);
                },
                "0000:43:00.0 is in use: its network interface ens1f0np0 is up; take it down \
                 (ip link set ens1f0np0 down) and retry",
            ),
            (
                "LVM on a partition, its logical volume mounted as /",
                |sim| {
                    sim.add_dm_holder(
                        "0000:42:00.0",
                        "nvme/nvme0/nvme0n1/nvme0n1p1",
                        "dm-0",
                        "vg-root",
                    );
                    sim.mount("/dev/mapper/vg-root", "/");
                },
                "0000:42:00.0 is in use: /dev/mapper/vg-root (/dev/dm-0) is mounted on /; \
                 unmount it and retry",
            ),
            (
                "a logical volume on it held open",
                |sim| {
                    sim.add_dm_holder(
                        "0000:42:00.0",
                        "nvme/nvme0/nvme0n1/nvme0n1p1",
                        "dm-0",
                        "vg-data",
                    );
                    sim.hold_open(31, "postgres", "/dev/dm-0");
                },
                "0000:42:00.0 is in use by pid 31 (postgres), which holds /dev/dm-0 open; stop \
                 it and retry",
            ),
            (
                "a partition used as swap",
                |sim| sim.swap_on("/dev/nvme0n1p1"),
                "0000:42:00.0 is in use: /dev/nvme0n1p1 is swap; swapoff /dev/nvme0n1p1 and retry",
            ),
            (
                "the GPU's audio function held open",
                |sim| {
                    sim.set_driver(NVME, Some(VFIO_PCI));
                    sim.add(&Function {
                        bdf: "0000:41:00.1".to_owned(),
                        vendor: NVIDIA,
                        device: 0x22ba,
                        class: 0x040300,
                        driver: Some("snd_hda_intel".to_owned()),
                        group: Some(40),
                        numa: 0,
                        bars: vec![],
                        pcie: true,
                    });
                    sim.add_device_node("0000:41:00.1", "sound/card1/pcmC1D3p", "snd/pcmC1D3p");
                    sim.hold_open(99, "pipewire", "/dev/snd/pcmC1D3p");
                },
                "0000:41:00.1 is in use by pid 99 (pipewire), which holds /dev/snd/pcmC1D3p \
                 open; stop it and retry",
            ),
        ];
        for (what, setup, refusal) in cases {
            let mut sim = SimHost::gpu_with_nvme_in_group();
            setup(&mut sim);
            assert_eq!(bind(&sim, true), Err(refusal.to_owned()), "{what}");
        }
    }

    /// Inside the DaemonSet, `/proc/mounts` is the container's own table: the host's is
    /// PID 1's, and a mount in another namespace (a container's) holds the disk as well.
    #[test]
    fn mounts_are_the_hosts_and_every_namespaces_not_the_readers() {
        let mut sim = SimHost::gpu_with_nvme_in_group();
        // The reader's own table: an overlay root, none of the host's disks.
        std::fs::write(
            sim.path("proc/mounts"),
            "overlay / overlay rw,relatime 0 0\n",
        )
        .expect("write");
        sim.mount("/dev/nvme0n1p1", "/var/lib/data");
        assert_eq!(
            bind(&sim, true),
            Err(
                "0000:42:00.0 is in use: /dev/nvme0n1p1 is mounted on /var/lib/data; \
                 unmount it and retry"
                    .to_owned()
            )
        );

        sim = SimHost::gpu_with_nvme_in_group();
        sim.hold_open(1, "systemd", "/dev/null");
        sim.mount_in(5150, "/dev/nvme0n1", "/scratch");
        assert_eq!(
            bind(&sim, true),
            Err(
                "0000:42:00.0 is in use: /dev/nvme0n1 is mounted on /scratch; unmount it and \
                 retry"
                    .to_owned()
            )
        );
    }

    #[test]
    fn a_nic_whose_interface_is_down_may_be_forced() {
        let mut sim = SimHost::gpu_with_nvme_in_group();
        sim.add(&Function::nic("0000:43:00.0", 40));
        sim.add_net_interface("0000:43:00.0", "ens1f0np0", false);
        let moves = bind(&sim, true).expect("forced");
        assert_eq!(moves.len(), 3, "{moves:?}");
    }

    #[test]
    fn device_nodes_are_found_without_following_links() {
        let sim = SimHost::gpu_with_nvme_in_group();
        let host = Host::new(sim.root());
        let nvme = NVME.parse().expect("bdf");
        assert_eq!(
            device_nodes(&host, nvme),
            ["/dev/nvme0", "/dev/nvme0n1", "/dev/nvme0n1p1"]
        );
    }
}
