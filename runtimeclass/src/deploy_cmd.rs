//! `kata-gpu deploy`: the objects that run kata-gpu on a cluster, for `kubectl apply -f -`:
//! namespace, ServiceAccount (no API rights), the node and device plugin DaemonSets and the
//! RuntimeClasses, checked (`deploy_check`) before they are printed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::bail;
use kata_gpu_manifests::deploy::{DeployOptions, Deployment, DEFAULT_IMAGE, DEFAULT_NAMESPACE};
use kata_gpu_manifests::deploy_check::problems;
use kata_gpu_plan::Profile;

use crate::args::ManifestArgs;
use crate::manifests::emit;
use crate::{Global, Outcome};

/// Arguments of `kata-gpu deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// The node image (what `make image` built, pushed to a registry the nodes reach).
    #[arg(long, value_name = "REF", default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// A profile to install (snp, tdx, gpu); repeat for several. Default: snp.
    #[arg(long = "profile", value_name = "P")]
    pub profiles: Vec<Profile>,
    /// The namespace of the DaemonSets.
    #[arg(long, value_name = "NS", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// How many nodes may install (and restart containerd) at once in a rolling update.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64))]
    pub max_unavailable: u32,
    /// The artifact set a profile's agent installs: PROFILE=PATH, a directory, tarball or
    /// OCI layout on every node (as the host sees it); repeat per profile. Default: the
    /// profile's set in the image (`make image ARTIFACTS=…`), if it has one.
    #[arg(long = "artifacts", value_name = "PROFILE=PATH")]
    pub artifacts: Vec<String>,
    /// The Kata runtime behind the proxy on every node: go (Kata's Go shim) or rs
    /// (runtime-rs, /opt/kata/runtime-rs/bin/containerd-shim-kata-v2); the artifact sets
    /// must be that runtime's.
    #[arg(long, value_name = "go|rs", default_value = "go")]
    pub kata_runtime: kata_gpu_configs::KataRuntime,
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// Write to this file instead of standard output.
    #[arg(long, value_name = "F")]
    pub output: Option<PathBuf>,
}

/// Whether `s` is an RFC 1123 label, as a namespace name must be.
fn dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Parses `--artifacts PROFILE=PATH`: a deployed profile, once, and an absolute path.
fn artifact_sets(
    given: &[String],
    profiles: &[Profile],
) -> anyhow::Result<BTreeMap<Profile, String>> {
    let mut sets = BTreeMap::new();
    for a in given {
        let Some((p, path)) = a.split_once('=') else {
            bail!("--artifacts {a:?}: write PROFILE=PATH, e.g. snp=/opt/kata-gpu/sets/snp.tar");
        };
        let profile: Profile = p.parse().map_err(|_| {
            anyhow::anyhow!("--artifacts {a:?}: {p:?} is not a profile (snp, tdx, gpu)")
        })?;
        if !profiles.contains(&profile) {
            bail!("--artifacts {a:?}: {p} is not deployed (add --profile {p})");
        }
        if !path.starts_with('/') || path.contains(char::is_whitespace) {
            bail!("--artifacts {a:?}: the path is the node's, absolute and without spaces");
        }
        if sets.insert(profile, path.to_owned()).is_some() {
            bail!("--artifacts {a:?}: {p} has a set already");
        }
    }
    Ok(sets)
}

/// Runs `kata-gpu deploy`.
pub fn run(args: DeployArgs, global: &Global) -> anyhow::Result<Outcome> {
    if !dns_label(&args.namespace) {
        bail!(
            "--namespace {:?}: a namespace is 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit",
            args.namespace
        );
    }
    if args.image.is_empty() || args.image.contains(char::is_whitespace) {
        bail!(
            "--image {:?}: an image reference has no spaces, e.g. registry.example/kata-gpu:v1",
            args.image
        );
    }
    // Each profile once, in the order given; snp when none is.
    let mut profiles: Vec<Profile> = Vec::new();
    for p in &args.profiles {
        if !profiles.contains(p) {
            profiles.push(*p);
        }
    }
    if profiles.is_empty() {
        profiles.push(Profile::Snp);
    }
    let artifacts = artifact_sets(&args.artifacts, &profiles)?;
    let d = Deployment::new(&DeployOptions {
        image: args.image,
        profiles,
        namespace: args.namespace,
        max_unavailable: args.max_unavailable,
        runtime_class: args.manifest.options()?,
        artifacts,
        kata_runtime: args.kata_runtime,
    });
    let found = problems(&d.values()?);
    if !found.is_empty() {
        bail!("the manifests would be unsafe: {}", found.join("; "));
    }
    let (label, value) = kata_gpu_manifests::PASSTHROUGH_LABEL;
    eprintln!(
        "kata-gpu deploy: note: maxUnavailable paces only updates: on the first kubectl apply every node labelled {label}={value} starts its agent at once, and each restarts containerd (running containers survive that); to stage it, label the nodes in batches (kubectl label node N {label}={value}), each once the last batch is ready (README, \"Deploy on a cluster\")"
    );
    let text = if global.json {
        d.to_json()? + "\n"
    } else {
        d.to_yaml()?
    };
    emit(&text, args.output.as_deref())
}
