//! Switching back (`rollback`) and cleaning up (`prune`), and finding which sets running
//! sandboxes use.
//!
//! A set is in use when a per-sandbox Kata configuration
//! (`<sandboxes dir>/<sandbox>/configuration.toml`) names a path inside its directory.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{io_at, Error, Result};
use crate::fsutil;
use crate::install::remove_leftovers;
use crate::layout::{CONFIG_FILE, CURRENT, PREVIOUS, TRASH_PREFIX};
use crate::store::Store;
use crate::verify::verify_set;

/// A switch of `current`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Switch {
    /// The set that was current (now `previous`).
    pub from: String,
    /// The set that is current now.
    pub to: String,
}

/// Makes the previous set current again (and the current one previous), after re-hashing
/// it: a set whose files changed is not switched to.
pub fn rollback(store: &Store) -> Result<Switch> {
    let class_dir = store.class_dir_on_disk();
    if !class_dir.is_dir() {
        return Err(Error::NotInstalled {
            class_dir: store.class_dir(),
        });
    }
    let _lock = store.lock(true)?;
    let current = store.current()?.ok_or_else(|| Error::NotInstalled {
        class_dir: store.class_dir(),
    })?;
    let previous = store.previous()?.ok_or_else(|| Error::NoPrevious {
        class_dir: store.class_dir(),
    })?;
    let report = verify_set(store, &previous)?;
    if let Some(f) = report.findings.first() {
        return Err(Error::Broken {
            path: store.class_dir().join(PREVIOUS),
            problem: format!(
                "the previous set {previous} is damaged ({f}); install the set you want instead"
            ),
        });
    }
    fsutil::switch_links(&class_dir, &[(PREVIOUS, &current), (CURRENT, &previous)])?;
    Ok(Switch {
        from: current,
        to: previous,
    })
}

/// How deep under the sandboxes directory per-sandbox configurations are looked for
/// (`<dir>/<namespace>/<sandbox>/configuration.toml` is 3).
const SANDBOX_DEPTH: usize = 4;

/// The sets running sandboxes use: set directory name → the sandbox configurations naming it.
/// Every `configuration.toml` up to 4 levels under the sandboxes directory
/// counts (directory links are not followed). One that cannot be read is an error: prune
/// does not guess.
pub fn sets_in_use(store: &Store) -> Result<BTreeMap<String, Vec<PathBuf>>> {
    let sandboxes = store.config().sandboxes_dir.clone();
    let mut configs = Vec::new();
    find_configs(store, &sandboxes, SANDBOX_DEPTH, &mut configs)?;
    let mut used: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for version in store.versions()? {
        let dir = store.version_dir(&version);
        for (path, text) in &configs {
            if names_path_inside(text, &dir) {
                used.entry(version.clone()).or_default().push(path.clone());
            }
        }
    }
    Ok(used)
}

/// Collects (host path, text) of every `configuration.toml` under `dir` (a host path).
fn find_configs(
    store: &Store,
    dir: &Path,
    depth: usize,
    out: &mut Vec<(PathBuf, String)>,
) -> Result<()> {
    let on_disk = store.on_disk(dir);
    let unreadable = |path: &Path, e: io::Error| Error::Broken {
        path: path.to_path_buf(),
        problem: format!(
            "cannot be read ({e}); prune does not guess which sets are in use: fix or remove it"
        ),
    };
    let entries = match fs::read_dir(&on_disk) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(unreadable(&on_disk, e)),
    };
    let mut entries: Vec<fs::DirEntry> = entries
        .collect::<io::Result<_>>()
        .map_err(|e| unreadable(&on_disk, e))?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name();
        let host_path = dir.join(&name);
        let kind = entry
            .file_type()
            .map_err(|e| unreadable(&entry.path(), e))?;
        if name == CONFIG_FILE {
            let text =
                fs::read_to_string(entry.path()).map_err(|e| unreadable(&entry.path(), e))?;
            out.push((host_path, text));
        } else if kind.is_dir() && depth > 1 {
            find_configs(store, &host_path, depth - 1, out)?;
        }
    }
    Ok(())
}

/// Whether `text` names `dir` or a path inside it. Pure.
pub fn names_path_inside(text: &str, dir: &Path) -> bool {
    let needle = dir.to_string_lossy();
    let needle = needle.trim_end_matches('/');
    text.match_indices(needle).any(|(i, _)| {
        let after = text[i + needle.len()..].chars().next();
        matches!(
            after,
            None | Some('/' | '"' | '\'' | ' ' | ',' | ']' | '\n')
        )
    })
}

/// Why prune kept a set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kept {
    /// The set's directory name.
    pub version: String,
    /// Why: "current", "within --keep", "previous, within --keep", "in use by `<config>`".
    pub reasons: Vec<String>,
}

/// What prune did (or would do, on a dry run).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Sets removed.
    pub removed: Vec<String>,
    /// Sets kept, and why.
    pub kept: Vec<Kept>,
}

/// Removes all but the `keep` newest sets (current first, then previous, then by install
/// time); never the current set nor one a running sandbox's configuration names.
pub fn prune(store: &Store, keep: usize, dry_run: bool) -> Result<PruneReport> {
    let class_dir = store.class_dir_on_disk();
    if !class_dir.is_dir() {
        return Ok(PruneReport::default());
    }
    let _lock = store.lock(true)?;
    if !dry_run {
        remove_leftovers(&class_dir)?;
    }
    let in_use = sets_in_use(store)?;
    let mut report = PruneReport::default();
    for (i, set) in store.list()?.into_iter().enumerate() {
        let mut reasons = Vec::new();
        if set.current {
            reasons.push("current".to_owned());
        }
        if i < keep {
            reasons.push(if set.previous {
                "previous, within --keep".to_owned()
            } else {
                "within --keep".to_owned()
            });
        }
        for config in in_use.get(&set.version).into_iter().flatten() {
            reasons.push(format!("in use by {}", config.display()));
        }
        if !reasons.is_empty() {
            report.kept.push(Kept {
                version: set.version,
                reasons,
            });
            continue;
        }
        if !dry_run {
            if set.previous {
                fsutil::remove_if_present(&class_dir.join(PREVIOUS))?;
            }
            let dir = store.on_disk(&set.dir);
            let trash = class_dir.join(fsutil::unique_name(TRASH_PREFIX));
            fs::rename(&dir, &trash).map_err(io_at(&dir, "move aside for removal"))?;
            fsutil::fsync_dir(&class_dir)?;
            fsutil::remove_tree(&trash)?;
        }
        report.removed.push(set.version);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_names_a_set_only_by_a_path_inside_it() {
        let dir = Path::new("/opt/a/sha256-ab");
        assert!(names_path_inside(
            "kernel = \"/opt/a/sha256-ab/vmlinuz\"",
            dir
        ));
        assert!(names_path_inside("x = ['/opt/a/sha256-ab']", dir));
        assert!(!names_path_inside(
            "kernel = \"/opt/a/sha256-abc/vmlinuz\"",
            dir
        ));
        assert!(!names_path_inside(
            "kernel = \"/opt/a/current/vmlinuz\"",
            dir
        ));
    }
}
