//! The RuntimeClass's text and the sample pod's GPU resource, as `runtimeclass`, `install`
//! and `deploy` write them.

use kata_gpu_containerd_config::fsio;

use crate::Outcome;

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
