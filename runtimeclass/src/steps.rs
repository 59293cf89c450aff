//! Printing what `install` and `uninstall` report, one [`Step`] at a time, as text or JSON.

use std::path::Path;

pub use kata_gpu_node::steps::Step;

use crate::Outcome;

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
