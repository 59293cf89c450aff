//! `kata-gpu containerd register|unregister`: one handler in containerd's config, through
//! [`kata_gpu_node::registration::handler`], and the report of what changed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use kata_gpu_plan::Profile;

use crate::args::{CommonArgs, ContainerdArgs};
use crate::node_state::{shown, NodeLock};
use crate::{Global, Outcome};
use kata_gpu_node::registration::handler::{apply_one, plan_one, Report};
use kata_gpu_node::registration::Request;

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

/// Arguments of `containerd register|unregister`.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// containerd's config file.
    #[arg(long, value_name = "F", default_value = kata_gpu_node::containerd::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The runtime class's profile: snp, tdx or gpu.
    #[arg(long, default_value = "snp")]
    pub profile: Profile,
    #[command(flatten)]
    pub containerd: ContainerdArgs,
}

/// Runs one `containerd` subcommand.
pub fn run(cmd: ContainerdCommand, global: &Global) -> anyhow::Result<Outcome> {
    let (register, args) = match cmd {
        ContainerdCommand::Register(a) => (true, a),
        ContainerdCommand::Unregister(a) => (false, a),
    };
    let spec = args.containerd.handler_spec(args.profile);
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

/// Plans and (unless dry-run) applies register or unregister under the node lock, then
/// restarts when asked.
pub fn run_one(
    register: bool,
    req: &Request,
    args: &CommonArgs,
    root: &Path,
) -> anyhow::Result<Report> {
    let apply = args.apply();
    apply.check(root)?;
    let lock = NodeLock::take(root, Duration::from_secs(args.lock_timeout), args.dry_run)?;
    Ok(apply_one(
        plan_one(register, req, root)?,
        req,
        &apply,
        root,
        &lock,
    )?)
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
