//! The node set-up steps `kata-gpu install` takes, in order, each idempotent — artifacts ▸
//! the class's shim settings (`--kata-runtime rs`) ▸ host CDI spec ▸ boot unit ▸ containerd
//! registration (▸ restart) ▸ shim check ▸ RuntimeClass manifests — and what `uninstall`
//! (their reverse) shares of them. `--dry-run` shows the diff of every file a step would
//! change.

use std::path::{Path, PathBuf};

use anyhow::Context;
use kata_gpu_artifacts::{InstallOptions, Store, StoreConfig};
use kata_gpu_containerd_config::{diff, fsio};
use kata_gpu_manifests::Manifests;

use crate::args::{InstallArgs, NodeArgs};
use crate::node_state::{host_path, inside, shown, under, NodeLock, NodeState};
use crate::steps::Step;
use kata_gpu_node::boot_unit;
use kata_gpu_node::paths::{our_spec_path, MANIFEST_DIR};
use kata_gpu_node::registration::{handler, Request};

pub(crate) fn store(args: &NodeArgs, root: &Path) -> anyhow::Result<Store> {
    let config = StoreConfig {
        root: args.containerd.common.artifacts_root.clone(),
        ..StoreConfig::under_root(root)
    };
    Ok(Store::new(config, args.profile.handler())?)
}

pub(crate) fn artifacts_step(args: &InstallArgs, root: &Path) -> anyhow::Result<Step> {
    let node = &args.node;
    let Some(src) = &args.artifacts else {
        let config = kata_gpu_artifacts::layout::current_config_path(
            &node.containerd.common.artifacts_root,
            node.profile.handler(),
        );
        let mut step = Step::new("artifacts", "skipped (no --artifacts)");
        if !under(root, &config).exists() {
            step.warnings.push(format!(
                "{} does not exist: the handler's ConfigPath needs an artifact set (--artifacts SRC)",
                shown(root, &config)
            ));
        }
        return Ok(step);
    };
    let store = store(node, root)?;
    if node.containerd.common.dry_run {
        return Ok(Step::new(
            "artifacts",
            format!(
                "would install {} into {}",
                src.display(),
                store.class_dir_on_disk().display()
            ),
        ));
    }
    let report = kata_gpu_artifacts::install(&store, src, &InstallOptions::default())?;
    Ok(Step::new(
        "artifacts",
        // Only the outcome's name is lowered: the path keeps its case.
        format!(
            "{} {} ({})",
            format!("{:?}", report.outcome).to_lowercase(),
            report.version,
            shown(root, &report.dir)
        ),
    ))
}

/// Writes `text` to `path` unless it holds it already; the diff in dry-run.
pub(crate) fn put(path: &Path, text: &str, dry_run: bool, step: &mut Step) -> anyhow::Result<bool> {
    let before = fsio::read_config(path)?;
    if before.as_deref() == Some(text) {
        return Ok(false);
    }
    if dry_run {
        step.diffs
            .push(diff::unified(path, before.as_deref(), Some(text)));
    } else {
        fsio::write_atomic(path, text.as_bytes(), Some(0o644))?;
    }
    Ok(true)
}

/// Saves the record before the file it names is written (not in a dry run), so that no
/// file of ours is ever left on the node without the record uninstall removes it by.
pub(crate) fn record_intent(state: &NodeState, args: &NodeArgs, root: &Path) -> anyhow::Result<()> {
    if args.containerd.common.dry_run {
        return Ok(());
    }
    Ok(state.save(root, args.profile.handler())?)
}

pub(crate) fn cdi_step(
    install: &InstallArgs,
    root: &Path,
    state: &mut NodeState,
) -> anyhow::Result<Step> {
    let args = &install.node;
    if install.skip_cdi {
        return Ok(Step::new("cdi", "skipped (--skip-cdi)"));
    }
    let host = kata_gpu_plan::Host::new(root);
    let found = kata_gpu_plan::host_spec::host_specs(&host)
        .context("cannot read the host's PCI devices")?;
    let mut step = Step::new("cdi", "");
    step.warnings = found.warnings.clone();
    let mut written = Vec::new();
    for spec in &found.specs {
        cdi::validate_spec(spec, None)?;
        let host_file = our_spec_path(&spec.kind);
        let yaml = serde_yaml_ng::to_string(spec)?;
        if !state.cdi_specs.contains(&host_file) {
            state.cdi_specs.push(host_file.clone());
            record_intent(state, args, root)?;
        }
        if put(
            &inside(root, &host_file)?,
            &yaml,
            args.containerd.common.dry_run,
            &mut step,
        )? {
            written.push(shown(root, &host_file));
        }
    }
    step.result = match (found.specs.is_empty(), written.is_empty()) {
        (true, _) => "no NVIDIA GPU or NVSwitch is bound to vfio-pci; no spec written".into(),
        (false, true) => "host specs up to date".into(),
        (false, false) if args.containerd.common.dry_run => {
            format!("would write {}", written.join(", "))
        }
        (false, false) => format!("wrote {}", written.join(", ")),
    };
    Ok(step)
}

