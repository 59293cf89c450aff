//! What `install` and `uninstall` report, one step at a time, as text or JSON.

use std::path::Path;

use kata_gpu_artifacts::RemoveReport;

use serde::Serialize;

use crate::Outcome;

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
    pub(crate) fn new(step: &'static str, result: impl Into<String>) -> Step {
        Step {
            step,
            result: result.into(),
            diffs: Vec::new(),
            warnings: Vec::new(),
            notes: Vec::new(),
        }
    }
}

/// Prints the steps, as text or JSON; every `kata-gpu` command they name gets the root
/// of a host under `--host-root` (`root`).
pub(crate) fn print(steps: &[Step], root: &Path, json: bool) -> anyhow::Result<Outcome> {
    let rooted = |t: &str| crate::command_line::rooted(t, root);
    let steps: Vec<Step> = steps
        .iter()
        .map(|s| Step {
            step: s.step,
            result: rooted(&s.result),
            diffs: s.diffs.clone(),
            warnings: s.warnings.iter().map(|w| rooted(w)).collect(),
            notes: s.notes.iter().map(|n| rooted(n)).collect(),
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&steps)?);
    } else {
        for s in &steps {
            for d in &s.diffs {
                print!("{d}");
            }
            println!("{:<13} {}", format!("{}:", s.step), s.result);
            for w in &s.warnings {
                println!("{:<13} warning: {w}", "");
            }
            for n in &s.notes {
                println!("{:<13} note: {n}", "");
            }
        }
    }
    Ok(Outcome::Clean)
}

/// One line on what removing a class's store did (or would do); `uninstall --purge` says
/// the same.
pub fn removal(r: &RemoveReport, root: &Path, dry_run: bool) -> String {
    let dir = crate::node_state::shown(root, &r.class_dir);
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
