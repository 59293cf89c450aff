//! Others that set up the same things, detected so that kata-gpu refuses with the fix
//! instead of fighting them: a CDI spec of another tool that defines our kinds (NVIDIA's
//! sandbox device plugin writes `/var/run/cdi/nvidia.yaml` with `nvidia.com/pgpu`; two
//! specs of one directory defining a device make it usable by neither), and a runtime
//! handler of our name that kata-gpu did not register (kata-deploy registers
//! `kata-qemu-nvidia-gpu`, `-snp` and `-tdx`, running Kata's shim directly).

use std::fs;
use std::path::{Path, PathBuf};

use kata_gpu_containerd_config::{covers, find_handler, fsio, imports, FoundHandler, HandlerSpec};
use kata_gpu_plan::host_spec::{NVSWITCH_KIND, PGPU_KIND};

use crate::paths::shown;
use crate::record::resolve as inside;

/// Spec files in the host's CDI directories, not written by kata-gpu, that define one of
/// our kinds: `(file as the host sees it, kind)`.
pub fn foreign_specs(root: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    for dir in cdi::registry::DEFAULT_SPEC_DIRS {
        let Ok(real) = inside(root, Path::new(dir)) else {
            continue;
        };
        let Ok(entries) = fs::read_dir(&real) else {
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let Ok(spec) = cdi::read_spec_file(&file) else {
                continue;
            };
            let host = Path::new(dir).join(file.file_name().unwrap_or_default());
            let ours = crate::paths::our_spec_path(&spec.kind);
            if [PGPU_KIND, NVSWITCH_KIND].contains(&spec.kind.as_str()) && host != ours {
                found.push((host, spec.kind));
            }
        }
    }
    found
}

/// What to do about a foreign spec: the one-line fix.
pub fn foreign_spec_fix(file: &str) -> String {
    format!(
        "on a node kata-gpu sets up, turn NVIDIA's sandbox device plugin off (node label \
         nvidia.com/gpu.deploy.sandbox-device-plugin=false) and remove {file}, or keep that \
         spec and install with --skip-cdi"
    )
}

/// Refuses to write the host spec beside a foreign one, before anything is written.
pub fn refuse_foreign_specs(root: &Path) -> Result<(), Refusal> {
    match foreign_specs(root).into_iter().next() {
        Some((file, kind)) => {
            let file = shown(root, &file);
            Err(Refusal::ForeignSpec {
                fix: foreign_spec_fix(&file),
                file,
                kind,
            })
        }
        None => Ok(()),
    }
}

/// The files containerd reads for `config` (as the host sees it): the file and the ones its
/// `imports` name (a glob in the last part matched against the directory's files).
fn config_files(root: &Path, config: &Path) -> Vec<(PathBuf, String)> {
    let Ok(real) = inside(root, config) else {
        return Vec::new();
    };
    let Ok(Some(text)) = fsio::read_config(&real) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in imports(&text, &real.display().to_string()).unwrap_or_default() {
        let entry = PathBuf::from(entry);
        let entry = if entry.is_absolute() {
            entry
        } else {
            config.parent().unwrap_or(Path::new("/")).join(entry)
        };
        let name = entry.file_name().unwrap_or_default().to_string_lossy();
        if !name.contains(['*', '?', '[']) {
            out.extend(read(root, &entry));
            continue;
        }
        // A glob in the last part, matched against the directory's files as containerd's
        // `filepath.Glob` does (the same matcher `imports` coverage uses).
        let dir = entry.parent().unwrap_or(Path::new("/"));
        let Some(listing) = inside(root, dir).ok().and_then(|d| fs::read_dir(d).ok()) else {
            continue;
        };
        let pattern = entry.display().to_string();
        let mut files: Vec<PathBuf> = listing
            .filter_map(Result::ok)
            .map(|e| dir.join(e.file_name()))
            .filter(|f| covers(&pattern, &f.display().to_string()))
            .collect();
        files.sort();
        for f in files {
            out.extend(read(root, &f));
        }
    }
    out.insert(0, (config.to_path_buf(), text));
    out
}

fn read(root: &Path, host: &Path) -> Option<(PathBuf, String)> {
    let text = fsio::read_config(&inside(root, host).ok()?).ok()??;
    Some((host.to_path_buf(), text))
}

/// A handler of `spec`'s name in containerd's config (or a file it imports) that kata-gpu
/// has no record of registering and that runs something else: another `runtime_type`, or a
/// `runtime_path` that is not the kata-gpu shim (kata-deploy's names Kata's shim). One that
/// runs the kata-gpu shim anyway is adopted: register takes it over and unregister gives
/// it back as it was. `(file as the host sees it, what it says)`.
pub fn foreign_handler(
    root: &Path,
    config: &Path,
    spec: &HandlerSpec,
) -> Option<(PathBuf, FoundHandler)> {
    let shim = format!(
        "containerd-shim-{}-v2",
        spec.runtime_type
            .strip_prefix("io.containerd.")
            .and_then(|t| t.strip_suffix(".v2"))
            .unwrap_or_default()
    );
    config_files(root, config)
        .into_iter()
        .find_map(|(file, text)| {
            let found = find_handler(&text, &spec.name)?;
            let other_type = found
                .runtime_type
                .as_deref()
                .is_some_and(|t| t != spec.runtime_type);
            let other_path = found
                .runtime_path
                .as_deref()
                .is_some_and(|p| !p.ends_with(&format!("/{shim}")) && p != shim);
            (other_type || other_path).then_some((file, found))
        })
}

/// Refuses to register over a handler that runs something else, before anything changes.
pub fn refuse_foreign_handler(
    root: &Path,
    config: &Path,
    spec: &HandlerSpec,
) -> Result<(), Refusal> {
    match foreign_handler(root, config, spec) {
        Some((file, found)) => Err(Refusal::ForeignHandler {
            file: shown(root, &file),
            name: spec.name.clone(),
            runs: match (&found.runtime_path, &found.runtime_type) {
                (Some(p), _) => format!("runtime_path {p}"),
                (None, Some(t)) => format!("runtime_type {t}"),
                (None, None) => "another runtime".to_owned(),
            },
        }),
        None => Ok(()),
    }
}

/// Why kata-gpu will not set up beside another tool, with the fix.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Another tool's CDI spec defines one of our kinds.
    #[error("{file} (not kata-gpu's) defines {kind} too: a device two specs define is usable by neither, so kata-gpu writes no spec beside it; {fix}; nothing was written")]
    ForeignSpec {
        /// The spec file, as shown.
        file: String,
        /// The kind it defines.
        kind: String,
        /// What to do.
        fix: String,
    },
    /// A handler of our name that runs something else.
    #[error("{file} already has a {name} handler that kata-gpu did not register and that runs something else ({runs}; kata-deploy registers this name): containerd would run that and not the kata-gpu shim; remove it (kata-deploy: undeploy it on this node, or deploy it without the NVIDIA shims), or, if it is kata-gpu's from a lost record, run kata-gpu containerd unregister first; nothing was changed")]
    ForeignHandler {
        /// The config file, as shown.
        file: String,
        /// The handler.
        name: String,
        /// What it runs.
        runs: String,
    },
}