/// The kata-gpu a boot unit runs: `--kata-gpu`, else the one `make install` installed,
/// else this one on a real host, else where `make install` puts it.
pub(crate) fn boot_kata_gpu(args: &InstallArgs, root: &Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.kata_gpu {
        return Ok(host_path(root, p));
    }
    if let Some(r) = kata_gpu_node::binaries::Record::load(root)? {
        return Ok(r.prefix.join("bin/kata-gpu"));
    }
    match std::env::current_exe() {
        Ok(exe) if root == Path::new("/") => Ok(exe),
        _ => Ok(Path::new(kata_gpu_node::paths::DEFAULT_PREFIX).join("bin/kata-gpu")),
    }
}

/// Writes and enables the unit that binds the GPUs and writes the host CDI spec again at
/// boot, before containerd.
pub(crate) fn boot_step(
    args: &InstallArgs,
    root: &Path,
    state: &mut NodeState,
) -> anyhow::Result<Step> {
    let node = &args.node;
    let handler = node.profile.handler();
    let kata_gpu = boot_kata_gpu(args, root)?;
    let bdfs = boot_unit::bound_now(&kata_gpu_plan::Host::new(root))
        .context("cannot read the host's PCI devices")?;
    let unit = boot_unit::unit_path(handler);
    let link = boot_unit::wants_link(handler);
    let mut step = Step::new("boot", "");
    if state.boot_unit.as_ref() != Some(&unit) {
        state.boot_unit = Some(unit.clone());
        record_intent(state, node, root)?;
    }
    let text = boot_unit::unit_text(handler, &kata_gpu, &bdfs, &node.containerd.common.unit);
    let changed = put(
        &inside(root, &unit)?,
        &text,
        node.containerd.common.dry_run,
        &mut step,
    )?;
    let link_real = inside(root, &link)?;
    let target = Path::new("..").join(unit.file_name().unwrap_or_default());
    let linked = std::fs::read_link(&link_real).is_ok_and(|t| t == target);
    if !linked && !node.containerd.common.dry_run {
        kata_gpu_fsutil::create_dirs(link_real.parent().unwrap_or(root), 0o755)?;
        kata_gpu_fsutil::symlink_atomic(&target, &link_real)
            .with_context(|| format!("cannot enable {}", link_real.display()))?;
    }
    step.result = format!(
        "{} {} (enabled in {}): at boot, before {}.service, `vfio bind{}` and `cdi generate`",
        match (changed || !linked, node.containerd.common.dry_run) {
            (false, _) => "up to date",
            (true, true) => "would write",
            (true, false) => "wrote",
        },
        shown(root, &unit),
        boot_unit::WANTED_BY,
        node.containerd.common.unit,
        bdfs.iter().map(|b| format!(" {b}")).collect::<String>()
    );
    if bdfs.is_empty() {
        step.warnings.push(
            "no NVIDIA GPU or NVSwitch is on vfio-pci now: at boot the unit binds every one; \
             bind the ones you want (kata-gpu vfio bind BDF) and run install again to name them"
                .to_owned(),
        );
    }
    if !under(root, &kata_gpu).is_file() {
        step.warnings.push(format!(
            "{} does not exist: the unit runs it at boot (make install, or --kata-gpu PATH)",
            shown(root, &kata_gpu)
        ));
    }
    Ok(step)
}

pub(crate) fn manifests_step(
    install: &InstallArgs,
    root: &Path,
    state: &mut NodeState,
) -> anyhow::Result<Step> {
    let args = &install.node;
    let mut opts = install.manifest.options()?;
    opts.gpu_resource = crate::manifests::sample_resource(root);
    let m = Manifests::new(args.profile, &opts);
    let host_file = Path::new(MANIFEST_DIR).join(format!("{}.yaml", args.profile.handler()));
    let mut step = Step::new("runtimeclass", "");
    if state.manifests.as_ref() != Some(&host_file) {
        state.manifests = Some(host_file.clone());
        record_intent(state, args, root)?;
    }
    let changed = put(
        &inside(root, &host_file)?,
        &m.runtime_class_yaml()?,
        args.containerd.common.dry_run,
        &mut step,
    )?;
    step.result = format!(
        "{} {} (the RuntimeClass): apply with kubectl apply -f {}",
        match (changed, args.containerd.common.dry_run) {
            (false, _) => "up to date",
            (true, true) => "would write",
            (true, false) => "wrote",
        },
        shown(root, &host_file),
        shown(root, &host_file)
    );
    step.notes.push(format!(
        "a sample GPU pod and NFD's NodeFeatureRule are printed on request, not applied with the class: kata-gpu runtimeclass --profile {}",
        args.profile.name()
    ));
    Ok(step)
}

