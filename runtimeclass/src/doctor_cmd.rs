//! `kata-gpu doctor`: whether this host can run the profile's pods, one check per line
//! with a fix for each that is not ok, and (`--labels`) the node labels the host deserves.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use kata_gpu_node::facts::{HostFacts, NodeFacts};
use kata_gpu_plan::host_spec::{NVSWITCH_KIND, PGPU_KIND};
use kata_gpu_plan::Profile;
use serde::Serialize;

use crate::args::StatusArgs;
use crate::command_line::rooted;
use crate::node_state::shown;
use crate::{Global, Outcome};
use kata_gpu_node::shims;

#[path = "doctor_checks.rs"]
mod checks;
#[path = "doctor_plugin.rs"]
mod plugin;

use checks::{Check, Verdict};

/// Arguments of `kata-gpu doctor`: what `status` is asked, and `--labels`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub node: StatusArgs,
    /// Print the node labels this host deserves instead of the checks; only when every
    /// check passes (exit 1 and no labels otherwise).
    #[arg(long)]
    pub labels: bool,
}

/// Qualified name → device node paths, for our kinds.
fn names<'a>(
    devices: impl Iterator<Item = (String, &'a cdi::model::Device)>,
) -> BTreeMap<String, Vec<String>> {
    devices
        .map(|(name, d)| {
            let nodes = d
                .container_edits
                .device_nodes
                .iter()
                .map(|n| n.path.clone())
                .collect();
            (name, nodes)
        })
        .collect()
}

/// The host CDI spec against what the host should have.
fn cdi_check(host: &HostFacts) -> Check {
    let root = host.root.as_path();
    let ours = kata_gpu_node::paths::our_spec_path;
    if let Some((file, kind)) = host
        .foreign_specs
        .iter()
        .find(|(_, kind)| crate::node_state::under(root, &ours(kind)).exists())
    {
        // Not `kata-gpu cdi generate`: it refuses beside a foreign spec, so the fix would
        // loop. (A foreign spec alone, adopted with install --skip-cdi, is checked below.)
        let file = shown(root, file);
        return checks::fail(
            "cdi",
            format!(
                "{file} (not kata-gpu's) and {} both define {kind}: their devices are usable by neither",
                shown(root, &ours(kind))
            ),
            &format!(
                "remove one: {}, or kata-gpu's {}",
                kata_gpu_node::coexist::foreign_spec_fix(&file),
                shown(root, &ours(kind))
            ),
        );
    }
    let expected = match &host.specs {
        Ok(s) => s,
        Err(e) => {
            return Check {
                name: "cdi".to_owned(),
                verdict: Verdict::Fail,
                detail: format!("cannot work out the host's spec: {e}"),
                fix: None,
            }
        }
    };
    let expected = names(expected.specs.iter().flat_map(|s| {
        s.devices
            .iter()
            .map(move |d| (format!("{}={}", s.kind, d.name), d))
    }));
    let registry = &host.registry;
    let installed = names(
        registry
            .devices()
            .filter(|(n, _)| [PGPU_KIND, NVSWITCH_KIND].contains(&n.kind().as_str()))
            .map(|(n, r)| (n.to_string(), r.device)),
    );
    let mut notes: Vec<String> = registry.skipped().iter().map(ToString::to_string).collect();
    notes.extend(
        registry
            .conflicts()
            .iter()
            .map(|c| format!("{} is defined twice, so by neither file", c.name)),
    );
    checks::cdi(&expected, &installed, &notes)
}

/// The downstream Kata shim named by the profile's shim settings, as probed.
fn kata_shim(probed: Result<Result<String, String>, String>) -> Check {
    match probed {
        Ok(Ok(found)) => checks::ok("kata shim", found),
        Ok(Err(missing)) => checks::fail(
            "kata shim",
            missing,
            "install Kata Containers (kata-deploy or the release tarball under /opt/kata)",
        ),
        Err(e) => checks::fail("kata shim", e, "fix the kata-gpu shim settings file"),
    }
}

