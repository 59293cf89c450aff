//! `kata-gpu uninstall`: `install` undone in the safe order — containerd's config and its
//! restart first, then the host CDI spec, the manifests, the boot unit and (with
//! `--purge`) the artifact store.

use std::path::Path;

use kata_gpu_containerd_config::{diff, fsio};

use crate::boot_unit;
use crate::containerd_cmd;
use crate::install_cmd::{
    containerd_steps, node_lock, print, request, store, NodeArgs, Step, MANIFEST_DIR,
};
use crate::node_state::{host_path, inside, shown, NodeState};
use crate::{Global, Outcome};

/// Arguments of `uninstall`.
#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Remove the profile's artifact store as well, after the other steps; refused before
    /// anything changes while a running sandbox uses it.
    #[arg(long)]
    pub purge: bool,
}

/// Runs `kata-gpu uninstall`: containerd config, restart, then the host CDI spec and the
/// manifests it wrote. The artifact store is kept (say so) unless `--purge`: then it is
/// removed last, and a store a running sandbox uses is refused before anything changes.
pub fn uninstall(args: UninstallArgs, global: &Global) -> anyhow::Result<Outcome> {
    let root = &global.host_root;
    let node = &args.node;
    let handler = node.profile.handler();
    let dry_run = node.containerd.dry_run;
    containerd_cmd::check_restart(&node.containerd, root)?;
    let lock = node_lock(node, root)?;
    let purge = if args.purge {
        let store = store(node, root)?;
        // The same checks as the removal at the end, removing nothing: a refusal comes first.
        kata_gpu_artifacts::remove_class(&store, true)?;
        Some(store)
    } else {
        None
    };
    let mut steps = containerd_steps(
        containerd_cmd::plan_one(false, &request(node, root), root)?,
        node,
        root,
        &lock,
    )?;
    let mut state = NodeState::load(root, handler)?;
    let mut cdi = Step::new("cdi", "");
    let mut removed = Vec::new();
    for spec in std::mem::take(&mut state.cdi_specs) {
        let real = inside(root, &host_path(root, &spec))?;
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
    steps.push(cdi);
    let mut manifests = Step::new("runtimeclass", "nothing to remove");
    if let Some(m) = state.manifests.take() {
        let real = inside(root, &m)?;
        if let Some(before) = fsio::read_config(&real)? {
            if dry_run {
                manifests
                    .diffs
                    .push(diff::unified(&real, Some(&before), None));
            } else {
                fsio::remove_file(&real)?;
            }
            if !dry_run {
                let _ = std::fs::remove_dir(inside(root, Path::new(MANIFEST_DIR))?);
            }
            manifests.result = format!(
                "{} {} (delete the objects with kubectl delete -f before)",
                if dry_run { "would remove" } else { "removed" },
                shown(root, &m)
            );
        }
    }
    steps.push(manifests);
    steps.push(remove_boot_unit(&mut state, handler, root, dry_run)?);
    if !dry_run {
        state.save(root, handler)?;
    }
    steps.push(match &purge {
        Some(store) => Step::new(
            "artifacts",
            crate::artifacts_cmd::removal(
                &kata_gpu_artifacts::remove_class(store, dry_run)?,
                root,
                dry_run,
            ),
        ),
        None => Step::new(
            "artifacts",
            format!(
                "kept in {}: uninstall --purge removes it (kata-gpu artifacts prune removes old sets)",
                shown(
                    root,
                    &kata_gpu_artifacts::layout::class_dir(&node.containerd.artifacts_root, handler)
                )
            ),
        ),
    });
    print(&steps, global.json)
}

/// Removes the boot unit and its enabling link that install wrote (kept in the record in a
/// dry run); a systemd that already loaded it forgets it at its next daemon-reload or boot.
fn remove_boot_unit(
    state: &mut NodeState,
    handler: &str,
    root: &Path,
    dry_run: bool,
) -> anyhow::Result<Step> {
    let mut step = Step::new("boot", "nothing to remove");
    let Some(unit) = state.boot_unit.clone() else {
        return Ok(step);
    };
    let link = inside(root, &boot_unit::wants_link(handler))?;
    let real = inside(root, &unit)?;
    let before = fsio::read_config(&real)?;
    if dry_run {
        step.diffs
            .push(diff::unified(&real, before.as_deref(), None));
    } else {
        if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            fsio::remove_file(&link)?;
        }
        fsio::remove_file(&real)?;
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
