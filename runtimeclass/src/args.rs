//! The flag groups more than one command shares (clap): a profile's node (`NodeArgs`),
//! containerd's handler and restart (`ContainerdArgs`, `CommonArgs`), the RuntimeClass
//! (`ManifestArgs`), `status`' query (`StatusArgs`), and `install`'s own (`InstallArgs`),
//! which the install steps read. Commands parse them; the modules below read them.

use std::path::PathBuf;

use kata_gpu_containerd_config::{ConfigVersion, HandlerSpec};
use kata_gpu_manifests::{
    check_quantity, parse_selectors, Options, DEFAULT_CPU_OVERHEAD, DEFAULT_MEMORY_OVERHEAD,
};
use kata_gpu_node::install::Setup;
use kata_gpu_node::registration::handler::{handler_spec, Apply};
use kata_gpu_node::registration::Request;
use kata_gpu_plan::Profile;

/// Arguments of `kata-gpu status`, and what `doctor` asks status.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The runtime class's profile: snp, tdx or gpu.
    #[arg(long, default_value = "snp")]
    pub profile: Profile,
    /// containerd's config file (default: the one registered into, else /etc/containerd/config.toml).
    #[arg(long, value_name = "F")]
    pub containerd_config: Option<PathBuf>,
    /// Root of the artifact store.
    #[arg(long, value_name = "DIR", default_value = kata_gpu_artifacts::layout::DEFAULT_ROOT)]
    pub artifacts_root: PathBuf,
    /// The containerd binary (its directory is where containerd also looks for shims).
    #[arg(long, value_name = "PATH", default_value = "containerd")]
    pub containerd: PathBuf,
    /// containerd's socket, asked over CRI what it serves (default: [grpc] address of the
    /// config, else /run/containerd/containerd.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

impl StatusArgs {
    /// What the node library's `status` is asked.
    pub fn query(&self) -> kata_gpu_node::status::StatusQuery {
        kata_gpu_node::status::StatusQuery {
            profile: self.profile,
            containerd_config: self.containerd_config.clone(),
            artifacts_root: self.artifacts_root.clone(),
            containerd: self.containerd.clone(),
            socket: self.socket.clone(),
        }
    }
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
    /// The handler `profile` registers, shaped by these flags.
    pub fn handler_spec(&self, profile: Profile) -> HandlerSpec {
        handler_spec(
            profile,
            &self.common.artifacts_root,
            self.runtime_path.clone(),
            self.snapshotter.clone(),
        )
    }

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

impl CommonArgs {
    /// How the registration is applied and containerd restarted.
    pub fn apply(&self) -> Apply {
        Apply {
            dry_run: self.dry_run,
            restart: self.restart,
            restart_command: self.restart_command.clone(),
            socket: self.socket.clone(),
            restart_timeout: std::time::Duration::from_secs(self.restart_timeout),
        }
    }
}

fn parse_version(s: &str) -> Result<ConfigVersion, String> {
    s.parse::<i64>()
        .ok()
        .and_then(ConfigVersion::from_number)
        .ok_or_else(|| format!("{s:?}: the config versions are 2, 3 and 4"))
}

/// Where install registers (uninstall builds these from its own, fewer, flags).
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The runtime class's profile: snp, tdx or gpu.
    #[arg(long, default_value = "snp")]
    pub profile: Profile,
    /// containerd's config file.
    #[arg(long, value_name = "F", default_value = kata_gpu_node::containerd::DEFAULT_CONFIG)]
    pub containerd_config: PathBuf,
    #[command(flatten)]
    pub containerd: ContainerdArgs,
}

impl NodeArgs {
    /// What the node's install and uninstall steps are asked, on the host under `root`;
    /// `artifacts` and `kata_gpu` are install's.
    pub fn setup(
        &self,
        root: &std::path::Path,
        artifacts: Option<PathBuf>,
        kata_gpu: Option<PathBuf>,
    ) -> Setup {
        let common = &self.containerd.common;
        Setup {
            root: root.to_path_buf(),
            profile: self.profile,
            artifacts_root: common.artifacts_root.clone(),
            artifacts,
            kata_gpu,
            request: Request::new(
                root,
                Some(&self.containerd_config),
                self.containerd.drop_in.as_deref(),
                self.containerd.handler_spec(self.profile),
                self.containerd.config_version,
                Some(&common.unit),
            ),
            apply: common.apply(),
            lock_timeout: std::time::Duration::from_secs(common.lock_timeout),
        }
    }
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

/// How the RuntimeClass is shaped; shared with `install`.
#[derive(Debug, Clone, clap::Args)]
pub struct ManifestArgs {
    /// overhead.podFixed.memory of the RuntimeClass.
    #[arg(long, value_name = "QUANTITY", default_value = DEFAULT_MEMORY_OVERHEAD)]
    pub overhead_memory: String,
    /// overhead.podFixed.cpu of the RuntimeClass.
    #[arg(long, value_name = "QUANTITY", default_value = DEFAULT_CPU_OVERHEAD)]
    pub overhead_cpu: String,
    /// A node label pods of the class must land on (replaces the profile's default,
    /// feature.node.kubernetes.io/kata-gpu.<profile>-ready=true, which doctor --labels and
    /// the agent set where doctor passes); repeat for several.
    #[arg(long = "node-selector", value_name = "KEY=VALUE")]
    pub node_selector: Vec<String>,
    /// No node selector at all.
    #[arg(long, conflicts_with = "node_selector")]
    pub no_node_selector: bool,
}

impl ManifestArgs {
    /// The manifest options these arguments stand for.
    pub fn options(&self) -> anyhow::Result<Options> {
        check_quantity(&self.overhead_memory)?;
        check_quantity(&self.overhead_cpu)?;
        let node_selector = if self.no_node_selector {
            Some(Vec::new())
        } else if self.node_selector.is_empty() {
            None
        } else {
            Some(parse_selectors(&self.node_selector)?)
        };
        Ok(Options {
            memory_overhead: self.overhead_memory.clone(),
            cpu_overhead: self.overhead_cpu.clone(),
            node_selector,
            gpu_resource: kata_gpu_manifests::DEFAULT_GPU_RESOURCE.to_owned(),
        })
    }
}
