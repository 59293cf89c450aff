//! Which `io.katacontainers.*` pod annotations a profile lets reach Kata: an explicit
//! allow-list per profile. containerd hands Kata every `io.katacontainers.*` annotation of
//! a pod, and Kata checks only `io.katacontainers.config.hypervisor.*` against its
//! `enable_annotations`; every `runtime.*` and `agent.*` one (`disable_guest_seccomp`,
//! `kernel_modules`, `policy`, …) it applies unchecked. So the list decides, not Kata.

use std::fmt;

use crate::annotations::KERNEL_PARAMS_ANNOTATION;

/// The prefix of every annotation Kata reads.
pub const KATA_ANNOTATION_PREFIX: &str = "io.katacontainers.";

/// The pod annotation through which a pod may size the guest's memory (the plan reads it too).
pub const DEFAULT_MEMORY: &str = "io.katacontainers.config.hypervisor.default_memory";
const DEFAULT_VCPUS: &str = "io.katacontainers.config.hypervisor.default_vcpus";
const CC_INIT_DATA: &str = "io.katacontainers.config.hypervisor.cc_init_data";
const ENABLE_IOMMU: &str = "io.katacontainers.config.hypervisor.enable_iommu";

/// Which pod annotations a profile allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnotationPolicy {
    /// `snp`, `tdx`: the guest's kernel parameters (checked, for the KBS address), its size,
    /// and `cc_init_data` (measured into the TEE, so the guest can tell it was changed).
    Confidential,
    /// `gpu`: the same without `cc_init_data` (no TEE measures it), plus `enable_iommu`.
    Plain,
}

impl AnnotationPolicy {
    /// The annotation keys the policy lets reach Kata, in full.
    pub fn allowed(self) -> &'static [&'static str] {
        match self {
            AnnotationPolicy::Confidential => &[
                KERNEL_PARAMS_ANNOTATION,
                DEFAULT_MEMORY,
                DEFAULT_VCPUS,
                CC_INIT_DATA,
            ],
            AnnotationPolicy::Plain => &[
                KERNEL_PARAMS_ANNOTATION,
                DEFAULT_MEMORY,
                DEFAULT_VCPUS,
                ENABLE_IOMMU,
            ],
        }
    }

    /// Whether `key` may reach Kata: any key outside `io.katacontainers.` is not Kata's
    /// (containerd passes our handler only those and `cdi.k8s.io/*`); inside it, only the
    /// listed ones.
    pub fn allows(self, key: &str) -> bool {
        !key.starts_with(KATA_ANNOTATION_PREFIX) || self.allowed().contains(&key)
    }
}

impl fmt::Display for AnnotationPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AnnotationPolicy::Confidential => "a confidential profile (snp, tdx)",
            AnnotationPolicy::Plain => "the gpu profile",
        })
    }
}

/// What a Kata annotation off the list would do, in words, for the ones a pod is likely to
/// try; `None` for the rest.
pub fn effect(key: &str) -> Option<&'static str> {
    let name = key.strip_prefix(KATA_ANNOTATION_PREFIX)?;
    Some(match name {
        "config.runtime.disable_guest_seccomp" => "it would turn seccomp off inside the guest",
        "config.runtime.disable_new_netns" => {
            "it would run the VM without a network namespace of its own"
        }
        "config.runtime.vfio_mode" => "it would change how VFIO devices reach the guest",
        "config.runtime.experimental" => "it would turn on Kata's experimental features",
        "config.runtime.sandbox_cgroup_only" => "it would change the sandbox's host cgroups",
        "config.runtime.enable_pprof" => "it would open Kata's profiling endpoint on the host",
        "config.runtime.create_container_timeout" => "it would change the node's timeout",
        "config.runtime.internetworking_model" => "it would change the VM's host networking",
        "config.agent.kernel_modules" => "it would load kernel modules of the pod's choosing in the guest",
        "config.agent.policy" => {
            "it would replace the agent's policy (pass a policy in cc_init_data, where it is measured)"
        }
        "config.agent.container_pipe_size" => "it would change the agent's pipe size",
        "config.hypervisor.kernel_verity_params" => {
            "it would choose the dm-verity parameters of the guest image"
        }
        "config.hypervisor.enable_iommu" => "it would give the guest a virtual IOMMU",
        "config.hypervisor.cc_init_data" => {
            "it carries confidential init data, which no TEE measures under this profile"
        }
        "pkg.oci.bundle_path" | "pkg.oci.container_type" => "it is Kata's own bookkeeping",
        _ => return None,
    })
}
