//! `kata-gpu agent`: what the node DaemonSet's container runs. It installs the shim and
//! runs `kata-gpu install`, restarts containerd only when it has not loaded its changed
//! config (`kata-gpu status`), runs `kata-gpu doctor` every `--recheck-every` seconds
//! until it passes (saying what it waits for), labels the node then, and waits; on SIGTERM or SIGINT it removes the
//! label, runs `kata-gpu uninstall` (the config comes back byte for byte) and removes the
//! shim. Each step is this same binary run as a child with the same `--host-root`, so the
//! agent adds no second way of doing what the commands do.
//!
//! The label goes through Node Feature Discovery's local source (a file in its
//! `features.d` directory, which the GPU Operator's NFD reads with `nvidia.com` allowed):
//! the pod needs no API credentials and no RBAC on nodes at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context};
use kata_gpu_containerd_config::fsio;
use kata_gpu_plan::Profile;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::time::{Duration, Instant};

use crate::node_state::inside;
use crate::{Global, Outcome};

/// NFD's local feature files, as the host sees them.
pub const FEATURES_DIR: &str = "/etc/kubernetes/node-feature-discovery/features.d";

/// Where each agent marks that it is changing the node (one file a profile, on the tmpfs
/// `/run`, beside the shim's state directory and not in it: no sandbox's), so that the agents of several profiles, which start together, restart
/// containerd once between them: an agent restarts it only once no other agent is mid-change.
pub const CHANGING_DIR: &str = "/run/kata-gpu-agents";
/// How long an agent waits for the others to finish changing the node before it restarts
/// containerd all the same.
const SETTLE: Duration = Duration::from_secs(120);
/// A mark older than this is a killed agent's, and waits for nothing.
const STALE: Duration = Duration::from_secs(600);

/// This agent's mark in [`CHANGING_DIR`] while it installs or uninstalls; gone on drop.
struct Changing(PathBuf);

impl Changing {
    fn mark(args: &AgentArgs, global: &Global) -> anyhow::Result<Changing> {
        let file = inside(
            &global.host_root,
            &Path::new(CHANGING_DIR).join(args.profile.name()),
        )?;
        if let Some(dir) = file.parent() {
            kata_gpu_fsutil::create_dirs(dir, 0o755)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        kata_gpu_fsutil::write_atomic(&file, std::process::id().to_string().as_bytes(), 0o644)
            .with_context(|| format!("cannot write {}", file.display()))?;
        Ok(Changing(file))
    }
}

impl Drop for Changing {
    /// Removes the mark, and the directory once no agent marks anything in it.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The other profiles whose agents are changing the node now (their marks, younger than
/// [`STALE`]).
fn others_changing(args: &AgentArgs, global: &Global) -> Vec<String> {
    let Ok(dir) = inside(&global.host_root, Path::new(CHANGING_DIR)) else {
        return Vec::new();
    };
    let mut others: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_str() != Some(args.profile.name()))
                .filter(|e| {
                    e.metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age < STALE)
                })
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    others.sort();
    others
}

