//! Devices kubelet allocated to a pod, made the sandbox's whole device set: the plan (and
//! Kata, reading the same annotations) sees exactly them. A pod's own `cdi.k8s.io/*`
//! annotation is at most a restatement of that set: naming more devices, or other kinds,
//! than were allocated is refused; naming as many devices of the allocated kinds under
//! other ids (NVIDIA's documented pod says `nvidia.com/pgpu=0` and asks one GPU through its
//! limits) runs on the allocation, with a note for the log. Pure: the caller asks kubelet.
//!
//! Devices are compared by what they give: the host device nodes of their CDI edits (a
//! name the registry does not know, or whose edits have no node, stands for itself), so
//! two names of one device (index, IOMMU group, `vfioN`) are one device.

use std::collections::{BTreeMap, BTreeSet};

use cdi::{parse_cdi_annotations, AnnotationError, QualifiedName, Registry, CDI_ANNOTATION_PREFIX};
use oci_spec::runtime::Spec as OciSpec;

use crate::host_spec::{NVSWITCH_KIND, PGPU_KIND};

/// The annotation the allocation is written under on the sandbox.
pub const ALLOCATED_ANNOTATION: &str = "cdi.k8s.io/kata-gpu-allocated";

/// The CDI kinds a sandbox may be given: ours.
pub const OUR_KINDS: [&str; 2] = [PGPU_KIND, NVSWITCH_KIND];

/// Why a sandbox's devices and its pod's allocation do not go together.
#[derive(Debug, thiserror::Error)]
pub enum AllocationError {
    /// The pod's `cdi.k8s.io/*` annotations are malformed.
    #[error("pod annotation: {0}")]
    Annotation(#[from] AnnotationError),
    /// The pod set the key the shim writes.
    #[error("{who} sets {ALLOCATED_ANNOTATION}, which only the kata-gpu shim writes (from kubelet's allocation); remove it and ask for devices through resources.limits")]
    PodSetAllocated {
        /// The pod (or sandbox), in words.
        who: String,
    },
    /// Devices named by annotation, nothing allocated.
    #[error("pod {pod} names {annotated} in its cdi.k8s.io/* annotations but kubelet allocated it no device; an annotation grants nothing on this node: ask through resources.limits (the device plugin's resources)")]
    NotAllocated {
        /// `namespace/name`.
        pod: String,
        /// The names annotated.
        annotated: String,
    },
    /// More devices, or other kinds, named than allocated.
    #[error("pod {pod} names {annotated} in its cdi.k8s.io/* annotations, more devices or other kinds than kubelet allocated it ({allocated}); ask through resources.limits and name at most those devices in an annotation, or none")]
    BeyondAllocation {
        /// `namespace/name`.
        pod: String,
        /// The names annotated.
        annotated: String,
        /// The names allocated.
        allocated: String,
    },
    /// A VFIO node in the sandbox's spec that the allocation does not give.
    #[error("the sandbox of {who} has {node} in its spec, which kubelet did not allocate it (allocated: {allocated}); ask for the device through resources.limits")]
    SpecNode {
        /// The pod (or sandbox), in words.
        who: String,
        /// The node.
        node: String,
        /// The names allocated, or "none".
        allocated: String,
    },
    /// A sandbox that is no kubelet pod asks for devices on a node where kubelet decides.
    #[error("sandbox {sandbox} asks for {asked} but is not a kubelet pod (no io.kubernetes.cri.sandbox-name/-namespace), and on this node devices come from kubelet's allocation; on a node without kubelet set device_source = \"annotations\" in the kata-gpu shim settings")]
    NotAPod {
        /// The sandbox id.
        sandbox: String,
        /// What it asks for.
        asked: String,
    },
}

/// What [`grant`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// Whether the spec changed (the pod's annotations replaced by the allocation).
    pub changed: bool,
    /// For the log: the pod named other ids than it was allocated, and runs on the allocation.
    pub note: Option<String>,
}

/// Names as one comma-separated annotation value.
pub fn list(names: &[QualifiedName]) -> String {
    names
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn list_or_none(names: &[QualifiedName]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        list(names)
    }
}

/// The host device nodes a device's CDI edits give (its spec's and its own).
pub fn host_nodes(registry: &Registry, name: &QualifiedName) -> BTreeSet<String> {
    let Some(d) = registry.get(name) else {
        return BTreeSet::new();
    };
    d.spec
        .spec
        .container_edits
        .device_nodes
        .iter()
        .chain(&d.device.container_edits.device_nodes)
        .map(|n| n.host_path.clone().unwrap_or_else(|| n.path.clone()))
        .collect()
}