pub(crate) fn node_lock(args: &NodeArgs, root: &Path) -> anyhow::Result<NodeLock> {
    Ok(NodeLock::take(
        root,
        std::time::Duration::from_secs(args.containerd.common.lock_timeout),
        args.containerd.common.dry_run,
    )?)
}

pub(crate) fn request(args: &NodeArgs, root: &Path) -> Request {
    Request::new(
        root,
        Some(&args.containerd_config),
        args.containerd.drop_in.as_deref(),
        args.containerd.handler_spec(args.profile),
        args.containerd.config_version,
        Some(&args.containerd.common.unit),
    )
}

pub(crate) fn containerd_steps(
    planned: handler::Planned,
    args: &NodeArgs,
    root: &Path,
    lock: &NodeLock,
) -> anyhow::Result<Vec<Step>> {
    let report = handler::apply_one(
        planned,
        &request(args, root),
        &args.containerd.common.apply(),
        root,
        lock,
    )?;
    let mut step = Step::new(
        "containerd",
        match (report.changed, args.containerd.common.dry_run) {
            (false, _) => format!("nothing to change in {}", shown(root, &report.config)),
            (true, true) => format!("would {} in {}", report.action, shown(root, &report.config)),
            (true, false) => format!("{}ed in {}", report.action, shown(root, &report.config)),
        },
    );
    step.diffs = report.diffs;
    step.notes = report.notes;
    let restart = Step::new(
        "restart",
        if report.restarted {
            format!("restarted containerd ({})", report.restart_command)
        } else if report.restart_pending {
            format!("containerd must restart: {}", report.restart_command)
        } else {
            "not needed".to_owned()
        },
    );
    Ok(vec![step, restart])
}

/// The shim containerd will run for the handler, and Kata's behind it: not refusals (the
/// binaries may come after the registration, and `status` keeps showing them), but a
/// missing shim of ours makes the install fail (`false`): pods of the class cannot start.
pub(crate) fn shim_step(args: &NodeArgs, root: &Path) -> (Step, bool) {
    let runtime_path = args.containerd.runtime_path.as_deref();
    let containerd = Path::new("containerd");
    let mut step = Step::new("shim", "");
    let mut found_ours = true;
    match kata_gpu_node::shims::our_shim(root, args.profile, containerd, runtime_path) {
        Ok(found) => {
            step.result = format!("containerd will run {}", shown(root, &found.path));
            match found.version {
                Ok(v) if kata_gpu_node::shims::same_version(&v) => step.notes.push(v),
                Ok(v) => step.warnings.push(format!(
                    "{v}: not kata-gpu's version {}; install both from one build (make install)",
                    env!("CARGO_PKG_VERSION")
                )),
                Err(e) => step.warnings.push(e),
            }
        }
        Err(missing) => {
            found_ours = false;
            step.result = "NOT FOUND: pods of this class will not start".to_owned();
            step.warnings.push(format!(
                "{missing}: make install (or kata-gpu binaries install)"
            ));
        }
    }
    match kata_gpu_node::shims::kata_shim(args.profile, root) {
        Ok(Ok(_)) => {}
        Ok(Err(missing)) => step.warnings.push(format!(
            "Kata's shim {missing}: install Kata Containers (kata-deploy or its release tarball)"
        )),
        Err(e) => step.warnings.push(e),
    }
    (step, found_ours)
}

/// The base config install will leave current, shown as a path, and its text: the one in
/// `--artifacts` (as the set ships it), else the installed set's; `None` when there is none.
pub(crate) fn base_config(
    args: &InstallArgs,
    root: &Path,
) -> anyhow::Result<Option<(String, String)>> {
    if let Some(src) = &args.artifacts {
        let (at, text) = kata_gpu_artifacts::read_base_config(src, &InstallOptions::default())?;
        return Ok(Some((at.display().to_string(), text)));
    }
    let config = kata_gpu_artifacts::layout::current_config_path(
        &args.node.containerd.common.artifacts_root,
        args.node.profile.handler(),
    );
    Ok(fsio::read_config(&under(root, &config))?.map(|t| (shown(root, &config), t)))
}
