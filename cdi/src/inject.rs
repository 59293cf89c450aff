//! Applying container edits to an OCI runtime spec.
//!
//! The order follows the reference implementation: for each requested device, the edits of
//! its spec (once per spec) and then its own. Device nodes whose type or numbers are left
//! out are completed by a stat of the host node, read through a root prefix so that tests
//! (and `kata-gpu --host-root`) can use a simulated `/dev`.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Hook as OciHook, Hooks, Linux, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxIntelRdt,
    LinuxNetDevice, LinuxResources, Mount as OciMount, Process, Spec as OciSpec,
};

use crate::model::{ContainerEdits, DeviceNode, Hook, IntelRdt, Mount};

/// Why applying a device's edits failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The host node of a device could not be examined.
    #[error("{owner}: device node {path}: cannot stat host node {}", host.display())]
    Stat {
        /// The device (or spec) whose edits these are.
        owner: String,
        /// The node's container path.
        path: String,
        /// The host node, under the root prefix.
        host: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The host path exists but is not a device node or FIFO.
    #[error("{owner}: device node {path}: host path {} is not a device node", host.display())]
    NotADevice {
        /// The device whose edits these are.
        owner: String,
        /// The node's container path.
        path: String,
        /// The host path, under the root prefix.
        host: PathBuf,
    },
    /// The spec names one node type and the host has another.
    #[error("{owner}: device node {path}: the spec says type {declared} but the host node is type {found}")]
    TypeMismatch {
        /// The device whose edits these are.
        owner: String,
        /// The node's container path.
        path: String,
        /// The type in the spec.
        declared: String,
        /// The type on the host.
        found: String,
    },
}

/// Splits a Linux `dev_t` into major and minor numbers (the glibc encoding).
pub fn split_dev(dev: u64) -> (i64, i64) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    // Both fit in 32 bits by construction.
    (major as i64, minor as i64)
}

