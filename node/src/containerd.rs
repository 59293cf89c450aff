//! Facts about containerd on the node: its default config, the socket it serves on, its
//! processes (from the host's `/proc` under the root), when the one reading a config
//! started, and so whether it has loaded a change made since; and the PATH it finds shims
//! on.

use std::fs;
use std::path::{Path, PathBuf};

use kata_gpu_containerd_config::{daemon, fsio};

use crate::paths::{host_path, shown, under};

/// The default main config, as the host sees it.
pub const DEFAULT_CONFIG: &str = "/etc/containerd/config.toml";

/// The socket containerd serves on, from the config (under the root).
pub fn socket(root: &Path, config: &Path, given: Option<&Path>) -> PathBuf {
    match given {
        Some(s) => under(root, &host_path(root, s)),
        None => {
            let text = fsio::read_config(&under(root, config)).ok().flatten();
            under(root, &daemon::socket_of(text.as_deref()))
        }
    }
}

/// Whether the containerd that reads `config` still runs from before `changed_at` (or none
/// runs), so that it has not loaded the change made then.
pub fn restart_owed(root: &Path, config: &Path, changed_at: u64) -> bool {
    containerd_started(root, config).is_none_or(|t| t < changed_at)
}

/// The `<root>/proc/<pid>` directories of the containerd processes running on the host.
pub fn containerd_processes(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(under(root, Path::new("/proc"))) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|dir| fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim() == "containerd"))
        .collect()
}

/// When the containerd that reads `config` started (seconds since the epoch), from
/// `<root>/proc`; `None` if none is found.
pub fn containerd_started(root: &Path, config: &Path) -> Option<u64> {
    let proc = under(root, Path::new("/proc"));
    let btime: u64 = fs::read_to_string(proc.join("stat"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    containerd_processes(root).into_iter().find_map(|dir| {
        let cmdline = fs::read(dir.join("cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let named = args
            .iter()
            .position(|a| a == "--config" || a == "-c")
            .and_then(|i| args.get(i + 1).cloned())
            .or_else(|| {
                args.iter()
                    .find_map(|a| a.strip_prefix("--config=").map(str::to_owned))
            })
            .unwrap_or_else(|| DEFAULT_CONFIG.to_owned());
        if Path::new(&named) != config {
            return None;
        }
        let stat = fs::read_to_string(dir.join("stat")).ok()?;
        let after_comm = stat.rsplit_once(')')?.1;
        let ticks: u64 = after_comm.split_whitespace().nth(19)?.parse().ok()?;
        Some(btime + ticks / 100)
    })
}

/// containerd's PATH on the host under `root`: the running containerd's own environment
/// when one runs there, else ours on a real host, else systemd's default.
pub fn containerd_path(root: &Path) -> String {
    let running = containerd_processes(root).into_iter().find_map(|dir| {
        let env = std::fs::read(dir.join("environ")).ok()?;
        env.split(|b| *b == 0).find_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.strip_prefix("PATH=").map(str::to_owned)
        })
    });
    match running {
        Some(path) => path,
        None if root == Path::new("/") => {
            std::env::var("PATH").unwrap_or_else(|_| STANDARD_PATH.to_owned())
        }
        None => STANDARD_PATH.to_owned(),
    }
}

/// systemd's default PATH for services, which a containerd started by systemd inherits.
pub const STANDARD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A host whose `/proc` shows one containerd reading `config`, started `after_boot`
    /// seconds after a boot at `btime`, with `PATH=/opt/bin` in its environment.
    fn host(config: &str, btime: u64, after_boot: u64) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        let proc = root.path().join("proc");
        fs::create_dir_all(proc.join("77")).expect("mkdir");
        fs::write(proc.join("stat"), format!("cpu 0\nbtime {btime}\n")).expect("stat");
        fs::write(proc.join("77/comm"), "containerd\n").expect("comm");
        fs::write(
            proc.join("77/cmdline"),
            format!("containerd\0--config\0{config}\0"),
        )
        .expect("cmdline");
        fs::write(proc.join("77/environ"), "A=b\0PATH=/opt/bin\0").expect("environ");
        let ticks = after_boot * 100;
        let fields: Vec<String> = (0..19)
            .map(|i| {
                if i == 18 {
                    ticks.to_string()
                } else {
                    "0".to_owned()
                }
            })
            .collect();
        fs::write(
            proc.join("77/stat"),
            format!("77 (containerd) S {}\n", fields.join(" ")),
        )
        .expect("stat");
        root
    }

    #[test]
    fn a_change_is_loaded_once_containerd_started_after_it() {
        let root = host(DEFAULT_CONFIG, 1_000, 50);
        let config = Path::new(DEFAULT_CONFIG);
        assert_eq!(containerd_started(root.path(), config), Some(1_050));
        assert!(!restart_owed(root.path(), config, 1_050));
        assert!(restart_owed(root.path(), config, 1_051));
        // Another config's containerd, or none at all: a change is not loaded.
        assert!(restart_owed(root.path(), Path::new("/etc/k3s.toml"), 1));
        assert!(restart_owed(Path::new("/nowhere"), config, 1));
        assert_eq!(containerd_path(root.path()), "/opt/bin");
        assert_eq!(containerd_path(Path::new("/nowhere")), STANDARD_PATH);
    }

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
