//! What `uninstall` does not remove, each said with the reason and the command that does:
//! the shim's state directory (removed when it holds no sandbox's state and no other
//! profile is installed), the binaries `make install` put there, GPUs left on vfio-pci,
//! and the record of a containerd restart still owed.

use std::fs;
use std::path::{Path, PathBuf};

use kata_gpu_plan::Profile;

use crate::binaries::Record;
use crate::install::StepError;
use crate::paths::shown;
use crate::record::{resolve, NodeState, STATE_DIR};
use crate::shims;
use crate::steps::Step;

/// The leftover steps for `profile`, after its record was saved (`state`).
pub fn steps(
    root: &Path,
    profile: Profile,
    state: &NodeState,
    dry_run: bool,
) -> Result<Vec<Step>, StepError> {
    let others: Vec<&str> = NodeState::registered_profiles(root)
        .into_iter()
        .filter(|p| *p != profile)
        .map(|p| p.handler())
        .collect();
    let mut out = vec![sandboxes(root, profile, &others, dry_run)?];
    out.push(match Record::load(root)? {
        Some(r) => Step::new(
            "binaries",
            format!(
                "kept {}: make uninstall (kata-gpu binaries remove) removes them once no profile is installed",
                r.files.iter().map(|f| shown(root, f)).collect::<Vec<_>>().join(", ")
            ),
        ),
        None => Step::new("binaries", "none installed by kata-gpu"),
    });
    out.push(vfio(root)?);
    if !dry_run && NodeState::path(root, profile.handler())?.exists() && !state.is_empty() {
        out.push(Step::new(
            "record",
            format!(
                "kept {}: containerd still runs with {} loaded until it restarts (status says so; uninstall --restart clears it)",
                shown(root, &Path::new(STATE_DIR).join(format!("{}.json", profile.handler()))),
                profile.handler()
            ),
        ));
    }
    Ok(out)
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            files_under(&p, base, out);
        } else {
            out.push(p.strip_prefix(base).unwrap_or(&p).to_path_buf());
        }
    }
}

/// The shim's state directory (`/run/kata-gpu` unless the settings say otherwise).
fn sandboxes(
    root: &Path,
    profile: Profile,
    others: &[&str],
    dry_run: bool,
) -> Result<Step, StepError> {
    let host = shims::settings(profile, root)
        .map(|(s, _)| s.state_dir)
        .unwrap_or_else(|_| PathBuf::from(kata_gpu_artifacts::layout::DEFAULT_SANDBOXES_DIR));
    let real = resolve(root, &host)?;
    let name = shown(root, &host);
    if !real.exists() {
        return Ok(Step::new("sandboxes", format!("nothing in {name}")));
    }
    let mut files = Vec::new();
    files_under(&real, &real, &mut files);
    // The claims lock is no sandbox's state; the proxies' sockets and records are pods
    // running, counted as such.
    files.retain(|f| f != Path::new(kata_gpu_artifacts::layout::CLAIMS_LOCK));
    let (proxies, files): (Vec<PathBuf>, Vec<PathBuf>) = files
        .into_iter()
        .partition(|f| f.starts_with(kata_gpu_artifacts::layout::PROXY_SOCKETS_DIR));
    let mut sandboxes: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let mut c = f.components();
            Some(format!(
                "{}/{}",
                c.next()?.as_os_str().to_string_lossy(),
                c.next()?.as_os_str().to_string_lossy()
            ))
        })
        .collect();
    sandboxes.dedup();
    let mut kept = Vec::new();
    if !sandboxes.is_empty() {
        kept.push(format!(
            "state of running sandboxes ({})",
            sandboxes.join(", ")
        ));
    } else if !files.is_empty() {
        kept.push(format!("{} file(s) of sandbox state", files.len()));
    }
    if !proxies.is_empty() {
        // A socket (a bare name) per running pod's proxy, beside its records.
        let sockets = proxies.iter().filter(|f| f.extension().is_none()).count();
        kept.push(format!(
            "{sockets} running pod(s)' proxy socket(s) ({} file(s) in {}/)",
            proxies.len(),
            kata_gpu_artifacts::layout::PROXY_SOCKETS_DIR
        ));
    }
    let running = kept.join(" and ");
    Ok(if !running.is_empty() {
        Step::new(
            "sandboxes",
            format!("kept {name}: {running}; drain the node (kubectl drain) and uninstall again"),
        )
    } else if !others.is_empty() {
        Step::new(
            "sandboxes",
            format!("kept {name}: {} still installed uses it", others.join(", ")),
        )
    } else if dry_run {
        Step::new("sandboxes", format!("would remove {name} (empty)"))
    } else {
        fs::remove_dir_all(&real).map_err(|source| StepError::Remove {
            path: real.clone(),
            source,
        })?;
        Step::new("sandboxes", format!("removed {name} (empty)"))
    })
}

/// GPUs `kata-gpu vfio bind` moved and nothing has given back.
fn vfio(root: &Path) -> Result<Step, StepError> {
    let dir = resolve(root, Path::new(kata_gpu_plan::vfio::STATE_DIR))?;
    let mut bdfs: Vec<String> = fs::read_dir(&dir)
        .map(|e| {
            e.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    bdfs.sort();
    Ok(if bdfs.is_empty() {
        Step::new("vfio", "no function bound by kata-gpu vfio bind")
    } else {
        Step::new(
            "vfio",
            format!(
                "kept on vfio-pci: {} (the host may want them there; kata-gpu vfio unbind gives them back to the driver they had)",
                bdfs.join(", ")
            ),
        )
    })
}
