//! `kata-gpu containerd register|unregister`: the containerd patcher alone, with the
//! optional restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use kata_gpu_containerd_config::{daemon, ConfigVersion, HandlerSpec};
use kata_gpu_plan::Profile;
use serde::Serialize;

use crate::node_state::{shown, NodeLock, NodeState};
use crate::registration::{apply, plan_register, socket, Plan, Request};
use crate::unregistration::plan_unregister;
use crate::{Global, Outcome};
use kata_gpu_containerd_config::cri as cri_probe;

/// The `containerd` subcommands.
#[derive(Debug, Subcommand)]
pub enum ContainerdCommand {
    /// Register the profile's runtime handler in containerd's config (in place, or as a
    /// drop-in with --drop-in).
    Register(RegisterArgs),
    /// Remove exactly what register added: the handler, the parents it created, the
    /// imports entry, the drop-in file.
    Unregister(RegisterArgs),
}

/// Where and what to register; shared with `install`.
#[derive(Debug, Clone, clap::Args)]
pub struct ContainerdArgs {
    /// Drop-in mode: write our own file into this directory and list it in the config's
    /// imports (k3s/rke2: their config-v3.toml.d / config.toml.d, already imported).
    #[arg(long, value_name = "DIR")]
    pub drop_in: Option<PathBuf>,
    /// The config version to write into an empty or missing file or a k3s/rke2 template
    /// (default: what the file says, else what `containerd --version` writes).
    #[arg(long, value_name = "N", value_parser = parse_version)]
    pub config_version: Option<ConfigVersion>,
    /// runtime_path: the shim binary, when containerd should not look it up on PATH.
    #[arg(long, value_name = "PATH")]
    pub runtime_path: Option<String>,
    /// snapshotter for this handler.
    #[arg(long, value_name = "NAME")]
    pub snapshotter: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

impl ContainerdArgs {
    /// The arguments of a command that only removes (uninstall): nothing of the handler's
    /// shape, the common ones as given.
    pub fn removal(common: CommonArgs) -> ContainerdArgs {
        ContainerdArgs {
            drop_in: None,
            config_version: None,
            runtime_path: None,
            snapshotter: None,
            common,
        }
    }
}

/// What every command that changes containerd's config shares, install and uninstall
/// alike: the store its ConfigPath points into, the restart, the lock, the dry run.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Root of the artifact store; options.ConfigPath is <root>/<handler>/current/configuration.toml.
    #[arg(long, value_name = "DIR", default_value = kata_gpu_artifacts::layout::DEFAULT_ROOT)]
    pub artifacts_root: PathBuf,
    /// Restart containerd (systemctl, or --restart-command) and wait until its socket answers.
    #[arg(long)]
    pub restart: bool,
    /// The command that restarts containerd, run with `sh -c` (default: systemctl restart
    /// UNIT); needed for --restart under --host-root, where kata-gpu runs nothing of the
    /// real host's by itself.
    #[arg(long, value_name = "CMD")]
    pub restart_command: Option<String>,
    /// The systemd unit that runs containerd (k3s: k3s or k3s-agent; rke2: rke2-server or rke2-agent).
    #[arg(long, value_name = "UNIT", default_value = "containerd")]
    pub unit: String,
    /// containerd's socket (default: [grpc] address of the config, else /run/containerd/containerd.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Seconds to wait for containerd's socket to answer after the restart.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub restart_timeout: u64,
    /// Seconds to wait for another installer's lock.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub lock_timeout: u64,
    /// Print the diff of every file it would change, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Arguments of `containerd register|unregister`.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// containerd's config file.
    #[arg(long, value_name = "F", default_value = crate::registration::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The runtime class's profile: snp, tdx or gpu.
    #[arg(long, default_value = "snp")]
    pub profile: Profile,
    #[command(flatten)]
    pub containerd: ContainerdArgs,
}

fn parse_version(s: &str) -> Result<ConfigVersion, String> {
    s.parse::<i64>()
        .ok()
        .and_then(ConfigVersion::from_number)
        .ok_or_else(|| format!("{s:?}: the config versions are 2, 3 and 4"))
}

/// The handler a profile registers.
pub fn handler_spec(profile: Profile, args: &ContainerdArgs) -> HandlerSpec {
    let config_path = kata_gpu_artifacts::layout::current_config_path(
        &args.common.artifacts_root,
        profile.handler(),
    );
    let mut spec = HandlerSpec::new(
        profile.handler(),
        profile.runtime_type(),
        config_path.display().to_string(),
    );
    spec.runtime_path = args.runtime_path.clone();
    spec.snapshotter = args.snapshotter.clone();
    spec
}

/// How containerd restarts on the host under `root`: the command to run (`None` under a
/// `--host-root` with no `--restart-command`: no command of the real host may run for a
/// simulated one) and the line that tells an admin how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartHow {
    /// What `--restart` runs.
    pub argv: Option<Vec<String>>,
    /// The command, or (under a root, without one) what to restart.
    pub line: String,
}

