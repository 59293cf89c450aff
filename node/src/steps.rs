//! What the node's operations did, one step at a time (`install` and `uninstall` print
//! them): each step's result, and the diffs, warnings and notes a user should see.

use std::path::{Path, PathBuf};

use kata_gpu_artifacts::RemoveReport;

use crate::record::RecordError;
use serde::Serialize;

/// Why a step of install or uninstall failed; the steps before it stay done (uninstall
/// undoes install's; uninstall run again finishes its own).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The record could not be read or saved, a path not resolved, or the lock not taken.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] kata_gpu_containerd_config::Error),
    /// The artifact store refused or failed.
    #[error(transparent)]
    Artifacts(#[from] kata_gpu_artifacts::Error),
    /// The registration refused or failed.
    #[error(transparent)]
    Registration(Box<crate::registration::RegistrationError>),
    /// The binaries' record could not be read.
    #[error(transparent)]
    Binaries(#[from] crate::binaries::BinariesError),
    /// The class's shim settings file could not be planned, written or removed.
    #[error(transparent)]
    ShimSettings(#[from] crate::shim_settings::ShimSettingsError),
    /// The host's PCI devices could not be read.
    #[error("cannot read the host's PCI devices")]
    Devices(#[source] kata_gpu_plan::HostError),
    /// A host CDI spec built here does not validate (a bug: the spec is ours).
    #[error(transparent)]
    Spec(#[from] cdi::SpecError),
    /// A host CDI spec could not be encoded.
    #[error("cannot encode the host CDI spec")]
    Encode(#[source] serde_yaml_ng::Error),
    /// A directory could not be removed.
    #[error("cannot remove {}", path.display())]
    Remove {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The boot unit could not be enabled.
    #[error("cannot enable {}", link.display())]
    Enable {
        /// The link in the target's wants directory.
        link: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl From<crate::registration::RegistrationError> for StepError {
    fn from(e: crate::registration::RegistrationError) -> StepError {
        StepError::Registration(Box::new(e))
    }
}

/// One step's result.
#[derive(Debug, Serialize)]
pub struct Step {
    /// artifacts, cdi, containerd, restart or runtimeclass.
    pub step: &'static str,
    /// What it did (or would do).
    pub result: String,
    /// Diffs (with --dry-run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diffs: Vec<String>,
    /// Warnings.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Notes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Step {
    /// A step with its result and nothing else said yet.
    pub fn new(step: &'static str, result: impl Into<String>) -> Step {
        Step {
            step,
            result: result.into(),
            diffs: Vec::new(),
            warnings: Vec::new(),
            notes: Vec::new(),
        }
    }
}

/// One line on what removing a class's store did (or would do); `uninstall --purge` says
/// the same.
pub fn removal(r: &RemoveReport, root: &Path, dry_run: bool) -> String {
    let dir = crate::paths::shown(root, &r.class_dir);
    if !r.present {
        return format!("nothing to remove: {dir} does not exist");
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    let entries = r.removed.join(", ");
    if r.dir_removed {
        format!("{verb} {dir} ({entries})")
    } else {
        format!(
            "{verb} {entries} from {dir}; kept {} and the directory (not the store's)",
            r.kept.join(", ")
        )
    }
}
