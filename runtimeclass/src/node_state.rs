//! The node's record and lock, and host paths under `--host-root`, as the commands use
//! them: the node library's ([`kata_gpu_node::record`], [`kata_gpu_node::paths`]), with
//! `inside` giving `anyhow` errors.

use std::path::{Path, PathBuf};

use anyhow::Context;

pub use kata_gpu_node::paths::{shown, under};
pub use kata_gpu_node::record::{NodeLock, NodeState, STATE_DIR};

/// `host` under `root` with every symlink on the way resolved inside `root`
/// ([`kata_gpu_fsutil::resolve_in_root`]), so that a linked directory never leads a read or
/// a write out of `--host-root`. Every file kata-gpu writes on a node goes through this.
pub fn inside(root: &Path, host: &Path) -> anyhow::Result<PathBuf> {
    kata_gpu_fsutil::resolve_in_root(root, host)
        .with_context(|| format!("cannot resolve {} under {}", host.display(), root.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kata_gpu_node::paths::host_path;

    #[test]
    fn host_paths_go_under_the_root() {
        let table = [
            (
                "/",
                "/etc/containerd/config.toml",
                "/etc/containerd/config.toml",
            ),
            (
                "/host",
                "/etc/containerd/config.toml",
                "/host/etc/containerd/config.toml",
            ),
        ];
        for (root, host, want) in table {
            assert_eq!(under(Path::new(root), Path::new(host)), PathBuf::from(want));
        }
        assert_eq!(
            host_path(Path::new("/sim"), Path::new("etc/c.toml")),
            PathBuf::from("/etc/c.toml")
        );
    }
}
