//! The installed binaries (kata-gpu and the shim under each profile's name): their record,
//! and placing a shim where containerd finds it, never over a file that is not ours.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use kata_gpu_containerd_config::fsio;
use kata_gpu_plan::Profile;
use serde::{Deserialize, Serialize};

use crate::node_state::{inside, shown};
use kata_gpu_node::paths::RECORD;
use kata_gpu_node::shims;

/// What `binaries install` put on the node, as the host sees it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The prefix.
    pub prefix: PathBuf,
    /// Every file and link installed.
    pub files: Vec<PathBuf>,
}

impl Record {
    /// The record on the host under `root`, if any.
    pub fn load(root: &Path) -> anyhow::Result<Option<Record>> {
        let path = inside(root, Path::new(RECORD))?;
        fsio::read_config(&path)?
            .map(|t| {
                serde_json::from_str(&t).map_err(|e| {
                    let p = path.display();
                    anyhow::anyhow!(
                        "{p}: damaged record ({e}); move it aside (mv {p} {p}.damaged) and remove the binaries by hand"
                    )
                })
            })
            .transpose()
    }

    pub fn save(&self, root: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)? + "\n";
        fsio::write_atomic(
            &inside(root, Path::new(RECORD))?,
            text.as_bytes(),
            Some(0o600),
        )?;
        Ok(())
    }
}

/// The files `binaries install` writes into `bin` (host view): kata-gpu, then the shim
/// under the snp name, then the names that link to it.
pub fn planned_files(bin: &Path) -> Vec<PathBuf> {
    let mut files = vec![bin.join("kata-gpu")];
    files.extend(Profile::ALL.iter().map(|p| bin.join(p.shim_binary())));
    files
}

/// Refuses to replace `dst` (a host path under `root`) when something is there that does
/// not answer `-v` as a kata-gpu shim (under any profile's name): containerd may run it
/// for another runtime, and replacing it would take that runtime away.
pub fn check_shim_target(root: &Path, dst: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(inside(root, dst)?) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        _ => {}
    }
    let said = shims::version(root, dst);
    if said.as_deref().is_ok_and(|line| {
        Profile::ALL
            .iter()
            .any(|p| line.starts_with(&format!("{} ", p.shim_binary())))
    }) {
        return Ok(());
    }
    let said = said.unwrap_or_else(|e| e).replace('\n', " ");
    bail!(
        "{} is not the kata-gpu shim ({said}); move it aside (containerd may run it for another runtime) and retry; nothing was installed",
        shown(root, dst)
    )
}

/// Installs the shim `src` (this process's view) as `dst` (a host path under `root`) in
/// one rename, so that containerd starting a shim at that moment runs the old binary or
/// the new one; refused as [`check_shim_target`] refuses.
pub fn place_shim(root: &Path, src: &Path, dst: &Path) -> anyhow::Result<()> {
    check_shim_target(root, dst)?;
    let real = inside(root, dst)?;
    if let Some(dir) = real.parent() {
        kata_gpu_fsutil::create_dirs(dir, 0o755)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    kata_gpu_fsutil::copy_atomic(src, &real, 0o755)
        .with_context(|| format!("cannot install {} as {}", src.display(), real.display()))
}