/// One device, as what it gives: its host nodes, or its name when it gives none.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Given {
    Nodes(BTreeSet<String>),
    Name(String),
}

/// The distinct devices `names` stand for, per kind.
fn devices(registry: &Registry, names: &[QualifiedName]) -> BTreeMap<String, BTreeSet<Given>> {
    let mut out: BTreeMap<String, BTreeSet<Given>> = BTreeMap::new();
    for n in names {
        let nodes = host_nodes(registry, n);
        let given = if nodes.is_empty() {
            Given::Name(n.to_string())
        } else {
            Given::Nodes(nodes)
        };
        out.entry(n.kind()).or_default().insert(given);
    }
    out
}

fn is_vfio_node(path: &str) -> bool {
    path.starts_with("/dev/vfio/") && path != "/dev/vfio/vfio"
}

/// The VFIO nodes already in a spec's `linux.devices`.
pub fn spec_vfio_nodes(spec: &OciSpec) -> Vec<String> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
        .map(|d| d.path().display().to_string())
        .filter(|p| is_vfio_node(p))
        .collect()
}

/// What `edits` do beyond giving device nodes, in words; empty when nothing.
fn beyond_nodes(edits: &cdi::model::ContainerEdits) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !edits.env.is_empty() {
        out.push("env");
    }
    if !edits.hooks.is_empty() {
        out.push("hooks");
    }
    if !edits.mounts.is_empty() {
        out.push("mounts");
    }
    if !edits.net_devices.is_empty() {
        out.push("netDevices");
    }
    if edits.intel_rdt.is_some() {
        out.push("intelRdt");
    }
    if !edits.additional_gids.is_empty() {
        out.push("additionalGids");
    }
    out
}

/// A device the sandbox plan may take: of our kinds, giving device nodes only (a VM's
/// sandbox applies no hook, mount or environment of a CDI spec on the host), and, when
/// named by its PCI address (the device plugin's ids), one whose VFIO node sysfs says is
/// that function's: a spec written before a rebind moved the nodes names another device.
pub(crate) fn check_device(
    host: &crate::host::Host,
    name: &QualifiedName,
    resolved: &cdi::registry::ResolvedDevice<'_>,
) -> Result<(), super::PlanError> {
    if !OUR_KINDS.contains(&name.kind().as_str()) {
        return Err(super::PlanError::ForeignKind {
            device: name.to_string(),
            kinds: OUR_KINDS.join(", "),
        });
    }
    let mut edits = beyond_nodes(&resolved.spec.spec.container_edits);
    for e in beyond_nodes(&resolved.device.container_edits) {
        if !edits.contains(&e) {
            edits.push(e);
        }
    }
    if !edits.is_empty() {
        return Err(super::PlanError::EditsBeyondNodes {
            device: name.to_string(),
            spec: resolved.spec.path.display().to_string(),
            edits: edits.join(", "),
        });
    }
    let Ok(bdf) = name.name().parse::<crate::host::Bdf>() else {
        return Ok(());
    };
    let nodes = resolved
        .spec
        .spec
        .container_edits
        .device_nodes
        .iter()
        .chain(&resolved.device.container_edits.device_nodes)
        .map(|n| n.host_path.clone().unwrap_or_else(|| n.path.clone()))
        .filter(|p| is_vfio_node(p));
    for node in nodes {
        let actual = match host.vfio_node(&node) {
            Ok(crate::host::VfioNode::Cdev { bdf: actual, .. }) if actual == bdf => continue,
            Ok(crate::host::VfioNode::Cdev { bdf: actual, .. }) => actual.to_string(),
            Ok(crate::host::VfioNode::Group(g)) => {
                if host
                    .iommu_group_members(g)
                    .is_ok_and(|members| members.contains(&bdf))
                {
                    continue;
                }
                format!("IOMMU group {g}")
            }
            Err(_) => "no device".to_owned(),
        };
        return Err(super::PlanError::StaleName {
            device: name.to_string(),
            spec: resolved.spec.path.display().to_string(),
            node,
            actual,
        });
    }
    Ok(())
}

