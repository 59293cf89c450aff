//! `kata-gpu report --output DIR`: the files to attach to a bug report, copied into one
//! directory (0700: configs may name a KBS or hold an agent policy) — what kata-gpu
//! recorded, what it wrote for containerd, CDI and systemd, the shim's settings, every
//! sandbox's rendered Kata config and plan, and `status` and `doctor` as JSON. Logs are
//! not files kata-gpu owns: the shim's lines are in containerd's log (see the README).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use kata_gpu_plan::Profile;

use crate::node_state::{inside, shown, NodeState, STATE_DIR};
use crate::{shim_check, Global, Outcome};

/// Arguments of `kata-gpu report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The directory to create and fill (it must not exist yet).
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
}

/// Directories whose files go into the report whole, as the host sees them.
const DIRS: [&str; 5] = [
    STATE_DIR,
    kata_gpu_plan::vfio::STATE_DIR,
    "/etc/cdi",
    "/var/run/cdi",
    kata_gpu_artifacts::layout::DEFAULT_SANDBOXES_DIR,
];

/// Copies the file `host` (as the host sees it) into `out`, under its host path.
fn take(root: &Path, host: &Path, out: &Path, taken: &mut Vec<String>) -> anyhow::Result<()> {
    let Ok(real) = inside(root, host) else {
        return Ok(());
    };
    let meta = match fs::metadata(&real) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    if meta.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(&real)?.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            take(root, &host.join(e.file_name()), out, taken)?;
        }
    } else if meta.is_file() {
        let dst = out.join(host.strip_prefix("/").unwrap_or(host));
        kata_gpu_fsutil::create_dirs(dst.parent().unwrap_or(out), 0o700)?;
        fs::copy(&real, &dst).with_context(|| format!("cannot copy {}", real.display()))?;
        taken.push(shown(root, host));
    }
    Ok(())
}

/// Every file a profile's record names: containerd's config, drop-in and backup, the
/// boot unit, and the shim's settings file.
fn named_files(root: &Path, profile: Profile) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(state) = NodeState::load(root, profile.handler()) {
        if let Some(c) = &state.containerd {
            files.push(c.config.clone());
            files.extend(c.drop_in.clone());
        }
        files.extend(state.boot_unit.clone());
    }
    if let Ok((_, Some(settings))) = shim_check::settings(profile, root) {
        files.push(settings);
    }
    files
}

/// Runs `kata-gpu report`.
pub fn run(args: ReportArgs, global: &Global) -> anyhow::Result<Outcome> {
    let root = &global.host_root;
    let out = &args.output;
    if out.exists() {
        bail!(
            "{} exists: name a new directory for the report; nothing was written",
            out.display()
        );
    }
    kata_gpu_fsutil::create_dirs(out, 0o700)
        .with_context(|| format!("cannot create {}", out.display()))?;
    let mut taken = Vec::new();
    for dir in DIRS {
        take(root, Path::new(dir), out, &mut taken)?;
    }
    take(
        root,
        Path::new(crate::binaries_cmd::RECORD),
        out,
        &mut taken,
    )?;
    for profile in Profile::ALL {
        for f in named_files(root, profile) {
            take(root, &f, out, &mut taken)?;
        }
        let status = crate::status_cmd::gather(
            &crate::status_cmd::StatusArgs {
                profile,
                containerd_config: None,
                artifacts_root: PathBuf::from(kata_gpu_artifacts::layout::DEFAULT_ROOT),
                containerd: PathBuf::from("containerd"),
                socket: None,
            },
            root,
        );
        let text = match status {
            Ok(s) => serde_json::to_string_pretty(&s)?,
            Err(e) => serde_json::json!({ "error": format!("{e:#}") }).to_string(),
        };
        let name = format!("status-{}.json", profile.name());
        fs::write(out.join(&name), text + "\n")?;
        taken.push(name);
    }
    fs::write(
        out.join("version.txt"),
        format!("kata-gpu {}\n", env!("CARGO_PKG_VERSION")),
    )?;
    taken.push("version.txt".to_owned());
    taken.sort();
    taken.dedup();
    if global.json {
        println!("{}", serde_json::json!({ "output": out, "files": taken }));
    } else {
        for t in &taken {
            println!("{t}");
        }
        println!(
            "{} file(s) in {}: attach them, with containerd's log (journalctl -u containerd), to the bug report",
            taken.len(),
            out.display()
        );
    }
    Ok(Outcome::Clean)
}
