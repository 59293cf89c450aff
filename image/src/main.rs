//! `kata-gpu-image`: writes the node image (an OCI-layout tar) from built binaries; what
//! `make image` runs. Prints the image's name and manifest digest.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use kata_gpu_image::{build, ImageSpec};
use kata_gpu_plan::Profile;

#[derive(Debug, Parser)]
#[command(
    name = "kata-gpu-image",
    about = "Build the kata-gpu node image as an OCI-layout tar"
)]
struct Args {
    /// The `kata-gpu` binary.
    #[arg(long, value_name = "FILE")]
    kata_gpu: PathBuf,
    /// The shim binary.
    #[arg(long, value_name = "FILE")]
    shim: PathBuf,
    /// A name the shim is installed under; repeat (default: one per profile).
    #[arg(long = "shim-name", value_name = "NAME")]
    shim_names: Vec<String>,
    /// A profile's artifact set, PROFILE=PATH (a directory, an OCI layout or a tarball);
    /// repeat for each profile. It lands under /artifacts, where `kata-gpu agent` finds it.
    #[arg(long = "artifacts", value_name = "PROFILE=PATH", value_parser = artifact_set)]
    artifacts: Vec<(Profile, PathBuf)>,
    /// The image's name and tag, e.g. ghcr.io/org/kata-gpu:v1.
    #[arg(long, value_name = "REF")]
    name: String,
    /// The commit it is built from (the org.opencontainers.image.revision label).
    #[arg(long, value_name = "SHA", default_value = "")]
    revision: String,
    /// Where to write the tar.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let built = build(&ImageSpec {
        name: a.name.clone(),
        revision: a.revision,
        kata_gpu: a.kata_gpu,
        shim: a.shim,
        shim_names: if a.shim_names.is_empty() {
            Profile::ALL.map(Profile::shim_binary).to_vec()
        } else {
            a.shim_names
        },
        artifacts: a.artifacts,
    })?;
    kata_gpu_fsutil::write_atomic(&a.output, &built.archive, 0o644)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    println!("{} {} {}", a.output.display(), a.name, built.digest);
    Ok(())
}

/// Parses `--artifacts PROFILE=PATH`.
fn artifact_set(arg: &str) -> Result<(Profile, PathBuf), String> {
    let (profile, path) = arg
        .split_once('=')
        .filter(|(_, p)| !p.is_empty())
        .ok_or_else(|| format!("{arg:?}: write PROFILE=PATH, e.g. snp=sets/snp"))?;
    let profile = profile.parse::<Profile>().map_err(|e| e.to_string())?;
    Ok((profile, PathBuf::from(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_profile_equals_path() {
        assert_eq!(
            artifact_set("tdx=sets/tdx.tar"),
            Ok((Profile::Tdx, PathBuf::from("sets/tdx.tar")))
        );
        assert_eq!(
            artifact_set("sets/snp").expect_err("no profile"),
            "\"sets/snp\": write PROFILE=PATH, e.g. snp=sets/snp"
        );
        assert_eq!(
            artifact_set("snp=").expect_err("no path"),
            "\"snp=\": write PROFILE=PATH, e.g. snp=sets/snp"
        );
        assert_eq!(
            artifact_set("sev=sets/snp").expect_err("no such profile"),
            "unknown profile \"sev\"; the profiles are snp, tdx and gpu"
        );
    }
}
