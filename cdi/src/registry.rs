//! The registry: every valid spec found in the spec directories, indexed by qualified name.
//!
//! Directories are read in priority order (by default `/etc/cdi`, then `/var/run/cdi`,
//! which wins). A broken or insecure file is reported and skipped; it never takes the other
//! files down. Two files of the same directory that define one name cancel each other out
//! for that name, and the conflict is reported with both files. A refresh re-parses only
//! the files whose size, times or inode changed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::runtime::Spec as OciSpec;

use crate::annotations::{parse_cdi_annotations, AnnotationError};
use crate::error::{Error, Format};
use crate::inject::{apply_edits, ApplyError};
use crate::load::read_spec_file;
use crate::model::{Device, Spec};
use crate::name::QualifiedName;

/// The spec directories containerd and CRI-O read, lowest priority first.
pub const DEFAULT_SPEC_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

/// How a registry finds and trusts spec files.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Spec directories, lowest priority first.
    pub spec_dirs: Vec<PathBuf>,
    /// Root under which host device nodes are looked up (`/` on a real host).
    pub dev_root: PathBuf,
    /// Skip files that are world-writable or not owned by root. On by default when
    /// running as root, where such a file would let another user inject device nodes.
    pub require_root_owned: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            spec_dirs: DEFAULT_SPEC_DIRS.iter().map(PathBuf::from).collect(),
            dev_root: PathBuf::from("/"),
            require_root_owned: nix::unistd::geteuid().is_root(),
        }
    }
}

impl RegistryConfig {
    /// The default directories, read under `root` (for a simulated host).
    pub fn under_root(root: &Path) -> Self {
        Self {
            spec_dirs: DEFAULT_SPEC_DIRS
                .iter()
                .map(|d| crate::inject::under_root(root, d))
                .collect(),
            dev_root: root.to_path_buf(),
            ..Self::default()
        }
    }
}

/// A valid spec and where it came from.
#[derive(Debug)]
pub struct LoadedSpec {
    /// The file.
    pub path: PathBuf,
    /// Index of its directory in [`RegistryConfig::spec_dirs`]; higher wins.
    pub priority: usize,
    /// The spec.
    pub spec: Arc<Spec>,
}

/// Why a file in a spec directory was not used.
#[derive(Debug, Clone)]
pub enum FileProblem {
    /// It failed to read, parse or validate.
    Invalid(Arc<Error>),
    /// It is world-writable, or not owned by root, while the registry requires root-owned files.
    Insecure {
        /// The owner's uid.
        uid: u32,
        /// The file's mode bits.
        mode: u32,
    },
    /// The directory itself could not be listed.
    Unreadable(Arc<io::Error>),
    /// The spec directory is a symbolic link: whoever controls its target could inject
    /// devices, so none of its files is used.
    SymlinkedDir {
        /// Where the link points.
        target: PathBuf,
    },
}

/// Why a registry that requires root-owned files (containerd's, running as root) skips the
/// file with this metadata: world-writable, or not owned by root. `None`: it is used.
pub fn insecure(meta: &std::fs::Metadata, require_root_owned: bool) -> Option<FileProblem> {
    use std::os::unix::fs::MetadataExt;
    (require_root_owned && (meta.uid() != 0 || meta.mode() & 0o002 != 0)).then(|| {
        FileProblem::Insecure {
            uid: meta.uid(),
            mode: meta.mode(),
        }
    })
}

/// A file (or directory) the registry skipped, and why.
#[derive(Debug, Clone)]
pub struct SkippedFile {
    /// The file or directory.
    pub path: PathBuf,
    /// Why it was skipped.
    pub problem: FileProblem,
}

