//! The rules a parsed spec must follow before any of its devices may be injected.
//!
//! Where the CDI specification is loose and a loose reading would let a spec reach outside
//! what a device needs, we are stricter: device nodes only from `/dev`, absolute container
//! paths, absolute hook executables. The crate's README lists each such choice.

use std::collections::HashSet;
use std::path::{Component, Path};

use crate::annotations::validate_annotations;
use crate::error::{PathProblem, Problem, SpecError};
use crate::model::{ContainerEdits, DeviceNode, Hook, Mount, NetDevice, Spec};
use crate::name::{parse_kind, validate_device_name};
use crate::version::{required_version, retired_feature, SpecVersion};

/// The six OCI hook points a CDI hook may name.
pub const HOOK_NAMES: [&str; 6] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// Checks an absolute path without `.`/`..` components or NUL bytes.
pub fn check_absolute_path(path: &str) -> Result<(), PathProblem> {
    if path.is_empty() {
        return Err(PathProblem::Empty);
    }
    if path.contains('\0') {
        return Err(PathProblem::Nul);
    }
    if !path.starts_with('/') {
        return Err(PathProblem::NotAbsolute);
    }
    // `Path::components` drops interior `.`, so look at the raw segments.
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(PathProblem::DotComponent);
    }
    Ok(())
}

/// Checks a device node path: absolute, clean, and strictly under `/dev`.
pub fn check_device_path(path: &str) -> Result<(), PathProblem> {
    check_absolute_path(path)?;
    let mut components = Path::new(path).components();
    let under_dev = components.next() == Some(Component::RootDir)
        && components.next() == Some(Component::Normal("dev".as_ref()))
        && components.next().is_some();
    if under_dev {
        Ok(())
    } else {
        Err(PathProblem::OutsideDev)
    }
}

fn check_env(env: &[String]) -> Result<(), Problem> {
    match env
        .iter()
        .find(|e| e.split_once('=').is_none_or(|(k, _)| k.is_empty()))
    {
        Some(bad) => Err(Problem::Env(bad.clone())),
        None => Ok(()),
    }
}

fn check_device_node(node: &DeviceNode) -> Result<(), Problem> {
    let path_problem = |field, path: &str, problem| Problem::DeviceNodePath {
        field,
        path: path.to_owned(),
        problem,
    };
    check_device_path(&node.path).map_err(|p| path_problem("path", &node.path, p))?;
    if let Some(host) = &node.host_path {
        check_device_path(host).map_err(|p| path_problem("hostPath", host, p))?;
    }
    if let Some(t) = &node.device_type {
        if !matches!(t.as_str(), "" | "c" | "b" | "u" | "p") {
            return Err(Problem::DeviceNodeType {
                path: node.path.clone(),
                device_type: t.clone(),
            });
        }
    }
    for (field, value) in [("major", node.major), ("minor", node.minor)] {
        if let Some(value) = value.filter(|v| *v < 0) {
            return Err(Problem::DeviceNumber {
                path: node.path.clone(),
                field,
                value,
            });
        }
    }
    if let Some(perms) = &node.permissions {
        if perms != "none" && !perms.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(Problem::Permissions {
                path: node.path.clone(),
                permissions: perms.clone(),
            });
        }
    }
    if let Some(mode) = node.file_mode {
        if mode & !0o7777 != 0 {
            return Err(Problem::FileMode {
                path: node.path.clone(),
                mode,
            });
        }
    }
    Ok(())
}

fn check_hook(hook: &Hook) -> Result<(), Problem> {
    if !HOOK_NAMES.contains(&hook.hook_name.as_str()) {
        return Err(Problem::HookName(hook.hook_name.clone()));
    }
    check_absolute_path(&hook.path).map_err(|problem| Problem::HookPath {
        hook: hook.hook_name.clone(),
        path: hook.path.clone(),
        problem,
    })?;
    check_env(&hook.env).map_err(|e| match e {
        Problem::Env(entry) => Problem::HookEnv {
            hook: hook.hook_name.clone(),
            entry,
        },
        other => other,
    })?;
    if let Some(timeout) = hook.timeout {
        if timeout <= 0 {
            return Err(Problem::HookTimeout {
                hook: hook.hook_name.clone(),
                timeout,
            });
        }
    }
    Ok(())
}

