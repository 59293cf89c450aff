//! `kata-gpu install`: the install steps of [`crate::install_ops`], in their order, under
//! the node lock, printed as they go.

use crate::args::InstallArgs;
use crate::install_ops::{
    artifacts_step, base_config, boot_step, cdi_step, containerd_steps, manifests_step, node_lock,
    request, shim_step,
};
use crate::node_state::NodeState;
use crate::steps::print;
use crate::{Global, Outcome};
use kata_gpu_node::registration::handler;
use kata_gpu_node::shim_settings;

/// Runs `kata-gpu install`.
pub fn install(args: InstallArgs, global: &Global) -> anyhow::Result<Outcome> {
    let root = &global.host_root;
    let node = &args.node;
    let handler = node.profile.handler();
    // One lock for the whole run: the record is read, changed and saved under it.
    node.containerd.common.apply().check(root)?;
    let lock = node_lock(node, root)?;
    // containerd's config is planned (no write) first, so that a refusal there (invalid
    // TOML, version 1, a symlink) comes before artifacts or the CDI spec are written.
    let containerd = handler::plan_one(true, &request(node, root), root)?;
    if !args.skip_cdi {
        kata_gpu_node::coexist::refuse_foreign_specs(root)?;
    }
    // The Kata runtime's checks, before anything is written: the base config is that
    // runtime's, and the class's shim settings file is ours to write (or remove).
    if let Some((file, text)) = base_config(&args, root)? {
        shim_settings::check_base_config(node.profile, args.kata_runtime, &file, &text)?;
    }
    let settings_plan = shim_settings::plan(
        node.profile,
        args.kata_runtime,
        root,
        NodeState::load(root, handler)?.shim_settings.as_ref(),
    )?;
    let mut steps = vec![artifacts_step(&args, root)?];
    let mut state = NodeState::load(root, handler)?;
    let mut recorded = state.shim_settings.clone();
    steps.push(shim_settings::apply(
        settings_plan,
        node.profile,
        args.kata_runtime,
        root,
        node.containerd.common.dry_run,
        &mut recorded,
        &mut |r| {
            state.shim_settings = r.clone();
            if node.containerd.common.dry_run {
                return Ok(());
            }
            state.save(root, handler)
        },
    )?);
    steps.push(cdi_step(&args, root, &mut state)?);
    steps.push(boot_step(&args, root, &mut state)?);
    steps.extend(containerd_steps(containerd, node, root, &lock)?);
    let (shim, found_ours) = shim_step(node, root);
    steps.push(shim);
    let mut state = NodeState::load(root, handler)?;
    steps.push(manifests_step(&args, root, &mut state)?);
    print(&steps, root, global.json)?;
    if found_ours || node.containerd.common.dry_run {
        return Ok(Outcome::Clean);
    }
    // Everything above stays (uninstall undoes it); the node is not ready, and says so.
    eprintln!(
        "kata-gpu: {handler} is registered but containerd finds no {}: its pods cannot start; run `make install` (or `kata-gpu binaries install`), then `kata-gpu status`",
        node.profile.shim_binary()
    );
    Ok(Outcome::Findings)
}
