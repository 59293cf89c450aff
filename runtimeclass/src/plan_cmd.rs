//! `kata-gpu plan`: what a sandbox would get on this host, by the shim's own code path.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use cdi::registry::{Registry, RegistryConfig};
use kata_gpu_plan::host::Host;
use kata_gpu_plan::sandbox::{plan, KataValues, PlanInput, Policy};
use kata_gpu_plan::Profile;
use oci_spec::runtime::Spec as OciSpec;

use crate::{Global, Outcome};

/// Arguments of `kata-gpu plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The runtime class's profile: snp, tdx or gpu (default: the pod's runtimeClassName
    /// with --pod, else snp).
    #[arg(long)]
    profile: Option<Profile>,
    /// A Pod manifest (YAML or JSON): its annotations, and its runtimeClassName as the profile.
    #[arg(long, value_name = "FILE", conflicts_with = "bundle")]
    pod: Option<PathBuf>,
    /// An OCI bundle: its config.json's annotations and device nodes, as the shim sees them.
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// A pod annotation, e.g. cdi.k8s.io/gpu=nvidia.com/pgpu=0; repeat for several (added
    /// to those of --pod or --bundle).
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = parse_annotation)]
    annotations: Vec<(String, String)>,
    /// A CDI spec directory, lowest priority first (default: /etc/cdi, /var/run/cdi under --host-root).
    #[arg(long = "spec-dir", value_name = "DIR")]
    spec_dirs: Vec<PathBuf>,
    /// SEV C-bit position (default: this CPU's, from CPUID; 51 when it has none).
    #[arg(long)]
    cbitpos: Option<u8>,
    /// A kernel parameter every sandbox gets (e.g. agent.aa_kbc_params=cc_kbc::http://kbs:8080).
    #[arg(long = "kernel-param", value_name = "PARAM")]
    kernel_params: Vec<String>,
    /// Refuse GPUs that are not CC-capable instead of warning.
    #[arg(long)]
    refuse_non_cc: bool,
    /// The node's base Kata config (default: the installed artifact set's, else the
    /// template shipped for the profile).
    #[arg(long, value_name = "FILE")]
    base_config: Option<PathBuf>,
}

/// The base Kata config to plan against: its text and where it came from.
fn base_config(
    args: &PlanArgs,
    profile: Profile,
    global: &Global,
) -> anyhow::Result<(String, String)> {
    if let Some(path) = &args.base_config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return Ok((text, path.display().to_string()));
    }
    let installed = cdi::inject::under_root(
        &global.host_root,
        &kata_gpu_artifacts::layout::current_config_path(
            std::path::Path::new(kata_gpu_artifacts::layout::DEFAULT_ROOT),
            profile.handler(),
        )
        .display()
        .to_string(),
    );
    match std::fs::read_to_string(&installed) {
        Ok(text) => Ok((text, installed.display().to_string())),
        Err(_) => {
            let text = kata_gpu_configs::template(profile.name())?;
            Ok((
                text.to_owned(),
                format!(
                    "the {} template shipped with kata-gpu (no artifact set installed at {})",
                    profile.name(),
                    installed.display()
                ),
            ))
        }
    }
}

/// What `plan` reads from a Pod manifest: annotations, runtime class, devices asked of kubelet.
type PodView = (
    HashMap<String, String>,
    Option<String>,
    Vec<(String, usize)>,
);

/// A Pod manifest's annotations, runtime class and the devices it asks kubelet for.
fn pod_manifest(file: &std::path::Path, host: &Host) -> anyhow::Result<PodView> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let pod: serde_json::Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{}: not a YAML or JSON document", file.display()))?;
    if pod["kind"] != "Pod" {
        anyhow::bail!("{}: kind is {}, not Pod", file.display(), pod["kind"]);
    }
    // What containerd puts on the sandbox from the pod's limits, as kubelet passes them.
    let mut annotations: HashMap<String, String> =
        crate::plan_alloc::sandbox_limit_annotations(&pod, file)?
            .into_iter()
            .collect();
    if let Some(map) = pod["metadata"]["annotations"].as_object() {
        for (k, v) in map {
            let value = v
                .as_str()
                .with_context(|| format!("{}: annotation {k} is not a string", file.display()))?;
            annotations.insert(k.clone(), value.to_owned());
        }
    }
    Ok((
        annotations,
        pod["spec"]["runtimeClassName"].as_str().map(str::to_owned),
        crate::plan_alloc::requested_counts(&pod, file, &crate::plan_alloc::advertised(host)?)?,
    ))
}

