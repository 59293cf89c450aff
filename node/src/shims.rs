//! The two shims a profile's pods run through, found where they will be run from: ours as
//! containerd finds it (`containerd-shim-<name>-v2` on containerd's PATH or next to
//! containerd, or the handler's `runtime_path`), with the version it reports, and Kata's
//! where our shim's settings name it.

use std::path::{Path, PathBuf};
use std::process::Command;

use kata_gpu_configs::KataRuntime;
use kata_gpu_plan::settings::{DeviceSource, DownstreamKind, Settings, SYSTEM_SETTINGS};
use kata_gpu_plan::Profile;

use crate::paths::{shown, under};

/// Where containerd looks up shim binaries, as the host sees them: its PATH, then the
/// directory of the containerd binary.
pub fn shim_dirs(root: &Path, containerd: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = crate::containerd::containerd_path(root)
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    let containerd_dir = if containerd.is_absolute() {
        containerd.parent().map(Path::to_path_buf)
    } else {
        dirs.iter()
            .find(|d| under(root, &d.join(containerd)).is_file())
            .cloned()
    };
    if let Some(d) = containerd_dir {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// Our shim as containerd will run it for a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OurShim {
    /// Where it is, as the host sees it.
    pub path: PathBuf,
    /// What its `-v` printed, or why it could not run.
    pub version: Result<String, String>,
}

/// Finds the profile's shim where containerd will look (`runtime_path` when the handler
/// names one); `Err` says where it looked.
pub fn our_shim(
    root: &Path,
    profile: Profile,
    containerd: &Path,
    runtime_path: Option<&str>,
) -> Result<OurShim, String> {
    let binary = profile.shim_binary();
    let found = match runtime_path {
        Some(p) => Some(PathBuf::from(p)).filter(|p| under(root, p).is_file()),
        None => shim_dirs(root, containerd)
            .iter()
            .map(|d| d.join(&binary))
            .find(|p| under(root, p).is_file()),
    };
    match found {
        Some(path) => Ok(OurShim {
            version: version(root, &path),
            path,
        }),
        None => Err(match runtime_path {
            Some(p) => format!(
                "{} (the handler's runtime_path) does not exist",
                shown(root, Path::new(p))
            ),
            None => format!(
                "{binary} is not on containerd's PATH or next to containerd ({})",
                shim_dirs(root, containerd)
                    .iter()
                    .map(|d| shown(root, d))
                    .collect::<Vec<_>>()
                    .join(":")
            ),
        }),
    }
}

/// What the shim at `path` (as the host sees it) prints for `-v`, on one line.
pub fn version(root: &Path, path: &Path) -> Result<String, String> {
    let out = Command::new(under(root, path))
        .arg("-v")
        .output()
        .map_err(|e| format!("cannot run {} -v: {e}", shown(root, path)))?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && !said.is_empty() {
        Ok(said.lines().next().unwrap_or_default().to_owned())
    } else {
        Err(format!(
            "{} -v failed ({}): {}{}",
            shown(root, path),
            out.status,
            said,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether a shim's `-v` line names this kata-gpu's version (every crate of the workspace,
/// this library, the shim and `kata-gpu`, carries the one version).
pub fn same_version(line: &str) -> bool {
    line.split_whitespace().nth(1) == Some(env!("CARGO_PKG_VERSION"))
}

/// A profile's shim settings as read once, and the file they came from (`None`: the
/// defaults); or, in words, why they cannot be read. Every view of them takes this value.
pub type SettingsRead = Result<(Settings, Option<PathBuf>), String>;

/// The profile's shim settings as read on the host under `root`, and where from.
pub fn settings(profile: Profile, root: &Path) -> SettingsRead {
    if root == Path::new("/") {
        return Settings::load(profile).map_err(|e| e.to_string());
    }
    let candidates = [
        crate::paths::shim_settings(profile),
        PathBuf::from(SYSTEM_SETTINGS),
    ];
    match candidates.into_iter().find(|p| under(root, p).exists()) {
        None => Ok((Settings::default(), None)),
        Some(p) => {
            let text = std::fs::read_to_string(under(root, &p))
                .map_err(|e| format!("cannot read {}: {e}", shown(root, &p)))?;
            let s = Settings::parse(&text, &p).map_err(|e| e.to_string())?;
            Ok((s, Some(p)))
        }
    }
}

/// The shim's state directories of every profile, as their settings put them (host
/// paths, once each).
pub fn state_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Profile::ALL
        .iter()
        .map(|p| {
            settings(*p, root).map_or_else(
                |_| PathBuf::from(kata_gpu_fsutil::layout::DEFAULT_SANDBOXES_DIR),
                |(s, _)| s.state_dir,
            )
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Kata's shim as our shim's settings name it, and which Kata runtime it is (by the
/// settings' `downstream_kind`): `Ok(Ok(found))`, `Ok(Err(missing))`, or `Err` when the
/// settings cannot be read.
pub fn kata_shim(read: &SettingsRead, root: &Path) -> Result<Result<String, String>, String> {
    let (settings, from) = read.as_ref().map_err(Clone::clone)?;
    let from = from.as_ref().map_or("the default".to_owned(), |p| {
        format!("downstream in {}", shown(root, p))
    });
    let path = &settings.downstream;
    let runtime = runtime_words(settings.downstream_kind);
    Ok(if under(root, path).is_file() {
        Ok(format!("{} present ({from}): {runtime}", shown(root, path)))
    } else {
        Err(format!("{} missing ({from}): {runtime}", shown(root, path)))
    })
}

/// A downstream kind as the Kata runtime it is, in words.
fn runtime_words(kind: DownstreamKind) -> &'static str {
    match runtime_of(kind) {
        Some(runtime) => runtime.describe(),
        None => "runc's shim (for tests only)",
    }
}

/// Which Kata runtime the profile's sandboxes go to, by the shim settings'
/// `downstream_kind` (`go`, `rs`; `runc` for tests), with the file that says so.
pub fn kata_runtime(read: &SettingsRead, root: &Path) -> Result<(String, String), String> {
    let (settings, from) = read.as_ref().map_err(Clone::clone)?;
    let name = runtime_of(settings.downstream_kind).map_or("runc", |r| r.name());
    let from = from.as_ref().map_or("the default".to_owned(), |p| {
        format!("downstream_kind in {}", shown(root, p))
    });
    Ok((
        name.to_owned(),
        format!("{} ({from})", runtime_words(settings.downstream_kind)),
    ))
}

/// Where the profile's sandboxes get their devices, as the shim settings say, in words:
/// `Ok((true, line))` for kubelet's allocation, `Ok((false, line))` for annotation mode.
pub fn device_source(read: &SettingsRead, root: &Path) -> Result<(bool, String), String> {
    let (settings, from) = read.as_ref().map_err(Clone::clone)?;
    let from = from.as_ref().map_or("the default".to_owned(), |p| {
        format!("device_source in {}", shown(root, p))
    });
    Ok(match settings.device_source {
        DeviceSource::Kubelet => (
            true,
            format!(
                "kubelet's allocation, asked on {} ({from})",
                settings.pod_resources_socket.display()
            ),
        ),
        DeviceSource::Annotations => (
            false,
            format!("pod annotations, unchecked by kubelet: whoever creates a sandbox names any GPU ({from})"),
        ),
    })
}

/// The Kata runtime a shim settings' downstream kind is, `None` for runc (tests only).
pub fn runtime_of(kind: DownstreamKind) -> Option<KataRuntime> {
    match kind {
        DownstreamKind::Kata => Some(KataRuntime::Go),
        DownstreamKind::KataRs => Some(KataRuntime::Rs),
        DownstreamKind::Runc => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_line_matches_only_our_own_version() {
        let ours = format!(
            "containerd-shim-kata-qemu-nvidia-gpu-snp-v2 {} (commit abc), profile snp",
            env!("CARGO_PKG_VERSION")
        );
        assert!(same_version(&ours));
        assert!(!same_version(
            "containerd-shim-kata-qemu-nvidia-gpu-snp-v2 0.0.1-old (commit abc), profile snp"
        ));
        assert!(!same_version(""));
    }
}
