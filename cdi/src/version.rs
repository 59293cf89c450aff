//! Spec versions and the minimum version each feature needs.
//!
//! A runtime that knows only an older version would silently drop a newer feature; the
//! declared `cdiVersion` therefore must be at least what the spec's features require.

use std::fmt;
use std::str::FromStr;

use crate::model::{ContainerEdits, Spec};

/// The CDI spec versions this crate understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpecVersion {
    /// 0.3.0, the earliest supported.
    V0_3_0,
    /// 0.4.0: mount `type`.
    V0_4_0,
    /// 0.5.0: `hostPath` on device nodes, device names starting with a digit.
    V0_5_0,
    /// 0.6.0: annotations, a `.` in the class.
    V0_6_0,
    /// 0.7.0: `intelRdt`, `additionalGids`.
    V0_7_0,
    /// 0.8.0: no new feature.
    V0_8_0,
    /// 1.0.0: no new feature.
    V1_0_0,
    /// 1.1.0: `netDevices`, `intelRdt.schemata` and `enableMonitoring`.
    V1_1_0,
}

impl SpecVersion {
    /// Every supported version, oldest first.
    pub const ALL: [SpecVersion; 8] = [
        SpecVersion::V0_3_0,
        SpecVersion::V0_4_0,
        SpecVersion::V0_5_0,
        SpecVersion::V0_6_0,
        SpecVersion::V0_7_0,
        SpecVersion::V0_8_0,
        SpecVersion::V1_0_0,
        SpecVersion::V1_1_0,
    ];

    /// The newest supported version.
    pub const LATEST: SpecVersion = SpecVersion::V1_1_0;

