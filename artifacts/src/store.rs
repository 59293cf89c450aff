//! The store of one runtime class: where its sets are, which one is current, what each holds.
//!
//! Paths come in two views. The *host* view is what a Kata configuration and containerd
//! name (`/opt/nvidia-gpu-operator/...`); the *on-disk* view is that path under the
//! configured host root, which is `/` on a real node and a temporary directory in tests.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::error::{io_at, Error, Result};
use crate::fsutil::{self, Lock};
use crate::layout::{self, CURRENT, LOCK_FILE, MANIFEST_FILE, PREVIOUS};
use crate::manifest::{parse_version_name, Manifest};

/// Where the store and the sandboxes' configurations are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The root of the host every other path is under (`/` on a node).
    pub host_root: PathBuf,
    /// The store root, a host path ([`layout::DEFAULT_ROOT`] by default).
    pub root: PathBuf,
    /// The per-sandbox configurations' directory, a host path
    /// ([`layout::DEFAULT_SANDBOXES_DIR`] by default).
    pub sandboxes_dir: PathBuf,
    /// How long to wait for another command's lock.
    pub lock_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            host_root: PathBuf::from("/"),
            root: PathBuf::from(layout::DEFAULT_ROOT),
            sandboxes_dir: PathBuf::from(layout::DEFAULT_SANDBOXES_DIR),
            lock_timeout: Duration::from_secs(30),
        }
    }
}

impl StoreConfig {
    /// The default store under `host_root`.
    pub fn under_root(host_root: impl Into<PathBuf>) -> Self {
        StoreConfig {
            host_root: host_root.into(),
            ..StoreConfig::default()
        }
    }

    /// Where a host path lies on disk: under the host root, with a symlinked directory on
    /// the way resolved inside it ([`kata_gpu_fsutil::resolve_in_root`]), so that the store
    /// never writes outside the root. A path that cannot be resolved (a link loop) is
    /// joined as given, and the operation on it fails as the kernel resolves it.
    pub fn on_disk(&self, host_path: &Path) -> PathBuf {
        kata_gpu_fsutil::resolve_in_root(&self.host_root, host_path).unwrap_or_else(|_| {
            self.host_root
                .join(host_path.strip_prefix("/").unwrap_or(host_path))
        })
    }
}

/// The sets of one runtime class.
#[derive(Debug, Clone)]
pub struct Store {
    config: StoreConfig,
    class: String,
}

/// One installed set, as `list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SetInfo {
    /// Its directory name, `sha256-<hex>`.
    pub version: String,
    /// Its directory, a host path.
    pub dir: PathBuf,
    /// Whether `current` points at it.
    pub current: bool,
    /// Whether `previous` points at it.
    pub previous: bool,
    /// Its manifest; `None` when it cannot be read (see `problem`).
    pub manifest: Option<Manifest>,
    /// Why the manifest cannot be read.
    pub problem: Option<String>,
}

/// Checks that a runtime class name is a plain directory name.
pub fn validate_class(class: &str) -> Result<()> {
    let plain = !class.is_empty()
        && class.len() <= 253
        && !class.starts_with('.')
        && class
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if plain {
        Ok(())
    } else {
        Err(Error::InvalidClass {
            class: class.to_owned(),
        })
    }
}

