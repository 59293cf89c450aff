//! `kata-gpu install`: the node set-up steps in order, each idempotent — artifacts ▸ the
//! class's shim settings (`--kata-runtime rs`) ▸ host CDI spec ▸ boot unit ▸ containerd
//! registration (▸ restart) ▸ shim check ▸ RuntimeClass manifests (their reverse is `uninstall_cmd`). `--dry-run` prints the diff of every file
//! a step would change.

use std::path::{Path, PathBuf};

use anyhow::Context;
use kata_gpu_artifacts::{InstallOptions, Store, StoreConfig};
use kata_gpu_containerd_config::{diff, fsio};
use kata_gpu_manifests::Manifests;
use kata_gpu_plan::Profile;
use serde::Serialize;

use crate::boot_unit;
use crate::containerd_cmd::{self, handler_spec, ContainerdArgs};
use crate::node_state::{host_path, inside, shown, under, NodeLock, NodeState};
use crate::registration::Request;
use crate::runtimeclass_cmd::ManifestArgs;
use crate::shim_settings;
use crate::{Global, Outcome};

/// Where install writes the manifests, as the host sees it.
pub const MANIFEST_DIR: &str = "/var/lib/kata-gpu/manifests";
/// Where install writes the host CDI specs, as the host sees it.
pub const CDI_DIR: &str = "/var/run/cdi";

/// Our host CDI spec of `kind`, as the host sees it.
pub fn our_spec_path(kind: &str) -> PathBuf {
    Path::new(CDI_DIR).join(cdi::write::spec_file_name(kind))
}

/// Where install registers (uninstall builds these from its own, fewer, flags).
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The runtime class's profile: snp, tdx or gpu.
    #[arg(long, default_value = "snp")]
    pub profile: Profile,
    /// containerd's config file.
    #[arg(long, value_name = "F", default_value = crate::registration::DEFAULT_CONFIG)]
    pub containerd_config: PathBuf,
    #[command(flatten)]
    pub containerd: ContainerdArgs,
}

/// Arguments of `install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Leave the host CDI spec alone.
    #[arg(long)]
    pub skip_cdi: bool,
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// Install the artifact set from SRC first: a directory, tarball or OCI layout.
    #[arg(long, value_name = "SRC")]
    pub artifacts: Option<PathBuf>,
    /// The kata-gpu the boot unit runs, as the host sees it (default: the one `make install`
    /// installed, else this one on a real host, else /usr/local/bin/kata-gpu).
    #[arg(long, value_name = "PATH")]
    pub kata_gpu: Option<PathBuf>,
    /// Which of Kata's runtimes the class's sandboxes go to: go (Kata's Go shim, the
    /// default: no settings file written) or rs (Kata 4's Rust shim, runtime-rs, at
    /// /opt/kata/runtime-rs/bin/containerd-shim-kata-v2: written to the class's shim.toml).
    /// The base config must be that runtime's.
    #[arg(long, value_name = "go|rs", default_value = "go")]
    pub kata_runtime: kata_gpu_configs::KataRuntime,
}

/// One step's result.
#[derive(Debug, Serialize)]
pub struct Step {
    /// artifacts, cdi, containerd, restart or runtimeclass.
    pub step: &'static str,
    /// What it did (or would do).
    pub result: String,
    /// Diffs (with --dry-run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diffs: Vec<String>,
    /// Warnings.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Notes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Step {
    pub(crate) fn new(step: &'static str, result: impl Into<String>) -> Step {
        Step {
            step,
            result: result.into(),
            diffs: Vec::new(),
            warnings: Vec::new(),
            notes: Vec::new(),
        }
    }
}

pub(crate) fn store(args: &NodeArgs, root: &Path) -> anyhow::Result<Store> {
    let config = StoreConfig {
        root: args.containerd.common.artifacts_root.clone(),
        ..StoreConfig::under_root(root)
    };
    Ok(Store::new(config, args.profile.handler())?)
}

