//! OCI image archives built by the tests: a busybox root file system as one layer, in an
//! OCI image layout tar that `ctr images import` takes, so that CRI pods need no registry.
//! The layout is the node image's own writer (`kata_gpu_image::oci_archive`).

use std::io;
use std::path::Path;

use kata_gpu_image::{oci_archive, ImageConfig};

/// Writes `dest` (an OCI layout tar) holding one image named `name` (e.g.
/// `docker.io/library/kata-gpu-pause:test`) whose only layer is `rootfs`, and whose
/// command is `cmd`.
pub fn write_oci_archive(rootfs: &Path, name: &str, cmd: &[&str], dest: &Path) -> io::Result<()> {
    let mut layer = tar::Builder::new(Vec::new());
    layer.follow_symlinks(false);
    layer.append_dir_all(".", rootfs)?;
    let config = ImageConfig {
        cmd: cmd.iter().map(|c| (*c).to_owned()).collect(),
        env: vec!["PATH=/bin".to_owned()],
        ..ImageConfig::default()
    };
    let (archive, _) =
        oci_archive(name, &layer.into_inner()?, false, &config).map_err(io::Error::other)?;
    std::fs::write(dest, archive)
}
