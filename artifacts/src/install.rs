//! Installing a set: scan the source (refusing before anything is written), copy and hash
//! it into a hidden staging directory, name it by its digest, rewrite the base config, then
//! rename the directory into place and switch `current`. A failure at any point leaves
//! `current` as it was and removes the staging directory; a crash leaves only a hidden
//! staging directory, removed by the next command that takes the lock.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::copy::{copy_hashing, CopyError};
use crate::digest::{Hasher, Sha256Digest};
use crate::error::{io_at, Error, Result};
use crate::fsutil::{self, Lock};
use crate::layout::{CONFIG_FILE, CURRENT, MANIFEST_FILE, PREVIOUS};
use crate::manifest::{
    set_digest, version_name, FileRecord, Manifest, Original, SourceFile, FORMAT,
};
use crate::relpath::RelPath;
use crate::rewrite::{self, Change, GuestTarget, Targets};
use crate::roles::{self, Guest, Role, RoleError};
use crate::source::{self, ScannedFile};
use crate::store::Store;
use crate::verify;

/// The largest base configuration the store reads; Kata's are a few tens of KiB.
const MAX_CONFIG: u64 = 4 << 20;

/// Bytes written between two requests to start write-back, so that the final fsync of a
/// large file finds most of it on disk already.
const WRITEBACK_STEP: u64 = 16 << 20;

/// How to install.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// For an OCI layout with several manifests: the ref name (tag) of the one to install.
    pub oci_ref: Option<String>,
}

/// What an install did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallOutcome {
    /// A new set was installed and made current.
    Installed,
    /// The set was installed already and is now current again.
    Switched,
    /// The set was installed and current already: nothing new.
    Unchanged,
    /// The set was installed but its files had changed; they were replaced and it is current.
    Repaired,
}

/// The result of an install.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    /// What happened.
    pub outcome: InstallOutcome,
    /// The set's directory name.
    pub version: String,
    /// The set's directory, host view.
    pub dir: PathBuf,
    /// The set that was current before, if another.
    pub previous: Option<String>,
    /// The installed files.
    pub manifest: Manifest,
    /// How the base config was rewritten.
    pub config_changes: Vec<Change>,
    /// Links of the source, not installed: (link, the file it leads to).
    pub aliases: Vec<(String, String)>,
    /// Entries of the source left out (an old manifest of ours).
    pub skipped: Vec<String>,
}

/// A set copied into its staging directory, with the store locked, waiting to be switched
/// to. Dropping it without [`Staged::commit`] removes the staging directory.
#[derive(Debug)]
pub struct Staged<'a> {
    store: &'a Store,
    _lock: Lock,
    staging: Option<PathBuf>,
    exists: bool,
    version: String,
    manifest: Manifest,
    changes: Vec<Change>,
    aliases: Vec<(String, String)>,
    skipped: Vec<String>,
}

/// Installs the set at `src` and makes it current.
pub fn install(store: &Store, src: &Path, opts: &InstallOptions) -> Result<InstallReport> {
    stage(store, src, opts)?.commit()
}

/// The base Kata configuration of the set at `src`, as the set ships it (before the install
/// rewrites its paths), with the path it has in the source: for a caller that must check the
/// config before anything is written (which Kata runtime it is for). Writes nothing; a
/// tarball or OCI layer is read through (every entry hashed, as an install checks it).
pub fn read_base_config(src: &Path, opts: &InstallOptions) -> Result<(PathBuf, String)> {
    let scan = source::scan(src, opts.oci_ref.as_deref())?;
    let roles =
        roles::assign(scan.files.iter().map(|f| &f.path)).map_err(|e| role_error(src, e))?;
    let at = src.join(roles.config.to_path());
    let mut config_text = Vec::new();
    source::copy_all(&scan, &mut |file, reader| {
        if file.path == roles.config {
            return read_config(file, reader, &mut config_text, src);
        }
        let mut h = Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(io_at(&src.join(file.path.to_path()), "read"))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            size += n as u64;
        }
        Ok((size, h.finish()))
    })?;
    if config_text.len() as u64 > MAX_CONFIG {
        return Err(Error::Config {
            file: at,
            problem: format!(
                "{} bytes is too large for a Kata configuration; ship the real one",
                config_text.len()
            ),
        });
    }
    let text = String::from_utf8(config_text).map_err(|_| Error::Config {
        file: at.clone(),
        problem: "not UTF-8 text".to_owned(),
    })?;
    Ok((at, text))
}

