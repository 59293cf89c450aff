//! `kata-gpu install`: the node library's install steps ([`kata_gpu_node::install`]), in
//! their order, under the node lock, printed as they go.

use crate::args::InstallArgs;
use crate::node_state::NodeState;
use crate::steps::print;
use crate::{Global, Outcome};
use kata_gpu_node::install::{
    artifacts_step, base_config, boot_step, cdi_step, containerd_steps, manifests_step, shim_step,
};
use kata_gpu_node::registration::handler;
use kata_gpu_node::shim_settings;

/// Runs `kata-gpu install`.
pub fn install(args: InstallArgs, global: &Global) -> anyhow::Result<Outcome> {
    let root = &global.host_root;
    let node = &args.node;
    let handler = node.profile.handler();
    let setup = node.setup(root, args.artifacts.clone(), args.kata_gpu.clone());
    let dry_run = setup.apply.dry_run;
    // The manifests' flags are checked before anything is written.
    let mut manifest = args.manifest.options()?;
    manifest.gpu_resource = crate::manifests::sample_resource(root);
    let runtime_class =
        kata_gpu_manifests::Manifests::new(node.profile, &manifest).runtime_class_yaml()?;
    // One lock for the whole run: the record is read, changed and saved under it.
    setup.apply.check(root)?;
    let lock = setup.lock()?;
    // containerd's config is planned (no write) first, so that a refusal there (invalid
    // TOML, version 1, a symlink) comes before artifacts or the CDI spec are written.
    let containerd = handler::plan_one(true, &setup.request, root)?;
    if !args.skip_cdi {
        kata_gpu_node::coexist::refuse_foreign_specs(root)?;
    }
    // The Kata runtime's checks, before anything is written: the base config is that
    // runtime's, and the class's shim settings file is ours to write (or remove).
    if let Some((file, text)) = base_config(&setup)? {
        shim_settings::check_base_config(node.profile, args.kata_runtime, &file, &text)?;
    }
    // The record, read once under the lock (installing the artifact set does not change it).
    let mut state = NodeState::load(root, handler)?;
    let settings_plan = shim_settings::plan(
        node.profile,
        args.kata_runtime,
        root,
        state.shim_settings.as_ref(),
    )?;
    let mut steps = vec![artifacts_step(&setup)?];
    let mut recorded = state.shim_settings.clone();
    steps.push(shim_settings::apply(
        settings_plan,
        node.profile,
        args.kata_runtime,
        root,
        dry_run,
        &mut recorded,
        &mut |r| {
            state.shim_settings = r.clone();
            if dry_run {
                return Ok(());
            }
            state.save(root, handler)
        },
    )?);
    steps.push(if args.skip_cdi {
        kata_gpu_node::steps::Step::new("cdi", "skipped (--skip-cdi)")
    } else {
        cdi_step(&setup, &mut state)?
    });
    steps.push(boot_step(&setup, &mut state)?);
    steps.extend(containerd_steps(&setup, containerd, &lock)?);
    let (shim, found_ours) = shim_step(&setup);
    steps.push(shim);
    let mut state = NodeState::load(root, handler)?;
    steps.push(manifests_step(&setup, &runtime_class, &mut state)?);
    print(&steps, root, global.json)?;
    if found_ours || dry_run {
        return Ok(Outcome::Clean);
    }
    // Everything above stays (uninstall undoes it); the node is not ready, and says so.
    eprintln!(
        "kata-gpu: {handler} is registered but containerd finds no {}: its pods cannot start; run `make install` (or `kata-gpu binaries install`), then `kata-gpu status`",
        node.profile.shim_binary()
    );
    Ok(Outcome::Findings)
}