/// Where sandboxes get their devices: kubelet's allocation, or (a node without kubelet)
/// pod annotations, which is said as a warning.
fn device_source(probed: Result<(bool, String), String>) -> Check {
    match probed {
        Ok((true, line)) => checks::ok("device source", line),
        Ok((false, line)) => Check::new(
            "device source",
            Verdict::Warn,
            line,
            Some("on a Kubernetes node remove device_source from the kata-gpu shim settings (kubelet's allocation is the default)".to_owned()),
        ),
        Err(e) => checks::fail("device source", e, "fix the kata-gpu shim settings file"),
    }
}

/// Our own shim binary, where containerd finds it, and whether it runs as this version,
/// as probed.
fn our_shim(profile: Profile, root: &Path, probed: Result<shims::OurShim, String>) -> Check {
    let binary = profile.shim_binary();
    match probed {
        Ok(found) => match &found.version {
            Ok(v) if shims::same_version(v) => checks::ok(
                "kata-gpu shim",
                format!("{} present ({v})", shown(root, &found.path)),
            ),
            Ok(v) => Check::new(
                "kata-gpu shim",
                Verdict::Warn,
                format!(
                    "{} is {v}, kata-gpu is {}",
                    shown(root, &found.path),
                    env!("CARGO_PKG_VERSION")
                ),
                Some("install both from one build: make install".to_owned()),
            ),
            Err(e) => checks::fail(
                "kata-gpu shim",
                e.clone(),
                &format!("reinstall the kata-gpu shim as /usr/local/bin/{binary}: make install"),
            ),
        },
        Err(missing) => checks::fail(
            "kata-gpu shim",
            missing,
            &format!("install the kata-gpu shim as /usr/local/bin/{binary}: make install"),
        ),
    }
}

/// The installed artifact set's base Kata config, shown as a path, and its text; `None`
/// when the profile has none.
fn base_config(args: &DoctorArgs, root: &Path) -> Option<(String, String)> {
    let host = kata_gpu_fsutil::layout::current_config_path(
        &args.node.artifacts_root,
        args.node.profile.handler(),
    );
    let real = cdi::inject::under_root(root, &host.display().to_string());
    std::fs::read_to_string(real)
        .ok()
        .map(|text| (shown(root, &host), text))
}

/// Every check for the profile, over the node's facts (whose shim probes it takes).
fn run_checks(args: &DoctorArgs, facts: &mut NodeFacts) -> Vec<Check> {
    let NodeFacts {
        host,
        status,
        sandboxes,
    } = facts;
    let root = host.root.as_path();
    let profile = args.node.profile;
    let platform = &host.platform;
    let base = base_config(args, root);
    let mut out = vec![
        checks::kvm(platform),
        checks::iommu(platform),
        checks::tee(profile, platform),
    ];
    match &host.devices {
        Ok(devs) => {
            out.extend(checks::devices(profile, devs));
            out.push(checks::iommufd(profile, platform, devs));
            // The values sandboxes of the profile get: the installed base config's, else
            // the template kata-gpu ships.
            let base = match &base {
                Some((_, text)) => kata_gpu_plan::sandbox::KataValues::from_config(text),
                None => kata_gpu_plan::sandbox::KataValues::template(profile),
            };
            let tee = kata_gpu_plan::sandbox::TeeSettings::default();
            out.push(checks::address_bits(profile, devs, |bars| {
                kata_gpu_plan::sandbox::room(profile, &base, &host.cpu_memory, &tee, bars)
            }));
        }
        Err(e) => out.push(checks::fail(
            "gpus",
            e.clone(),
            "check that /sys is mounted",
        )),
    }
    out.extend(checks::registration(
        profile,
        status.as_ref().map_err(|e| format!("{e:#}")),
    ));
    // The shims as status probed them (once, with the handler's runtime_path); asked here
    // only when status could not be gathered.
    let mut probes = status
        .as_mut()
        .map(|s| std::mem::take(&mut s.probes))
        .unwrap_or_default();
    let ours = probes
        .our_shim
        .take()
        .unwrap_or_else(|| shims::our_shim(root, profile, &args.node.containerd, None));
    out.push(our_shim(profile, root, ours));
    let settings = probes
        .settings
        .take()
        .unwrap_or_else(|| shims::settings(profile, root));
    let kata = probes
        .kata_shim
        .take()
        .unwrap_or_else(|| shims::kata_shim(&settings, root));
    out.push(kata_shim(kata));
    let devices = probes
        .device_source
        .take()
        .unwrap_or_else(|| shims::device_source(&settings, root));
    out.push(device_source(devices));
    if let Ok((settings, _)) = &settings {
        out.extend(checks::kata_runtime(
            profile,
            base,
            shims::runtime_of(settings.downstream_kind),
        ));
        if settings.device_source == kata_gpu_plan::settings::DeviceSource::Kubelet {
            let limit = Duration::from_secs(settings.pod_resources_timeout_seconds.clamp(1, 10));
            out.extend(plugin::pod_resources(
                root,
                &settings.pod_resources_socket,
                limit,
            ));
        }
    }
    out.push(cdi_check(host));
    out.extend(plugin::checks(host));
    out.extend(checks::sandboxes(sandboxes, root));
    if root != Path::new("/") {
        for c in &mut out {
            c.fix = c.fix.take().map(|f| rooted(&f, root));
        }
    }
    out
}