/// Checks `src`, then copies it into a staging directory of the store (or finds it
/// installed already); nothing is visible to readers until [`Staged::commit`].
pub fn stage<'a>(store: &'a Store, src: &Path, opts: &InstallOptions) -> Result<Staged<'a>> {
    let scan = source::scan(src, opts.oci_ref.as_deref())?;
    let roles =
        roles::assign(scan.files.iter().map(|f| &f.path)).map_err(|e| role_error(src, e))?;
    let config_size = scan
        .files
        .iter()
        .find(|f| f.path == roles.config)
        .map_or(0, |f| f.size);
    if config_size > MAX_CONFIG {
        return Err(Error::Config {
            file: src.join(roles.config.to_path()),
            problem: format!(
                "{config_size} bytes is too large for a Kata configuration; ship the real one"
            ),
        });
    }
    let class_dir = store.class_dir_on_disk();
    if !class_dir.is_dir() {
        fsutil::create_dirs(&class_dir)?;
        if let Some(parent) = class_dir.parent() {
            fsutil::fsync_dir(parent)?;
        }
    }
    let lock = store.lock(true)?;
    remove_leftovers(&class_dir)?;
    let needed: u64 = scan.files.iter().map(|f| f.size).sum();
    if let Some(available) = fsutil::free_bytes(&class_dir) {
        if available < needed.saturating_add(1 << 20) {
            return Err(Error::NoSpace {
                dir: class_dir,
                needed,
                available,
            });
        }
    }
    let staging = class_dir.join(fsutil::unique_name(crate::layout::STAGING_PREFIX));
    let mut guard = Guard(Some(staging.clone()));
    fsutil::create_dir(&staging)?;
    let mut dirs = BTreeSet::from([staging.clone()]);
    let mut written = Vec::new();
    let mut config_text = Vec::new();
    let copied = source::copy_all(&scan, &mut |file, reader| {
        if file.path == roles.config {
            return read_config(file, reader, &mut config_text, src);
        }
        copy_one(&staging, file, reader, &mut dirs, &mut written)
    })?;
    let sources: Vec<SourceFile> = scan
        .files
        .iter()
        .zip(&copied)
        .map(|(f, (size, digest))| SourceFile {
            path: f.path.clone(),
            role: Role::of(&f.path),
            size: *size,
            digest: *digest,
        })
        .collect();
    let digest = set_digest(&sources);
    let version = version_name(&digest);
    let version_dir = store.version_dir(&version);
    let (text, changes) = rewrite_config(&roles, &version_dir, &config_text, src)?;
    let mut manifest = build_manifest(store, src, &digest, &sources, &roles.config, &text);
    let exists = fs::symlink_metadata(store.on_disk(&version_dir)).is_ok();
    // A stored set is kept only when it is what this install would write: compared with
    // the fresh digests, not with the manifest stored beside it.
    if !exists || !verify::matches_fresh(store, &version, &manifest)? {
        for (name, bytes) in [
            (CONFIG_FILE, text.as_bytes()),
            (MANIFEST_FILE, &manifest.to_json()),
        ] {
            let path = staging.join(name);
            fsutil::write_new(&path, bytes, 0o444)?;
            written.push(path);
        }
        fsutil::sync_files(&written, dirs.iter().rev())?;
    } else {
        // Installed and intact: nothing new; the fresh copy goes.
        guard.remove()?;
        manifest = store.manifest(&version)?;
    }
    Ok(Staged {
        store,
        _lock: lock,
        staging: guard.0.take(),
        exists,
        version,
        manifest,
        changes,
        aliases: scan
            .aliases
            .iter()
            .map(|(l, t)| (l.to_string(), t.to_string()))
            .collect(),
        skipped: scan.skipped.iter().map(ToString::to_string).collect(),
    })
}

