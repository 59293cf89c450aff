//! Re-hashing installed sets against their manifests.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::digest::hash_reader;
use crate::error::{io_at, Error, Result};
use crate::layout::MANIFEST_FILE;
use crate::manifest::{FileRecord, Manifest};
use crate::store::Store;

/// Something wrong with an installed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The file, host view.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: Problem,
}

/// What is wrong with an installed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// The manifest cannot be read.
    Manifest {
        /// Why.
        reason: String,
    },
    /// The file is gone.
    Missing,
    /// Something other than a regular file is there.
    NotAFile,
    /// The size changed.
    Size {
        /// The manifest's size.
        expected: u64,
        /// The file's size.
        actual: u64,
    },
    /// The content changed.
    Digest {
        /// The manifest's SHA-256.
        expected: String,
        /// The file's SHA-256.
        actual: String,
    },
    /// A file the manifest does not list.
    Unexpected,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path.display();
        match &self.problem {
            Problem::Manifest { reason } => write!(f, "{p}: {reason}"),
            Problem::Missing => write!(f, "{p}: missing; reinstall the set"),
            Problem::NotAFile => write!(f, "{p}: not a regular file any more; reinstall the set"),
            Problem::Size { expected, actual } => write!(
                f,
                "{p}: size changed from {expected} to {actual} bytes; reinstall the set"
            ),
            Problem::Digest { expected, actual } => write!(
                f,
                "{p}: content changed (sha256 {actual}, manifest says {expected}); reinstall the set"
            ),
            Problem::Unexpected => write!(
                f,
                "{p}: not part of the set (not in its manifest); remove it"
            ),
        }
    }
}

/// The verdict on one set.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The set's directory name.
    pub version: String,
    /// The set's directory, host view.
    pub dir: PathBuf,
    /// Whether it is current.
    pub current: bool,
    /// Files re-hashed.
    pub files: usize,
    /// Bytes re-hashed.
    pub bytes: u64,
    /// Everything wrong; empty when the set is intact.
    pub findings: Vec<Finding>,
}

impl VerifyReport {
    fn empty(version: &str, host_dir: &Path) -> Self {
        VerifyReport {
            version: version.to_owned(),
            dir: host_dir.to_path_buf(),
            current: false,
            files: 0,
            bytes: 0,
            findings: Vec::new(),
        }
    }
}

/// Re-hashes the current set, or every set with `all`; takes the lock shared so that no
/// prune removes a set under it.
pub fn verify(store: &Store, all: bool) -> Result<Vec<VerifyReport>> {
    let class_dir = store.class_dir_on_disk();
    if !class_dir.is_dir() {
        return Err(Error::NotInstalled {
            class_dir: store.class_dir_on_disk(),
        });
    }
    let _lock = store.lock(false)?;
    let current = store.current()?;
    let versions = if all {
        store.versions()?
    } else {
        match &current {
            Some(c) => vec![c.clone()],
            None => {
                return Err(Error::NotInstalled {
                    class_dir: store.class_dir_on_disk(),
                })
            }
        }
    };
    let mut reports = Vec::new();
    for v in versions {
        let mut r = verify_set(store, &v)?;
        r.current = current.as_deref() == Some(v.as_str());
        reports.push(r);
    }
    Ok(reports)
}

/// Re-hashes one set against its manifest (without locking).
pub fn verify_set(store: &Store, version: &str) -> Result<VerifyReport> {
    let host_dir = store.version_dir(version);
    let dir = store.on_disk(&host_dir);
    let mut report = VerifyReport::empty(version, &host_dir);
    let manifest = match store.manifest(version) {
        Ok(m) => m,
        Err(e) => {
            // The finding names the file already; a broken manifest's reason need not.
            let reason = match e {
                Error::Broken { problem, .. } => problem,
                e => e.to_string(),
            };
            report.findings.push(Finding {
                path: host_dir.join(MANIFEST_FILE),
                problem: Problem::Manifest { reason },
            });
            return Ok(report);
        }
    };
    check_files(&dir, &host_dir, &manifest.files, &mut report)?;
    Ok(report)
}

/// Re-hashes the files of the set at `dir` (`host_dir` in the host's view) against
/// `records`, and names any file they do not list, into `report`.
fn check_files(
    dir: &Path,
    host_dir: &Path,
    records: &[FileRecord],
    report: &mut VerifyReport,
) -> Result<()> {
    let mut listed = BTreeSet::new();
    for record in records {
        listed.insert(record.path.to_path());
        let on_disk = dir.join(record.path.to_path());
        let finding = |problem| Finding {
            path: host_dir.join(record.path.to_path()),
            problem,
        };
        let meta = match fs::symlink_metadata(&on_disk) {
            Ok(m) => m,
            Err(_) => {
                report.findings.push(finding(Problem::Missing));
                continue;
            }
        };
        if !meta.is_file() {
            report.findings.push(finding(Problem::NotAFile));
            continue;
        }
        let f = File::open(&on_disk).map_err(io_at(&on_disk, "read"))?;
        let (size, digest) = hash_reader(std::io::BufReader::with_capacity(1 << 20, f))
            .map_err(io_at(&on_disk, "read"))?;
        report.files += 1;
        report.bytes += size;
        if size != record.size {
            report.findings.push(finding(Problem::Size {
                expected: record.size,
                actual: size,
            }));
        } else if digest.hex() != record.sha256 {
            report.findings.push(finding(Problem::Digest {
                expected: record.sha256.clone(),
                actual: digest.hex(),
            }));
        }
    }
    listed.insert(PathBuf::from(MANIFEST_FILE));
    for extra in unlisted(dir, Path::new(""), &listed)? {
        report.findings.push(Finding {
            path: host_dir.join(extra),
            problem: Problem::Unexpected,
        });
    }
    Ok(())
}

/// Whether the installed set `version` is exactly what a fresh install would write: its
/// stored manifest lists the same files as `fresh` (the manifest built from the source just
/// now, the base config rewritten afresh), and every file on disk has the fresh digest.
/// Nothing stored is trusted, so a file changed together with its record is found.
pub fn matches_fresh(store: &Store, version: &str, fresh: &Manifest) -> Result<bool> {
    let stored_ok = store
        .manifest(version)
        .is_ok_and(|m| m.files == fresh.files);
    if !stored_ok {
        return Ok(false);
    }
    let host_dir = store.version_dir(version);
    let mut report = VerifyReport::empty(version, &host_dir);
    check_files(
        &store.on_disk(&host_dir),
        &host_dir,
        &fresh.files,
        &mut report,
    )?;
    Ok(report.findings.is_empty())
}

/// Files (and links) under `dir` that are not in `listed`, relative to the set's root.
fn unlisted(root: &Path, rel: &Path, listed: &BTreeSet<PathBuf>) -> Result<Vec<PathBuf>> {
    let dir = root.join(rel);
    let mut out = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .map_err(io_at(&dir, "list"))?
        .collect::<std::io::Result<_>>()
        .map_err(io_at(&dir, "list"))?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let path = rel.join(entry.file_name());
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            out.extend(unlisted(root, &path, listed)?);
        } else if !listed.contains(&path) {
            out.push(path);
        }
    }
    Ok(out)
}