/// Refuses a pod-set [`ALLOCATED_ANNOTATION`]; `who` names the pod or sandbox.
pub fn refuse_pod_set_allocated(spec: &OciSpec, who: &str) -> Result<(), AllocationError> {
    if spec
        .annotations()
        .as_ref()
        .is_some_and(|a| a.contains_key(ALLOCATED_ANNOTATION))
    {
        return Err(AllocationError::PodSetAllocated {
            who: who.to_owned(),
        });
    }
    Ok(())
}

/// For a sandbox that is no kubelet pod where kubelet decides: refused when it asks for
/// any device (a `cdi.k8s.io/*` annotation or a VFIO node in its spec).
pub fn refuse_unallocated(spec: &OciSpec, sandbox: &str) -> Result<(), AllocationError> {
    refuse_pod_set_allocated(spec, &format!("sandbox {sandbox}"))?;
    let annotations = spec.annotations().clone().unwrap_or_default();
    let mut asked: Vec<String> = parse_cdi_annotations(&annotations)?
        .iter()
        .map(ToString::to_string)
        .collect();
    asked.extend(spec_vfio_nodes(spec));
    if asked.is_empty() {
        return Ok(());
    }
    Err(AllocationError::NotAPod {
        sandbox: sandbox.to_owned(),
        asked: asked.join(","),
    })
}

