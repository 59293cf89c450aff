//! `kata-gpu uninstall`: `install` undone in the safe order — containerd's config and its
//! restart first, then the host CDI spec, the manifests, the boot unit, the class's shim
//! settings file install wrote and (with
//! `--purge`) the artifact store — and what it leaves, each with the reason and the
//! command that removes it.

use std::path::PathBuf;

use kata_gpu_plan::Profile;

use crate::args::{CommonArgs, ContainerdArgs, NodeArgs};
use crate::node_state::{shown, NodeState};
use crate::steps::{print, Step};
use crate::{Global, Outcome};
use kata_gpu_node::install::containerd_steps;
use kata_gpu_node::registration::handler;
use kata_gpu_node::uninstall::{
    leftovers, remove_boot_unit, remove_cdi, remove_empty_parents, remove_manifests,
};

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
    let setup = node.setup(root, None, None);
    setup.apply.check(root)?;
    let lock = setup.lock()?;
    let purge = if args.purge {
        let store = setup.store()?;
        // The same checks as the removal at the end, removing nothing: a refusal comes first.
        kata_gpu_artifacts::remove_class(&store, true)?;
        Some(store)
    } else {
        None
    };
    let mut steps = containerd_steps(
        &setup,
        handler::plan_one(false, &setup.request, root)?,
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
