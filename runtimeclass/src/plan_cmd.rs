//! `kata-gpu plan`: what a sandbox would get on this host, by the shim's own code path.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use cdi::registry::{Registry, RegistryConfig};
use kata_gpu_shim::host::Host;
use kata_gpu_shim::plan::{plan, BaseValues, PlanInput, Policy};
use kata_gpu_shim::Profile;
use oci_spec::runtime::Spec as OciSpec;

use crate::{Global, Outcome};

/// Arguments of `kata-gpu plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The runtime class's profile: snp, tdx or gpu.
    #[arg(long, default_value = "snp")]
    profile: Profile,
    /// A pod annotation, e.g. cdi.k8s.io/gpu=nvidia.com/pgpu=0; repeat for several.
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
}

fn parse_annotation(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// Runs `kata-gpu plan`.
pub fn run(args: PlanArgs, global: &Global) -> anyhow::Result<Outcome> {
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
    let mut oci = OciSpec::default();
    oci.set_annotations(Some(
        args.annotations.into_iter().collect::<HashMap<_, _>>(),
    ));
    let planned = plan(&PlanInput {
        profile: args.profile,
        oci: &oci,
        registry: &registry,
        host: &host,
        base: &BaseValues::default(),
        policy: &policy,
    })
    .context("the sandbox cannot be planned")?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&planned.view())?);
    } else {
        print!("{planned}");
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
