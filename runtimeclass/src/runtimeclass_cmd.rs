//! `kata-gpu runtimeclass`: the RuntimeClass, NodeFeatureRule and sample pod of a profile.

use std::path::PathBuf;

use kata_gpu_manifests::Manifests;
use kata_gpu_plan::Profile;

use crate::args::ManifestArgs;
use crate::manifests::{emit, sample_resource};
use crate::{Global, Outcome};

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