/// Arguments of `kata-gpu agent`; what follows `--` goes to both install and uninstall.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The runtime class's profile: snp, tdx or gpu.
    #[arg(long, default_value = "snp")]
    pub profile: Profile,
    /// The artifact set for install (a directory, tarball or OCI layout, as this process
    /// sees it); default: the profile's set in the image (under --image-sets), if it has one.
    #[arg(long, value_name = "SRC")]
    pub artifacts: Option<PathBuf>,
    /// Where the image keeps its artifact sets: DIR/PROFILE (a directory or OCI layout) or
    /// DIR/PROFILE.tar (`make image ARTIFACTS=…` puts them there).
    #[arg(long, value_name = "DIR", default_value = kata_gpu_fsutil::layout::IMAGE_SETS_DIR)]
    pub image_sets: PathBuf,
    /// Where the image keeps the shim (this process's view).
    #[arg(long, value_name = "DIR", default_value = "/usr/local/bin")]
    pub from: PathBuf,
    /// Where containerd finds the shim on the host (a host path, under --host-root).
    #[arg(long, value_name = "DIR", default_value = "/usr/local/bin")]
    pub shim_dir: PathBuf,
    /// Restart containerd (systemctl restart UNIT in the host's mount namespace, as
    /// `nsenter --target 1 --mount` does) when it has not loaded its changed config.
    #[arg(long)]
    pub restart_containerd: bool,
    /// containerd's systemd unit: containerd, or k3s's or rke2's, which run it
    /// (the only units `host-exec` restarts).
    #[arg(long, value_name = "UNIT", default_value = "containerd", value_parser = containerd_unit)]
    pub unit: String,
    /// Label the node (through NFD's features.d) when doctor passes.
    #[arg(long)]
    pub label: bool,
    /// Until doctor passes, run it again every SECONDS (Kata's shim or the GPUs' binding
    /// may arrive after the agent starts).
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub recheck_every: u64,
    /// The Kata runtime behind the proxy, for install (`kata-gpu install --kata-runtime`):
    /// go (Kata's Go shim) or rs (runtime-rs); uninstall removes what install wrote.
    #[arg(long, value_name = "go|rs", default_value = "go")]
    pub kata_runtime: kata_gpu_configs::KataRuntime,
    /// A profile whose agent runs beside this one (the node DaemonSet's other agent
    /// containers); repeat for several. containerd is restarted once those have changed the
    /// node too (installed, or uninstalled), so that one restart loads every change.
    #[arg(long = "peer-profile", value_name = "P")]
    pub peers: Vec<Profile>,
    /// Arguments for both install and uninstall, e.g. --containerd-config F.
    #[arg(last = true, value_name = "ARGS")]
    pub rest: Vec<String>,
}

