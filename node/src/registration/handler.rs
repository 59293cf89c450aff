//! One handler in containerd's config: the handler a profile registers, one registration
//! planned and applied, and the restart that makes containerd load it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_gpu_containerd_config::cri as cri_probe;
use kata_gpu_containerd_config::{daemon, HandlerSpec};
use kata_gpu_plan::Profile;
use serde::Serialize;

use super::{apply, plan_register, plan_unregister, Plan, RegistrationError, Request};
use crate::containerd::{restart_how, socket};
use crate::record::{NodeLock, NodeState};

/// The handler a profile registers: its runtime type, and the config the artifact set under
/// `artifacts_root` keeps current; `runtime_path` and `snapshotter` as the user gave them.
pub fn handler_spec(
    profile: Profile,
    artifacts_root: &Path,
    runtime_path: Option<String>,
    snapshotter: Option<String>,
) -> HandlerSpec {
    let config_path =
        kata_gpu_artifacts::layout::current_config_path(artifacts_root, profile.handler());
    let mut spec = HandlerSpec::new(
        profile.handler(),
        profile.runtime_type(),
        config_path.display().to_string(),
    );
    spec.runtime_path = runtime_path;
    spec.snapshotter = snapshotter;
    spec
}

/// How a register or unregister is applied and containerd restarted (the command line's
/// `--dry-run`, `--restart` and their companions).
#[derive(Clone, Debug, Default)]
pub struct Apply {
    /// Plan and show the diffs; change nothing.
    pub dry_run: bool,
    /// Restart containerd when the change needs it.
    pub restart: bool,
    /// The command that restarts containerd (else the unit's `systemctl restart`).
    pub restart_command: Option<String>,
    /// containerd's socket (else the one its config names).
    pub socket: Option<PathBuf>,
    /// How long containerd may take to answer after the restart.
    pub restart_timeout: Duration,
}

impl Apply {
    /// Refuses `restart` under a host root without `restart_command`, before anything
    /// changes: the real host's `systemctl restart containerd` must never run for a
    /// simulated host's config.
    pub fn check(&self, root: &Path) -> Result<(), RegistrationError> {
        if self.restart && self.restart_command.is_none() && root != Path::new("/") {
            return Err(RegistrationError::RestartUnderRoot {
                root: root.to_path_buf(),
            });
        }
        Ok(())
    }
}

/// What a register/unregister did, for text and JSON output.
#[derive(Debug, Serialize)]
pub struct Report {
    /// register or unregister.
    pub action: &'static str,
    /// The handler.
    pub handler: String,
    /// The main config.
    pub config: PathBuf,
    /// Whether files changed (or would, with --dry-run).
    pub changed: bool,
    /// The files changed.
    pub files: Vec<PathBuf>,
    /// Unified diffs (with --dry-run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diffs: Vec<String>,
    /// Notes.
    pub notes: Vec<String>,
    /// containerd must restart to see the change.
    pub restart_pending: bool,
    /// The command that restarts it.
    pub restart_command: String,
    /// Whether we restarted it.
    pub restarted: bool,
}

/// A register or unregister planned but not yet applied: `install` plans first, so that a
/// refusal comes before it writes anything, and applies the same plan later.
pub struct Planned {
    register: bool,
    /// The main config the record names (else the one asked for).
    config: PathBuf,
    plan: Plan,
}

/// Plans register or unregister against the recorded state; writes nothing.
pub fn plan_one(register: bool, req: &Request, root: &Path) -> Result<Planned, RegistrationError> {
    let state = NodeState::load(root, &req.spec.name)?;
    if register && state.containerd.is_none() {
        crate::coexist::refuse_foreign_handler(root, &req.config, &req.spec)?;
    }
    let plan = if register {
        plan_register(req, state.containerd.as_ref())?
    } else {
        plan_unregister(req, state.containerd.as_ref())?
    };
    let config = state
        .containerd
        .as_ref()
        .map_or_else(|| req.config.clone(), |c| c.config.clone());
    Ok(Planned {
        register,
        config,
        plan,
    })
}

/// Applies a plan (unless dry-run), then restarts containerd when asked; the caller holds
/// the node lock (taken before the plan read the record).
pub fn apply_one(
    planned: Planned,
    req: &Request,
    args: &Apply,
    root: &Path,
    lock: &NodeLock,
) -> Result<Report, RegistrationError> {
    let Planned {
        register,
        config,
        plan,
    } = planned;
    let handler = req.spec.name.clone();
    let how = restart_how(root, &req.unit, args.restart_command.as_deref(), &config);
    let mut report = Report {
        action: if register { "register" } else { "unregister" },
        handler: handler.clone(),
        config,
        changed: plan.changes_files(),
        files: plan.changes.iter().map(|c| c.path.clone()).collect(),
        diffs: Vec::new(),
        notes: plan.notes.clone(),
        restart_pending: false,
        restart_command: how.line.clone(),
        restarted: false,
    };
    if args.dry_run {
        report.diffs = plan.changes.iter().map(|c| c.diff()).collect();
        report.restart_pending = report.changed;
        return Ok(report);
    }
    let socket_path = socket(root, &report.config, args.socket.as_deref());
    apply(root, &handler, &plan, lock)?;
    let mut state = NodeState::load(root, &handler)?;
    let mut pending = match &state.containerd {
        Some(c) => c.restart_pending,
        None => state.unregistered.is_some(),
    };
    if pending && !args.restart {
        // The running containerd's answer beats the record: restarted by hand since, it
        // already serves (or no longer serves) the handler as the files say.
        if let Ok(served) = cri_probe::loaded_handlers(&socket_path, cri_probe::TIMEOUT) {
            let registered = state.containerd.is_some();
            if served.contains(&handler) == registered {
                pending = false;
                if let Some(c) = state.containerd.as_mut() {
                    c.restart_pending = false;
                }
                state.unregistered = None;
                state.save(root, &handler)?;
                report.notes.push(format!(
                    "the running containerd already {} {handler}: no restart needed",
                    if registered {
                        "serves"
                    } else {
                        "no longer serves"
                    }
                ));
            }
        }
    }
    if let (true, true, Some(argv)) = (pending, args.restart, &how.argv) {
        let waited = daemon::restart(argv, &socket_path, args.restart_timeout)?;
        report.restarted = true;
        report.notes.push(format!(
            "containerd answered {} ms after the restart",
            waited.as_millis()
        ));
        if let Some(c) = state.containerd.as_mut() {
            c.restart_pending = false;
        }
        state.unregistered = None;
        state.save(root, &handler)?;
    }
    report.restart_pending = pending && !report.restarted;
    Ok(report)
}