/// The path `abs` under `root`: `/dev/x` under `/tmp/host` is `/tmp/host/dev/x`.
pub fn under_root(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// Fills in type, major and minor of a node from its host node when the spec leaves them out.
fn complete_node(
    node: &DeviceNode,
    owner: &str,
    dev_root: &Path,
) -> Result<DeviceNode, ApplyError> {
    let mut node = node.clone();
    let host = node.host_path.clone().unwrap_or_else(|| node.path.clone());
    if node.device_type.as_deref() == Some("") {
        node.device_type = None;
    }
    let typed = node.device_type.as_deref();
    if typed.is_some() && (node.major.is_some_and(|m| m != 0) || typed == Some("p")) {
        return Ok(node);
    }
    let host_path = under_root(dev_root, &host);
    let meta = std::fs::metadata(&host_path).map_err(|source| ApplyError::Stat {
        owner: owner.to_owned(),
        path: node.path.clone(),
        host: host_path.clone(),
        source,
    })?;
    let ft = meta.file_type();
    let (found, major, minor) = if ft.is_char_device() {
        let (ma, mi) = split_dev(meta.rdev());
        ("c", ma, mi)
    } else if ft.is_block_device() {
        let (ma, mi) = split_dev(meta.rdev());
        ("b", ma, mi)
    } else if ft.is_fifo() {
        ("p", 0, 0)
    } else {
        return Err(ApplyError::NotADevice {
            owner: owner.to_owned(),
            path: node.path.clone(),
            host: host_path,
        });
    };
    match node.device_type.as_deref() {
        None => node.device_type = Some(found.to_owned()),
        Some(declared) if declared != found => {
            return Err(ApplyError::TypeMismatch {
                owner: owner.to_owned(),
                path: node.path.clone(),
                declared: declared.to_owned(),
                found: found.to_owned(),
            })
        }
        Some(_) => {}
    }
    if node.major.is_none_or(|m| m == 0) && found != "p" {
        node.major = Some(major);
        node.minor = Some(minor);
    }
    Ok(node)
}

fn device_type(t: Option<&str>) -> LinuxDeviceType {
    match t {
        Some("b") => LinuxDeviceType::B,
        Some("u") => LinuxDeviceType::U,
        Some("p") => LinuxDeviceType::P,
        _ => LinuxDeviceType::C,
    }
}

fn linux(spec: &mut OciSpec) -> &mut Linux {
    spec.linux_mut().get_or_insert_with(Linux::default)
}

fn add_env(process: &mut Process, entries: &[String]) {
    let env = process.env_mut().get_or_insert_with(Vec::new);
    for entry in entries {
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
        match env
            .iter_mut()
            .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
        {
            Some(existing) => existing.clone_from(entry),
            None => env.push(entry.clone()),
        }
    }
}

fn add_device_node(spec: &mut OciSpec, node: &DeviceNode) {
    let (uid, gid) = spec
        .process()
        .as_ref()
        .map_or((0, 0), |p| (p.user().uid(), p.user().gid()));
    let typ = device_type(node.device_type.as_deref());
    let mut dev = LinuxDevice::default();
    dev.set_path(PathBuf::from(&node.path));
    dev.set_typ(typ);
    dev.set_major(node.major.unwrap_or(0));
    dev.set_minor(node.minor.unwrap_or(0));
    dev.set_file_mode(node.file_mode);
    dev.set_uid(node.uid.or((uid > 0).then_some(uid)));
    dev.set_gid(node.gid.or((gid > 0).then_some(gid)));

    let linux = linux(spec);
    if matches!(typ, LinuxDeviceType::B | LinuxDeviceType::C) {
        let access = match node.permissions.as_deref() {
            None | Some("") => "rwm".to_owned(),
            Some("none") => String::new(),
            Some(p) => p.to_owned(),
        };
        let mut rule = LinuxDeviceCgroup::default();
        rule.set_allow(true);
        rule.set_typ(Some(typ));
        rule.set_major(Some(dev.major()));
        rule.set_minor(Some(dev.minor()));
        rule.set_access(Some(access));
        let resources = linux
            .resources_mut()
            .get_or_insert_with(LinuxResources::default);
        resources
            .devices_mut()
            .get_or_insert_with(Vec::new)
            .push(rule);
    }
    let devices = linux.devices_mut().get_or_insert_with(Vec::new);
    devices.retain(|d| d.path() != dev.path());
    devices.push(dev);
}

fn to_oci_mount(m: &Mount) -> OciMount {
    let mut mount = OciMount::default();
    mount.set_destination(PathBuf::from(&m.container_path));
    mount.set_source(Some(PathBuf::from(&m.host_path)));
    mount.set_typ(m.mount_type.clone());
    mount.set_options((!m.options.is_empty()).then(|| m.options.clone()));
    mount
}

fn to_oci_hook(h: &Hook) -> OciHook {
    let mut hook = OciHook::default();
    hook.set_path(PathBuf::from(&h.path));
    hook.set_args((!h.args.is_empty()).then(|| h.args.clone()));
    hook.set_env((!h.env.is_empty()).then(|| h.env.clone()));
    hook.set_timeout(h.timeout);
    hook
}

fn add_hook(spec: &mut OciSpec, h: &Hook) {
    let hooks = spec.hooks_mut().get_or_insert_with(Hooks::default);
    let list = match h.hook_name.as_str() {
        "prestart" =>
        {
            #[allow(deprecated)]
            hooks.prestart_mut()
        }
        "createRuntime" => hooks.create_runtime_mut(),
        "createContainer" => hooks.create_container_mut(),
        "startContainer" => hooks.start_container_mut(),
        "poststart" => hooks.poststart_mut(),
        // Validation admits only the six names; the last is poststop.
        _ => hooks.poststop_mut(),
    };
    list.get_or_insert_with(Vec::new).push(to_oci_hook(h));
}

#[allow(deprecated)]
fn to_oci_rdt(r: &IntelRdt) -> LinuxIntelRdt {
    let mut rdt = LinuxIntelRdt::default();
    rdt.set_clos_id(r.clos_id.clone());
    rdt.set_l3_cache_schema(r.l3_cache_schema.clone());
    rdt.set_mem_bw_schema(r.mem_bw_schema.clone());
    rdt.set_schemata(r.schemata.clone());
    rdt.set_enable_monitoring(r.enable_monitoring);
    rdt.set_enable_cmt(r.enable_cmt);
    rdt.set_enable_mbm(r.enable_mbm);
    rdt
}

/// Depth of a mount destination, for the parent-before-child order runtimes need. Counts
/// as Go's reference does (`len(strings.Split(path, "/"))`), where `/` and `/proc` tie.
fn mount_depth(m: &OciMount) -> usize {
    let n = m.destination().components().count();
    if m.destination().has_root() {
        n.max(2)
    } else {
        n
    }
}

/// Applies edits, in order, to `spec`. Each entry carries the name of its owner (a device
/// or a spec) for error messages. On error `spec` is left exactly as it was.
pub fn apply_edits(
    spec: &mut OciSpec,
    edits: &[(String, &ContainerEdits)],
    dev_root: &Path,
) -> Result<(), ApplyError> {
    // Complete every node first: the only step that can fail, done before any change.
    let mut nodes = Vec::new();
    for (owner, e) in edits {
        for node in &e.device_nodes {
            nodes.push(complete_node(node, owner, dev_root)?);
        }
    }
    let mut nodes = nodes.into_iter();
    let mut mounts_added = false;
    for (_, e) in edits {
        if !e.env.is_empty() {
            add_env(
                spec.process_mut().get_or_insert_with(Process::default),
                &e.env,
            );
        }
        for node in nodes.by_ref().take(e.device_nodes.len()) {
            add_device_node(spec, &node);
        }
        for net in &e.net_devices {
            let mut dev = LinuxNetDevice::default();
            dev.set_name(Some(net.name.clone()));
            linux(spec)
                .net_devices_mut()
                .get_or_insert_with(Default::default)
                .insert(net.host_interface_name.clone(), dev);
        }
        for m in &e.mounts {
            let mounts = spec.mounts_mut().get_or_insert_with(Vec::new);
            mounts.retain(|x| x.destination().as_path() != Path::new(&m.container_path));
            mounts.push(to_oci_mount(m));
            mounts_added = true;
        }
        for h in &e.hooks {
            add_hook(spec, h);
        }
        if let Some(rdt) = &e.intel_rdt {
            linux(spec).set_intel_rdt(Some(to_oci_rdt(rdt)));
        }
        for gid in e.additional_gids.iter().copied().filter(|g| *g > 0) {
            let process = spec.process_mut().get_or_insert_with(Process::default);
            let gids = process
                .user_mut()
                .additional_gids_mut()
                .get_or_insert_with(Vec::new);
            if !gids.contains(&gid) {
                gids.push(gid);
            }
        }
    }
    if mounts_added {
        if let Some(mounts) = spec.mounts_mut() {
            mounts.sort_by_key(mount_depth);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_numbers_split_like_glibc() {
        // makedev(1, 3) and makedev(4097, 70000) in glibc's encoding.
        assert_eq!(split_dev(0x0103), (1, 3));
        let (major, minor) = (4097u64, 70000u64);
        let dev: u64 = ((major & 0xfff) << 8)
            | ((major & !0xfff) << 32)
            | (minor & 0xff)
            | ((minor & !0xff) << 12);
        assert_eq!(split_dev(dev), (4097, 70000));
    }

    #[test]
    fn roots_prefix_absolute_paths() {
        assert_eq!(
            under_root(Path::new("/tmp/h"), "/dev/vfio/1"),
            PathBuf::from("/tmp/h/dev/vfio/1")
        );
        assert_eq!(
            under_root(Path::new("/"), "/dev/null"),
            PathBuf::from("/dev/null")
        );
    }

    #[test]
    fn env_replaces_existing_keys_and_appends_new_ones() {
        let mut p = Process::default();
        p.set_env(Some(vec!["PATH=/bin".into(), "A=1".into()]));
        add_env(
            &mut p,
            &["A=2".into(), "B=3".into(), "PATH=/usr/bin".into()],
        );
        assert_eq!(
            p.env().clone().unwrap_or_default(),
            ["PATH=/usr/bin", "A=2", "B=3"]
        );
    }

    #[test]
    fn a_missing_host_node_fails_before_anything_changes() {
        let mut spec = OciSpec::default();
        let before = spec.clone();
        let edits = ContainerEdits {
            env: vec!["A=1".into()],
            device_nodes: vec![DeviceNode {
                path: "/dev/vfio/devices/vfio9".into(),
                ..DeviceNode::default()
            }],
            ..ContainerEdits::default()
        };
        let root = tempfile::tempdir().expect("tempdir");
        let err = apply_edits(
            &mut spec,
            &[("nvidia.com/pgpu=9".into(), &edits)],
            root.path(),
        )
        .expect_err("no such node");
        assert!(
            err.to_string().contains(
                "nvidia.com/pgpu=9: device node /dev/vfio/devices/vfio9: cannot stat host node"
            ),
            "{err}"
        );
        assert_eq!(spec, before);
    }

    #[test]
    fn nodes_are_completed_from_the_host() {
        let mut spec = OciSpec::default();
        let edits = ContainerEdits {
            device_nodes: vec![DeviceNode {
                path: "/dev/null".into(),
                permissions: Some("rw".into()),
                ..DeviceNode::default()
            }],
            ..ContainerEdits::default()
        };
        apply_edits(&mut spec, &[("x".into(), &edits)], Path::new("/")).expect("applies");
        let linux = spec.linux().as_ref().expect("linux");
        let dev = linux
            .devices()
            .as_ref()
            .and_then(|d| d.iter().find(|d| d.path() == Path::new("/dev/null")))
            .expect("node added");
        assert_eq!(
            (dev.typ(), dev.major(), dev.minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        let rule = linux
            .resources()
            .as_ref()
            .and_then(|r| r.devices().as_ref())
            .and_then(|d| d.last())
            .expect("cgroup rule");
        assert_eq!(rule.access().as_deref(), Some("rw"));
        assert_eq!((rule.major(), rule.minor()), (Some(1), Some(3)));

        let mismatch = ContainerEdits {
            device_nodes: vec![DeviceNode {
                path: "/dev/null".into(),
                device_type: Some("b".into()),
                ..DeviceNode::default()
            }],
            ..ContainerEdits::default()
        };
        let err = apply_edits(&mut spec, &[("x".into(), &mismatch)], Path::new("/"))
            .expect_err("type mismatch");
        assert!(matches!(err, ApplyError::TypeMismatch { .. }), "{err}");
    }
}