fn check_mount(mount: &Mount) -> Result<(), Problem> {
    check_absolute_path(&mount.container_path).map_err(|problem| Problem::MountContainerPath {
        path: mount.container_path.clone(),
        problem,
    })?;
    if mount.host_path.is_empty() {
        return Err(Problem::MountHostPath {
            container_path: mount.container_path.clone(),
        });
    }
    Ok(())
}

fn check_net_devices(devices: &[NetDevice]) -> Result<(), Problem> {
    let mut hosts = HashSet::new();
    let mut names = HashSet::new();
    let iface_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 15
            && !n.contains(['/', ':', '\0'])
            && !n.contains(char::is_whitespace)
    };
    for dev in devices {
        for (field, value) in [
            ("hostInterfaceName", &dev.host_interface_name),
            ("name", &dev.name),
        ] {
            if !iface_ok(value) {
                return Err(Problem::NetDevice(format!(
                    "{field} {value:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"
                )));
            }
        }
        if !hosts.insert(&dev.host_interface_name) {
            return Err(Problem::NetDevice(format!(
                "hostInterfaceName {:?} is listed twice",
                dev.host_interface_name
            )));
        }
        if !names.insert(&dev.name) {
            return Err(Problem::NetDevice(format!(
                "name {:?} is listed twice",
                dev.name
            )));
        }
    }
    Ok(())
}

/// Checks one set of edits (of the spec or of a device).
pub fn check_edits(edits: &ContainerEdits) -> Result<(), Problem> {
    check_env(&edits.env)?;
    edits.device_nodes.iter().try_for_each(check_device_node)?;
    edits.hooks.iter().try_for_each(check_hook)?;
    edits.mounts.iter().try_for_each(check_mount)?;
    if let Some(rdt) = &edits.intel_rdt {
        if let Some(clos) = &rdt.clos_id {
            if clos.len() >= 4096 || clos == "." || clos == ".." || clos.contains(['/', '\n']) {
                return Err(Problem::ClosId(clos.clone()));
            }
        }
    }
    check_net_devices(&edits.net_devices)
}