/// How to restart the containerd that reads `config` (as the host sees it) on the host
/// under `root`, run as `unit`, with the admin's own command if `given`.
pub fn restart_how(root: &Path, unit: &str, given: Option<&str>, config: &Path) -> RestartHow {
    match given {
        Some(line) => RestartHow {
            argv: Some(daemon::shell_command(line)),
            line: line.to_owned(),
        },
        None if root == Path::new("/") => RestartHow {
            argv: Some(daemon::restart_command(unit)),
            line: daemon::restart_command_line(unit),
        },
        None => RestartHow {
            argv: None,
            line: format!(
                "restart the containerd that reads {} (the config was written under --host-root {}, \
                 so kata-gpu names no command of the real host; --restart --restart-command CMD runs yours)",
                shown(root, config),
                root.display()
            ),
        },
    }
}

/// Refuses `--restart` under a `--host-root` without `--restart-command`, before anything
/// changes: the real host's `systemctl restart containerd` must never run for a simulated
/// host's config.
pub fn check_restart(args: &CommonArgs, root: &Path) -> anyhow::Result<()> {
    if args.restart && args.restart_command.is_none() && root != Path::new("/") {
        anyhow::bail!(
            "--restart under --host-root {}: kata-gpu runs no restart of the real host's containerd \
             for it; add --restart-command CMD (the command that restarts the containerd reading \
             that root's config), or leave --restart out; nothing was changed",
            root.display()
        );
    }
    Ok(())
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
pub fn plan_one(register: bool, req: &Request, root: &Path) -> anyhow::Result<Planned> {
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

/// Plans and (unless dry-run) applies register or unregister under the node lock, then
/// restarts when asked.
pub fn run_one(
    register: bool,
    req: &Request,
    args: &CommonArgs,
    root: &Path,
) -> anyhow::Result<Report> {
    check_restart(args, root)?;
    let lock = NodeLock::take(root, Duration::from_secs(args.lock_timeout), args.dry_run)?;
    apply_one(plan_one(register, req, root)?, req, args, root, &lock)
}

/// Applies a plan (unless dry-run), then restarts containerd when asked; the caller holds
/// the node lock (taken before the plan read the record).
pub fn apply_one(
    planned: Planned,
    req: &Request,
    args: &CommonArgs,
    root: &Path,
    lock: &NodeLock,
) -> anyhow::Result<Report> {
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
        let waited = daemon::restart(
            argv,
            &socket_path,
            Duration::from_secs(args.restart_timeout),
        )?;
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

/// Prints a report; paths as they are under `root`.
pub fn print(report: &Report, root: &Path, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    for d in &report.diffs {
        print!("{d}");
    }
    let verb = match (report.action, report.diffs.is_empty()) {
        ("register", true) => "registered",
        ("register", false) => "would register",
        (_, true) => "unregistered",
        (_, false) => "would unregister",
    };
    if report.changed {
        let files: Vec<String> = report
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        println!("{verb} {}: {}", report.handler, files.join(", "));
    } else {
        println!(
            "{}: nothing to change in {}",
            report.handler,
            shown(root, &report.config)
        );
    }
    for n in &report.notes {
        println!("note: {n}");
    }
    if report.restarted {
        println!("restarted containerd ({})", report.restart_command);
    } else if report.restart_pending {
        println!(
            "containerd must restart to load it: {}",
            report.restart_command
        );
    }
    Ok(())
}

/// Runs one `containerd` subcommand.
pub fn run(cmd: ContainerdCommand, global: &Global) -> anyhow::Result<Outcome> {
    let (register, args) = match cmd {
        ContainerdCommand::Register(a) => (true, a),
        ContainerdCommand::Unregister(a) => (false, a),
    };
    let spec = handler_spec(args.profile, &args.containerd);
    let c = &args.containerd;
    let req = Request::new(
        &global.host_root,
        Some(&args.config),
        c.drop_in.as_deref(),
        spec,
        c.config_version,
        Some(&c.common.unit),
    );
    let report = run_one(register, &req, &c.common, &global.host_root)?;
    print(&report, &global.host_root, global.json)?;
    Ok(Outcome::Clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_host_restarts_through_systemctl_a_simulated_one_names_only_its_root() {
        let config = Path::new("/etc/containerd/config.toml");
        let real = restart_how(Path::new("/"), "k3s-agent", None, config);
        assert_eq!(real.line, "systemctl restart k3s-agent");
        assert_eq!(real.argv, Some(daemon::restart_command("k3s-agent")));
        let sim = restart_how(Path::new("/sim"), "containerd", None, config);
        assert_eq!(sim.argv, None);
        assert!(
            sim.line
                .starts_with("restart the containerd that reads /sim/etc/containerd/config.toml"),
            "{}",
            sim.line
        );
        assert!(!sim.line.contains("systemctl"), "{}", sim.line);
        let given = restart_how(Path::new("/sim"), "containerd", Some("kill -HUP 1"), config);
        assert_eq!(given.argv, Some(daemon::shell_command("kill -HUP 1")));
        assert_eq!(given.line, "kill -HUP 1");
    }
}
