//! `kata-gpu uninstall`: `install` undone in the safe order — containerd's config and its
//! restart first, then the host CDI spec, the manifests, the boot unit, the class's shim
//! settings file install wrote and (with
//! `--purge`) the artifact store — and what it leaves, each with the reason and the
//! command that removes it.

use std::path::{Path, PathBuf};

use kata_gpu_containerd_config::{diff, fsio};
use kata_gpu_plan::Profile;

use crate::args::{CommonArgs, ContainerdArgs, NodeArgs};
use crate::install_ops::{containerd_steps, node_lock, request, store};
use crate::steps::{print, Step};
use kata_gpu_node::boot_unit;
use kata_gpu_node::paths::MANIFEST_DIR;
use kata_gpu_node::registration::handler;

#[path = "uninstall_leftovers.rs"]
mod leftovers;
use crate::node_state::{host_path, inside, shown, NodeState};
use crate::{Global, Outcome};

/// Arguments of `uninstall`: only what removing needs (the handler's shape and the
/// manifests' are install's).
#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// The runtime class's profile: snp, tdx or gpu.
    #[arg(long, default_value = "snp")]
    pub profile: Profile,
    /// containerd's config file, when kata-gpu has no record of registering (the record
    /// names the file it changed).
    #[arg(long, value_name = "F", default_value = kata_gpu_node::containerd::DEFAULT_CONFIG)]
    pub containerd_config: PathBuf,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Remove the profile's artifact store as well, after the other steps; refused before
    /// anything changes while a running sandbox uses it.
    #[arg(long)]
    pub purge: bool,
}

impl UninstallArgs {
    fn node(&self) -> NodeArgs {
        NodeArgs {
            profile: self.profile,
            containerd_config: self.containerd_config.clone(),
            containerd: ContainerdArgs::removal(self.common.clone()),
        }
    }
}

/// Runs `kata-gpu uninstall`: containerd config, restart, then the host CDI spec, the
/// manifests and the boot unit it wrote, the shim's empty state directory, and (with
/// `--purge`) the artifact store; then what it leaves, and why: binaries, GPUs on vfio-pci,
/// sandbox state, the record of a restart still owed.
pub fn uninstall(args: UninstallArgs, global: &Global) -> anyhow::Result<Outcome> {
    let root = &global.host_root;
    let node = &args.node();
    let handler = node.profile.handler();
    let dry_run = args.common.dry_run;
    args.common.apply().check(root)?;
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
        handler::plan_one(false, &request(node, root), root)?,
        node,
        root,
        &lock,
    )?;
    let mut state = NodeState::load(root, handler)?;
    steps.push(remove_cdi(&mut state, root, dry_run)?);
    steps.push(remove_manifests(&mut state, root, dry_run)?);
    steps.push(remove_boot_unit(&mut state, handler, root, dry_run)?);
    steps.push(kata_gpu_node::shim_settings::uninstall_step(
        root,
        &mut state.shim_settings,
        dry_run,
    )?);
    if !dry_run {
        state.save(root, handler)?;
    }
    steps.push(match &purge {
        Some(store) => {
            let removed = kata_gpu_artifacts::remove_class(store, dry_run)?;
            if !dry_run && removed.dir_removed {
                remove_empty_parents(root, &store.class_dir())?;
            }
            Step::new(
                "artifacts",
                kata_gpu_node::steps::removal(&removed, root, dry_run),
            )
        }
        None => Step::new(
            "artifacts",
            format!(
                "kept in {}: uninstall --purge removes it (kata-gpu artifacts prune removes old sets)",
                shown(
                    root,
                    &kata_gpu_artifacts::layout::class_dir(&args.common.artifacts_root, handler)
                )
            ),
        ),
    });
    steps.extend(leftovers::steps(root, node.profile, &state, dry_run)?);
    print(&steps, root, global.json)
}

/// The host CDI specs install wrote.
fn remove_cdi(state: &mut NodeState, root: &Path, dry_run: bool) -> anyhow::Result<Step> {
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
    Ok(cdi)
}

/// The manifests file install wrote (the objects in the cluster are kubectl's to delete).
fn remove_manifests(state: &mut NodeState, root: &Path, dry_run: bool) -> anyhow::Result<Step> {
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
                let _ = std::fs::remove_dir(inside(root, Path::new(MANIFEST_DIR))?);
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
fn remove_empty_parents(root: &Path, class_dir: &Path) -> anyhow::Result<()> {
    let mut dir = class_dir.parent();
    while let Some(d) = dir.filter(|d| d.components().count() > 2) {
        if std::fs::remove_dir(inside(root, d)?).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
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
