//! Where installed artifact sets live. The artifact store writes there and the shim reads
//! there (its settings beside a class, a class's base config): both need these paths and
//! nothing else of each other, so they are fixed here, in the one crate both already use.

use std::path::{Path, PathBuf};

/// The default root of all runtime classes' artifacts.
pub const DEFAULT_ROOT: &str = "/opt/nvidia-gpu-operator/artifacts/runtimeclasses";

/// The name of the link to the active set inside a class directory.
pub const CURRENT: &str = "current";

/// The fixed name under which every installed set holds its (rewritten) base Kata config,
/// so that containerd's `ConfigPath` stays valid across versions.
pub const CONFIG_FILE: &str = "configuration.toml";

/// The name of the link to the set that was current before the last switch; `rollback`
/// switches back to it.
pub const PREVIOUS: &str = "previous";

/// The manifest the store writes beside the files of every set.
pub const MANIFEST_FILE: &str = "kata-gpu-manifest.json";

/// The lock file inside a class directory.
pub const LOCK_FILE: &str = ".lock";

/// The prefix of a set being copied (a hidden directory of the class directory).
pub const STAGING_PREFIX: &str = ".staging-";

/// The prefix of a set being removed.
pub const TRASH_PREFIX: &str = ".trash-";

/// Under which the shim writes per-sandbox Kata configurations (its state directory):
/// every `configuration.toml` a few levels down counts, e.g.
/// `<dir>/sandboxes/<sandbox>/configuration.toml` or `<dir>/<namespace>/<sandbox>/configuration.toml`.
pub const DEFAULT_SANDBOXES_DIR: &str = "/run/kata-gpu";

/// The directory, directly in the shim's state directory, of the proxies' sockets and their
/// records (one a running pod): no sandbox's state, and so no containerd namespace's name.
pub const PROXY_SOCKETS_DIR: &str = "s";

/// The lock file, directly in the shim's state directory, under which a sandbox's Create
/// checks and claims its devices; no sandbox's state, so it may stay behind.
pub const CLAIMS_LOCK: &str = "claims.lock";

/// The directory of one runtime class: `<root>/<class>`.
pub fn class_dir(root: &Path, class: &str) -> PathBuf {
    root.join(class)
}

/// The base Kata config of the active set: `<root>/<class>/current/configuration.toml`.
pub fn current_config_path(root: &Path, class: &str) -> PathBuf {
    class_dir(root, class).join(CURRENT).join(CONFIG_FILE)
}

/// Where the node image keeps its artifact sets, one per profile (see [`image_set_paths`]);
/// `kata-gpu agent` installs from there when given no `--artifacts`.
pub const IMAGE_SETS_DIR: &str = "/artifacts";

/// Where a profile's set sits under `dir` (the image's [`IMAGE_SETS_DIR`]): first
/// `<dir>/<profile>` (a directory or an OCI layout), then `<dir>/<profile>.tar` (a tarball,
/// gzip-compressed or not: the store recognises it by content). The image builder writes
/// the one that fits the set's form; the agent takes the first that exists.
pub fn image_set_paths(dir: &Path, profile: &str) -> [PathBuf; 2] {
    [dir.join(profile), dir.join(format!("{profile}.tar"))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_path_goes_through_current() {
        assert_eq!(
            current_config_path(Path::new(DEFAULT_ROOT), "kata-qemu-nvidia-gpu-snp"),
            PathBuf::from("/opt/nvidia-gpu-operator/artifacts/runtimeclasses/kata-qemu-nvidia-gpu-snp/current/configuration.toml")
        );
    }
}