impl fmt::Display for SkippedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            FileProblem::Invalid(e) => write!(f, "{}", crate::error::one_line(e.as_ref())),
            FileProblem::Insecure { uid, mode } => write!(
                f,
                "{}: skipped: owned by uid {uid} with mode {:o}; spec files must be owned by root and not world-writable (chown root: and chmod o-w)",
                self.path.display(),
                mode & 0o7777
            ),
            FileProblem::Unreadable(e) => {
                write!(f, "{}: cannot list spec directory: {e}", self.path.display())
            }
            FileProblem::SymlinkedDir { target } => write!(
                f,
                "{}: skipped: the spec directory is a symbolic link to {}; spec directories must be real directories (whoever controls the target could inject devices)",
                self.path.display(),
                target.display()
            ),
        }
    }
}

/// A name defined by more than one file of the same directory; none of them is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The name.
    pub name: QualifiedName,
    /// Every file that defines it.
    pub files: Vec<PathBuf>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let files: Vec<String> = self.files.iter().map(|p| p.display().to_string()).collect();
        write!(
            f,
            "{} is defined by {}; it is not used until only one of them defines it",
            self.name,
            files.join(" and ")
        )
    }
}

/// Why one requested name cannot be injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// The kind exists but not this name.
    UnknownDevice {
        /// The name asked for.
        name: QualifiedName,
        /// The names of that kind that do exist.
        available: Vec<String>,
    },
    /// No spec defines the kind.
    UnknownKind {
        /// The name asked for.
        name: QualifiedName,
        /// The kinds that do exist.
        known_kinds: Vec<String>,
    },
    /// Two files of equal priority define the name.
    Conflict(Conflict),
}

/// Said without what the node does define (`available`, `known_kinds` stay in the value
/// for callers that may show them): this text reaches a pod's events, and the node's
/// device names are its IOMMU groups and VFIO nodes, its PCI layout.
impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const ADMIN: &str = "its admin lists with `kata-gpu cdi list`";
        match self {
            Unresolved::UnknownDevice { name, .. } => write!(
                f,
                "{name} is not defined on this node; ask for {} in resources.limits and let \
                 the device plugin choose, or name a device {ADMIN}",
                name.kind()
            ),
            Unresolved::UnknownKind { name, .. } => write!(
                f,
                "{name}: no CDI spec on this node defines kind {}; ask for a kind {ADMIN}",
                name.kind()
            ),
            Unresolved::Conflict(c) => write!(f, "{c}"),
        }
    }
}

/// Why devices could not be injected; the OCI spec is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The container's `cdi.k8s.io/*` annotations are malformed.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// Some names do not resolve; every one of them is listed.
    #[error("unresolvable CDI devices: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Unresolved(Vec<Unresolved>),
    /// Applying the edits failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// Counters of the last refresh, so callers (and tests) can see what was re-read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefreshStats {
    /// Spec files found (with a spec extension).
    pub files: usize,
    /// Files parsed in this refresh; the others came from the cache.
    pub parsed: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    fn of(m: &fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

#[derive(Debug)]
struct CachedFile {
    fingerprint: Fingerprint,
    result: Result<Arc<Spec>, Arc<Error>>,
}

#[derive(Debug)]
struct IndexEntry {
    spec: usize,
    device: usize,
    priority: usize,
    rivals: Vec<usize>,
}

/// A device the registry resolved, with the spec that defines it.
#[derive(Debug, Clone, Copy)]
pub struct ResolvedDevice<'a> {
    /// The spec file.
    pub spec: &'a LoadedSpec,
    /// The device inside it.
    pub device: &'a Device,
}

/// Every valid spec of the configured directories, indexed by qualified name.
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    cache: HashMap<PathBuf, CachedFile>,
    specs: Vec<LoadedSpec>,
    index: BTreeMap<QualifiedName, IndexEntry>,
    skipped: Vec<SkippedFile>,
    stats: RefreshStats,
}

impl Registry {
    /// Creates a registry and reads its directories once.
    pub fn new(config: RegistryConfig) -> Self {
        let mut registry = Self {
            config,
            cache: HashMap::new(),
            specs: Vec::new(),
            index: BTreeMap::new(),
            skipped: Vec::new(),
            stats: RefreshStats::default(),
        };
        registry.refresh();
        registry
    }