/// The runtime classes that have a directory under the store root, sorted.
pub fn classes(config: &StoreConfig) -> Result<Vec<String>> {
    let dir = config.on_disk(&config.root);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&dir, "list", e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_at(&dir, "list"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && validate_class(&name).is_ok() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

impl Store {
    /// The store of `class`; refuses a class name that is not a plain name and a store root
    /// or sandboxes directory that is not absolute.
    pub fn new(config: StoreConfig, class: &str) -> Result<Store> {
        validate_class(class)?;
        for p in [&config.root, &config.sandboxes_dir] {
            if !p.is_absolute() {
                return Err(Error::BadPath {
                    path: p.clone(),
                    problem: "not an absolute path; give it as the host sees it, e.g. /opt/..."
                        .into(),
                });
            }
        }
        Ok(Store {
            config,
            class: class.to_owned(),
        })
    }

    /// The runtime class.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The class directory, host view.
    pub fn class_dir(&self) -> PathBuf {
        layout::class_dir(&self.config.root, &self.class)
    }

    /// A set's directory, host view.
    pub fn version_dir(&self, version: &str) -> PathBuf {
        self.class_dir().join(version)
    }

    /// Where a host path lies on disk.
    pub fn on_disk(&self, host_path: &Path) -> PathBuf {
        self.config.on_disk(host_path)
    }

    /// The class directory on disk.
    pub fn class_dir_on_disk(&self) -> PathBuf {
        self.on_disk(&self.class_dir())
    }

    /// The set `current` points at, if any.
    pub fn current(&self) -> Result<Option<String>> {
        self.link(CURRENT)
    }

    /// The set `previous` points at, if any.
    pub fn previous(&self) -> Result<Option<String>> {
        self.link(PREVIOUS)
    }

    fn link(&self, name: &str) -> Result<Option<String>> {
        let path = self.class_dir_on_disk().join(name);
        match fsutil::read_link(&path)? {
            None => Ok(None),
            Some(t) if parse_version_name(&t).is_some() => Ok(Some(t)),
            Some(t) => Err(Error::Broken {
                path,
                problem: format!(
                    "points at {t:?}, which is not a set of this store; install a set or roll back to repair it"
                ),
            }),
        }
    }

    /// The manifest of an installed set.
    pub fn manifest(&self, version: &str) -> Result<Manifest> {
        let path = self.on_disk(&self.version_dir(version)).join(MANIFEST_FILE);
        let bytes = fs::read(&path).map_err(io_at(&path, "read manifest"))?;
        let m = Manifest::from_json(&bytes).map_err(|p| Error::Broken {
            path: path.clone(),
            problem: format!("{p}; reinstall the set"),
        })?;
        m.check_name(version)
            .map_err(|problem| Error::Broken { path, problem })?;
        Ok(m)
    }

    /// The names of the installed sets' directories (`sha256-<hex>`), sorted.
    pub fn versions(&self) -> Result<Vec<String>> {
        let dir = self.class_dir_on_disk();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&dir, "list", e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_at(&dir, "list"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir && parse_version_name(&name).is_some() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every installed set, newest first (current, then by install time).
    pub fn list(&self) -> Result<Vec<SetInfo>> {
        let current = self.current()?;
        let previous = self.previous()?;
        let mut sets: Vec<SetInfo> = self
            .versions()?
            .into_iter()
            .map(|v| {
                let (manifest, problem) = match self.manifest(&v) {
                    Ok(m) => (Some(m), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                SetInfo {
                    dir: self.version_dir(&v),
                    current: current.as_deref() == Some(v.as_str()),
                    previous: previous.as_deref() == Some(v.as_str()),
                    version: v,
                    manifest,
                    problem,
                }
            })
            .collect();
        sets.sort_by(|a, b| {
            let key = |s: &SetInfo| {
                (
                    !s.current,
                    !s.previous,
                    std::cmp::Reverse(s.manifest.as_ref().map(|m| m.installed_at_ns)),
                )
            };
            key(a).cmp(&key(b)).then_with(|| a.version.cmp(&b.version))
        });
        Ok(sets)
    }

    /// Takes the class's lock; the class directory must exist.
    pub(crate) fn lock(&self, exclusive: bool) -> Result<Lock> {
        Lock::take(
            &self.class_dir_on_disk().join(LOCK_FILE),
            exclusive,
            self.config.lock_timeout,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_are_plain() {
        assert!(validate_class("kata-qemu-nvidia-gpu-snp").is_ok());
        for bad in ["", ".", "..", "a/b", ".hidden", "a b"] {
            assert!(validate_class(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_paths_map_under_the_host_root() {
        let c = StoreConfig::under_root("/sim");
        assert_eq!(c.on_disk(Path::new("/opt/x")), PathBuf::from("/sim/opt/x"));
        let store = Store::new(c, "k").expect("valid");
        assert_eq!(
            store.class_dir(),
            PathBuf::from("/opt/nvidia-gpu-operator/artifacts/runtimeclasses/k")
        );
    }

    #[test]
    fn relative_roots_are_refused() {
        let c = StoreConfig {
            root: PathBuf::from("opt"),
            ..StoreConfig::default()
        };
        let e = Store::new(c, "k").expect_err("relative");
        assert!(
            e.to_string().starts_with("opt: not an absolute path"),
            "{e}"
        );
    }
}
