//! `kata-gpu cdi validate|list`: the `cdi` crate's verdicts, one line per file or device.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cdi::registry::{FileProblem, Registry, RegistryConfig};
use cdi::{one_line, Format};
use clap::Subcommand;
use serde::Serialize;

use crate::{Global, Outcome};

/// The `cdi` subcommands.
#[derive(Debug, Subcommand)]
pub enum CdiCommand {
    /// Check spec files (or every .json/.yaml file of a directory); exit 0 only if all are valid.
    Validate {
        /// Spec files or directories.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Write the host's CDI specs for passthrough GPUs (nvidia.com/pgpu) and NVSwitches
    /// (nvidia.com/nvswitch), named by index, IOMMU group, vfioN and PCI address.
    Generate {
        /// Directory to write into (default: /var/run/cdi under --host-root).
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
        /// Print the specs instead of writing them.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the devices the spec directories define, with skipped files and conflicts.
    List {
        /// A spec directory, lowest priority first; repeat for several.
        /// Default: /etc/cdi then /var/run/cdi under --host-root.
        #[arg(long = "spec-dir", value_name = "DIR")]
        spec_dirs: Vec<PathBuf>,
    },
}

/// Runs one `cdi` subcommand.
pub fn run(cmd: CdiCommand, global: &Global) -> anyhow::Result<Outcome> {
    match cmd {
        CdiCommand::Validate { paths } => validate(&paths, global.json),
        CdiCommand::List { spec_dirs } => list(spec_dirs, global),
        CdiCommand::Generate {
            output_dir,
            dry_run,
        } => generate(output_dir, dry_run, global),
    }
}

#[derive(Serialize)]
struct Verdict {
    path: PathBuf,
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cdi_version: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    devices: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// The files a path stands for: itself, or the spec files of a directory (sorted).
fn spec_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = fs::read_dir(path)
        .with_context(|| format!("cannot list {}", path.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && Format::from_path(p).is_some())
        .collect();
    files.sort();
    Ok(files)
}

/// What `validate` says of a spec directory without spec files.
const EMPTY: &str = "no .json or .yaml spec files in this directory";

/// Whether every reader of the spec dirs skips `file`: containerd's registry, as root,
/// requires it root-owned and not world-writable (the rule of `cdi::registry`).
fn skipped_by_readers(file: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(file).ok()?;
    // World-writable: skipped by every reader. Not root's: by the ones running as root,
    // which is what this run can tell when it runs as root too.
    let strict = meta.mode() & 0o002 != 0 || nix::unistd::geteuid().is_root();
    let problem = cdi::registry::insecure(&meta, strict)?;
    Some(
        cdi::registry::SkippedFile {
            path: file.to_path_buf(),
            problem,
        }
        .to_string(),
    )
}

fn validate(paths: &[PathBuf], json: bool) -> anyhow::Result<Outcome> {
    let mut verdicts = Vec::new();
    let mut empty = Vec::new();
    for path in paths {
        let files = spec_files(path)?;
        if files.is_empty() {
            // What install leaves when no GPU is bound yet: nothing to check, not a failure;
            // the paths after it are still checked.
            empty.push(path.clone());
        }
        for file in files {
            let missing = fs::symlink_metadata(&file)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
            let read = if missing {
                Err(format!(
                    "{}: does not exist; name a .json or .yaml spec file, or a directory of them",
                    file.display()
                ))
            } else {
                cdi::read_spec_file(&file)
                    .map_err(|e| one_line(&e))
                    .and_then(|spec| skipped_by_readers(&file).map_or(Ok(spec), Err))
            };
            verdicts.push(match read {
                Ok(spec) => Verdict {
                    path: file,
                    valid: true,
                    kind: Some(spec.kind.clone()),
                    cdi_version: Some(spec.cdi_version.clone()),
                    devices: spec.devices.iter().map(|d| d.name.clone()).collect(),
                    error: None,
                    note: None,
                },
                Err(e) => Verdict {
                    path: file,
                    valid: false,
                    kind: None,
                    cdi_version: None,
                    devices: Vec::new(),
                    error: Some(e),
                    note: None,
                },
            });
        }
    }
    let invalid = verdicts.iter().filter(|v| !v.valid).count();
    if json {
        for dir in &empty {
            verdicts.push(Verdict {
                path: dir.clone(),
                valid: true,
                kind: None,
                cdi_version: None,
                devices: Vec::new(),
                error: None,
                note: Some(EMPTY.to_owned()),
            });
        }
        println!("{}", serde_json::to_string_pretty(&verdicts)?);
    } else {
        for dir in &empty {
            println!("empty   {}: {EMPTY}", dir.display());
        }
        for v in &verdicts {
            match &v.error {
                None => println!(
                    "ok      {}: {} (cdiVersion {}), {} device(s): {}",
                    v.path.display(),
                    v.kind.as_deref().unwrap_or_default(),
                    v.cdi_version.as_deref().unwrap_or_default(),
                    v.devices.len(),
                    v.devices.join(", ")
                ),
                Some(e) => println!("invalid {e}"),
            }
        }
        println!(
            "{} file(s): {} valid, {} invalid",
            verdicts.len(),
            verdicts.len() - invalid,
            invalid
        );
    }
    Ok(if invalid == 0 {
        Outcome::Clean
    } else {
        Outcome::Findings
    })
}

#[derive(Serialize)]
struct ListedDevice {
    name: String,
    spec: PathBuf,
}

#[derive(Serialize)]
struct Listing {
    spec_dirs: Vec<PathBuf>,
    devices: Vec<ListedDevice>,
    skipped: Vec<SkippedEntry>,
    conflicts: Vec<String>,
}

#[derive(Serialize)]
struct SkippedEntry {
    path: PathBuf,
    reason: &'static str,
    message: String,
}

fn list(spec_dirs: Vec<PathBuf>, global: &Global) -> anyhow::Result<Outcome> {
    let mut config = RegistryConfig::under_root(&global.host_root);
    if !spec_dirs.is_empty() {
        config.spec_dirs = spec_dirs;
    }
    let registry = Registry::new(config);
    let listing = Listing {
        spec_dirs: registry.config().spec_dirs.clone(),
        devices: registry
            .devices()
            .map(|(name, d)| ListedDevice {
                name: name.to_string(),
                spec: d.spec.path.clone(),
            })
            .collect(),
        skipped: registry
            .skipped()
            .iter()
            .map(|s| SkippedEntry {
                path: s.path.clone(),
                reason: match s.problem {
                    FileProblem::Invalid(_) => "invalid",
                    FileProblem::Insecure { .. } => "insecure",
                    FileProblem::Unreadable(_) => "unreadable",
                    FileProblem::SymlinkedDir { .. } => "symlinked-dir",
                },
                message: s.to_string(),
            })
            .collect(),
        conflicts: registry
            .conflicts()
            .iter()
            .map(ToString::to_string)
            .collect(),
    };
    if global.json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
    } else {
        let dirs: Vec<String> = listing
            .spec_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        println!("spec dirs (later wins): {}", dirs.join(", "));
        let width = listing
            .devices
            .iter()
            .map(|d| d.name.len())
            .max()
            .unwrap_or(0);
        for d in &listing.devices {
            println!("{:width$}  {}", d.name, d.spec.display());
        }
        println!("{} device(s)", listing.devices.len());
        for s in &listing.skipped {
            println!("warning: {}", s.message);
        }
        for c in &listing.conflicts {
            println!("conflict: {c}");
        }
    }
    Ok(
        if listing.skipped.is_empty() && listing.conflicts.is_empty() {
            Outcome::Clean
        } else {
            Outcome::Findings
        },
    )
}

#[derive(Serialize)]
struct Generated {
    written: Vec<PathBuf>,
    specs: Vec<cdi::Spec>,
    warnings: Vec<String>,
}

fn generate(
    output_dir: Option<PathBuf>,
    dry_run: bool,
    global: &Global,
) -> anyhow::Result<Outcome> {
    let host = kata_gpu_plan::Host::new(&global.host_root);
    if output_dir.is_none() && !dry_run {
        kata_gpu_node::coexist::refuse_foreign_specs(&global.host_root)?;
    }
    let dir = match output_dir {
        Some(d) => d,
        // A symlinked /var/run (most distributions: -> /run) resolves inside the root.
        None => {
            crate::node_state::inside(&global.host_root, Path::new(kata_gpu_node::paths::CDI_DIR))?
        }
    };
    let found = kata_gpu_plan::host_spec::host_specs(&host)
        .context("cannot read the host's PCI devices")?;
    let mut written = Vec::new();
    if !dry_run && !found.specs.is_empty() {
        // 0755 whatever the umask: a spec directory others can write lets them add devices.
        kata_gpu_fsutil::create_dirs(&dir, 0o755)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        for spec in &found.specs {
            written.push(cdi::write_spec(&dir, spec)?);
        }
    }
    if global.json {
        let out = Generated {
            written,
            specs: found.specs.clone(),
            warnings: found.warnings.clone(),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if dry_run {
            for spec in &found.specs {
                println!("# {}", cdi::write::spec_file_name(&spec.kind));
                print!("{}", serde_yaml_ng::to_string(spec)?);
            }
        }
        for (path, spec) in written.iter().zip(&found.specs) {
            let names: Vec<&str> = spec.devices.iter().map(|d| d.name.as_str()).collect();
            println!(
                "wrote {}: {} names: {}",
                path.display(),
                spec.kind,
                names.join(", ")
            );
        }
        for w in &found.warnings {
            println!("warning: {w}");
        }
        if found.specs.is_empty() {
            println!("no NVIDIA GPU or NVSwitch is bound to vfio-pci; nothing written");
        }
    }
    Ok(if found.specs.is_empty() || !found.warnings.is_empty() {
        Outcome::Findings
    } else {
        Outcome::Clean
    })
}