    /// The version as written in `cdiVersion`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpecVersion::V0_3_0 => "0.3.0",
            SpecVersion::V0_4_0 => "0.4.0",
            SpecVersion::V0_5_0 => "0.5.0",
            SpecVersion::V0_6_0 => "0.6.0",
            SpecVersion::V0_7_0 => "0.7.0",
            SpecVersion::V0_8_0 => "0.8.0",
            SpecVersion::V1_0_0 => "1.0.0",
            SpecVersion::V1_1_0 => "1.1.0",
        }
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `cdiVersion` that is not one of [`SpecVersion::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unsupported cdiVersion {0:?}; supported are 0.3.0, 0.4.0, 0.5.0, 0.6.0, 0.7.0, 0.8.0, 1.0.0 and 1.1.0")]
pub struct UnsupportedVersion(pub String);

impl FromStr for SpecVersion {
    type Err = UnsupportedVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bare = s.strip_prefix('v').unwrap_or(s);
        SpecVersion::ALL
            .into_iter()
            .find(|v| v.as_str() == bare)
            .ok_or_else(|| UnsupportedVersion(s.to_owned()))
    }
}

/// The version a spec needs, and the first feature found that needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The minimum version.
    pub version: SpecVersion,
    /// The feature that raised it, in words; empty for the baseline.
    pub feature: String,
}

fn all_edits(spec: &Spec) -> impl Iterator<Item = &ContainerEdits> {
    std::iter::once(&spec.container_edits).chain(spec.devices.iter().map(|d| &d.container_edits))
}

/// Every (version, feature) the spec uses beyond the baseline, in no particular order.
fn needs(spec: &Spec) -> Vec<(SpecVersion, String)> {
    let mut found = Vec::new();
    for edits in all_edits(spec) {
        if let Some(m) = edits.mounts.iter().find(|m| m.mount_type.is_some()) {
            found.push((
                SpecVersion::V0_4_0,
                format!("mount {:?} sets a type", m.container_path),
            ));
        }
        if let Some(n) = edits.device_nodes.iter().find(|n| n.host_path.is_some()) {
            found.push((
                SpecVersion::V0_5_0,
                format!("device node {:?} sets hostPath", n.path),
            ));
        }
        if let Some(rdt) = &edits.intel_rdt {
            found.push((SpecVersion::V0_7_0, "intelRdt is used".to_owned()));
            if rdt.schemata.is_some() {
                found.push((SpecVersion::V1_1_0, "intelRdt.schemata is used".to_owned()));
            }
            if rdt.enable_monitoring.is_some() {
                found.push((
                    SpecVersion::V1_1_0,
                    "intelRdt.enableMonitoring is used".to_owned(),
                ));
            }
        }
        if !edits.additional_gids.is_empty() {
            found.push((SpecVersion::V0_7_0, "additionalGids is used".to_owned()));
        }
        if !edits.net_devices.is_empty() {
            found.push((SpecVersion::V1_1_0, "netDevices is used".to_owned()));
        }
    }
    if let Some(d) = spec
        .devices
        .iter()
        .find(|d| !d.name.starts_with(|c: char| c.is_ascii_alphabetic()))
    {
        found.push((
            SpecVersion::V0_5_0,
            format!("device name {:?} does not start with a letter", d.name),
        ));
    }
    if !spec.annotations.is_empty() {
        found.push((SpecVersion::V0_6_0, "the spec has annotations".to_owned()));
    }
    if let Some(d) = spec.devices.iter().find(|d| !d.annotations.is_empty()) {
        found.push((
            SpecVersion::V0_6_0,
            format!("device {:?} has annotations", d.name),
        ));
    }
    if let Some((_, class)) = spec.kind.split_once('/') {
        if class.contains('.') {
            found.push((
                SpecVersion::V0_6_0,
                format!("class {class:?} contains a '.'"),
            ));
        }
    }
    found
}

/// The minimum version the features of `spec` require.
pub fn required_version(spec: &Spec) -> Requirement {
    let mut best = Requirement {
        version: SpecVersion::V0_3_0,
        feature: String::new(),
    };
    for (version, feature) in needs(spec) {
        if version > best.version {
            best = Requirement { version, feature };
        }
    }
    best
}

/// Fields that a declared version no longer accepts (`enableCMT`/`enableMBM` from 1.1.0).
pub fn retired_feature(spec: &Spec, declared: SpecVersion) -> Option<&'static str> {
    if declared < SpecVersion::V1_1_0 {
        return None;
    }
    all_edits(spec)
        .filter_map(|e| e.intel_rdt.as_ref())
        .find_map(|rdt| {
            if rdt.enable_cmt.is_some() {
                Some("intelRdt.enableCMT")
            } else if rdt.enable_mbm.is_some() {
                Some("intelRdt.enableMBM")
            } else {
                None
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Device, DeviceNode, IntelRdt, Mount, NetDevice};

    fn spec(kind: &str, name: &str, edits: ContainerEdits) -> Spec {
        Spec {
            cdi_version: "1.1.0".into(),
            kind: kind.into(),
            devices: vec![Device {
                name: name.into(),
                container_edits: edits,
                ..Device::default()
            }],
            ..Spec::default()
        }
    }

    fn env_only() -> ContainerEdits {
        ContainerEdits {
            env: vec!["A=1".into()],
            ..ContainerEdits::default()
        }
    }

    #[test]
    fn versions_parse_with_or_without_v() {
        assert_eq!("0.5.0".parse(), Ok(SpecVersion::V0_5_0));
        assert_eq!("v1.1.0".parse(), Ok(SpecVersion::V1_1_0));
        for bad in ["0.2.0", "2.0.0", "", "abc", "0.5", "vv0.5.0"] {
            assert!(bad.parse::<SpecVersion>().is_err(), "{bad}");
        }
    }

    #[test]
    fn each_feature_raises_the_minimum() {
        let mount_typed = ContainerEdits {
            mounts: vec![Mount {
                host_path: "/a".into(),
                container_path: "/a".into(),
                mount_type: Some("bind".into()),
                ..Mount::default()
            }],
            ..ContainerEdits::default()
        };
        let host_path = ContainerEdits {
            device_nodes: vec![DeviceNode {
                path: "/dev/a".into(),
                host_path: Some("/dev/b".into()),
                ..DeviceNode::default()
            }],
            ..ContainerEdits::default()
        };
        let rdt = ContainerEdits {
            intel_rdt: Some(IntelRdt::default()),
            ..ContainerEdits::default()
        };
        let schemata = ContainerEdits {
            intel_rdt: Some(IntelRdt {
                schemata: Some(vec!["L3:0=f".into()]),
                ..IntelRdt::default()
            }),
            ..ContainerEdits::default()
        };
        let gids = ContainerEdits {
            additional_gids: vec![44],
            ..ContainerEdits::default()
        };
        let net = ContainerEdits {
            net_devices: vec![NetDevice {
                host_interface_name: "eth1".into(),
                name: "net0".into(),
            }],
            ..ContainerEdits::default()
        };
        let mut annotated = spec("a.com/b", "x", env_only());
        annotated.annotations.insert("k".into(), "v".into());
        let table = [
            (spec("a.com/b", "x", env_only()), SpecVersion::V0_3_0),
            (spec("a.com/b", "x", mount_typed), SpecVersion::V0_4_0),
            (spec("a.com/b", "x", host_path), SpecVersion::V0_5_0),
            (spec("a.com/b", "0", env_only()), SpecVersion::V0_5_0),
            (annotated, SpecVersion::V0_6_0),
            (spec("a.com/b.c", "x", env_only()), SpecVersion::V0_6_0),
            (spec("a.com/b", "x", rdt), SpecVersion::V0_7_0),
            (spec("a.com/b", "x", gids), SpecVersion::V0_7_0),
            (spec("a.com/b", "x", schemata), SpecVersion::V1_1_0),
            (spec("a.com/b", "x", net), SpecVersion::V1_1_0),
        ];
        for (s, want) in table {
            let got = required_version(&s);
            assert_eq!(got.version, want, "{s:?}");
            assert_eq!(got.feature.is_empty(), want == SpecVersion::V0_3_0);
        }
    }

    #[test]
    fn retired_rdt_fields_are_found_only_from_1_1_0() {
        let cmt = spec(
            "a.com/b",
            "x",
            ContainerEdits {
                intel_rdt: Some(IntelRdt {
                    enable_cmt: Some(true),
                    ..IntelRdt::default()
                }),
                ..ContainerEdits::default()
            },
        );
        assert_eq!(
            retired_feature(&cmt, SpecVersion::V1_1_0),
            Some("intelRdt.enableCMT")
        );
        assert_eq!(retired_feature(&cmt, SpecVersion::V1_0_0), None);
    }
}