impl Staged<'_> {
    /// The set's directory name, `sha256-<hex>`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The manifest the set has (or will have).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The staging directory on disk; `None` when the set is installed already.
    pub fn staging_dir(&self) -> Option<&Path> {
        self.staging.as_deref()
    }

    /// Moves the staged set into place and makes it current.
    pub fn commit(mut self) -> Result<InstallReport> {
        let class_dir = self.store.class_dir_on_disk();
        let dest = self.store.on_disk(&self.store.version_dir(&self.version));
        let mut outcome = InstallOutcome::Switched;
        if let Some(staging) = self.staging.take() {
            let mut guard = Guard(Some(staging.clone()));
            if self.exists {
                // The installed copy was damaged: swap in the fresh one atomically.
                fsutil::exchange(&staging, &dest)?;
                outcome = InstallOutcome::Repaired;
            } else {
                fs::rename(&staging, &dest).map_err(io_at(&dest, "move set into place"))?;
                guard.0 = None;
                outcome = InstallOutcome::Installed;
            }
            fsutil::fsync_dir(&class_dir)?;
            guard.remove()?;
        }
        // A `current` that points nowhere sensible is replaced, not kept as `previous`.
        let before = self.store.current().unwrap_or(None);
        if before.as_deref() != Some(self.version.as_str()) {
            let mut links = Vec::new();
            if let Some(b) = &before {
                links.push((PREVIOUS, b.as_str()));
            }
            links.push((CURRENT, self.version.as_str()));
            fsutil::switch_links(&class_dir, &links)?;
        } else if outcome == InstallOutcome::Switched {
            outcome = InstallOutcome::Unchanged;
        }
        let version = std::mem::take(&mut self.version);
        Ok(InstallReport {
            outcome,
            dir: self.store.version_dir(&version),
            previous: before.filter(|b| *b != version),
            version,
            manifest: self.manifest.clone(),
            config_changes: std::mem::take(&mut self.changes),
            aliases: std::mem::take(&mut self.aliases),
            skipped: std::mem::take(&mut self.skipped),
        })
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.staging.take() {
            let _ = fsutil::remove_tree(&s);
        }
    }
}

/// Removes a directory when dropped, unless disarmed.
struct Guard(Option<PathBuf>);

