//! What kata-gpu did to a node, per handler, so that it can be reported and undone:
//! `<host-root>/var/lib/kata-gpu/state/<handler>.json` (paths in it are as the host sees
//! them, without `--host-root`); and the node lock every node-changing command holds.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kata_gpu_containerd_config::fsio;
use kata_gpu_containerd_config::{ConfigVersion, HandlerSpec, ImportChange, Registration};
use kata_gpu_plan::Profile;
use serde::{Deserialize, Serialize};

/// Where the state files live, as the host sees it.
pub const STATE_DIR: &str = "/var/lib/kata-gpu/state";
/// The lock every node-changing command holds, as the host sees it.
pub const LOCK: &str = "/run/lock/kata-gpu.lock";

/// Why the record or the lock could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A host path could not be resolved under the root (a link loop).
    #[error("cannot resolve {} under {}: {source}", host.display(), root.display())]
    Resolve {
        /// The host path.
        host: PathBuf,
        /// The root.
        root: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be read, written or locked.
    #[error(transparent)]
    File(#[from] kata_gpu_containerd_config::Error),
    /// The state file does not parse (or the state does not encode).
    #[error("{}: damaged state file ({error}); move it aside (mv {p} {p}.damaged) and run again: kata-gpu then has no record of this node, and `kata-gpu containerd unregister` removes the handler from the files it names", path.display(), p = path.display())]
    Damaged {
        /// The state file.
        path: PathBuf,
        /// What serde said (in the message, so no source of its own).
        error: serde_json::Error,
    },
}

/// `host` under `root` with every symlink on the way resolved inside `root`
/// ([`kata_gpu_fsutil::resolve_in_root`]), so that a linked directory never leads a read or
/// a write out of `--host-root`. Every file kata-gpu writes on a node goes through this.
pub fn resolve(root: &Path, host: &Path) -> Result<PathBuf, RecordError> {
    kata_gpu_fsutil::resolve_in_root(root, host).map_err(|source| RecordError::Resolve {
        host: host.to_path_buf(),
        root: root.to_path_buf(),
        source,
    })
}

/// The node lock, held for a whole command: reading the record, changing files and saving
/// the record happen under one lock, so that two installers never lose each other's records.
/// A dry run holds none (it writes nothing, not even the lock file).
#[derive(Debug)]
pub struct NodeLock {
    _held: Option<fsio::Lock>,
}

impl NodeLock {
    /// Takes the lock at [`LOCK`] under `root`, waiting up to `wait` (none for a dry run).
    pub fn take(root: &Path, wait: Duration, dry_run: bool) -> Result<NodeLock, RecordError> {
        if dry_run {
            return Ok(NodeLock { _held: None });
        }
        let lock = fsio::Lock::acquire(&resolve(root, Path::new(LOCK))?, wait)?;
        Ok(NodeLock { _held: Some(lock) })
    }
}

/// How the handler was registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Edited into the main config.
    InPlace,
    /// Our own file, listed in the main config's `imports` (or in a directory its rendered
    /// config already imports).
    DropIn,
}

/// The containerd registration of one handler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerdState {
    /// The handler as registered.
    pub spec: HandlerSpec,
    /// The main config.
    pub config: PathBuf,
    /// Its version.
    pub version: ConfigVersion,
    /// In place or drop-in.
    pub mode: Mode,
    /// In place: what register did to the main config.
    pub registration: Option<Registration>,
    /// In place: the main config did not exist and was created.
    #[serde(default)]
    pub created_config: bool,
    /// Drop-in: our file.
    pub drop_in: Option<PathBuf>,
    /// Drop-in: its directory did not exist and was created (unregister removes it when
    /// it is empty).
    #[serde(default)]
    pub created_drop_in_dir: bool,
    /// Drop-in: what was done to the main config's `imports`.
    pub import: Option<ImportChange>,
    /// The backup of the original main config, if one was taken.
    pub backup: Option<PathBuf>,
    /// When a file was last changed (seconds since the epoch).
    pub changed_at: u64,
    /// Whether containerd has not been restarted by us since.
    pub restart_pending: bool,
    /// The systemd unit that runs containerd.
    pub unit: String,
}

