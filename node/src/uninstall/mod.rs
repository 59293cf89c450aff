//! `install` undone, step by step, in the safe order `uninstall` takes them after
//! containerd's config and its restart ([`crate::install::containerd_steps`]): the host
//! CDI spec, the manifests, the boot unit (the class's shim settings file is
//! [`crate::shim_settings::uninstall_step`]'s), the store's empty parents after a purge; and
//! what it leaves ([`leftovers`]). A dry run keeps the record and shows the diffs.

use std::path::Path;

use kata_gpu_containerd_config::{diff, fsio};

use crate::boot_unit;
use crate::install::StepError;
use crate::paths::{host_path, shown, MANIFEST_DIR};
use crate::record::{resolve, NodeState};
use crate::steps::Step;

pub mod leftovers;

/// The host CDI specs install wrote.
pub fn remove_cdi(state: &mut NodeState, root: &Path, dry_run: bool) -> Result<Step, StepError> {
    let mut cdi = Step::new("cdi", "");
    let mut removed = Vec::new();
    for spec in std::mem::take(&mut state.cdi_specs) {
        let real = resolve(root, &host_path(root, &spec))?;
        if let Some(before) = fsio::read_config(&real)? {
            if dry_run {
                cdi.diffs.push(diff::unified(&real, Some(&before), None));
                state.cdi_specs.push(spec.clone());
            } else {
                fsio::remove_file(&real)?;
            }
            removed.push(shown(root, &spec));
        }
    }
    cdi.result = if removed.is_empty() {
        "nothing to remove".to_owned()
    } else {
        format!(
            "{} {}",
            if dry_run { "would remove" } else { "removed" },
            removed.join(", ")
        )
    };
    Ok(cdi)
}

/// The manifests file install wrote (the objects in the cluster are kubectl's to delete).
pub fn remove_manifests(
    state: &mut NodeState,
    root: &Path,
    dry_run: bool,
) -> Result<Step, StepError> {
    let mut manifests = Step::new("runtimeclass", "nothing to remove");
    if let Some(m) = state.manifests.take() {
        let real = resolve(root, &m)?;
        if let Some(before) = fsio::read_config(&real)? {
            if dry_run {
                manifests
                    .diffs
                    .push(diff::unified(&real, Some(&before), None));
            } else {
                fsio::remove_file(&real)?;
                let _ = std::fs::remove_dir(resolve(root, Path::new(MANIFEST_DIR))?);
            }
            manifests.result = format!(
                "{} {} (delete the objects with kubectl delete -f before)",
                if dry_run { "would remove" } else { "removed" },
                shown(root, &m)
            );
        }
    }
    Ok(manifests)
}

/// Removes the empty directories above a removed store class (`runtimeclasses`,
/// `artifacts`, `nvidia-gpu-operator`), never a top-level one such as `/opt`.
pub fn remove_empty_parents(root: &Path, class_dir: &Path) -> Result<(), StepError> {
    let mut dir = class_dir.parent();
    while let Some(d) = dir.filter(|d| d.components().count() > 2) {
        if std::fs::remove_dir(resolve(root, d)?).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// Removes the boot unit and its enabling link that install wrote (kept in the record in a
/// dry run); a systemd that already loaded it forgets it at its next daemon-reload or boot.
pub fn remove_boot_unit(
    state: &mut NodeState,
    handler: &str,
    root: &Path,
    dry_run: bool,
) -> Result<Step, StepError> {
    let mut step = Step::new("boot", "nothing to remove");
    let Some(unit) = state.boot_unit.clone() else {
        return Ok(step);
    };
    let link = resolve(root, &boot_unit::wants_link(handler))?;
    let real = resolve(root, &unit)?;
    let before = fsio::read_config(&real)?;
    if dry_run {
        step.diffs
            .push(diff::unified(&real, before.as_deref(), None));
    } else {
        if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            fsio::remove_file(&link)?;
        }
        fsio::remove_file(&real)?;
        // The wants directory and the unit directory go too when nothing else is in them
        // (as on a host whose only unit was ours); on a real host they never are empty.
        for dir in [link.parent(), real.parent()].into_iter().flatten() {
            let _ = std::fs::remove_dir(dir);
        }
        state.boot_unit = None;
    }
    step.result = format!(
        "{} {} and its link in {}",
        if dry_run { "would remove" } else { "removed" },
        shown(root, &unit),
        shown(
            root,
            boot_unit::wants_link(handler)
                .parent()
                .unwrap_or(Path::new(boot_unit::UNIT_DIR))
        )
    );
    Ok(step)
}