/// Checks every rule on a parsed spec; `file` only labels the error.
pub fn validate_spec(spec: &Spec, file: Option<&Path>) -> Result<(), SpecError> {
    let at = |device: Option<&str>, problem: Problem| SpecError {
        file: file.map(Path::to_path_buf),
        device: device.map(str::to_owned),
        problem,
    };
    let declared: SpecVersion = spec
        .cdi_version
        .parse()
        .map_err(|e| at(None, Problem::Version(e)))?;
    parse_kind(&spec.kind).map_err(|problem| {
        at(
            None,
            Problem::Kind {
                kind: spec.kind.clone(),
                problem: Box::new(problem),
            },
        )
    })?;
    validate_annotations(&spec.annotations).map_err(|e| at(None, e.into()))?;
    check_edits(&spec.container_edits).map_err(|e| at(None, e))?;
    if spec.devices.is_empty() {
        return Err(at(None, Problem::NoDevices));
    }
    let mut seen = HashSet::new();
    for device in &spec.devices {
        let here = |problem| at(Some(&device.name), problem);
        validate_device_name(&device.name).map_err(|e| here(Problem::DeviceName(e)))?;
        if !seen.insert(device.name.as_str()) {
            return Err(here(Problem::DuplicateDevice));
        }
        validate_annotations(&device.annotations).map_err(|e| here(e.into()))?;
        if device.container_edits.is_empty() {
            return Err(here(Problem::EmptyEdits));
        }
        check_edits(&device.container_edits).map_err(here)?;
    }
    let required = required_version(spec);
    if required.version > declared {
        return Err(at(
            None,
            Problem::VersionTooLow {
                declared,
                required: required.version,
                feature: required.feature,
            },
        ));
    }
    if let Some(field) = retired_feature(spec, declared) {
        return Err(at(None, Problem::RetiredField { field, declared }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Device, IntelRdt};

    fn base() -> Spec {
        Spec {
            cdi_version: "1.1.0".into(),
            kind: "nvidia.com/pgpu".into(),
            devices: vec![Device {
                name: "gpu0".into(),
                container_edits: ContainerEdits {
                    device_nodes: vec![DeviceNode {
                        path: "/dev/vfio/devices/vfio0".into(),
                        ..DeviceNode::default()
                    }],
                    ..ContainerEdits::default()
                },
                ..Device::default()
            }],
            ..Spec::default()
        }
    }

    fn with_device_edits(f: impl FnOnce(&mut ContainerEdits)) -> Spec {
        let mut s = base();
        f(&mut s.devices[0].container_edits);
        s
    }

    fn node(path: &str) -> DeviceNode {
        DeviceNode {
            path: path.into(),
            ..DeviceNode::default()
        }
    }

    #[test]
    fn a_good_spec_passes() {
        validate_spec(&base(), None).expect("valid");
    }

    #[test]
    fn every_rule_has_its_message() {
        let file = Path::new("/etc/cdi/x.yaml");
        let table: Vec<(Spec, Option<&str>, &str)> = vec![
            (
                Spec {
                    cdi_version: "0.2.0".into(),
                    ..base()
                },
                None,
                "unsupported cdiVersion \"0.2.0\"",
            ),
            (
                Spec {
                    kind: "nvidia.com".into(),
                    ..base()
                },
                None,
                "kind: \"nvidia.com\" is not of the form vendor/class",
            ),
            (
                Spec {
                    kind: "nvidia.com/".into(),
                    ..base()
                },
                None,
                "kind \"nvidia.com/\": class is empty",
            ),
            (
                with_device_edits(|e| {
                    e.device_nodes = vec![DeviceNode {
                        device_type: Some("c".into()),
                        major: Some(-1),
                        minor: Some(0),
                        ..node("/dev/any")
                    }]
                }),
                Some("gpu0"),
                "major -1 is negative",
            ),
            (
                with_device_edits(|e| {
                    e.hooks = vec![Hook {
                        hook_name: "prestart".into(),
                        path: "/bin/true".into(),
                        env: vec!["BROKEN".into()],
                        ..Hook::default()
                    }]
                }),
                Some("gpu0"),
                "hook prestart: env entry \"BROKEN\"",
            ),
            (
                Spec {
                    devices: vec![],
                    ..base()
                },
                None,
                "defines no devices",
            ),
            (
                {
                    let mut s = base();
                    s.devices.push(s.devices[0].clone());
                    s
                },
                Some("gpu0"),
                "defined more than once",
            ),
            (
                {
                    let mut s = base();
                    s.devices[0].name = "gpu/0".into();
                    s
                },
                Some("gpu/0"),
                "contains '/'",
            ),
            (
                with_device_edits(|e| *e = ContainerEdits::default()),
                Some("gpu0"),
                "no containerEdits",
            ),
            (
                with_device_edits(|e| e.env = vec!["NOEQUALS".into()]),
                Some("gpu0"),
                "env entry \"NOEQUALS\"",
            ),
            (
                with_device_edits(|e| e.env = vec!["=v".into()]),
                Some("gpu0"),
                "env entry \"=v\"",
            ),
            (
                with_device_edits(|e| e.device_nodes = vec![node("dev/x")]),
                Some("gpu0"),
                "must be absolute",
            ),
            (
                with_device_edits(|e| e.device_nodes = vec![node("")]),
                Some("gpu0"),
                "the path is empty",
            ),
            (
                with_device_edits(|e| e.device_nodes = vec![node("/etc/shadow")]),
                Some("gpu0"),
                "device nodes must be under /dev",
            ),
            (
                with_device_edits(|e| e.device_nodes = vec![node("/dev")]),
                Some("gpu0"),
                "device nodes must be under /dev",
            ),
            (
                with_device_edits(|e| e.device_nodes = vec![node("/dev/../etc/shadow")]),
                Some("gpu0"),
                "'.' or '..'",
            ),
            (
                with_device_edits(|e| {
                    e.device_nodes = vec![DeviceNode {
                        host_path: Some("/tmp/fake".into()),
                        ..node("/dev/x")
                    }]
                }),
                Some("gpu0"),
                "hostPath \"/tmp/fake\": device nodes must be under /dev",
            ),
            (
                with_device_edits(|e| {
                    e.device_nodes = vec![DeviceNode {
                        device_type: Some("x".into()),
                        ..node("/dev/x")
                    }]
                }),
                Some("gpu0"),
                "type \"x\" is not one of",
            ),
            (
                with_device_edits(|e| {
                    e.device_nodes = vec![DeviceNode {
                        permissions: Some("rwx".into()),
                        ..node("/dev/x")
                    }]
                }),
                Some("gpu0"),
                "permissions \"rwx\"",
            ),
            (
                with_device_edits(|e| {
                    e.device_nodes = vec![DeviceNode {
                        file_mode: Some(0o20_000_666),
                        ..node("/dev/x")
                    }]
                }),
                Some("gpu0"),
                "fileMode",
            ),
            (
                with_device_edits(|e| {
                    e.hooks = vec![Hook {
                        hook_name: "preStart".into(),
                        path: "/bin/true".into(),
                        ..Hook::default()
                    }]
                }),
                Some("gpu0"),
                "hook name \"preStart\"",
            ),
            (
                with_device_edits(|e| {
                    e.hooks = vec![Hook {
                        hook_name: "prestart".into(),
                        path: "true".into(),
                        ..Hook::default()
                    }]
                }),
                Some("gpu0"),
                "hook prestart: path \"true\": the path must be absolute",
            ),
            (
                with_device_edits(|e| {
                    e.hooks = vec![Hook {
                        hook_name: "poststop".into(),
                        path: "/bin/true".into(),
                        timeout: Some(0),
                        ..Hook::default()
                    }]
                }),
                Some("gpu0"),
                "timeout 0",
            ),
            (
                with_device_edits(|e| {
                    e.mounts = vec![Mount {
                        host_path: "/usr/lib".into(),
                        container_path: "usr/lib".into(),
                        ..Mount::default()
                    }]
                }),
                Some("gpu0"),
                "mount containerPath \"usr/lib\": the path must be absolute",
            ),
            (
                with_device_edits(|e| {
                    e.mounts = vec![Mount {
                        host_path: String::new(),
                        container_path: "/usr/lib".into(),
                        ..Mount::default()
                    }]
                }),
                Some("gpu0"),
                "hostPath is empty",
            ),
            (
                with_device_edits(|e| {
                    e.intel_rdt = Some(IntelRdt {
                        clos_id: Some("..".into()),
                        ..IntelRdt::default()
                    })
                }),
                Some("gpu0"),
                "intelRdt.closID \"..\"",
            ),
            (
                with_device_edits(|e| {
                    e.net_devices = vec![
                        NetDevice {
                            host_interface_name: "eth1".into(),
                            name: "a".into(),
                        },
                        NetDevice {
                            host_interface_name: "eth1".into(),
                            name: "b".into(),
                        },
                    ]
                }),
                Some("gpu0"),
                "hostInterfaceName \"eth1\" is listed twice",
            ),
            (
                {
                    let mut s = base();
                    s.annotations.insert("bad key!".into(), "v".into());
                    s
                },
                None,
                "annotation key \"bad key!\"",
            ),
            (
                {
                    let mut s = base();
                    s.cdi_version = "0.4.0".into();
                    s.devices[0].name = "0".into();
                    s
                },
                None,
                "cdiVersion 0.4.0 is too low: device name \"0\" does not start with a letter, which needs 0.5.0",
            ),
            (
                with_device_edits(|e| {
                    e.intel_rdt = Some(IntelRdt {
                        enable_mbm: Some(true),
                        ..IntelRdt::default()
                    })
                }),
                None,
                "intelRdt.enableMBM is not valid from cdiVersion 1.1.0",
            ),
        ];
        for (spec, device, want) in table {
            let err = validate_spec(&spec, Some(file)).expect_err(want);
            assert_eq!(err.device.as_deref(), device, "{want}");
            let text = err.to_string();
            assert!(text.starts_with("/etc/cdi/x.yaml: "), "{text}");
            assert!(text.contains(want), "want {want:?} in {text:?}");
            if let Some(d) = device {
                assert!(text.contains(&format!("device {d:?}")), "{text}");
            }
        }
    }

    #[test]
    fn spec_level_edits_are_checked_too() {
        let mut s = base();
        s.container_edits.env = vec!["X".into()];
        let err = validate_spec(&s, None).expect_err("bad env");
        assert_eq!(err.device, None);
        assert_eq!(err.problem, Problem::Env("X".into()));
    }

    #[test]
    fn device_paths() {
        for ok in [
            "/dev/null",
            "/dev/vfio/devices/vfio0",
            "/dev/vfio/65",
            "/dev/iommu",
        ] {
            assert_eq!(check_device_path(ok), Ok(()), "{ok}");
        }
        let bad = [
            ("", PathProblem::Empty),
            ("dev/null", PathProblem::NotAbsolute),
            ("/dev/", PathProblem::OutsideDev),
            ("/devx/null", PathProblem::OutsideDev),
            ("/dev/./null", PathProblem::DotComponent),
            ("/dev/vfio/../../etc", PathProblem::DotComponent),
            ("/dev/nu\0ll", PathProblem::Nul),
        ];
        for (path, want) in bad {
            assert_eq!(check_device_path(path), Err(want), "{path:?}");
        }
    }
}
