//! `kata-gpu report --output DIR`: the files to attach to a bug report, copied into one
//! directory (0700: configs may name a KBS or hold an agent policy) — what kata-gpu
//! recorded, what it wrote for containerd, CDI and systemd, the shim's settings, every
//! sandbox's rendered Kata config and plan, and `status` and `doctor` as JSON. Logs are
//! not files kata-gpu owns: the shim's lines are in containerd's log (see the README).
//!
//! What is copied never holds a secret value or a file a link points at: values under
//! secret keys are redacted ([`crate::report_redact`]), a link is named and not followed
//! (in the last component or below a copied directory), and the report lists both, with
//! key paths and file names only, in `redacted.txt` and on stdout.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use kata_gpu_plan::Profile;

use crate::node_state::{inside, shown, NodeState, STATE_DIR};
use crate::report_redact::{self, Redaction};
use crate::{Global, Outcome};
use kata_gpu_node::shims;

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

/// What the report did beside copying: keys redacted, links not followed, files withheld.
#[derive(Debug, Default)]
struct Taken {
    /// The files in the report, as the host names them (or the report's own names).
    files: Vec<String>,
    /// (file, dotted key path) of every value redacted.
    redacted: Vec<(String, String)>,
    /// Paths not followed because they are symlinks.
    links: Vec<String>,
    /// (file, why) of files left out because their secrets could not be found by key.
    withheld: Vec<(String, String)>,
}

/// Opens `name` in the directory `dir` (or the path `name` when `dir` is `None`) without
/// following a symlink in its last component: lstat first, then `O_NOFOLLOW` and the
/// open file's own fstat, which must be the file lstat saw. `Ok(None)` for anything but a
/// directory or a regular file (a FIFO is never opened, so it cannot block the report).
fn open_nofollow(dir: Option<&OwnedFd>, name: &Path) -> nix::Result<Option<(OwnedFd, bool)>> {
    use nix::fcntl::{openat, AtFlags, OFlag, AT_FDCWD};
    use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
    let lstat = match dir {
        Some(d) => fstatat(d, name, AtFlags::AT_SYMLINK_NOFOLLOW)?,
        None => fstatat(AT_FDCWD, name, AtFlags::AT_SYMLINK_NOFOLLOW)?,
    };
    let kind = SFlag::from_bits_truncate(lstat.st_mode) & SFlag::S_IFMT;
    if kind == SFlag::S_IFLNK {
        return Err(nix::errno::Errno::ELOOP);
    }
    if kind != SFlag::S_IFDIR && kind != SFlag::S_IFREG {
        return Ok(None);
    }
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = match dir {
        Some(d) => openat(d, name, flags, Mode::empty())?,
        None => openat(AT_FDCWD, name, flags, Mode::empty())?,
    };
    let now = fstat(&fd)?;
    if (now.st_dev, now.st_ino) != (lstat.st_dev, lstat.st_ino) {
        // Replaced between the lstat and the open: not what was looked at.
        return Ok(None);
    }
    Ok(Some((fd, kind == SFlag::S_IFDIR)))
}

/// The entries of the open directory `fd`, sorted.
fn entries(fd: &OwnedFd) -> std::io::Result<Vec<std::ffi::OsString>> {
    use std::os::fd::AsRawFd;
    // The fd's own directory, whatever its path now names.
    let mut names: Vec<_> = fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    names.sort();
    Ok(names)
}

/// Copies `host` (an open file or directory `fd`, as the host sees it) into `out`, under
/// its host path: a directory's entries each opened from its fd, never through a link.
fn copy_open(
    root: &Path,
    host: &Path,
    fd: OwnedFd,
    is_dir: bool,
    out: &Path,
    taken: &mut Taken,
) -> anyhow::Result<()> {
    if is_dir {
        for name in entries(&fd).with_context(|| format!("cannot list {}", shown(root, host)))? {
            let here = host.join(&name);
            match open_nofollow(Some(&fd), Path::new(&name)) {
                Ok(Some((child, dir))) => copy_open(root, &here, child, dir, out, taken)?,
                Ok(None) => {}
                Err(nix::errno::Errno::ELOOP) => taken.links.push(shown(root, &here)),
                Err(_) => {}
            }
        }
        return Ok(());
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut fs::File::from(fd), &mut bytes)
        .with_context(|| format!("cannot read {}", shown(root, host)))?;
    let name = host.file_name().unwrap_or_default().to_string_lossy();
    let file = shown(root, host);
    let bytes = match report_redact::redact(&name, &bytes) {
        Redaction::Clean => bytes,
        Redaction::Redacted(bytes, keys) => {
            taken
                .redacted
                .extend(keys.into_iter().map(|k| (file.clone(), k)));
            bytes
        }
        Redaction::Withheld(why) => {
            taken.withheld.push((file, why));
            return Ok(());
        }
    };
    let dst = out.join(host.strip_prefix("/").unwrap_or(host));
    kata_gpu_fsutil::create_dirs(dst.parent().unwrap_or(out), 0o700)?;
    kata_gpu_fsutil::write_atomic(&dst, &bytes, 0o600)
        .with_context(|| format!("cannot write {}", dst.display()))?;
    taken.files.push(file);
    Ok(())
}

