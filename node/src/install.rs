//! The node set-up steps `kata-gpu install` takes, in order, each idempotent — artifacts ▸
//! the class's shim settings ([`crate::shim_settings`]) ▸ host CDI spec ▸ boot unit ▸
//! containerd registration (▸ restart) ▸ shim check ▸ RuntimeClass manifest — and what
//! `uninstall` (their reverse) shares of them. A dry run shows the diff of every file a step
//! would change. Each step saves the record before the file it names is written.

use std::path::{Path, PathBuf};

use kata_gpu_artifacts::{InstallOptions, Store, StoreConfig};
use kata_gpu_containerd_config::{diff, fsio};
use kata_gpu_plan::Profile;

use crate::boot_unit;
use crate::paths::{host_path, our_spec_path, shown, under, MANIFEST_DIR};
use crate::record::{resolve, NodeLock, NodeState, RecordError};
use crate::registration::handler::{self, Apply};
use crate::registration::Request;
use crate::steps::Step;

/// Why a step of install or uninstall failed; the steps before it stay done (uninstall
/// undoes install's; uninstall run again finishes its own).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The record could not be read or saved, a path not resolved, or the lock not taken.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] kata_gpu_containerd_config::Error),
    /// The artifact store refused or failed.
    #[error(transparent)]
    Artifacts(#[from] kata_gpu_artifacts::Error),
    /// The registration refused or failed.
    #[error(transparent)]
    Registration(Box<crate::registration::RegistrationError>),
    /// The binaries' record could not be read.
    #[error(transparent)]
    Binaries(#[from] crate::binaries::BinariesError),
    /// The class's shim settings file could not be planned, written or removed.
    #[error(transparent)]
    ShimSettings(#[from] crate::shim_settings::ShimSettingsError),
    /// The host's PCI devices could not be read.
    #[error("cannot read the host's PCI devices")]
    Devices(#[source] kata_gpu_plan::HostError),
    /// A host CDI spec built here does not validate (a bug: the spec is ours).
    #[error(transparent)]
    Spec(#[from] cdi::SpecError),
    /// A host CDI spec could not be encoded.
    #[error("cannot encode the host CDI spec")]
    Encode(#[source] serde_yaml_ng::Error),
    /// A directory could not be removed.
    #[error("cannot remove {}", path.display())]
    Remove {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The boot unit could not be enabled.
    #[error("cannot enable {}", link.display())]
    Enable {
        /// The link in the target's wants directory.
        link: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl From<crate::registration::RegistrationError> for StepError {
    fn from(e: crate::registration::RegistrationError) -> StepError {
        StepError::Registration(Box::new(e))
    }
}

/// What the steps are asked to do: the command line's flags, as values.
#[derive(Clone, Debug)]
pub struct Setup {
    /// `--host-root`.
    pub root: PathBuf,
    /// The profile installed.
    pub profile: Profile,
    /// The artifact store's root, as the host sees it.
    pub artifacts_root: PathBuf,
    /// The artifact set to install (`--artifacts`), in this process's view.
    pub artifacts: Option<PathBuf>,
    /// The kata-gpu the boot unit runs (`--kata-gpu`), as given.
    pub kata_gpu: Option<PathBuf>,
    /// The handler registered, and where.
    pub request: Request,
    /// How the registration is applied and containerd restarted.
    pub apply: Apply,
    /// How long to wait for another installer's lock.
    pub lock_timeout: std::time::Duration,
}

impl Setup {
    fn dry_run(&self) -> bool {
        self.apply.dry_run
    }

    /// The node lock for the whole run (none in a dry run).
    pub fn lock(&self) -> Result<NodeLock, RecordError> {
        NodeLock::take(&self.root, self.lock_timeout, self.dry_run())
    }

    /// The profile's artifact store.
    pub fn store(&self) -> Result<Store, kata_gpu_artifacts::Error> {
        let config = StoreConfig {
            root: self.artifacts_root.clone(),
            ..StoreConfig::under_root(&self.root)
        };
        Store::new(config, self.profile.handler())
    }

    /// Saves the record before the file it names is written (not in a dry run), so that
    /// no file of ours is ever left on the node without the record uninstall removes it by.
    fn record_intent(&self, state: &NodeState) -> Result<(), RecordError> {
        if self.dry_run() {
            return Ok(());
        }
        state.save(&self.root, self.profile.handler())
    }
}

/// Installs `--artifacts` into the store (or warns that the handler's ConfigPath has none).
pub fn artifacts_step(setup: &Setup) -> Result<Step, StepError> {
    let root = setup.root.as_path();
    let Some(src) = &setup.artifacts else {
        let config = kata_gpu_artifacts::layout::current_config_path(
            &setup.artifacts_root,
            setup.profile.handler(),
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
    let store = setup.store()?;
    if setup.dry_run() {
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
fn put(path: &Path, text: &str, dry_run: bool, step: &mut Step) -> Result<bool, StepError> {
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

/// Writes the host CDI specs of the passthrough devices bound now.
pub fn cdi_step(setup: &Setup, state: &mut NodeState) -> Result<Step, StepError> {
    let root = setup.root.as_path();
    let host = kata_gpu_plan::Host::new(root);
    let found = kata_gpu_plan::host_spec::host_specs(&host).map_err(StepError::Devices)?;
    let mut step = Step::new("cdi", "");
    step.warnings = found.warnings.clone();
    let mut written = Vec::new();
    for spec in &found.specs {
        cdi::validate_spec(spec, None)?;
        let host_file = our_spec_path(&spec.kind);
        let yaml = serde_yaml_ng::to_string(spec).map_err(StepError::Encode)?;
        if !state.cdi_specs.contains(&host_file) {
            state.cdi_specs.push(host_file.clone());
            setup.record_intent(state)?;
        }
        if put(
            &resolve(root, &host_file)?,
            &yaml,
            setup.dry_run(),
            &mut step,
        )? {
            written.push(shown(root, &host_file));
        }
    }
    step.result = match (found.specs.is_empty(), written.is_empty()) {
        (true, _) => "no NVIDIA GPU or NVSwitch is bound to vfio-pci; no spec written".into(),
        (false, true) => "host specs up to date".into(),
        (false, false) if setup.dry_run() => format!("would write {}", written.join(", ")),
        (false, false) => format!("wrote {}", written.join(", ")),
    };
    Ok(step)
}

/// The kata-gpu a boot unit runs: `--kata-gpu`, else the one `make install` installed,
/// else this one on a real host, else where `make install` puts it.
fn boot_kata_gpu(setup: &Setup) -> Result<PathBuf, StepError> {
    let root = setup.root.as_path();
    if let Some(p) = &setup.kata_gpu {
        return Ok(host_path(root, p));
    }
    if let Some(r) = crate::binaries::Record::load(root)? {
        return Ok(r.prefix.join("bin/kata-gpu"));
    }
    match std::env::current_exe() {
        Ok(exe) if root == Path::new("/") => Ok(exe),
        _ => Ok(Path::new(crate::paths::DEFAULT_PREFIX).join("bin/kata-gpu")),
    }
}

/// Writes and enables the unit that binds the GPUs and writes the host CDI spec again at
/// boot, before containerd.
pub fn boot_step(setup: &Setup, state: &mut NodeState) -> Result<Step, StepError> {
    let root = setup.root.as_path();
    let handler = setup.profile.handler();
    let dry_run = setup.dry_run();
    let containerd_unit = &setup.request.unit;
    let kata_gpu = boot_kata_gpu(setup)?;
    let bdfs = boot_unit::bound_now(&kata_gpu_plan::Host::new(root)).map_err(StepError::Devices)?;
    let unit = boot_unit::unit_path(handler);
    let link = boot_unit::wants_link(handler);
    let mut step = Step::new("boot", "");
    if state.boot_unit.as_ref() != Some(&unit) {
        state.boot_unit = Some(unit.clone());
        setup.record_intent(state)?;
    }
    let text = boot_unit::unit_text(handler, &kata_gpu, &bdfs, containerd_unit);
    let changed = put(&resolve(root, &unit)?, &text, dry_run, &mut step)?;
    let link_real = resolve(root, &link)?;
    let target = Path::new("..").join(unit.file_name().unwrap_or_default());
    let linked = std::fs::read_link(&link_real).is_ok_and(|t| t == target);
    if !linked && !dry_run {
        let enable = |source| StepError::Enable {
            link: link_real.clone(),
            source,
        };
        kata_gpu_fsutil::create_dirs(link_real.parent().unwrap_or(root), 0o755).map_err(enable)?;
        kata_gpu_fsutil::symlink_atomic(&target, &link_real).map_err(enable)?;
    }
    step.result = format!(
        "{} {} (enabled in {}): at boot, before {containerd_unit}.service, `vfio bind{}` and `cdi generate`",
        match (changed || !linked, dry_run) {
            (false, _) => "up to date",
            (true, true) => "would write",
            (true, false) => "wrote",
        },
        shown(root, &unit),
        boot_unit::WANTED_BY,
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

/// Writes the RuntimeClass manifest (`yaml`) where `kubectl apply -f` finds it.
pub fn manifests_step(setup: &Setup, yaml: &str, state: &mut NodeState) -> Result<Step, StepError> {
    let root = setup.root.as_path();
    let profile = setup.profile;
    let host_file = Path::new(MANIFEST_DIR).join(format!("{}.yaml", profile.handler()));
    let mut step = Step::new("runtimeclass", "");
    if state.manifests.as_ref() != Some(&host_file) {
        state.manifests = Some(host_file.clone());
        setup.record_intent(state)?;
    }
    let changed = put(
        &resolve(root, &host_file)?,
        yaml,
        setup.dry_run(),
        &mut step,
    )?;
    step.result = format!(
        "{} {} (the RuntimeClass): apply with kubectl apply -f {}",
        match (changed, setup.dry_run()) {
            (false, _) => "up to date",
            (true, true) => "would write",
            (true, false) => "wrote",
        },
        shown(root, &host_file),
        shown(root, &host_file)
    );
    step.notes.push(format!(
        "a sample GPU pod and NFD's NodeFeatureRule are printed on request, not applied with the class: kata-gpu runtimeclass --profile {}",
        profile.name()
    ));
    Ok(step)
}

/// Applies the planned register or unregister (and the restart), as two steps.
pub fn containerd_steps(
    setup: &Setup,
    planned: handler::Planned,
    lock: &NodeLock,
) -> Result<Vec<Step>, StepError> {
    let root = setup.root.as_path();
    let report = handler::apply_one(planned, &setup.request, &setup.apply, root, lock)?;
    let mut step = Step::new(
        "containerd",
        match (report.changed, setup.dry_run()) {
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
pub fn shim_step(setup: &Setup) -> (Step, bool) {
    let root = setup.root.as_path();
    let runtime_path = setup.request.spec.runtime_path.as_deref();
    let containerd = Path::new("containerd");
    let mut step = Step::new("shim", "");
    let mut found_ours = true;
    match crate::shims::our_shim(root, setup.profile, containerd, runtime_path) {
        Ok(found) => {
            step.result = format!("containerd will run {}", shown(root, &found.path));
            match found.version {
                Ok(v) if crate::shims::same_version(&v) => step.notes.push(v),
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
    match crate::shims::kata_shim(&crate::shims::settings(setup.profile, root), root) {
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
pub fn base_config(setup: &Setup) -> Result<Option<(String, String)>, StepError> {
    let root = setup.root.as_path();
    if let Some(src) = &setup.artifacts {
        let (at, text) = kata_gpu_artifacts::read_base_config(src, &InstallOptions::default())?;
        return Ok(Some((at.display().to_string(), text)));
    }
    let config = kata_gpu_artifacts::layout::current_config_path(
        &setup.artifacts_root,
        setup.profile.handler(),
    );
    Ok(fsio::read_config(&under(root, &config))?.map(|t| (shown(root, &config), t)))
}