/// The JSON of `kata-gpu doctor`.
#[derive(Serialize)]
struct Report<'a> {
    profile: &'a str,
    handler: &'a str,
    ok: bool,
    failures: usize,
    warnings: usize,
    checks: &'a [Check],
}

/// Prints the labels the host deserves, only when every check of the profile passes
/// (labels follow the checks: a node labelled ready gets the class's pods). The label the
/// RuntimeClass selects by default (`feature.node.kubernetes.io/kata-gpu.<profile>-ready`)
/// is among them; `nvidia.com/cc.ready.state` is not (nothing here reads the GPUs' CC mode).
fn print_labels(
    args: &DoctorArgs,
    host: &HostFacts,
    all: &[Check],
    json: bool,
) -> anyhow::Result<Outcome> {
    let failed: Vec<&str> = all
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .map(|c| c.name.as_str())
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "no labels: {} of {}'s checks fail ({}); kata-gpu doctor --profile {} says why and how to fix them",
            failed.len(),
            args.node.profile.handler(),
            failed.join(", "),
            args.node.profile.name()
        );
    }
    let devs = host.devices.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut labels = checks::labels(&host.platform, devs);
    let (k, v) = kata_gpu_manifests::ready_label(args.node.profile);
    labels.insert(k, v.to_owned());
    if json {
        println!("{}", serde_json::to_string_pretty(&labels)?);
    } else {
        for (k, v) in &labels {
            println!("{k}={v}");
        }
    }
    Ok(Outcome::Clean)
}

/// Runs `kata-gpu doctor`.
pub fn run(args: DoctorArgs, global: &Global) -> anyhow::Result<Outcome> {
    let mut facts = NodeFacts::gather(
        &args.node.query(),
        &global.host_root,
        std::time::SystemTime::now(),
    );
    let all = run_checks(&args, &mut facts);
    if args.labels {
        return print_labels(&args, &facts.host, &all, global.json);
    }
    let count = |v: Verdict| all.iter().filter(|c| c.verdict == v).count();
    let (failures, warnings) = (count(Verdict::Fail), count(Verdict::Warn));
    if global.json {
        let report = Report {
            profile: args.node.profile.name(),
            handler: args.node.profile.handler(),
            ok: failures == 0,
            failures,
            warnings,
            checks: &all,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for c in &all {
            println!("{c}");
        }
        println!(
            "{}: {failures} failed, {warnings} warning(s)",
            args.node.profile.handler()
        );
    }
    Ok(if failures == 0 {
        Outcome::Clean
    } else {
        Outcome::Findings
    })
}
