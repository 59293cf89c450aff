//! `kata-gpu binaries install | remove`: kata-gpu and the shim into `<prefix>/bin`, the
//! shim under every profile's name (the snp name a copy, the others links to it), each
//! replaced atomically so that containerd starting a shim at that moment runs the old
//! binary or the new one, never half of one. What was installed is recorded in
//! `/var/lib/kata-gpu/binaries.json` (written before the files) so that `remove` takes
//! exactly that away.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use kata_gpu_containerd_config::fsio;
use kata_gpu_plan::Profile;

use crate::node_state::{inside, shown, NodeLock, NodeState};
use crate::{Global, Outcome};
use kata_gpu_node::binaries::{check_shim_target, place_shim, planned_files, Record};
use kata_gpu_node::paths::{DEFAULT_PREFIX, RECORD};
use kata_gpu_node::shims;

/// `kata-gpu binaries` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BinariesCommand {
    /// Install kata-gpu and the shim (under the snp, tdx and gpu names) into PREFIX/bin,
    /// each replaced atomically; running sandboxes keep the binary they started with.
    Install(InstallArgs),
    /// Remove what `binaries install` installed; refused while a profile is registered.
    Remove(RemoveArgs),
}

/// Arguments of `binaries install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The directory holding the built `kata-gpu` and `containerd-shim-kata-qemu-nvidia-gpu-snp-v2`
    /// (default: the one this kata-gpu runs from).
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
    /// Install into PREFIX/bin.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PREFIX)]
    pub prefix: PathBuf,
    /// Seconds to wait for another installer's lock.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub lock_timeout: u64,
}

/// Arguments of `binaries remove`.
#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// Seconds to wait for another installer's lock.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub lock_timeout: u64,
}

/// A source binary that exists and is an executable file.
fn source(from: &Path, name: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = from.join(name);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(path),
        Ok(_) => bail!("{} is not an executable file; nothing was installed", path.display()),
        Err(e) => bail!(
            "{}: {e}; build it first (cargo build --release -p kata-gpu -p kata-gpu-shim) or pass --from DIR; nothing was installed",
            path.display()
        ),
    }
}

fn install(args: &InstallArgs, root: &Path) -> anyhow::Result<Vec<String>> {
    if !args.prefix.is_absolute() {
        bail!(
            "--prefix {}: the prefix must be absolute (e.g. /usr/local); nothing was installed",
            args.prefix.display()
        );
    }
    let from = match &args.from {
        // Relative to where kata-gpu was started (as `make install` passes it), not to `/`.
        Some(d) => std::path::absolute(d)
            .with_context(|| format!("--from {}: cannot make it absolute", d.display()))?,
        None => std::env::current_exe()
            .context("cannot tell where kata-gpu runs from; pass --from DIR")?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let snp = Profile::Snp.shim_binary();
    let kata_gpu = source(&from, "kata-gpu")?;
    let shim = source(&from, &snp)?;
    // The shim must be ours: a wrong file under its name would be what containerd runs.
    let said = shims::version(Path::new("/"), &shim)
        .map_err(|e| anyhow::anyhow!("{e}; nothing was installed"))?;
    if !said.starts_with(&format!("{snp} ")) {
        bail!(
            "{} -v says {said:?}, not the kata-gpu shim; nothing was installed",
            shim.display()
        );
    }
    let _lock = NodeLock::take(root, Duration::from_secs(args.lock_timeout), false)?;
    let bin = args.prefix.join("bin");
    let files = planned_files(&bin);
    for shim_name in &files[1..] {
        check_shim_target(root, shim_name)?;
    }
    let mut record = Record::load(root)?.unwrap_or_default();
    record.prefix = args.prefix.clone();
    for f in &files {
        if !record.files.contains(f) {
            record.files.push(f.clone());
        }
    }
    record.save(root)?;
    let bin_real = inside(root, &bin)?;
    kata_gpu_fsutil::create_dirs(&bin_real, 0o755)
        .with_context(|| format!("cannot create {}", bin_real.display()))?;
    let mut said_lines = Vec::new();
    let real = inside(root, &files[0])?;
    kata_gpu_fsutil::copy_atomic(&kata_gpu, &real, 0o755).with_context(|| {
        format!(
            "cannot install {} as {}",
            kata_gpu.display(),
            real.display()
        )
    })?;
    place_shim(root, &shim, &files[1])?;
    for dst in &files[..2] {
        said_lines.push(format!("installed {}", shown(root, dst)));
    }
    for link in &files[2..] {
        let real = inside(root, link)?;
        kata_gpu_fsutil::symlink_atomic(Path::new(&snp), &real)
            .with_context(|| format!("cannot link {}", real.display()))?;
        said_lines.push(format!("linked    {} -> {snp}", shown(root, link)));
    }
    said_lines.push(format!("shim:     {said}"));
    if !shims::shim_dirs(root, Path::new("containerd")).contains(&bin) {
        said_lines.push(format!(
            "warning:  {} is not on containerd's PATH ({}): containerd will not find the shim there; \
             pick a prefix on it, or register with --runtime-path {}",
            bin.display(),
            kata_gpu_node::containerd::containerd_path(root),
            files[1].display()
        ));
    }
    Ok(said_lines)
}

fn remove(args: &RemoveArgs, root: &Path) -> anyhow::Result<Vec<String>> {
    let _lock = NodeLock::take(root, Duration::from_secs(args.lock_timeout), false)?;
    let registered: Vec<String> = NodeState::registered_profiles(root)
        .iter()
        .map(|p| format!("kata-gpu uninstall --profile {}", p.name()))
        .collect();
    if !registered.is_empty() {
        bail!(
            "a profile is still registered with containerd, whose pods need the shim: run {} first; nothing was removed",
            registered.join(", then ")
        );
    }
    let Some(record) = Record::load(root)? else {
        return Ok(vec![format!(
            "nothing to remove: no record in {} (kata-gpu binaries install writes it)",
            shown(root, Path::new(RECORD))
        )]);
    };
    let mut said = Vec::new();
    for f in &record.files {
        if fsio::remove_file(&inside(root, f)?)? {
            said.push(format!("removed {}", shown(root, f)));
        }
    }
    let record_path = inside(root, Path::new(RECORD))?;
    fsio::remove_file(&record_path)?;
    // Leave no empty directory of ours behind (/var/lib/kata-gpu).
    if let Some(dir) = record_path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(said)
}

/// Runs `kata-gpu binaries …`.
pub fn run(cmd: BinariesCommand, global: &Global) -> anyhow::Result<Outcome> {
    let root = &global.host_root;
    let lines = match cmd {
        BinariesCommand::Install(a) => install(&a, root)?,
        BinariesCommand::Remove(a) => remove(&a, root)?,
    };
    if global.json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
    } else {
        for l in &lines {
            println!("{l}");
        }
    }
    Ok(Outcome::Clean)
}