impl Guard {
    fn remove(&mut self) -> Result<()> {
        match self.0.take() {
            Some(p) => fsutil::remove_tree(&p),
            None => Ok(()),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

/// Removes what an interrupted command left: staging and trash directories, temp links.
pub(crate) fn remove_leftovers(class_dir: &Path) -> Result<()> {
    let entries = fs::read_dir(class_dir).map_err(io_at(class_dir, "list"))?;
    for entry in entries {
        let entry = entry.map_err(io_at(class_dir, "list"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with(crate::layout::STAGING_PREFIX)
            || name.starts_with(crate::layout::TRASH_PREFIX)
        {
            fsutil::remove_tree(&path)?;
        } else if name.starts_with(".current.tmp-") || name.starts_with(".previous.tmp-") {
            fsutil::remove_if_present(&path)?;
        }
    }
    Ok(())
}

fn role_error(src: &Path, e: RoleError) -> Error {
    let names = |files: Vec<RelPath>| files.into_iter().map(String::from).collect();
    match e {
        RoleError::Missing { role, files } => Error::MissingRole {
            source_path: src.to_path_buf(),
            role: role.to_owned(),
            files: names(files),
        },
        RoleError::Ambiguous { role, files } => Error::AmbiguousRole {
            source_path: src.to_path_buf(),
            role: role.to_owned(),
            files: names(files),
        },
    }
}

fn read_config(
    file: &ScannedFile,
    reader: &mut dyn Read,
    out: &mut Vec<u8>,
    src: &Path,
) -> Result<(u64, Sha256Digest)> {
    let at = src.join(file.path.to_path());
    reader
        .take(MAX_CONFIG + 1)
        .read_to_end(out)
        .map_err(io_at(&at, "read"))?;
    let mut h = Hasher::new();
    h.update(out);
    Ok((out.len() as u64, h.finish()))
}

fn copy_one(
    staging: &Path,
    file: &ScannedFile,
    reader: &mut dyn Read,
    dirs: &mut BTreeSet<PathBuf>,
    written: &mut Vec<PathBuf>,
) -> Result<(u64, Sha256Digest)> {
    let dest = staging.join(file.path.to_path());
    for up in file.path.ancestors() {
        let d = staging.join(up.to_path());
        if dirs.insert(d.clone()) {
            fsutil::create_dir(&d)?;
        }
    }
    let out = fsutil::create_new(&dest)?;
    let mut flushed = 0u64;
    let mut start_writeback = |total: u64| {
        if total - flushed >= WRITEBACK_STEP {
            fsutil::start_writeback(&out, flushed, total - flushed);
            flushed = total;
        }
    };
    let copied =
        copy_hashing(reader, &mut &out, file.size, &mut start_writeback).map_err(|e| match e {
            CopyError::Read(e) => Error::io(&origin_path(file, staging), "read", e),
            CopyError::Write(e) => Error::io(&dest, "write", e),
        })?;
    let exec = file.executable || Role::of(&file.path) == Role::Qemu;
    fsutil::set_mode(&dest, if exec { 0o555 } else { 0o444 })?;
    written.push(dest);
    Ok(copied)
}

fn origin_path(file: &ScannedFile, fallback: &Path) -> PathBuf {
    match &file.origin {
        source::Origin::File(p) | source::Origin::Blob { path: p, .. } => p.clone(),
        source::Origin::Archive(_) => fallback.join(file.path.to_path()),
    }
}

fn rewrite_config(
    roles: &roles::Roles,
    version_dir: &Path,
    text: &[u8],
    src: &Path,
) -> Result<(String, Vec<Change>)> {
    let file = src.join(roles.config.to_path());
    let text = std::str::from_utf8(text).map_err(|_| Error::Config {
        file: file.clone(),
        problem: "is not UTF-8 text; ship the Kata configuration as TOML".into(),
    })?;
    let at = |p: &RelPath| version_dir.join(p.to_path()).to_string_lossy().into_owned();
    let targets = Targets {
        kernel: at(&roles.kernel),
        guest: match &roles.guest {
            Guest::Image(p) => GuestTarget::Image(at(p)),
            Guest::Initrd(p) => GuestTarget::Initrd(at(p)),
        },
        firmware: roles.firmware.as_ref().map(at),
        qemu: roles.qemu.as_ref().map(at),
    };
    rewrite::rewrite(text, &targets).map_err(|problem| Error::Config { file, problem })
}

fn build_manifest(
    store: &Store,
    src: &Path,
    digest: &Sha256Digest,
    sources: &[SourceFile],
    config: &RelPath,
    text: &str,
) -> Manifest {
    let mut files: Vec<FileRecord> = sources
        .iter()
        .map(|f| {
            let record = FileRecord {
                path: f.path.clone(),
                role: f.role,
                size: f.size,
                sha256: f.digest.hex(),
                original: None,
            };
            if f.path != *config {
                return record;
            }
            FileRecord {
                path: RelPath::parse(CONFIG_FILE).unwrap_or_else(|_| f.path.clone()),
                role: Role::Config,
                size: text.len() as u64,
                sha256: Sha256Digest::of(text.as_bytes()).hex(),
                original: Some(Original {
                    path: f.path.clone(),
                    size: f.size,
                    sha256: f.digest.hex(),
                }),
            }
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Manifest {
        format: FORMAT,
        digest: digest.to_string(),
        class: store.class().to_owned(),
        source: src.display().to_string(),
        installed_at_ns: fsutil::now_ns(),
        files,
    }
}