fn artifacts_step(args: &InstallArgs, root: &Path) -> anyhow::Result<Step> {
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
fn put(path: &Path, text: &str, dry_run: bool, step: &mut Step) -> anyhow::Result<bool> {
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
fn record_intent(state: &NodeState, args: &NodeArgs, root: &Path) -> anyhow::Result<()> {
    if args.containerd.common.dry_run {
        return Ok(());
    }
    state.save(root, args.profile.handler())
}

fn cdi_step(install: &InstallArgs, root: &Path, state: &mut NodeState) -> anyhow::Result<Step> {
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
fn boot_kata_gpu(args: &InstallArgs, root: &Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.kata_gpu {
        return Ok(host_path(root, p));
    }
    if let Some(r) = crate::binaries_cmd::Record::load(root)? {
        return Ok(r.prefix.join("bin/kata-gpu"));
    }
    match std::env::current_exe() {
        Ok(exe) if root == Path::new("/") => Ok(exe),
        _ => Ok(Path::new(crate::binaries_cmd::DEFAULT_PREFIX).join("bin/kata-gpu")),
    }
}

/// Writes and enables the unit that binds the GPUs and writes the host CDI spec again at
/// boot, before containerd.
fn boot_step(args: &InstallArgs, root: &Path, state: &mut NodeState) -> anyhow::Result<Step> {
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

fn manifests_step(
    install: &InstallArgs,
    root: &Path,
    state: &mut NodeState,
) -> anyhow::Result<Step> {
    let args = &install.node;
    let mut opts = install.manifest.options()?;
    opts.gpu_resource = crate::runtimeclass_cmd::sample_resource(root);
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
    NodeLock::take(
        root,
        std::time::Duration::from_secs(args.containerd.common.lock_timeout),
        args.containerd.common.dry_run,
    )
}

pub(crate) fn request(args: &NodeArgs, root: &Path) -> Request {
    Request::new(
        root,
        Some(&args.containerd_config),
        args.containerd.drop_in.as_deref(),
        handler_spec(args.profile, &args.containerd),
        args.containerd.config_version,
        Some(&args.containerd.common.unit),
    )
}

pub(crate) fn containerd_steps(
    planned: containerd_cmd::Planned,
    args: &NodeArgs,
    root: &Path,
    lock: &NodeLock,
) -> anyhow::Result<Vec<Step>> {
    let report = containerd_cmd::apply_one(
        planned,
        &request(args, root),
        &args.containerd.common,
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
fn shim_step(args: &NodeArgs, root: &Path) -> (Step, bool) {
    let runtime_path = args.containerd.runtime_path.as_deref();
    let containerd = Path::new("containerd");
    let mut step = Step::new("shim", "");
    let mut found_ours = true;
    match crate::shim_check::our_shim(root, args.profile, containerd, runtime_path) {
        Ok(found) => {
            step.result = format!("containerd will run {}", shown(root, &found.path));
            match found.version {
                Ok(v) if crate::shim_check::same_version(&v) => step.notes.push(v),
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
    match crate::shim_check::kata_shim(args.profile, root) {
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
fn base_config(args: &InstallArgs, root: &Path) -> anyhow::Result<Option<(String, String)>> {
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

/// Runs `kata-gpu install`.
pub fn install(args: InstallArgs, global: &Global) -> anyhow::Result<Outcome> {
    let root = &global.host_root;
    let node = &args.node;
    let handler = node.profile.handler();
    // One lock for the whole run: the record is read, changed and saved under it.
    containerd_cmd::check_restart(&node.containerd.common, root)?;
    let lock = node_lock(node, root)?;
    // containerd's config is planned (no write) first, so that a refusal there (invalid
    // TOML, version 1, a symlink) comes before artifacts or the CDI spec are written.
    let containerd = containerd_cmd::plan_one(true, &request(node, root), root)?;
    if !args.skip_cdi {
        crate::coexist::refuse_foreign_specs(root)?;
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
    print(&steps, global.json)?;
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

/// Prints the steps, as text or JSON.
pub(crate) fn print(steps: &[Step], json: bool) -> anyhow::Result<Outcome> {
    if json {
        println!("{}", serde_json::to_string_pretty(steps)?);
    } else {
        for s in steps {
            for d in &s.diffs {
                print!("{d}");
            }
            println!("{:<13} {}", format!("{}:", s.step), s.result);
            for w in &s.warnings {
                println!("{:<13} warning: {w}", "");
            }
            for n in &s.notes {
                println!("{:<13} note: {n}", "");
            }
        }
    }
    Ok(Outcome::Clean)
}
