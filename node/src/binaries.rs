//! The installed binaries (kata-gpu and the shim under each profile's name): their record,
//! and placing a shim where containerd finds it, never over a file that is not ours.

use std::path::{Path, PathBuf};

use kata_gpu_containerd_config::fsio;
use kata_gpu_plan::Profile;
use serde::{Deserialize, Serialize};

use crate::paths::{shown, RECORD};
use crate::record::{resolve, RecordError};
use crate::shims;

/// Why binaries could not be recorded or a shim placed; nothing was installed.
#[derive(Debug, thiserror::Error)]
pub enum BinariesError {
    /// A path could not be resolved under the root.
    #[error(transparent)]
    Resolve(#[from] RecordError),
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] kata_gpu_containerd_config::Error),
    /// The record does not parse.
    #[error("{p}: damaged record ({error}); move it aside (mv {p} {p}.damaged) and remove the binaries by hand", p = path.display())]
    Damaged {
        /// The record.
        path: PathBuf,
        /// What serde said.
        error: serde_json::Error,
    },
    /// The record could not be encoded.
    #[error("cannot encode the binaries record")]
    Encode(#[source] serde_json::Error),
    /// Something that is not our shim is where the shim goes.
    #[error("{shown} is not the kata-gpu shim ({said}); move it aside (containerd may run it for another runtime) and retry; nothing was installed")]
    NotOurShim {
        /// The path, under the root.
        shown: String,
        /// What it answered to `-v`.
        said: String,
    },
    /// The shim's directory could not be created.
    #[error("cannot create {}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The shim could not be copied into place.
    #[error("cannot install {} as {}", src.display(), dst.display())]
    Install {
        /// The binary.
        src: PathBuf,
        /// Where it goes.
        dst: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

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
    pub fn load(root: &Path) -> Result<Option<Record>, BinariesError> {
        let path = resolve(root, Path::new(RECORD))?;
        fsio::read_config(&path)?
            .map(|t| {
                serde_json::from_str(&t).map_err(|error| BinariesError::Damaged {
                    path: path.clone(),
                    error,
                })
            })
            .transpose()
    }

    /// Writes the record (root-only), atomically.
    pub fn save(&self, root: &Path) -> Result<(), BinariesError> {
        let text = serde_json::to_string_pretty(self).map_err(BinariesError::Encode)? + "\n";
        fsio::write_atomic(
            &resolve(root, Path::new(RECORD))?,
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
pub fn check_shim_target(root: &Path, dst: &Path) -> Result<(), BinariesError> {
    match std::fs::symlink_metadata(resolve(root, dst)?) {
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
    Err(BinariesError::NotOurShim {
        shown: shown(root, dst),
        said,
    })
}

/// Installs the shim `src` (this process's view) as `dst` (a host path under `root`) in
/// one rename, so that containerd starting a shim at that moment runs the old binary or
/// the new one; refused as [`check_shim_target`] refuses.
pub fn place_shim(root: &Path, src: &Path, dst: &Path) -> Result<(), BinariesError> {
    check_shim_target(root, dst)?;
    let real = resolve(root, dst)?;
    if let Some(dir) = real.parent() {
        kata_gpu_fsutil::create_dirs(dir, 0o755).map_err(|source| BinariesError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        })?;
    }
    kata_gpu_fsutil::copy_atomic(src, &real, 0o755).map_err(|source| BinariesError::Install {
        src: src.to_path_buf(),
        dst: real.clone(),
        source,
    })
}
