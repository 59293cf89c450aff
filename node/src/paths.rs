//! Host paths under `--host-root`: every path kata-gpu reads, writes or names is a host path
//! (as the host sees it) placed under the root it was given (`/` on a node, a directory
//! holding a simulated host in tests); and where kata-gpu keeps its files on a node.

use std::path::{Path, PathBuf};

/// `host` (as the host sees it) under `root`, joined as written.
pub fn under(root: &Path, host: &Path) -> PathBuf {
    root.join(host.strip_prefix("/").unwrap_or(host))
}

/// `host` as it is named under `root`, for what kata-gpu prints: under `--host-root` every
/// path it names is the one inside the root, never the real host's.
pub fn shown(root: &Path, host: &Path) -> String {
    under(root, host).display().to_string()
}

/// A path given on the command line, as the host sees it: absolute as given; a relative one
/// is taken from the current directory on a real host (`root` `/`) and from the root of a
/// simulated one.
pub fn host_path(root: &Path, given: &Path) -> PathBuf {
    if given.is_absolute() {
        given.to_path_buf()
    } else if root == Path::new("/") {
        std::path::absolute(given).unwrap_or_else(|_| given.to_path_buf())
    } else {
        Path::new("/").join(given)
    }
}

/// Where install writes the manifests, as the host sees it.
pub const MANIFEST_DIR: &str = "/var/lib/kata-gpu/manifests";

/// Where install writes the host CDI specs, as the host sees it.
pub const CDI_DIR: &str = "/var/run/cdi";

/// Our host CDI spec of `kind`, as the host sees it.
pub fn our_spec_path(kind: &str) -> PathBuf {
    Path::new(CDI_DIR).join(cdi::write::spec_file_name(kind))
}

/// The record of installed binaries, as the host sees it.
pub const RECORD: &str = "/var/lib/kata-gpu/binaries.json";

/// The default prefix.
pub const DEFAULT_PREFIX: &str = "/usr/local";

/// The settings file the shim reads for `profile` (unless `$KATA_GPU_SHIM_CONFIG` names
/// another), as the host sees it: beside the class's artifact sets.
pub fn shim_settings(profile: kata_gpu_plan::Profile) -> PathBuf {
    kata_gpu_fsutil::layout::class_dir(
        Path::new(kata_gpu_fsutil::layout::DEFAULT_ROOT),
        profile.handler(),
    )
    .join("shim.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_under_a_root() {
        let root = Path::new("/sim");
        assert_eq!(under(root, Path::new("/etc/x")), Path::new("/sim/etc/x"));
        assert_eq!(shown(Path::new("/"), Path::new("/etc/x")), "/etc/x");
        assert_eq!(host_path(root, Path::new("etc/x")), Path::new("/etc/x"));
        assert_eq!(host_path(root, Path::new("/etc/x")), Path::new("/etc/x"));
    }
}
