//! `kata-gpu plan --pod` for a pod that asks kubelet for devices (`resources.limits:
//! nvidia.com/pgpu: N`): which devices the device plugin's preferred allocation would give
//! it on this host, as the CDI names the shim would plan with.

use std::path::Path;

use anyhow::Context;
use cdi::QualifiedName;
use kata_gpu_device_plugin::health::problem;
use kata_gpu_device_plugin::{inventory, preferred, RESOURCES};
use kata_gpu_plan::host::Host;

/// The devices of our resource names a Pod manifest's containers ask for, summed over its
/// containers (kubelet allocates per container; the sandbox gets them all).
pub fn requested_counts(
    pod: &serde_json::Value,
    file: &Path,
) -> anyhow::Result<Vec<(String, usize)>> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (i, c) in containers.iter().enumerate() {
        let name = c["name"]
            .as_str()
            .map_or_else(|| format!("#{i}"), str::to_owned);
        for resource in RESOURCES {
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

/// The CDI names the device plugin's preferred allocation gives `counts` on `host`, from
/// its healthy devices.
pub fn preferred_names(
    host: &Host,
    counts: &[(String, usize)],
) -> anyhow::Result<Vec<QualifiedName>> {
    let resources = inventory(host).context("cannot list the host's devices")?;
    let mut names = Vec::new();
    for (resource, count) in counts {
        let devices = resources
            .iter()
            .find(|r| &r.name == resource)
            .map(|r| r.devices.as_slice())
            .unwrap_or_default();
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
            let text = format!("{resource}={id}");
            names.push(
                text.parse()
                    .with_context(|| format!("{text} is not a CDI name"))?,
            );
        }
    }
    Ok(names)
}
