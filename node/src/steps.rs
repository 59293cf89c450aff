//! What the node's operations did, one step at a time (`install` and `uninstall` print
//! them): each step's result, and the diffs, warnings and notes a user should see.

use std::path::Path;

use kata_gpu_artifacts::RemoveReport;
use serde::Serialize;

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
