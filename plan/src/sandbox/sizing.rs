//! The guest's size a pod asks for by annotation (`default_memory`, `default_vcpus`),
//! bounded by what the pod declared to the scheduler: a VFIO guest's RAM is pinned, so a
//! pod must not take more host memory than its limit says.
//!
//! The pod's limits come from what CRI puts on the sandbox: containerd 1.6 and later write
//! `io.kubernetes.cri.sandbox-memory` (bytes) and `io.kubernetes.cri.sandbox-cpu-quota` /
//! `-cpu-period` from the pod's resources kubelet passes in `PodSandboxConfig` (kubelet 1.23
//! and later; `0` when a pod sets no limit); else the sandbox spec's own
//! `linux.resources.memory.limit` and `cpu.quota`/`cpu.period` (`ctr run --memory-limit`,
//! `--cpus`). A pod with no limit is bounded by the node's setting instead.

use oci_spec::runtime::Spec as OciSpec;

use super::{PlanError, Policy};

/// CRI's annotation: the sandbox's memory limit, bytes (`0`: none).
pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
/// CRI's annotation: the sandbox's CPU CFS quota, µs (`0` or negative: none).
pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// CRI's annotation: the sandbox's CPU CFS period, µs.
pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
/// The pod annotation through which a pod may size the guest's vCPUs.
pub const DEFAULT_VCPUS_ANNOTATION: &str = "io.katacontainers.config.hypervisor.default_vcpus";

const MIB: u64 = 1024 * 1024;

/// CRI-O's annotation naming the pod: CRI-O hands the runtime every pod annotation, so
/// there containerd's `io.kubernetes.cri.*` keys would be the pod author's.
const CRIO_NAME: &str = "io.kubernetes.cri-o.KubeName";

fn annotation<'a>(oci: &'a OciSpec, key: &str) -> Option<&'a str> {
    oci.annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map(|v| v.trim())
}

/// containerd's sandbox annotation `key`, unless the sandbox is CRI-O's.
fn cri_annotation<'a>(oci: &'a OciSpec, key: &str) -> Option<&'a str> {
    annotation(oci, CRIO_NAME)
        .is_none()
        .then(|| annotation(oci, key))
        .flatten()
}

/// The pod's memory limit in MiB, and where it was read; `None` when it has none.
pub fn memory_limit_mib(oci: &OciSpec) -> Option<(u64, &'static str)> {
    if let Some(bytes) = cri_annotation(oci, SANDBOX_MEMORY).and_then(|v| v.parse::<u64>().ok()) {
        if bytes > 0 {
            return Some((bytes / MIB, SANDBOX_MEMORY));
        }
    }
    let spec = oci
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .and_then(|l| u64::try_from(l).ok())
        .filter(|l| *l > 0)?;
    Some((spec / MIB, "linux.resources.memory.limit"))
}

/// `quota / period` rounded up, both positive.
fn ceil_div(quota: i64, period: i64) -> u64 {
    (quota.unsigned_abs()).div_ceil(period.unsigned_abs())
}

/// The pod's CPU limit in whole vCPUs (rounded up), and where it was read; `None` when it
/// has none.
pub fn cpu_limit(oci: &OciSpec) -> Option<(u64, &'static str)> {
    let int = |key| cri_annotation(oci, key).and_then(|v| v.parse::<i64>().ok());
    if let (Some(quota), Some(period)) = (int(SANDBOX_CPU_QUOTA), int(SANDBOX_CPU_PERIOD)) {
        if quota > 0 && period > 0 {
            return Some((ceil_div(quota, period), SANDBOX_CPU_QUOTA));
        }
    }
    let cpu = oci
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.cpu().as_ref())?;
    let quota = cpu.quota().filter(|q| *q > 0)?;
    let period = cpu.period().filter(|p| *p > 0)?;
    let period = i64::try_from(period).ok()?;
    Some((ceil_div(quota, period), "linux.resources.cpu.quota"))
}

/// Refuses a `default_memory` (`memory`, MiB, already within the policy's bounds) above the
/// pod's memory limit, or above the node's bound for pods without one.
pub(super) fn check_memory(
    oci: &OciSpec,
    policy: &Policy,
    memory: Option<u32>,
) -> Result<(), PlanError> {
    let Some(mib) = memory else {
        return Ok(());
    };
    let (bound, of) = match memory_limit_mib(oci) {
        Some((limit, from)) => (limit, format!("the pod's memory limit ({from})")),
        None => (
            u64::from(policy.memory_without_limit_max_mib),
            "what this node allows a pod without a memory limit (memory_without_limit_max_mib in the kata-gpu shim settings)".to_owned(),
        ),
    };
    if u64::from(mib) > bound {
        return Err(PlanError::AbovePodLimit {
            key: super::DEFAULT_MEMORY_ANNOTATION.to_owned(),
            value: mib.to_string(),
            bound: format!("{bound} MiB"),
            of,
            fix: "set resources.limits.memory at least that high, or ask for less",
        });
    }
    Ok(())
}

/// Refuses a `default_vcpus` that is not a number, or above the pod's CPU limit (rounded
/// up), or above the node's bound for pods without one.
pub(super) fn check_vcpus(oci: &OciSpec, policy: &Policy) -> Result<(), PlanError> {
    let Some(value) = annotation(oci, DEFAULT_VCPUS_ANNOTATION) else {
        return Ok(());
    };
    let vcpus: f64 = value
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| PlanError::NotVcpus {
            key: DEFAULT_VCPUS_ANNOTATION.to_owned(),
            value: value.to_owned(),
        })?;
    let (bound, of) = match cpu_limit(oci) {
        Some((limit, from)) => (limit, format!("the pod's CPU limit ({from})")),
        None => (
            u64::from(policy.vcpus_without_limit_max),
            "what this node allows a pod without a CPU limit (vcpus_without_limit_max in the kata-gpu shim settings)".to_owned(),
        ),
    };
    // Bounds are small whole numbers; f64 holds them exactly.
    #[allow(clippy::cast_precision_loss)]
    let over = vcpus.ceil() > bound as f64;
    if over {
        return Err(PlanError::AbovePodLimit {
            key: DEFAULT_VCPUS_ANNOTATION.to_owned(),
            value: value.to_owned(),
            bound: format!("{bound} vCPUs"),
            of,
            fix: "set resources.limits.cpu at least that high, or ask for fewer",
        });
    }
    Ok(())
}
