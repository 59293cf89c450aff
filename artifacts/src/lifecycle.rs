//! Switching back (`rollback`), cleaning up (`prune`), removing a class's whole store
//! (`remove_class`), and finding which sets running sandboxes use.
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
use crate::layout::{CONFIG_FILE, CURRENT, LOCK_FILE, PREVIOUS, STAGING_PREFIX, TRASH_PREFIX};
use crate::manifest::parse_version_name;
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
            class_dir: store.class_dir_on_disk(),
        });
    }
    let _lock = store.lock(true)?;
    let current = store.current()?.ok_or_else(|| Error::NotInstalled {
        class_dir: store.class_dir_on_disk(),
    })?;
    let previous = store.previous()?.ok_or_else(|| Error::NoPrevious {
        class_dir: store.class_dir_on_disk(),
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
    sets_named_by(store, &sandbox_configs(store, "prune")?)
}

/// (host path, text) of every per-sandbox configuration; `command` names who refuses when
/// one cannot be read.
fn sandbox_configs(store: &Store, command: &str) -> Result<Vec<(PathBuf, String)>> {
    let sandboxes = store.config().sandboxes_dir.clone();
    let mut configs = Vec::new();
    find_configs(store, &sandboxes, SANDBOX_DEPTH, command, &mut configs)?;
    Ok(configs)
}

/// The sets `configs` name: set directory name → the configurations naming it.
fn sets_named_by(
    store: &Store,
    configs: &[(PathBuf, String)],
) -> Result<BTreeMap<String, Vec<PathBuf>>> {
    let mut used: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for version in store.versions()? {
        let dir = store.version_dir(&version);
        for (path, text) in configs {
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
    command: &str,
    out: &mut Vec<(PathBuf, String)>,
) -> Result<()> {
    let on_disk = store.on_disk(dir);
    let unreadable = |path: &Path, e: io::Error| Error::Broken {
        path: path.to_path_buf(),
        problem: format!(
            "cannot be read ({e}); {command} does not guess which sets are in use: fix or remove it"
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
            find_configs(store, &host_path, depth - 1, command, out)?;
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

/// What [`remove_class`] removed (or would remove, on a dry run).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RemoveReport {
    /// The class directory, host view.
    pub class_dir: PathBuf,
    /// Whether the class directory was there.
    pub present: bool,
    /// The store's entries removed, links first and the lock file last: `current`,
    /// `previous`, the sets, leftovers of interrupted commands, `.lock`.
    pub removed: Vec<String>,
    /// Entries that are not the store's (e.g. the shim's `shim.toml`): left in place, and
    /// the class directory with them.
    pub kept: Vec<String>,
    /// Whether the class directory itself was removed (it held nothing else).
    pub dir_removed: bool,
}

/// Whether `name` is an entry the store writes in a class directory.
fn stores_entry(name: &str) -> bool {
    [CURRENT, PREVIOUS, LOCK_FILE].contains(&name)
        || parse_version_name(name).is_some()
        || [
            STAGING_PREFIX,
            TRASH_PREFIX,
            ".current.tmp-",
            ".previous.tmp-",
        ]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Removes the store of a runtime class: `current` and `previous`, every set, leftovers of
/// interrupted commands, the lock file, then the class directory. Runs under the store's
/// exclusive lock and refuses, before removing anything, when a running sandbox's
/// configuration names a path in the store (see [`sets_in_use`]). Links are unlinked,
/// never followed: a set directory or a file that is a link to elsewhere leaves its target
/// alone. Entries the store did not write (a `shim.toml`) are kept, and the directory with
/// them. A class directory that is missing is nothing to do; one that is a link is refused.
pub fn remove_class(store: &Store, dry_run: bool) -> Result<RemoveReport> {
    let host_dir = store.class_dir();
    let class_dir = store.class_dir_on_disk();
    let mut report = RemoveReport {
        class_dir: host_dir.clone(),
        ..RemoveReport::default()
    };
    match fs::symlink_metadata(&class_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(Error::io(&class_dir, "inspect", e)),
        Ok(m) if !m.is_dir() => {
            return Err(Error::Broken {
                path: class_dir,
                problem: "is a link or a file, not a store directory; nothing was removed: remove it by hand if it is not wanted".into(),
            })
        }
        Ok(_) => report.present = true,
    }
    let lock = store.lock(true)?;
    let configs = sandbox_configs(store, "remove")?;
    let users: Vec<PathBuf> = configs
        .iter()
        .filter(|(_, text)| names_path_inside(text, &host_dir))
        .map(|(path, _)| path.clone())
        .collect();
    if !users.is_empty() {
        return Err(Error::InUse {
            class_dir,
            sets: sets_named_by(store, &configs)?.into_keys().collect(),
            configs: users.iter().map(|p| store.config().on_disk(p)).collect(),
        });
    }

    let mut entries = Vec::new();
    for entry in fs::read_dir(&class_dir).map_err(io_at(&class_dir, "list"))? {
        let entry = entry.map_err(io_at(&class_dir, "list"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // The entry's own type: a link is a link, whatever it points at.
        let is_dir = entry
            .file_type()
            .map_err(io_at(&entry.path(), "inspect"))?
            .is_dir();
        if stores_entry(&name) {
            entries.push((name, is_dir));
        } else {
            report.kept.push(name);
        }
    }
    let rank = |name: &str| match name {
        CURRENT => 0,
        PREVIOUS => 1,
        LOCK_FILE => 3,
        _ => 2,
    };
    entries.sort_by(|(a, _), (b, _)| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    report.kept.sort();
    report.dir_removed = report.kept.is_empty();
    report.removed = entries.iter().map(|(name, _)| name.clone()).collect();
    if dry_run {
        return Ok(report);
    }
    for (name, is_dir) in &entries {
        let path = class_dir.join(name);
        if *is_dir {
            // remove_dir_all unlinks the links inside a set; it does not follow them.
            fsutil::remove_tree(&path)?;
        } else {
            fsutil::remove_if_present(&path)?;
        }
    }
    // The lock file is gone, but its descriptor still keeps other commands out until the
    // directory is too.
    if report.dir_removed {
        fs::remove_dir(&class_dir).map_err(io_at(&class_dir, "remove"))?;
        if let Some(parent) = class_dir.parent() {
            fsutil::fsync_dir(parent)?;
        }
    } else {
        fsutil::fsync_dir(&class_dir)?;
    }
    drop(lock);
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
