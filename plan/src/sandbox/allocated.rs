//! Devices kubelet allocated to a pod, joined to the sandbox's spec so that the plan (and
//! Kata, reading the same annotations) sees them as if the pod had named them; a pod whose
//! own annotation names other devices is refused. Pure: the caller asks kubelet.

use std::collections::BTreeSet;

use cdi::{parse_cdi_annotations, QualifiedName, Registry};
use oci_spec::runtime::Spec as OciSpec;

/// The annotation the allocation is written under on the sandbox.
pub const ALLOCATED_ANNOTATION: &str = "cdi.k8s.io/kata-gpu-allocated";

/// The device nodes a set of names stands for (a name the registry does not know stands
/// for itself), so that two names of one device compare equal.
fn nodes(registry: &Registry, names: &[QualifiedName]) -> BTreeSet<String> {
    names
        .iter()
        .flat_map(|n| match registry.get(n) {
            Some(d) => d
                .device
                .container_edits
                .device_nodes
                .iter()
                .map(|node| node.path.clone())
                .collect::<Vec<_>>(),
            None => vec![n.to_string()],
        })
        .collect()
}

/// Names as one comma-separated annotation value.
pub fn list(names: &[QualifiedName]) -> String {
    names
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Adds `allocated` (what kubelet gave pod `pod`) to `spec` as [`ALLOCATED_ANNOTATION`];
/// true when it did. An annotation of the pod naming the same devices leaves the spec as it
/// is; one naming others is refused, naming both.
pub fn add_names(
    spec: &mut OciSpec,
    registry: &Registry,
    pod: &str,
    allocated: &[QualifiedName],
) -> Result<bool, String> {
    if allocated.is_empty() {
        return Ok(false);
    }
    let mut annotations = spec.annotations().clone().unwrap_or_default();
    let annotated =
        parse_cdi_annotations(&annotations).map_err(|e| format!("pod annotation: {e}"))?;
    if !annotated.is_empty() {
        if nodes(registry, &annotated) == nodes(registry, allocated) {
            return Ok(false);
        }
        return Err(format!(
            "pod {pod} names {} in its cdi.k8s.io/* annotations but kubelet allocated it {}; ask through resources.limits or an annotation, not both",
            list(&annotated),
            list(allocated)
        ));
    }
    annotations.insert(ALLOCATED_ANNOTATION.to_owned(), list(allocated));
    spec.set_annotations(Some(annotations));
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::new(cdi::RegistryConfig {
            spec_dirs: vec![dir.path().to_path_buf()],
            ..cdi::RegistryConfig::default()
        });
        (dir, registry)
    }

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

    #[test]
    fn an_allocation_becomes_one_annotation() {
        let (_dir, registry) = empty_registry();
        let mut spec = spec_with(&[]);
        let allocated = names("nvidia.com/pgpu=0,nvidia.com/nvswitch=1");
        assert!(add_names(&mut spec, &registry, "ns/p", &allocated).expect("added"));
        let annotations = spec.annotations().clone().expect("annotations");
        assert_eq!(
            annotations.get(ALLOCATED_ANNOTATION).map(String::as_str),
            Some("nvidia.com/pgpu=0,nvidia.com/nvswitch=1")
        );
        // Nothing allocated: the spec is left as it is.
        let mut untouched = spec_with(&[]);
        assert!(!add_names(&mut untouched, &registry, "ns/p", &[]).expect("no-op"));
        assert_eq!(untouched.annotations().clone().unwrap_or_default().len(), 0);
    }

    #[test]
    fn an_annotation_naming_other_devices_is_refused_and_the_spec_kept() {
        let (_dir, registry) = empty_registry();
        let mut spec = spec_with(&[("cdi.k8s.io/gpu", "nvidia.com/pgpu=1")]);
        let before = spec.annotations().clone();
        let err = add_names(&mut spec, &registry, "ns/p", &names("nvidia.com/pgpu=0"))
            .expect_err("refused");
        assert_eq!(
            err,
            "pod ns/p names nvidia.com/pgpu=1 in its cdi.k8s.io/* annotations but kubelet allocated it nvidia.com/pgpu=0; ask through resources.limits or an annotation, not both"
        );
        assert_eq!(spec.annotations().clone(), before);
        // The same names: the pod's own annotation stands.
        assert!(
            !add_names(&mut spec, &registry, "ns/p", &names("nvidia.com/pgpu=1"))
                .expect("the same devices")
        );
    }
}