/// Arguments of the hidden `kata-gpu host-exec`: `nsenter --target 1 --mount` for an
/// image that has no nsenter, for one command only: `systemctl restart UNIT` of
/// containerd's unit ([`CONTAINERD_UNITS`]), which is all the agent runs on the host.
#[derive(Debug, clap::Args)]
pub struct HostExecArgs {
    /// The command and its arguments: `systemctl restart UNIT`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// The units containerd runs in: its own, and k3s's and rke2's (which run it as a child).
/// `.service` may follow each.
pub const CONTAINERD_UNITS: [&str; 5] = [
    "containerd",
    "k3s",
    "k3s-agent",
    "rke2-server",
    "rke2-agent",
];

/// `unit` when it is one of [`CONTAINERD_UNITS`], else why not (a clap value parser).
pub fn containerd_unit(unit: &str) -> Result<String, String> {
    let name = unit.strip_suffix(".service").unwrap_or(unit);
    if CONTAINERD_UNITS.contains(&name) {
        Ok(unit.to_owned())
    } else {
        Err(format!(
            "{unit} is not containerd's unit: name containerd, k3s, k3s-agent, rke2-server or \
             rke2-agent (.service or not)"
        ))
    }
}

/// Runs the agent.
pub fn run(args: AgentArgs, global: &Global) -> anyhow::Result<Outcome> {
    // Blocked before anything changes: a SIGTERM during install is taken once it is done,
    // and then undoes it. Blocking is also what lets the agent be PID 1 of its container
    // (no shared PID namespace): the kernel drops a signal PID 1 has no handler for, but
    // queues a blocked one. Children start with an empty mask (std resets it).
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block().context("cannot block SIGTERM")?;
    let root = &global.host_root;
    // Labels follow doctor: a file an agent killed by SIGKILL left stays off until doctor
    // passes again.
    let labels = labels_file(&args, global)?;
    if std::fs::symlink_metadata(&labels).is_ok() {
        fsio::remove_file(&labels)?;
        say(&format!(
            "removed the node labels a previous agent left ({}); they come back once doctor passes",
            labels.display()
        ));
    }
    let (shim, created) = install_shim(&args, root)?;
    say(&format!("installed {}", shim.display()));
    let mut install = vec![
        "install".to_owned(),
        "--kata-runtime".to_owned(),
        args.kata_runtime.name().to_owned(),
    ];
    if let Some(src) = artifact_set(&args) {
        say(&format!("artifact set {}", src.display()));
        install.extend(["--artifacts".to_owned(), src.display().to_string()]);
    }
    let changing = Changing::mark(&args, global)?;
    if let Err(e) = step(&args, global, &install) {
        // A shim no registration names is not left behind.
        if created {
            fsio::remove_file(&inside(root, &shim)?)?;
        }
        return Err(e);
    }
    drop(changing);
    restart_if_owed(&args, global, true)?;
    let (labelled, signal) = until_ready(&args, global, &stop)?;
    say(&format!("{signal}: uninstalling"));
    if let Some(file) = labelled {
        fsio::remove_file(&file)?;
        say(&format!("removed the node labels ({})", file.display()));
    }
    let changing = Changing::mark(&args, global)?;
    step(&args, global, &["uninstall".to_owned()])?;
    drop(changing);
    restart_if_owed(&args, global, false)?;
    fsio::remove_file(&inside(root, &shim)?)?;
    say(&format!("removed {}", shim.display()));
    stop.thread_unblock().context("cannot unblock SIGTERM")?;
    Ok(Outcome::Clean)
}

/// The set to install: `--artifacts`, else the profile's set in the image, if any.
fn artifact_set(args: &AgentArgs) -> Option<PathBuf> {
    args.artifacts.clone().or_else(|| {
        kata_gpu_fsutil::layout::image_set_paths(&args.image_sets, args.profile.name())
            .into_iter()
            .find(|p| p.exists())
    })
}

fn say(line: &str) {
    println!("kata-gpu agent: {line}");
}

/// Installs the profile's shim from the image on the host as `kata-gpu binaries install`
/// does (one rename; refused over a file of its name that is not a kata-gpu shim), unless
/// it is there already; its host path, and whether there was none before.
fn install_shim(args: &AgentArgs, root: &Path) -> anyhow::Result<(PathBuf, bool)> {
    let name = args.profile.shim_binary();
    let from = args.from.join(&name);
    let bytes = std::fs::read(&from).with_context(|| format!("cannot read {}", from.display()))?;
    // The image's shim must be this kata-gpu's, under the profile's name: it is what
    // containerd will run for every pod of the class.
    let said = kata_gpu_node::shims::version(Path::new("/"), &from)
        .map_err(|e| anyhow::anyhow!("{e}; the image is broken; nothing was installed"))?;
    if !said.starts_with(&format!("{name} ")) || !kata_gpu_node::shims::same_version(&said) {
        bail!(
            "{} -v says {said:?}, not the kata-gpu {} shim for {}; the image is broken; nothing was installed",
            from.display(),
            env!("CARGO_PKG_VERSION"),
            args.profile.handler()
        );
    }
    let host = args.shim_dir.join(&name);
    let real = inside(root, &host)?;
    let created = std::fs::symlink_metadata(&real).is_err();
    if std::fs::read(&real).ok().as_deref() != Some(&bytes[..]) {
        kata_gpu_node::binaries::place_shim(root, &from, &host)?;
    }
    Ok((host, created))
}

fn me(global: &Global) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("cannot find this binary")?;
    let mut c = Command::new(exe);
    c.arg("--host-root").arg(&global.host_root);
    Ok(c)
}

fn shown(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `kata-gpu <command> --json --profile P <rest>` and prints its steps.
fn step(args: &AgentArgs, global: &Global, command: &[String]) -> anyhow::Result<()> {
    let out = me(global)?
        .args(command)
        .args(["--json", "--profile", args.profile.name()])
        .args(&args.rest)
        .output()
        .with_context(|| format!("cannot run kata-gpu {}", command[0]))?;
    if !out.status.success() {
        bail!("kata-gpu {} failed: {}", command[0], shown(&out).trim());
    }
    let steps: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("kata-gpu {} printed no steps: {}", command[0], shown(&out)))?;
    for s in &steps {
        let (name, result) = (
            s["step"].as_str().unwrap_or("?"),
            s["result"].as_str().unwrap_or("?"),
        );
        say(&format!("{} {name}: {result}", command[0]));
    }
    Ok(())
}

/// Whether the running containerd has not loaded the config as it is now: `kata-gpu
/// status` compares when the config changed with when containerd started (the host's
/// /proc), so an agent that died between a change and its restart restarts it next time,
/// and one that changed nothing leaves containerd alone.
fn restart_owed(args: &AgentArgs, global: &Global) -> anyhow::Result<bool> {
    let out = me(global)?
        .args(["status", "--json", "--profile", args.profile.name()])
        .output()
        .context("cannot run kata-gpu status")?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("kata-gpu status printed no status: {}", shown(&out)))?;
    Ok(status["restart_pending"] == true)
}

