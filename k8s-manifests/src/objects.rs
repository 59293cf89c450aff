//! RuntimeClass and sample pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::api::node::v1::{Overhead, RuntimeClass, Scheduling};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kata_gpu_plan::Profile;

/// Memory a pod of these classes costs beyond its containers: the guest kernel, the Kata
/// agent and the NVIDIA init in the VM.
pub const DEFAULT_MEMORY_OVERHEAD: &str = "2048Mi";
/// CPU a pod of these classes costs beyond its containers: QEMU's own threads.
pub const DEFAULT_CPU_OVERHEAD: &str = "1";

/// The node label each class selects by default: `kata-gpu doctor --labels` (and the agent)
/// set it only where every check of the profile passes, the one thing kata-gpu can back.
/// Not `nvidia.com/cc.ready.state`: that says the GPUs are in CC mode, which kata-gpu never
/// reads (the GPU Operator's cc-manager sets the mode and owns that label); an admin who
/// wants both selects both (`--node-selector`).
pub fn ready_label(profile: Profile) -> (String, &'static str) {
    (
        format!(
            "feature.node.kubernetes.io/kata-gpu.{}-ready",
            profile.name()
        ),
        "true",
    )
}
/// The node label that marks a node for passthrough (the GPU Operator's word for it): the
/// node DaemonSet selects it, and doctor sets it where a GPU is on vfio-pci.
pub const PASSTHROUGH_LABEL: (&str, &str) = ("nvidia.com/gpu.workload.config", "vm-passthrough");

/// What may be tuned about the RuntimeClass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// `overhead.podFixed.memory`.
    pub memory_overhead: String,
    /// `overhead.podFixed.cpu`.
    pub cpu_overhead: String,
    /// `scheduling.nodeSelector`; `None`: the profile's default; `Some(empty)`: none.
    pub node_selector: Option<Vec<(String, String)>>,
    /// The extended resource the sample pod asks one of: what the device plugin advertises
    /// for the node's GPU (NVIDIA's sandbox device plugin's name, e.g.
    /// `nvidia.com/GH100_H100_PCIE`).
    pub gpu_resource: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            memory_overhead: DEFAULT_MEMORY_OVERHEAD.to_owned(),
            cpu_overhead: DEFAULT_CPU_OVERHEAD.to_owned(),
            node_selector: None,
            gpu_resource: DEFAULT_GPU_RESOURCE.to_owned(),
        }
    }
}

/// The labels every object of ours carries.
pub(crate) fn labels(profile: Option<Profile>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (
            "app.kubernetes.io/part-of".to_owned(),
            "kata-gpu".to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "kata-gpu".to_owned(),
        ),
    ]);
    if let Some(p) = profile {
        l.insert("app.kubernetes.io/instance".to_owned(), p.name().to_owned());
    }
    l
}

/// The RuntimeClass of `profile`: its handler, the pod overhead, and a node selector
/// (by default the profile's [`ready_label`]).
pub fn runtime_class(profile: Profile, opts: &Options) -> RuntimeClass {
    let selector: BTreeMap<String, String> = match &opts.node_selector {
        Some(pairs) => pairs.iter().cloned().collect(),
        None => {
            let (k, v) = ready_label(profile);
            BTreeMap::from([(k, v.to_owned())])
        }
    };
    RuntimeClass {
        metadata: ObjectMeta {
            name: Some(profile.handler().to_owned()),
            labels: Some(labels(Some(profile))),
            ..ObjectMeta::default()
        },
        handler: profile.handler().to_owned(),
        overhead: Some(Overhead {
            pod_fixed: Some(BTreeMap::from([
                ("memory".to_owned(), Quantity(opts.memory_overhead.clone())),
                ("cpu".to_owned(), Quantity(opts.cpu_overhead.clone())),
            ])),
        }),
        scheduling: (!selector.is_empty()).then_some(Scheduling {
            node_selector: Some(selector),
            tolerations: None,
        }),
    }
}

/// The image of the sample pod.
pub const SAMPLE_IMAGE: &str = "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0";
/// The extended resource of one passthrough GPU under `--resource-naming pgpu`.
pub const PGPU_RESOURCE: &str = "nvidia.com/pgpu";
/// The sample pod's resource where the node's GPU is not known: an H100 PCIe's, as the
/// device plugin names it by default.
pub const DEFAULT_GPU_RESOURCE: &str = "nvidia.com/GH100_H100_PCIE";
/// The annotation that sizes the VM's memory (MiB).
pub const MEMORY_ANNOTATION: &str = "io.katacontainers.config.hypervisor.default_memory";

/// A CUDA vector-add pod of `profile`'s class asking for one passthrough GPU, its VM
/// sized by the memory annotation within its memory limit.
pub fn sample_pod(profile: Profile, gpu_resource: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("cuda-vectoradd-{}", profile.name())),
            labels: Some(labels(Some(profile))),
            annotations: Some(BTreeMap::from([(
                MEMORY_ANNOTATION.to_owned(),
                "16384".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            runtime_class_name: Some(profile.handler().to_owned()),
            restart_policy: Some("Never".to_owned()),
            containers: vec![Container {
                name: "cuda-vectoradd".to_owned(),
                image: Some(SAMPLE_IMAGE.to_owned()),
                resources: Some(ResourceRequirements {
                    // The memory annotation is bounded by the pod's memory limit: a VFIO
                    // guest's RAM is pinned, so the pod declares what it takes.
                    limits: Some(BTreeMap::from([
                        (gpu_resource.to_owned(), Quantity("1".to_owned())),
                        ("memory".to_owned(), Quantity("16Gi".to_owned())),
                    ])),
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_follow_the_profile_unless_given() {
        let table = [
            (
                Profile::Snp,
                None,
                Some(("feature.node.kubernetes.io/kata-gpu.snp-ready", "true")),
            ),
            (
                Profile::Tdx,
                None,
                Some(("feature.node.kubernetes.io/kata-gpu.tdx-ready", "true")),
            ),
            (
                Profile::Gpu,
                None,
                Some(("feature.node.kubernetes.io/kata-gpu.gpu-ready", "true")),
            ),
            (Profile::Snp, Some(vec![]), None),
            (
                Profile::Snp,
                Some(vec![("pool".to_owned(), "gpu".to_owned())]),
                Some(("pool", "gpu")),
            ),
        ];
        for (profile, selector, want) in table {
            let rc = runtime_class(
                profile,
                &Options {
                    node_selector: selector,
                    ..Options::default()
                },
            );
            assert_eq!(rc.handler, profile.handler());
            let got = rc.scheduling.and_then(|s| s.node_selector);
            let want = want.map(|(k, v)| BTreeMap::from([(k.to_owned(), v.to_owned())]));
            assert_eq!(got, want, "{profile}");
        }
    }

    #[test]
    fn the_pod_asks_for_one_gpu_in_its_class_with_its_memory() {
        let pod = sample_pod(Profile::Tdx, "nvidia.com/GH100_H100_SXM5_80GB");
        let spec = pod.spec.expect("spec");
        assert_eq!(
            spec.runtime_class_name.as_deref(),
            Some("kata-qemu-nvidia-gpu-tdx")
        );
        let limits = spec.containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .expect("limits");
        assert_eq!(
            limits.get("nvidia.com/GH100_H100_SXM5_80GB"),
            Some(&Quantity("1".to_owned()))
        );
        assert_eq!(limits.get("memory"), Some(&Quantity("16Gi".to_owned())));
    }
}