    /// The configuration in use.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Re-reads the directories; files unchanged since the last refresh are not re-parsed.
    pub fn refresh(&mut self) -> RefreshStats {
        let mut stats = RefreshStats::default();
        let mut skipped = Vec::new();
        let mut specs = Vec::new();
        let mut seen = HashSet::new();
        for (priority, dir) in self.config.spec_dirs.iter().enumerate() {
            if let Ok(target) = fs::read_link(dir) {
                skipped.push(SkippedFile {
                    path: dir.clone(),
                    problem: FileProblem::SymlinkedDir { target },
                });
                continue;
            }
            let entries = match fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    skipped.push(SkippedFile {
                        path: dir.clone(),
                        problem: FileProblem::Unreadable(Arc::new(e)),
                    });
                    continue;
                }
            };
            let mut paths: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| Format::from_path(p).is_some())
                .collect();
            paths.sort();
            for path in paths {
                let meta = match fs::metadata(&path) {
                    Ok(m) if m.is_file() => m,
                    Ok(_) => continue,
                    Err(e) => {
                        skipped.push(SkippedFile {
                            problem: FileProblem::Invalid(Arc::new(Error::Read {
                                path: path.clone(),
                                source: e,
                            })),
                            path,
                        });
                        continue;
                    }
                };
                stats.files += 1;
                if let Some(problem) = insecure(&meta, self.config.require_root_owned) {
                    skipped.push(SkippedFile { path, problem });
                    continue;
                }
                let fingerprint = Fingerprint::of(&meta);
                let cached = self
                    .cache
                    .get(&path)
                    .filter(|c| c.fingerprint == fingerprint);
                let result = match cached {
                    Some(c) => c.result.clone(),
                    None => {
                        stats.parsed += 1;
                        let result = read_spec_file(&path).map(Arc::new).map_err(Arc::new);
                        self.cache.insert(
                            path.clone(),
                            CachedFile {
                                fingerprint,
                                result: result.clone(),
                            },
                        );
                        result
                    }
                };
                seen.insert(path.clone());
                match result {
                    Ok(spec) => specs.push(LoadedSpec {
                        path,
                        priority,
                        spec,
                    }),
                    Err(e) => skipped.push(SkippedFile {
                        path,
                        problem: FileProblem::Invalid(e),
                    }),
                }
            }
        }
        self.cache.retain(|p, _| seen.contains(p));
        self.index = build_index(&specs);
        self.specs = specs;
        self.skipped = skipped;
        self.stats = stats;
        stats
    }

    /// Counters of the last refresh.
    pub fn last_refresh(&self) -> RefreshStats {
        self.stats
    }

    /// The valid specs, lowest priority first.
    pub fn specs(&self) -> &[LoadedSpec] {
        &self.specs
    }

    /// Files and directories skipped by the last refresh.
    pub fn skipped(&self) -> &[SkippedFile] {
        &self.skipped
    }

    /// Names dropped because two files of one directory define them.
    pub fn conflicts(&self) -> Vec<Conflict> {
        self.index
            .iter()
            .filter(|(_, e)| !e.rivals.is_empty())
            .map(|(name, e)| Conflict {
                name: name.clone(),
                files: std::iter::once(e.spec)
                    .chain(e.rivals.iter().copied())
                    .map(|i| self.specs[i].path.clone())
                    .collect(),
            })
            .collect()
    }

    /// Every usable device, sorted by name.
    pub fn devices(&self) -> impl Iterator<Item = (&QualifiedName, ResolvedDevice<'_>)> {
        self.index
            .iter()
            .filter(|(_, e)| e.rivals.is_empty())
            .map(|(name, e)| (name, self.entry(e)))
    }

    fn entry(&self, e: &IndexEntry) -> ResolvedDevice<'_> {
        let spec = &self.specs[e.spec];
        ResolvedDevice {
            spec,
            device: &spec.spec.devices[e.device],
        }
    }

    /// Looks up one name.
    pub fn get(&self, name: &QualifiedName) -> Option<ResolvedDevice<'_>> {
        self.index
            .get(name)
            .filter(|e| e.rivals.is_empty())
            .map(|e| self.entry(e))
    }

    fn unresolved(&self, name: &QualifiedName) -> Unresolved {
        if let Some(c) = self.conflicts().into_iter().find(|c| &c.name == name) {
            return Unresolved::Conflict(c);
        }
        let kind = name.kind();
        let available: Vec<String> = self
            .devices()
            .filter(|(n, _)| n.vendor() == name.vendor() && n.class() == name.class())
            .map(|(n, _)| n.name().to_owned())
            .collect();
        if available.is_empty() {
            let known_kinds: BTreeSet<String> = self.devices().map(|(n, _)| n.kind()).collect();
            debug_assert!(!known_kinds.contains(&kind));
            Unresolved::UnknownKind {
                name: name.clone(),
                known_kinds: known_kinds.into_iter().collect(),
            }
        } else {
            Unresolved::UnknownDevice {
                name: name.clone(),
                available,
            }
        }
    }

    /// Resolves every name, or reports every one that does not resolve.
    pub fn resolve(&self, names: &[QualifiedName]) -> Result<Vec<ResolvedDevice<'_>>, InjectError> {
        let mut found = Vec::with_capacity(names.len());
        let mut missing = Vec::new();
        for name in names {
            match self.get(name) {
                Some(d) => found.push(d),
                None => missing.push(self.unresolved(name)),
            }
        }
        if missing.is_empty() {
            Ok(found)
        } else {
            Err(InjectError::Unresolved(missing))
        }
    }

    /// Injects the named devices into `oci`: all of them, or (on any error) none.
    pub fn inject(&self, oci: &mut OciSpec, names: &[QualifiedName]) -> Result<(), InjectError> {
        let devices = self.resolve(names)?;
        let mut edits = Vec::with_capacity(devices.len() * 2);
        let mut specs_seen: Vec<&LoadedSpec> = Vec::new();
        for (name, d) in names.iter().zip(&devices) {
            if !specs_seen.iter().any(|s| std::ptr::eq(*s, d.spec)) {
                specs_seen.push(d.spec);
                edits.push((
                    d.spec.path.display().to_string(),
                    &d.spec.spec.container_edits,
                ));
            }
            edits.push((name.to_string(), &d.device.container_edits));
        }
        let mut updated = oci.clone();
        apply_edits(&mut updated, &edits, &self.config.dev_root)?;
        *oci = updated;
        Ok(())
    }

    /// Injects what the spec's own `cdi.k8s.io/*` annotations ask for; returns the names.
    pub fn inject_annotated(&self, oci: &mut OciSpec) -> Result<Vec<QualifiedName>, InjectError> {
        let names = match oci.annotations() {
            Some(a) => parse_cdi_annotations(a)?,
            None => Vec::new(),
        };
        self.inject(oci, &names)?;
        Ok(names)
    }
}

fn build_index(specs: &[LoadedSpec]) -> BTreeMap<QualifiedName, IndexEntry> {
    let mut index: BTreeMap<QualifiedName, IndexEntry> = BTreeMap::new();
    for (spec_idx, loaded) in specs.iter().enumerate() {
        let Ok((vendor, class)) = crate::name::parse_kind(&loaded.spec.kind) else {
            continue; // validated already; unreachable for a loaded spec
        };
        for (device_idx, device) in loaded.spec.devices.iter().enumerate() {
            // Every spec here passed `validate_spec`, which checked these parts.
            let name = QualifiedName::from_checked(vendor, class, &device.name);
            let fresh = IndexEntry {
                spec: spec_idx,
                device: device_idx,
                priority: loaded.priority,
                rivals: Vec::new(),
            };
            match index.get_mut(&name) {
                None => {
                    index.insert(name, fresh);
                }
                Some(e) if e.priority < loaded.priority => *e = fresh,
                Some(e) => e.rivals.push(spec_idx),
            }
        }
    }
    index
}