/// An unregister changed containerd's config and no restart has followed: the running
/// containerd keeps the handler loaded until it restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRestart {
    /// The main config.
    pub config: PathBuf,
    /// The systemd unit that runs containerd.
    pub unit: String,
    /// When the config changed (seconds since the epoch).
    pub changed_at: u64,
}

/// Everything kata-gpu did for one handler.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// The containerd registration.
    pub containerd: Option<ContainerdState>,
    /// Host CDI spec files written by `install`.
    #[serde(default)]
    pub cdi_specs: Vec<PathBuf>,
    /// The manifests file written by `install`.
    pub manifests: Option<PathBuf>,
    /// The boot unit written (and enabled) by `install`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_unit: Option<PathBuf>,
    /// The restart an unregister left pending (the registration record is gone by then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unregistered: Option<PendingRestart>,
    /// The class's shim settings file written by `install --kata-runtime rs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shim_settings: Option<Written>,
}

impl NodeState {
    /// The profiles whose handler is registered with containerd on the host under `root`.
    pub fn registered_profiles(root: &Path) -> Vec<Profile> {
        Profile::ALL
            .into_iter()
            .filter(|p| Self::load(root, p.handler()).is_ok_and(|s| s.containerd.is_some()))
            .collect()
    }

    /// The state file of `handler` under `root`.
    pub fn path(root: &Path, handler: &str) -> Result<PathBuf, RecordError> {
        resolve(root, &Path::new(STATE_DIR).join(format!("{handler}.json")))
    }

    /// Loads the state of `handler` (empty if there is none).
    pub fn load(root: &Path, handler: &str) -> Result<NodeState, RecordError> {
        let path = Self::path(root, handler)?;
        match fsio::read_config(&path)? {
            None => Ok(NodeState::default()),
            Some(text) => {
                serde_json::from_str(&text).map_err(|error| RecordError::Damaged { path, error })
            }
        }
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.containerd.is_none()
            && self.cdi_specs.is_empty()
            && self.manifests.is_none()
            && self.boot_unit.is_none()
            && self.unregistered.is_none()
            && self.shim_settings.is_none()
    }

    /// Saves it (removes the file when nothing is recorded).
    pub fn save(&self, root: &Path, handler: &str) -> Result<(), RecordError> {
        let path = Self::path(root, handler)?;
        if self.is_empty() {
            fsio::remove_file(&path)?;
            // Leave no empty directories of ours behind.
            let state_dir = resolve(root, Path::new(STATE_DIR))?;
            for dir in [
                state_dir.clone(),
                state_dir
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
            ] {
                let _ = std::fs::remove_dir(dir);
            }
        } else {
            let text =
                serde_json::to_string_pretty(self).map_err(|error| RecordError::Damaged {
                    path: path.clone(),
                    error,
                })? + "\n";
            fsio::write_atomic(&path, text.as_bytes(), Some(0o600))?;
        }
        Ok(())
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The shim settings file install wrote, recorded with its text, so that uninstall removes
/// it only while it is still what install wrote, and knows which directories to remove.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The file, as the host sees it.
    pub path: PathBuf,
    /// What install wrote in it.
    pub text: String,
    /// The directories install created for it, deepest first, as the host sees them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created_dirs: Vec<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_state_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = NodeState {
            manifests: Some(PathBuf::from("/x.yaml")),
            ..NodeState::default()
        };
        s.save(dir.path(), "h").expect("save");
        assert_eq!(NodeState::load(dir.path(), "h").expect("load"), s);
        NodeState::default()
            .save(dir.path(), "h")
            .expect("save empty");
        assert!(!NodeState::path(dir.path(), "h").expect("path").exists());
    }
}
