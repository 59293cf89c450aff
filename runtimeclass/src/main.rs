//! `kata-gpu`: make a node ready for confidential GPU containers, and tell its admin what
//! is wrong when it is not. Every command takes `--host-root` so that it can run against
//! a simulated host, prints text by default and JSON with `--json` (errors too, as
//! `{"error": …}` on stdout), and exits 0 on
//! success, 1 on a finding or refusal, 2 on bad usage.

mod agent_cmd;
mod args;
mod artifacts_cmd;
mod binaries_cmd;
mod cdi_cmd;
mod command_line;
mod containerd_cmd;
mod deploy_cmd;
mod device_plugin_cmd;
mod doctor_cmd;
mod install_cmd;
mod manifests;
mod node_state;
mod plan_alloc;
mod plan_cmd;
mod report_cmd;
mod report_redact;
mod runtimeclass_cmd;
mod sandboxes_cmd;
mod status_cmd;
mod steps;
mod uninstall_cmd;
mod vfio_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Options every command shares.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// Root of the host to act on (a simulated host in tests).
    #[arg(long, global = true, default_value = "/", value_name = "DIR")]
    pub host_root: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Parser)]
#[command(
    name = "kata-gpu",
    version,
    about = "Node set-up for confidential GPU containers with Kata"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Container Device Interface specs: validate, list, and generate the host's.
    #[command(subcommand)]
    Cdi(cdi_cmd::CdiCommand),
    /// Show what a sandbox would get: devices, IOMMU groups, QEMU arguments, Kata overrides.
    Plan(plan_cmd::PlanArgs),
    /// Register the runtime handler in containerd's config, or remove it again.
    #[command(subcommand)]
    Containerd(containerd_cmd::ContainerdCommand),
    /// The RuntimeClass, NodeFeatureRule and sample pod of a profile, as YAML (JSON with --json).
    Runtimeclass(runtimeclass_cmd::RuntimeClassArgs),
    /// Set the node up: artifacts, host CDI spec, containerd registration, restart, manifests.
    Install(args::InstallArgs),
    /// Undo install in the safe order: containerd config, restart, then the rest.
    Uninstall(uninstall_cmd::UninstallArgs),
    /// What is installed, verified, registered and loaded, and whether containerd must restart.
    Status(args::StatusArgs),
    /// The artifact store: install, list, verify, roll back and prune kernel/image/firmware sets.
    #[command(subcommand)]
    Artifacts(artifacts_cmd::ArtifactsCommand),
    /// The node's GPU sandboxes (pod, devices, processes, files) and who holds each GPU;
    /// SANDBOX: how to reach its VM and where its logs are.
    Sandboxes(sandboxes_cmd::SandboxesArgs),
    /// Check that this host can run the profile's pods; --labels: the node labels it deserves.
    Doctor(doctor_cmd::DoctorArgs),
    /// Collect the files to attach to a bug report into a new directory.
    Report(report_cmd::ReportArgs),
    /// Install kata-gpu and the shim (under every profile's name) into PREFIX/bin, or remove them.
    #[command(subcommand)]
    Binaries(binaries_cmd::BinariesCommand),
    /// Bind NVIDIA GPUs and NVSwitches (with their IOMMU groups) to vfio-pci, or hand them back.
    #[command(subcommand)]
    Vfio(vfio_cmd::VfioCommand),
    /// Serve the host's passthrough GPUs and NVSwitches to kubelet as nvidia.com/pgpu and
    /// nvidia.com/nvswitch (a device plugin; runs until SIGTERM).
    DevicePlugin(device_plugin_cmd::DevicePluginArgs),
    /// The objects that run kata-gpu on a cluster, for kubectl apply -f -.
    Deploy(deploy_cmd::DeployArgs),
    /// The node DaemonSet's container: install, label when doctor passes, wait; undo on SIGTERM.
    Agent(agent_cmd::AgentArgs),
    /// Run a command in the host's mount namespace (PID 1's), like nsenter --target 1 --mount.
    #[command(hide = true)]
    HostExec(agent_cmd::HostExecArgs),
}

/// What a command found: success, or findings the user must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything checked is fine.
    Clean,
    /// At least one finding was reported.
    Findings,
}

/// Restores the default SIGPIPE action, so that `kata-gpu … | head` ends quietly like
/// other command-line tools instead of panicking on a closed stdout.
#[allow(unsafe_code)]
fn default_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL installs no
    // handler code, so no async-signal-safety requirement applies.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn main() -> ExitCode {
    default_sigpipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Cdi(cmd) => cdi_cmd::run(cmd, &cli.global),
        Command::Plan(args) => plan_cmd::run(args, &cli.global),
        Command::Containerd(cmd) => containerd_cmd::run(cmd, &cli.global),
        Command::Runtimeclass(args) => runtimeclass_cmd::run(args, &cli.global),
        Command::Install(args) => install_cmd::install(args, &cli.global),
        Command::Uninstall(args) => uninstall_cmd::uninstall(args, &cli.global),
        Command::Status(args) => status_cmd::run(args, &cli.global),
        Command::Artifacts(cmd) => artifacts_cmd::run(cmd, &cli.global),
        Command::Doctor(args) => doctor_cmd::run(args, &cli.global),
        Command::Sandboxes(args) => sandboxes_cmd::run(args, &cli.global),
        Command::Vfio(cmd) => vfio_cmd::run(cmd, &cli.global),
        Command::DevicePlugin(args) => device_plugin_cmd::run(args, &cli.global),
        Command::Binaries(cmd) => binaries_cmd::run(cmd, &cli.global),
        Command::Report(args) => report_cmd::run(args, &cli.global),
        Command::Deploy(args) => deploy_cmd::run(args, &cli.global),
        Command::Agent(args) => agent_cmd::run(args, &cli.global),
        Command::HostExec(args) => agent_cmd::host_exec(args, &cli.global),
    };
    match result {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Findings) => ExitCode::from(1),
        Err(e) if cli.global.json => {
            // A consumer of --json parses stdout: the error is JSON there too.
            let said = command_line::rooted(&command_line::error_line(&e), &cli.global.host_root);
            println!("{}", serde_json::json!({ "error": said }));
            ExitCode::from(1)
        }
        Err(e) => {
            let said = command_line::rooted(&command_line::error_line(&e), &cli.global.host_root);
            eprintln!("kata-gpu: {said}");
            ExitCode::from(1)
        }
    }
}
