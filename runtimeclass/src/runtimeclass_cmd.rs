//! `kata-gpu runtimeclass`: the RuntimeClass, NodeFeatureRule and sample pod of a profile.

use std::path::PathBuf;

use kata_gpu_containerd_config::fsio;
use kata_gpu_manifests::{
    check_quantity, parse_selectors, Manifests, Options, DEFAULT_CPU_OVERHEAD,
    DEFAULT_MEMORY_OVERHEAD,
};
use kata_gpu_plan::Profile;

use crate::{Global, Outcome};

/// How the RuntimeClass is shaped; shared with `install`.
#[derive(Debug, Clone, clap::Args)]
pub struct ManifestArgs {
    /// overhead.podFixed.memory of the RuntimeClass.
    #[arg(long, value_name = "QUANTITY", default_value = DEFAULT_MEMORY_OVERHEAD)]
    pub overhead_memory: String,
    /// overhead.podFixed.cpu of the RuntimeClass.
    #[arg(long, value_name = "QUANTITY", default_value = DEFAULT_CPU_OVERHEAD)]
    pub overhead_cpu: String,
    /// A node label pods of the class must land on (replaces the profile's default,
    /// feature.node.kubernetes.io/kata-gpu.<profile>-ready=true, which doctor --labels and
    /// the agent set where doctor passes); repeat for several.
    #[arg(long = "node-selector", value_name = "KEY=VALUE")]
    pub node_selector: Vec<String>,
    /// No node selector at all.
    #[arg(long, conflicts_with = "node_selector")]
    pub no_node_selector: bool,
}

impl ManifestArgs {
    /// The manifest options these arguments stand for.
    pub fn options(&self) -> anyhow::Result<Options> {
        check_quantity(&self.overhead_memory)?;
        check_quantity(&self.overhead_cpu)?;
        let node_selector = if self.no_node_selector {
            Some(Vec::new())
        } else if self.node_selector.is_empty() {
            None
        } else {
            Some(parse_selectors(&self.node_selector)?)
        };
        Ok(Options {
            memory_overhead: self.overhead_memory.clone(),
            cpu_overhead: self.overhead_cpu.clone(),
            node_selector,
            gpu_resource: kata_gpu_manifests::DEFAULT_GPU_RESOURCE.to_owned(),
        })
    }
}

/// What the device plugin (default naming) advertises for the first GPU of the host under
/// `root`, for the sample pod; an H100 PCIe's name when the host has none bound.
pub fn sample_resource(root: &std::path::Path) -> String {
    kata_gpu_device_plugin::inventory(
        &kata_gpu_plan::host::Host::new(root),
        kata_gpu_device_plugin::Naming::Nvidia,
    )
    .ok()
    .and_then(|rs| {
        rs.into_iter()
            .find(|r| r.kind == kata_gpu_plan::host_spec::PGPU_KIND)
    })
    .map_or_else(
        || kata_gpu_manifests::DEFAULT_GPU_RESOURCE.to_owned(),
        |r| r.name,
    )
}

/// Arguments of `kata-gpu runtimeclass`.
#[derive(Debug, clap::Args)]
pub struct RuntimeClassArgs {
    /// The runtime class's profile: snp, tdx or gpu.
    #[arg(long, default_value = "snp")]
    pub profile: Profile,
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// Write to this file instead of standard output.
    #[arg(long, value_name = "F")]
    pub output: Option<PathBuf>,
}

/// Runs `kata-gpu runtimeclass`.
pub fn run(args: RuntimeClassArgs, global: &Global) -> anyhow::Result<Outcome> {
    let mut opts = args.manifest.options()?;
    opts.gpu_resource = sample_resource(&global.host_root);
    let m = Manifests::new(args.profile, &opts);
    let text = if global.json {
        m.to_json()? + "\n"
    } else {
        m.to_yaml()?
    };
    emit(&text, args.output.as_deref())
}

/// Prints manifests, or writes them atomically to `output` and says how to apply them;
/// shared with `deploy`.
pub fn emit(text: &str, output: Option<&std::path::Path>) -> anyhow::Result<Outcome> {
    match output {
        Some(path) => {
            fsio::write_atomic(path, text.as_bytes(), Some(0o644))?;
            eprintln!(
                "wrote {}: apply with kubectl apply -f {}",
                path.display(),
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(Outcome::Clean)
}