/// The peers (`--peer-profile`) whose change is not made yet: registered with containerd
/// when `installed` is wanted, still registered when it is not.
fn peers_behind(args: &AgentArgs, global: &Global, installed: bool) -> Vec<String> {
    args.peers
        .iter()
        .filter(|p| {
            crate::node_state::NodeState::load(&global.host_root, p.handler())
                .map_or(true, |s| s.containerd.is_some() != installed)
        })
        .map(|p| p.name().to_owned())
        .collect()
}

/// Restarts containerd in the host's mount namespace when it has not loaded its config
/// and the agent may; else says the restart is owed. It first waits (up to [`SETTLE`]) for
/// the other profiles' agents to finish changing the node (their marks gone, and each
/// `--peer-profile` `installed` or uninstalled as this agent is), then decides under the
/// node lock: the first agent restarts, and the others find containerd has loaded their
/// change too.
fn restart_if_owed(args: &AgentArgs, global: &Global, installed: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE;
    let mut said = false;
    loop {
        let mut others = others_changing(args, global);
        for p in peers_behind(args, global, installed) {
            if !others.contains(&p) {
                others.push(p);
            }
        }
        if others.is_empty() || Instant::now() >= deadline {
            break;
        }
        if !said {
            say(&format!(
                "waiting for the agent(s) of {} to finish, to restart containerd once for all",
                others.join(", ")
            ));
            said = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _lock =
        crate::node_state::NodeLock::take(&global.host_root, Duration::from_secs(60), false)?;
    if !restart_owed(args, global)? {
        return Ok(());
    }
    if !args.restart_containerd {
        say(&format!(
            "containerd has not loaded its changed config; restart it (systemctl restart {}), or run with --restart-containerd",
            args.unit
        ));
        return Ok(());
    }
    let out = me(global)?
        .args(["host-exec", "--", "systemctl", "restart", &args.unit])
        .output()
        .context("cannot run systemctl")?;
    if !out.status.success() {
        bail!(
            "systemctl restart {} failed: {}",
            args.unit,
            shown(&out).trim()
        );
    }
    say(&format!("restarted {}", args.unit));
    Ok(())
}

/// Runs doctor until it passes (labelling the node then, with `--label`), saying what it
/// waits for whenever that changes, and then waits for SIGTERM or SIGINT: the labels file
/// written, if any, and the signal. A signal while not ready ends the wait unlabelled.
fn until_ready(
    args: &AgentArgs,
    global: &Global,
    stop: &SigSet,
) -> anyhow::Result<(Option<PathBuf>, Signal)> {
    let signals = SignalFd::with_flags(stop, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("cannot watch for SIGTERM")?;
    let mut said = String::new();
    loop {
        match check(args, global)? {
            Ok(labels) => {
                let labelled = if args.label {
                    Some(label(args, global, labels)?)
                } else {
                    None
                };
                say("ready; waiting for SIGTERM to uninstall");
                let signal = stop.wait().context("cannot wait for a signal")?;
                return Ok((labelled, signal));
            }
            Err(waits) => {
                if waits != said {
                    say(&format!(
                        "not ready, checking again in {}s; waiting for: {waits}",
                        args.recheck_every
                    ));
                    said = waits;
                }
            }
        }
        let until = Instant::now() + Duration::from_secs(args.recheck_every);
        while Instant::now() < until {
            if let Some(info) = signals.read_signal().context("cannot read a signal")? {
                let signal = i32::try_from(info.ssi_signo)
                    .ok()
                    .and_then(|n| Signal::try_from(n).ok())
                    .unwrap_or(Signal::SIGTERM);
                return Ok((None, signal));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs doctor: the labels `doctor --labels` finds when every check passes, else the
/// failing checks (doctor's `FAIL` lines, each with its fix) on one line.
fn check(
    args: &AgentArgs,
    global: &Global,
) -> anyhow::Result<Result<BTreeMap<String, String>, String>> {
    let profile = ["--profile", args.profile.name()];
    // `doctor --labels` runs every check and prints labels only when all pass; the plain
    // report runs only to say why they did not.
    let found = me(global)?
        .args(["doctor", "--labels", "--json"])
        .args(profile)
        .output()
        .context("cannot run doctor --labels")?;
    if found.status.success() {
        let labels: BTreeMap<String, String> = serde_json::from_slice(&found.stdout)
            .with_context(|| format!("doctor --labels printed no labels: {}", shown(&found)))?;
        return Ok(Ok(labels));
    }
    let doctor = me(global)?
        .arg("doctor")
        .args(profile)
        .output()
        .context("cannot run doctor")?;
    let text = shown(&doctor);
    let fails: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("FAIL"))
        .map(str::trim)
        .collect();
    Ok(Err(if fails.is_empty() {
        format!(
            "kata-gpu doctor to pass: {}",
            text.trim().replace('\n', "; ")
        )
    } else {
        fails.join("; ")
    }))
}

/// Writes the labels the node gets when doctor passes: what `doctor --labels` found, and
/// the node selector of the profile's RuntimeClass, so that its pods land only here.
fn label(
    args: &AgentArgs,
    global: &Global,
    mut labels: BTreeMap<String, String>,
) -> anyhow::Result<PathBuf> {
    let class = kata_gpu_manifests::runtime_class(args.profile, &Default::default());
    labels.extend(
        class
            .scheduling
            .and_then(|s| s.node_selector)
            .unwrap_or_default(),
    );
    let text: String = labels.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let host = labels_host_path(args);
    let real = inside(&global.host_root, &host)?;
    if let Some(dir) = real.parent() {
        kata_gpu_fsutil::create_dirs(dir, 0o755)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    kata_gpu_fsutil::write_atomic(&real, text.as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", real.display()))?;
    say(&format!(
        "labelled through {}: {}",
        host.display(),
        text.trim().replace('\n', ", ")
    ));
    Ok(real)
}

/// The profile's NFD label file, as the host sees it.
fn labels_host_path(args: &AgentArgs) -> PathBuf {
    Path::new(FEATURES_DIR).join(format!("kata-gpu-{}", args.profile.name()))
}

/// The profile's NFD label file under the host root.
fn labels_file(args: &AgentArgs, global: &Global) -> anyhow::Result<PathBuf> {
    inside(&global.host_root, &labels_host_path(args))
}

/// Runs `systemctl restart UNIT` (containerd's) in the mount namespace of the host's PID 1,
/// as `--host-root` shows it (`/host/proc/1/ns/mnt` in the DaemonSet: the host's `/proc`
/// comes with its `/`, so the pod needs no `hostPID`); refuses any other argv before it
/// enters the namespace. So `host-exec` is no general way into the host; but whoever may
/// `kubectl exec` into the node DaemonSet's pods (`pods/exec` in its namespace) is root on
/// the node anyway: the agent's container is privileged and holds the host's `/`.
pub fn host_exec(args: HostExecArgs, global: &Global) -> anyhow::Result<Outcome> {
    use std::os::unix::process::CommandExt;
    let allowed = matches!(
        args.command.as_slice(),
        [program, verb, unit] if program == "systemctl" && verb == "restart" && containerd_unit(unit).is_ok()
    );
    if !allowed {
        bail!(
            "host-exec runs only `systemctl restart UNIT` for containerd's unit (containerd, \
             k3s, k3s-agent, rke2-server or rke2-agent, .service or not), not `{}`; run \
             anything else on the node itself",
            args.command.join(" ")
        );
    }
    let path = inside(&global.host_root, Path::new("/proc/1/ns/mnt"))?;
    let ns = std::fs::File::open(&path).with_context(|| {
        format!(
            "cannot open {} (the host's /proc under --host-root)",
            path.display()
        )
    })?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNS).with_context(|| {
        format!(
            "cannot enter the mount namespace {} names (a privileged container can)",
            path.display()
        )
    })?;
    let (program, rest) = args.command.split_first().context("no command")?;
    let err = Command::new(program).args(rest).exec();
    Err(err).with_context(|| format!("cannot run {program}"))
}