/// Copies the file or directory `host` (as the host sees it) into `out`, under its host
/// path. Links among its parents resolve inside the root, as the host sees them
/// (`/var/run` -> `/run`); the path itself and everything below it is never followed
/// through a link: a link there is named in the report, not copied.
fn take(root: &Path, host: &Path, out: &Path, taken: &mut Taken) -> anyhow::Result<()> {
    let Ok(real) = inside(root, host) else {
        return Ok(());
    };
    match open_nofollow(None, &real) {
        Ok(Some((fd, is_dir))) => copy_open(root, host, fd, is_dir, out, taken),
        Ok(None) => Ok(()),
        Err(nix::errno::Errno::ELOOP) => {
            taken.links.push(shown(root, host));
            Ok(())
        }
        Err(_) => Ok(()),
    }
}

/// Every file a profile's record names: containerd's config, drop-in and backup, the
/// boot unit, and the shim's settings file.
fn named_files(root: &Path, profile: Profile) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(state) = NodeState::load(root, profile.handler()) {
        if let Some(c) = &state.containerd {
            files.push(c.config.clone());
            files.extend(c.drop_in.clone());
            files.extend(c.backup.clone());
        }
        files.extend(state.boot_unit.clone());
    }
    if let Ok((_, Some(settings))) = shims::settings(profile, root) {
        files.push(settings);
    }
    files
}

/// `kata-gpu doctor --json --profile P` on the same host, as it printed it (this binary run
/// as a child, so a check that panics or hangs past its bounds costs the report only
/// this file); its exit status is the findings, not a failure of the report.
fn doctor(root: &Path, profile: Profile) -> String {
    let run = std::env::current_exe().and_then(|exe| {
        std::process::Command::new(exe)
            .arg("--host-root")
            .arg(root)
            .args(["doctor", "--json", "--profile", profile.name()])
            .stdin(std::process::Stdio::null())
            .output()
    });
    match run {
        Ok(o) if !o.stdout.is_empty() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => serde_json::json!({
            "error": format!("kata-gpu doctor printed nothing: {}", String::from_utf8_lossy(&o.stderr).trim())
        })
        .to_string() + "\n",
        Err(e) => serde_json::json!({ "error": format!("cannot run kata-gpu doctor: {e}") }).to_string() + "\n",
    }
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
    let mut taken = Taken::default();
    for dir in DIRS {
        take(root, Path::new(dir), out, &mut taken)?;
    }
    take(
        root,
        Path::new(kata_gpu_node::paths::RECORD),
        out,
        &mut taken,
    )?;
    for profile in Profile::ALL {
        for f in named_files(root, profile) {
            take(root, &f, out, &mut taken)?;
        }
        let status =
            kata_gpu_node::status::gather(&kata_gpu_node::status::StatusQuery::of(profile), root);
        let text = match status {
            Ok(s) => serde_json::to_string_pretty(&s)?,
            Err(e) => serde_json::json!({ "error": format!("{e:#}") }).to_string(),
        };
        let name = format!("status-{}.json", profile.name());
        fs::write(out.join(&name), text + "\n")?;
        taken.files.push(name);
    }
    for profile in Profile::ALL {
        let name = format!("doctor-{}.json", profile.name());
        fs::write(out.join(&name), doctor(root, profile))?;
        taken.files.push(name);
    }
    fs::write(
        out.join("version.txt"),
        format!(
            "kata-gpu {}\ncommit {}\n",
            env!("CARGO_PKG_VERSION"),
            env!("KATA_GPU_COMMIT")
        ),
    )?;
    taken.files.push("version.txt".to_owned());
    let notes = notes(&taken);
    if !notes.is_empty() {
        fs::write(out.join(NOTES), notes.join("\n") + "\n")?;
        taken.files.push(NOTES.to_owned());
    }
    taken.files.sort();
    taken.files.dedup();
    if global.json {
        let redacted: Vec<_> = taken
            .redacted
            .iter()
            .map(|(file, key)| serde_json::json!({ "file": file, "key": key }))
            .collect();
        let withheld: Vec<_> = taken
            .withheld
            .iter()
            .map(|(file, why)| serde_json::json!({ "file": file, "why": why }))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "output": out,
                "files": taken.files,
                "redacted": redacted,
                "not_followed": taken.links,
                "withheld": withheld,
            })
        );
    } else {
        for t in &taken.files {
            println!("{t}");
        }
        for n in &notes {
            println!("{n}");
        }
        println!(
            "{} file(s) in {}: attach them, with containerd's log (journalctl -u containerd), to the bug report",
            taken.files.len(),
            out.display()
        );
    }
    Ok(Outcome::Clean)
}

/// The report's own list of what it redacted and left out, also printed.
const NOTES: &str = "redacted.txt";

/// One line per key redacted, link not followed and file withheld: names, never values.
fn notes(taken: &Taken) -> Vec<String> {
    let mut lines: Vec<String> = taken
        .redacted
        .iter()
        .map(|(file, key)| format!("redacted {key} in {file}"))
        .collect();
    lines.extend(
        taken
            .links
            .iter()
            .map(|l| format!("not followed: {l} is a symlink")),
    );
    lines.extend(taken.withheld.iter().map(|(file, why)| {
        format!("withheld {file}: {why}, so its secrets cannot be found by key")
    }));
    lines
}