/// Makes `allocated` (what kubelet gave pod `pod`, `namespace/name`) the sandbox's whole
/// device set: the pod's `cdi.k8s.io/*` annotations are checked against it and removed,
/// and the allocation written as [`ALLOCATED_ANNOTATION`]. Refused: a pod-set
/// [`ALLOCATED_ANNOTATION`], an annotation naming devices when none were allocated, or more
/// devices (or other kinds) than were, and a VFIO node in the spec the allocation does not
/// give. On refusal the spec is left as it was.
pub fn grant(
    spec: &mut OciSpec,
    registry: &Registry,
    pod: &str,
    allocated: &[QualifiedName],
) -> Result<Grant, AllocationError> {
    refuse_pod_set_allocated(spec, &format!("pod {pod}"))?;
    let before = spec.annotations().clone().unwrap_or_default();
    let annotated = parse_cdi_annotations(&before)?;
    let mut note = None;
    if !annotated.is_empty() {
        if allocated.is_empty() {
            return Err(AllocationError::NotAllocated {
                pod: pod.to_owned(),
                annotated: list(&annotated),
            });
        }
        let asked = devices(registry, &annotated);
        let given = devices(registry, allocated);
        let beyond = asked
            .iter()
            .any(|(kind, set)| given.get(kind).is_none_or(|g| set.len() > g.len()));
        if beyond {
            return Err(AllocationError::BeyondAllocation {
                pod: pod.to_owned(),
                annotated: list(&annotated),
                allocated: list(allocated),
            });
        }
        if asked != given {
            note = Some(format!(
                "pod {pod} names {} in its cdi.k8s.io/* annotations and kubelet allocated it {}: the sandbox gets the allocation (an annotation reads as that many devices of its kind)",
                list(&annotated),
                list(allocated)
            ));
        }
    }
    let allowed: BTreeSet<String> = allocated
        .iter()
        .flat_map(|n| host_nodes(registry, n))
        .collect();
    if let Some(node) = spec_vfio_nodes(spec)
        .into_iter()
        .find(|n| !allowed.contains(n))
    {
        return Err(AllocationError::SpecNode {
            who: format!("pod {pod}"),
            node,
            allocated: list_or_none(allocated),
        });
    }
    let mut after = before.clone();
    after.retain(|k, _| !k.starts_with(CDI_ANNOTATION_PREFIX));
    if !allocated.is_empty() {
        after.insert(ALLOCATED_ANNOTATION.to_owned(), list(allocated));
    }
    let changed = after != before;
    if changed {
        spec.set_annotations(Some(after));
    }
    Ok(Grant { changed, note })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry_with(spec: &str) -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().expect("tempdir");
        if !spec.is_empty() {
            std::fs::write(dir.path().join("pgpu.yaml"), spec).expect("spec");
        }
        let registry = Registry::new(cdi::RegistryConfig {
            spec_dirs: vec![dir.path().to_path_buf()],
            ..cdi::RegistryConfig::default()
        });
        (dir, registry)
    }

    fn empty_registry() -> (tempfile::TempDir, Registry) {
        registry_with("")
    }

    /// GPU 0 (also named 40 and vfio0) and GPU 1, as the host spec names them.
    const HOST_SPEC: &str = "cdiVersion: 0.5.0\nkind: nvidia.com/pgpu\ndevices:\n- name: \"0\"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/vfio/devices/vfio0\n- name: \"40\"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/vfio/devices/vfio0\n- name: \"1\"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/vfio/devices/vfio1\n";

    fn names(text: &str) -> Vec<QualifiedName> {
        text.split(',').map(|n| n.parse().expect("name")).collect()
    }

    fn spec_with(annotations: &[(&str, &str)]) -> OciSpec {
        let mut spec = OciSpec::default();
        spec.set_annotations(Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ));
        spec
    }

    fn cdi_keys(spec: &OciSpec) -> Vec<(String, String)> {
        spec.annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k.starts_with(CDI_ANNOTATION_PREFIX))
            .collect()
    }

    #[test]
    fn an_allocation_becomes_one_annotation() {
        let (_dir, registry) = empty_registry();
        let mut spec = spec_with(&[]);
        let allocated = names("nvidia.com/pgpu=0,nvidia.com/nvswitch=1");
        assert!(
            grant(&mut spec, &registry, "ns/p", &allocated)
                .expect("granted")
                .changed
        );
        assert_eq!(
            cdi_keys(&spec),
            [(
                ALLOCATED_ANNOTATION.to_owned(),
                "nvidia.com/pgpu=0,nvidia.com/nvswitch=1".to_owned()
            )]
        );
        // Nothing allocated, nothing asked: the spec is left as it is.
        let mut untouched = spec_with(&[("other", "x")]);
        assert!(
            !grant(&mut untouched, &registry, "ns/p", &[])
                .expect("no-op")
                .changed
        );
        assert_eq!(untouched.annotations().clone().unwrap_or_default().len(), 1);
    }

    /// Issue 24 item 1: a pod with no allocation takes GPU 3 by annotation (failed before:
    /// nothing allocated returned early, and the annotation reached the plan).
    #[test]
    fn an_annotation_without_an_allocation_grants_nothing() {
        let (_dir, registry) = empty_registry();
        let mut spec = spec_with(&[("cdi.k8s.io/x", "nvidia.com/pgpu=3")]);
        let before = spec.annotations().clone();
        let err = grant(&mut spec, &registry, "ns/p", &[]).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "pod ns/p names nvidia.com/pgpu=3 in its cdi.k8s.io/* annotations but kubelet allocated it no device; an annotation grants nothing on this node: ask through resources.limits (the device plugin's resources)"
        );
        assert_eq!(spec.annotations().clone(), before);
    }

    /// Issue 24 item 1: the shim's own key set by the pod is refused, even with an allocation.
    #[test]
    fn a_pod_set_allocation_key_is_refused() {
        let (_dir, registry) = empty_registry();
        let mut spec = spec_with(&[(ALLOCATED_ANNOTATION, "nvidia.com/pgpu=3")]);
        let err =
            grant(&mut spec, &registry, "ns/p", &names("nvidia.com/pgpu=0")).expect_err("refused");
        assert!(
            err.to_string().starts_with(
                "pod ns/p sets cdi.k8s.io/kata-gpu-allocated, which only the kata-gpu shim writes"
            ),
            "{err}"
        );
    }

    /// Issue 24 items 1 and 5: more devices, another kind (a hooks-only device of another
    /// vendor, say), or the same device twice plus another, are refused naming both sets.
    #[test]
    fn an_annotation_beyond_the_allocation_is_refused_naming_both_sets() {
        let (_dir, registry) = registry_with(HOST_SPEC);
        let cases = [
            ("nvidia.com/pgpu=0,nvidia.com/pgpu=1", "nvidia.com/pgpu=0"),
            ("nvidia.com/pgpu=0,example.com/hook=x", "nvidia.com/pgpu=0"),
            ("nvidia.com/nvswitch=0", "nvidia.com/pgpu=0"),
            ("nvidia.com/pgpu=40,nvidia.com/pgpu=1", "nvidia.com/pgpu=0"),
        ];
        for (annotated, allocated) in cases {
            let mut spec = spec_with(&[("cdi.k8s.io/gpu", annotated)]);
            let err = grant(&mut spec, &registry, "ns/p", &names(allocated)).expect_err(annotated);
            assert_eq!(
                err.to_string(),
                format!("pod ns/p names {annotated} in its cdi.k8s.io/* annotations, more devices or other kinds than kubelet allocated it ({allocated}); ask through resources.limits and name at most those devices in an annotation, or none")
            );
        }
    }

    /// Issue 24 item 1: NVIDIA's documented pod (`pgpu=0` by annotation, one GPU by its
    /// limits) given GPU 1 runs on GPU 1, and the pod's own key is gone from the sandbox
    /// (failed before: refused).
    #[test]
    fn as_many_devices_under_other_ids_run_on_the_allocation() {
        let (_dir, registry) = registry_with(HOST_SPEC);
        let mut spec = spec_with(&[("cdi.k8s.io/gpu", "nvidia.com/pgpu=0")]);
        let done = grant(&mut spec, &registry, "ns/p", &names("nvidia.com/pgpu=1")).expect("runs");
        assert!(done.changed);
        assert_eq!(
            done.note.as_deref(),
            Some("pod ns/p names nvidia.com/pgpu=0 in its cdi.k8s.io/* annotations and kubelet allocated it nvidia.com/pgpu=1: the sandbox gets the allocation (an annotation reads as that many devices of its kind)")
        );
        assert_eq!(
            cdi_keys(&spec),
            [(
                ALLOCATED_ANNOTATION.to_owned(),
                "nvidia.com/pgpu=1".to_owned()
            )]
        );
        // The same device under another name: no note.
        let mut spec = spec_with(&[("cdi.k8s.io/gpu", "nvidia.com/pgpu=40")]);
        let done = grant(&mut spec, &registry, "ns/p", &names("nvidia.com/pgpu=0")).expect("runs");
        assert_eq!(done.note, None);
    }

    /// Issue 24 item 5: devices compare by the host nodes they give, not container paths,
    /// and a device giving no node is still a device: "the allocation plus a device that
    /// shows GPU 1 at GPU 0's container path" and "the allocation plus a hooks-only device"
    /// are refused (failed before: both compared equal to the allocation, and the pod's
    /// annotation reached the plan).
    #[test]
    fn devices_compare_by_what_they_give() {
        let spec = format!(
            "{HOST_SPEC}- name: sneaky\n  containerEdits:\n    deviceNodes:\n    - path: /dev/vfio/devices/vfio0\n      hostPath: /dev/vfio/devices/vfio1\n- name: hooky\n  containerEdits:\n    hooks:\n    - hookName: createContainer\n      path: /bin/true\n"
        );
        let (_dir, registry) = registry_with(&spec);
        for extra in ["nvidia.com/pgpu=sneaky", "nvidia.com/pgpu=hooky"] {
            let annotated = format!("nvidia.com/pgpu=0,{extra}");
            let mut spec = spec_with(&[("cdi.k8s.io/gpu", &annotated)]);
            let err =
                grant(&mut spec, &registry, "ns/p", &names("nvidia.com/pgpu=0")).expect_err(extra);
            assert!(
                err.to_string().contains(
                    "more devices or other kinds than kubelet allocated it (nvidia.com/pgpu=0)"
                ),
                "{err}"
            );
        }
        assert_eq!(
            host_nodes(&registry, &names("nvidia.com/pgpu=sneaky")[0]),
            BTreeSet::from(["/dev/vfio/devices/vfio1".to_owned()])
        );
    }

    /// Issue 24 item 1: a VFIO node put in the sandbox's spec directly is no way around it.
    #[test]
    fn a_vfio_node_in_the_spec_beyond_the_allocation_is_refused() {
        let (_dir, registry) = registry_with(HOST_SPEC);
        let _dir = tempfile::tempdir().expect("tempdir");
        let file = _dir.path().join("config.json");
        std::fs::write(
            &file,
            r#"{"ociVersion":"1.0.2","linux":{"devices":[{"path":"/dev/vfio/devices/vfio1","type":"c","major":1,"minor":1}]}}"#,
        )
        .expect("write");
        let mut spec = OciSpec::load(&file).expect("spec");
        let err =
            grant(&mut spec, &registry, "ns/p", &names("nvidia.com/pgpu=0")).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "the sandbox of pod ns/p has /dev/vfio/devices/vfio1 in its spec, which kubelet did not allocate it (allocated: nvidia.com/pgpu=0); ask for the device through resources.limits"
        );
        assert!(grant(&mut spec, &registry, "ns/p", &names("nvidia.com/pgpu=1")).is_ok());
        let spec = OciSpec::load(&file).expect("spec");
        let err = refuse_unallocated(&spec, "s1").expect_err("refused");
        assert!(
            err.to_string().starts_with(
                "sandbox s1 asks for /dev/vfio/devices/vfio1 but is not a kubelet pod"
            ),
            "{err}"
        );
    }
}