fn parse_annotation(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// Runs `kata-gpu plan`.
pub fn run(args: PlanArgs, global: &Global) -> anyhow::Result<Outcome> {
    let pod_host = Host::new(&global.host_root);
    let pod = args
        .pod
        .as_deref()
        .map(|p| pod_manifest(p, &pod_host))
        .transpose()?;
    let profile = match (args.profile, pod.as_ref().and_then(|(_, class, _)| class.as_deref())) {
        (Some(p), _) => p,
        (None, Some(class)) => class.parse().map_err(|_| {
            anyhow::anyhow!(
                "runtimeClassName {class:?} is not a kata-gpu runtime class (kata-qemu-nvidia-gpu-snp, kata-qemu-nvidia-gpu-tdx or kata-qemu-nvidia-gpu); pass --profile to plan anyway"
            )
        })?,
        (None, None) => Profile::Snp,
    };
    let (base_text, base_origin) = base_config(&args, profile, global)?;
    let base = KataValues::from_config(&base_text);
    let mut config = RegistryConfig::under_root(&global.host_root);
    if !args.spec_dirs.is_empty() {
        config.spec_dirs = args.spec_dirs;
    }
    let registry = Registry::new(config);
    let host = Host::new(&global.host_root);
    let mut policy = Policy {
        kernel_params: args.kernel_params,
        refuse_non_cc_gpus: args.refuse_non_cc,
        ..Policy::default()
    };
    if let Some(c) = args.cbitpos {
        policy.tee.cbitpos = c;
    }
    let counts = pod.as_ref().map(|(_, _, c)| c.clone()).unwrap_or_default();
    let mut oci = match (&args.bundle, &args.pod) {
        (Some(dir), _) => {
            let path = dir.join("config.json");
            load_bundle(&path)?
        }
        (None, _) => {
            let mut oci = OciSpec::default();
            oci.set_annotations(pod.map(|(annotations, _, _)| annotations));
            oci
        }
    };
    let mut annotations = oci.annotations().clone().unwrap_or_default();
    annotations.extend(args.annotations);
    oci.set_annotations(Some(annotations));
    // What kubelet would allocate: the device plugin's preferred choice, planned as the
    // shim plans what PodResources reports.
    let allocated = if counts.is_empty() {
        Vec::new()
    } else {
        crate::plan_alloc::preferred_names(&host, &crate::plan_alloc::advertised(&host)?, &counts)?
    };
    let pod_label = args
        .pod
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    // A pod is planned as the shim plans it on a kubelet node: exactly what kubelet would
    // allocate, its annotations at most restating that.
    if args.pod.is_some() {
        let granted =
            kata_gpu_plan::sandbox::allocated::grant(&mut oci, &registry, &pod_label, &allocated)?;
        if let Some(note) = granted.note {
            eprintln!("note: {note}");
        }
    }
    let planned = plan(&PlanInput {
        profile,
        oci: &oci,
        registry: &registry,
        host: &host,
        base: &base,
        policy: &policy,
        sandbox_id: None,
    })
    .context("the sandbox cannot be planned")?;
    let rendered = kata_gpu_configs::render(
        &base_text,
        std::path::Path::new(&base_origin),
        &planned.overrides,
    )
    .with_context(|| format!("cannot render the Kata config from {base_origin}"))?;
    if global.json {
        let mut view = serde_json::to_value(planned.view())?;
        if !allocated.is_empty() {
            view["allocated"] = serde_json::json!(allocated
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>());
        }
        view["kata_config"] = serde_json::json!({
            "base": base_origin,
            "diff": rendered.changes().map(|d| serde_json::json!({"key": d.key, "base": d.base, "rendered": d.rendered})).collect::<Vec<_>>(),
            "warnings": rendered.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        if !allocated.is_empty() {
            println!(
                "kubelet would allocate (the device plugin's preferred choice): {}",
                kata_gpu_plan::sandbox::allocated::list(&allocated)
            );
        }
        print!("{planned}");
        println!("kata config diff (base: {base_origin}):");
        let mut changed = false;
        for d in rendered.changes() {
            println!("  {d}");
            changed = true;
        }
        if !changed {
            println!("  no change");
        }
        for w in &rendered.warnings {
            println!("warning: {w}");
        }
        for s in registry.skipped() {
            println!("warning: {s}");
        }
    }
    Ok(if planned.warnings.is_empty() {
        Outcome::Clean
    } else {
        Outcome::Findings
    })
}

/// Keys an OCI runtime spec cannot leave out (when their parent is there), with what to
/// add: a hand-written `config.json` lacks them where containerd's never does.
const REQUIRED: [(&[&str], &str); 5] = [
    (&["process", "user"], "\"user\": {\"uid\": 0, \"gid\": 0}"),
    (&["process", "user", "uid"], "\"uid\": 0"),
    (&["process", "user", "gid"], "\"gid\": 0"),
    (&["process", "cwd"], "\"cwd\": \"/\""),
    (&["root", "path"], "\"path\": \"rootfs\""),
];

/// The bundle's `config.json`; a missing required key is named with what to add.
fn load_bundle(path: &std::path::Path) -> anyhow::Result<OciSpec> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the bundle's {shown}"))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        let said = e.to_string();
        let what = said
            .rsplit_once(" at line ")
            .map_or(said.as_str(), |(w, _)| w);
        anyhow::anyhow!("{shown}:{}:{}: not JSON: {what}", e.line(), e.column())
    })?;
    serde_json::from_value(value.clone()).map_err(|e| {
        let missing = REQUIRED.iter().find(|(keys, _)| {
            let (last, parents) = keys.split_last().unwrap_or((&"", &[]));
            parents
                .iter()
                .try_fold(&value, |v, k| v.get(k))
                .and_then(serde_json::Value::as_object)
                .is_some_and(|parent| !parent.contains_key(*last))
        });
        match missing {
            Some((keys, add)) => anyhow::anyhow!(
                "{shown}: {} is missing: an OCI runtime spec needs it (containerd always writes it); add {add}",
                keys.join(".")
            ),
            None => anyhow::anyhow!("{shown}: not an OCI runtime spec: {e}"),
        }
    })
}
