//! `kata-gpu sandboxes`: the node's GPU VMs, what an admin asks first when a pod
//! misbehaves — each sandbox of our classes with its pod, the devices it holds, its
//! processes and its files; for one sandbox, how to reach its VM and where its logs are;
//! and every GPU of the node, free, held, or held by a sandbox that no longer runs (a leak,
//! which `doctor` reports with its fix). The facts come from the node library.

use std::path::Path;
use std::time::SystemTime;

use kata_gpu_node::sandboxes::{gather, Holder, HostDevice, Sandbox, Sandboxes};

use crate::node_state::shown;
use crate::{Global, Outcome};
use kata_gpu_node::facts::HostFacts;
use kata_gpu_node::shims;

/// `kata-gpu sandboxes`.
#[derive(Debug, clap::Args)]
pub struct SandboxesArgs {
    /// One sandbox (its id, or a prefix of it that names one): everything about it, how to
    /// reach its VM and where its logs are.
    #[arg(value_name = "SANDBOX")]
    pub sandbox: Option<String>,
}

/// Runs `kata-gpu sandboxes`.
pub fn run(args: SandboxesArgs, global: &Global) -> anyhow::Result<Outcome> {
    let root = &global.host_root;
    let host = HostFacts::gather(root);
    let facts: Sandboxes = gather(&host, &shims::state_dirs(root), SystemTime::now());
    for p in &facts.problems {
        eprintln!("kata-gpu sandboxes: {p}");
    }
    if let Some(wanted) = &args.sandbox {
        let found: Vec<&Sandbox> = facts
            .sandboxes
            .iter()
            .filter(|s| s.id.starts_with(wanted.as_str()))
            .collect();
        let one = match found.as_slice() {
            [one] => *one,
            [] => anyhow::bail!("no sandbox {wanted} on this node; kata-gpu sandboxes lists them"),
            many => anyhow::bail!(
                "{wanted} names {} sandboxes ({}); give more of the id",
                many.len(),
                many.iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        if global.json {
            println!("{}", serde_json::to_string_pretty(one)?);
        } else {
            print!("{}", describe(one, root));
        }
        return Ok(Outcome::Clean);
    }
    if global.json {
        println!("{}", serde_json::to_string_pretty(&facts)?);
        return Ok(Outcome::Clean);
    }
    if facts.sandboxes.is_empty() {
        println!("no GPU sandbox on this node");
    }
    for s in &facts.sandboxes {
        println!("{}", summary(s));
    }
    if !facts.devices.is_empty() {
        println!();
    }
    for d in &facts.devices {
        println!("{}", device_line(d, root));
    }
    Ok(Outcome::Clean)
}

/// One line per sandbox: id, pod, profile, devices, processes, age.
fn summary(s: &Sandbox) -> String {
    let devices: Vec<String> = s
        .devices
        .iter()
        .map(|d| d.cdi.clone().unwrap_or_else(|| d.bdf.clone()))
        .collect();
    let state = if s.running() {
        let mut pids = Vec::new();
        if let Some(p) = s.kata_pid {
            pids.push(format!("kata {p}"));
        }
        if let Some(p) = s.qemu_pid {
            pids.push(format!("qemu {p}"));
        }
        if pids.is_empty() {
            "running".to_owned()
        } else {
            format!("running ({})", pids.join(", "))
        }
    } else {
        "GONE: nothing runs for it".to_owned()
    };
    format!(
        "{} {} {} [{}] {}{}",
        s.id,
        s.pod.as_deref().unwrap_or("(no pod)"),
        s.profile.as_deref().unwrap_or("?"),
        devices.join(" "),
        state,
        s.age_seconds
            .map(age)
            .map(|a| format!(", {a} old"))
            .unwrap_or_default()
    )
}

/// A device and who holds it.
fn device_line(d: &HostDevice, root: &Path) -> String {
    let name = d.cdi.as_deref().unwrap_or("no CDI name");
    let numa = d
        .numa_node
        .map(|n| format!(", NUMA {n}"))
        .unwrap_or_default();
    let holder = match &d.holder {
        Holder::Free if d.cdi.is_some() => "free".to_owned(),
        Holder::Free => format!(
            "not for pods ({}; kata-gpu vfio bind)",
            d.driver.as_deref().map_or("no driver".to_owned(), |dr| format!("on {dr}"))
        ),
        Holder::Held { sandbox, pod, .. } => format!("held by {}", who(pod, sandbox)),
        Holder::Leaked {
            sandbox, pod, dir, ..
        } => format!(
            "LEAKED: claimed by {}, which no longer runs; no new pod gets it until its state goes: rm -r {}",
            who(pod, sandbox),
            shown(root, dir)
        ),
    };
    format!("{} {} {} ({name}{numa}): {holder}", d.kind, d.bdf, d.id)
}

fn who(pod: &Option<String>, sandbox: &str) -> String {
    match pod {
        Some(pod) => format!("pod {pod} (sandbox {sandbox})"),
        None => format!("sandbox {sandbox}"),
    }
}

/// Seconds in the largest unit that fits: `45s`, `12m`, `3h`, `2d`.
fn age(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Everything about one sandbox, how to reach its VM and where its logs are.
fn describe(s: &Sandbox, root: &Path) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<13} {v}\n"));
    line(
        "sandbox:",
        format!("{} (containerd namespace {})", s.id, s.namespace),
    );
    line(
        "pod:",
        s.pod
            .clone()
            .unwrap_or_else(|| "(none: not a kubelet pod)".into()),
    );
    line(
        "class:",
        format!(
            "{} ({} profile, Kata's {} runtime)",
            s.handler.as_deref().unwrap_or("?"),
            s.profile.as_deref().unwrap_or("?"),
            s.kata_runtime.unwrap_or("?")
        ),
    );
    for d in &s.devices {
        line(
            "device:",
            format!(
                "{} {} {}{}{}",
                d.cdi.as_deref().unwrap_or("(no CDI name)"),
                d.bdf,
                d.id,
                d.iommu_group
                    .map(|g| format!(", IOMMU group {g}"))
                    .unwrap_or_default(),
                d.numa_node
                    .map(|n| format!(", NUMA {n}"))
                    .unwrap_or_default()
            ),
        );
    }
    let pid = |p: Option<u32>| p.map_or("not running".to_owned(), |p| format!("pid {p}"));
    line("proxy:", pid(s.proxy_pid));
    line("kata shim:", pid(s.kata_pid));
    line("qemu:", pid(s.qemu_pid));
    if let Some(a) = s.age_seconds {
        line("age:", age(a));
    }
    line("state:", s.dir.display().to_string());
    if let Some(c) = &s.config {
        line("config:", c.display().to_string());
    }
    if let Some(p) = &s.plan {
        line("plan:", p.display().to_string());
    }
    if !s.running() {
        line(
            "GONE:",
            format!(
                "nothing runs for it; its claim keeps its devices from new pods: rm -r {}",
                shown(root, &s.dir)
            ),
        );
    }
    let config = s
        .config
        .as_ref()
        .map_or_else(|| s.dir.join("configuration.toml"), Clone::clone);
    match (s.debug_console, s.kata_runtime) {
        (Some(true), Some("rs")) => line(
            "shell:",
            format!("kata-ctl exec {} (its debug console is on in {})", s.id, config.display()),
        ),
        (Some(true), _) => line(
            "shell:",
            format!("kata-runtime --config {} exec {}", config.display(), s.id),
        ),
        _ => line(
            "shell:",
            format!(
                "none: the debug console is off in {} (confidential profiles keep it off, and a pod cannot turn it on); use the logs",
                config.display()
            ),
        ),
    }
    line(
        "logs:",
        format!(
            "the proxy's: journalctl -u containerd | grep 'sandbox={}'",
            s.id
        ),
    );
    line(
        "",
        format!(
            "Kata's shim (and what QEMU prints, which it logs): journalctl -t kata | grep {}",
            s.id
        ),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn ages_in_the_largest_unit_that_fits() {
        let table = [
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (3599, "59m"),
            (3600, "1h"),
            (86_400, "1d"),
        ];
        for (s, want) in table {
            assert_eq!(age(s), want);
        }
    }
}
