//! `kata-gpu plan --pod` for a pod that asks kubelet for devices (`resources.limits:
//! nvidia.com/pgpu: N`): which devices the device plugin's preferred allocation would give
//! it on this host, as the CDI names the shim would plan with.

use std::path::Path;

use anyhow::Context;
use cdi::QualifiedName;
use kata_gpu_device_plugin::health::problem;
use kata_gpu_device_plugin::{inventory, preferred, Naming, Resource};
use kata_gpu_plan::host::Host;

/// The resources the device plugin would advertise on `host`: under NVIDIA's names and
/// under the kinds (a pod may ask either, as the plugin's `--resource-naming` says).
pub fn advertised(host: &Host) -> anyhow::Result<Vec<Resource>> {
    let mut out = inventory(host, Naming::Nvidia).context("cannot list the host's devices")?;
    out.extend(inventory(host, Naming::Pgpu).context("cannot list the host's devices")?);
    Ok(out)
}

/// The devices of the plugin's resource names a Pod manifest's containers ask for, summed
/// over its containers (kubelet allocates per container; the sandbox gets them all).
pub fn requested_counts(
    pod: &serde_json::Value,
    file: &Path,
    resources: &[Resource],
) -> anyhow::Result<Vec<(String, usize)>> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut names: Vec<&str> = resources.iter().map(|r| r.name.as_str()).collect();
    for kind in kata_gpu_device_plugin::RESOURCES {
        if !names.contains(&kind) {
            names.push(kind);
        }
    }
    for (i, c) in containers.iter().enumerate() {
        let name = c["name"]
            .as_str()
            .map_or_else(|| format!("#{i}"), str::to_owned);
        for resource in &names {
            let resource = *resource;
            let value = &c["resources"]["limits"][resource];
            if value.is_null() {
                continue;
            }
            let n = value
                .as_u64()
                .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
                .and_then(|n| usize::try_from(n).ok())
                .with_context(|| {
                    format!(
                        "{}: container {name}: resources.limits.{resource} is {value}, not a whole number of devices",
                        file.display()
                    )
                })?;
            match counts.iter_mut().find(|(r, _)| r == resource) {
                Some((_, total)) => *total += n,
                None => counts.push((resource.to_owned(), n)),
            }
        }
    }
    counts.retain(|(_, n)| *n > 0);
    Ok(counts)
}

/// A Kubernetes quantity (`64Gi`, `500m`, `1.5`, `2e3`) in its base unit.
fn quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let suffixes: [(&str, f64); 14] = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
        ("", 1.0),
    ];
    let (number, factor) = suffixes
        .iter()
        .find_map(|(s, f)| text.strip_suffix(s).map(|n| (n, *f)))?;
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value * factor)
}

/// The annotations containerd puts on a pod's sandbox from the limits kubelet passes
/// (`io.kubernetes.cri.sandbox-memory`, `-cpu-quota`, `-cpu-period`): the sum of the
/// containers' limits, when every container sets one.
pub fn sandbox_limit_annotations(
    pod: &serde_json::Value,
    file: &Path,
) -> anyhow::Result<Vec<(String, String)>> {
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for (resource, key) in [
        ("memory", kata_gpu_plan::sandbox::sizing::SANDBOX_MEMORY),
        ("cpu", kata_gpu_plan::sandbox::sizing::SANDBOX_CPU_QUOTA),
    ] {
        let mut total = 0f64;
        let mut every = !containers.is_empty();
        for c in &containers {
            let value = &c["resources"]["limits"][resource];
            let text = match value {
                serde_json::Value::Null => {
                    every = false;
                    continue;
                }
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            total += quantity(&text).with_context(|| {
                format!(
                    "{}: resources.limits.{resource} is {value}, not a Kubernetes quantity",
                    file.display()
                )
            })?;
        }
        if !every {
            continue;
        }
        // Whole bytes, and CFS quota in µs over a 100 ms period, as kubelet computes them.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        if resource == "memory" {
            out.push((key.to_owned(), (total as u64).to_string()));
        } else {
            out.push((
                key.to_owned(),
                ((total * 100_000.0).ceil() as u64).to_string(),
            ));
            out.push((
                kata_gpu_plan::sandbox::sizing::SANDBOX_CPU_PERIOD.to_owned(),
                "100000".to_owned(),
            ));
        }
    }
    Ok(out)
}

/// The CDI names the device plugin's preferred allocation gives `counts` on `host`, from
/// its healthy devices.
pub fn preferred_names(
    host: &Host,
    resources: &[Resource],
    counts: &[(String, usize)],
) -> anyhow::Result<Vec<QualifiedName>> {
    let mut names = Vec::new();
    for (resource, count) in counts {
        let found = resources.iter().find(|r| &r.name == resource);
        let devices = found.map(|r| r.devices.as_slice()).unwrap_or_default();
        let healthy: Vec<String> = devices
            .iter()
            .filter(|d| problem(host, d).is_none())
            .map(|d| d.id.clone())
            .collect();
        if healthy.len() < *count {
            anyhow::bail!(
                "the pod asks for {count} {resource}; this host advertises {} healthy ({}); bind devices with `kata-gpu vfio bind`",
                healthy.len(),
                if healthy.is_empty() { "none".to_owned() } else { healthy.join(", ") }
            );
        }
        for id in preferred(devices, &healthy, &[], *count) {
            let text = found.map_or_else(|| format!("{resource}={id}"), |r| r.cdi_name(&id));
            names.push(
                text.parse()
                    .with_context(|| format!("{text} is not a CDI name"))?,
            );
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantities_read_as_kubernetes_writes_them() {
        for (text, want) in [
            ("64Gi", 68_719_476_736.0),
            ("500m", 0.5),
            ("2", 2.0),
            ("1.5", 1.5),
            ("1G", 1e9),
            ("128974848", 128_974_848.0),
        ] {
            assert_eq!(super::quantity(text), Some(want), "{text}");
        }
        assert_eq!(super::quantity("lots"), None);
        assert_eq!(super::quantity("-1"), None);
    }

    #[test]
    fn the_sandbox_gets_the_sum_of_its_containers_limits() {
        let pod: serde_json::Value = serde_json::json!({"spec": {"containers": [
            {"resources": {"limits": {"memory": "16Gi", "cpu": "1500m"}}},
            {"resources": {"limits": {"memory": "16Gi", "cpu": 2}}},
        ]}});
        let got =
            super::sandbox_limit_annotations(&pod, std::path::Path::new("p.yaml")).expect("limits");
        assert_eq!(
            got,
            [
                (
                    "io.kubernetes.cri.sandbox-memory".to_owned(),
                    "34359738368".to_owned()
                ),
                (
                    "io.kubernetes.cri.sandbox-cpu-quota".to_owned(),
                    "350000".to_owned()
                ),
                (
                    "io.kubernetes.cri.sandbox-cpu-period".to_owned(),
                    "100000".to_owned()
                ),
            ]
        );
        let partial: serde_json::Value = serde_json::json!({"spec": {"containers": [
            {"resources": {"limits": {"memory": "16Gi"}}}, {"name": "b"}
        ]}});
        assert!(
            super::sandbox_limit_annotations(&partial, std::path::Path::new("p.yaml"))
                .expect("limits")
                .is_empty()
        );
    }
}
