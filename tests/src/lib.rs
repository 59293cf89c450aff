//! Shared fixtures for tests against real parts and simulated hosts.
//!
//! - [`containerd`]: a private containerd started per test; [`cri`]: a CRI client for it.
//! - [`kubelet`]: a stand-in for kubelet's PodResources API (the real protocol).
//! - [`katans`]: Kata run in a private mount namespace with a syslog socket.
//! - [`guest`]: boots the VM shape Kata prints, with stand-ins for the GPUs, and reads back
//!   which BARs the guest placed.
//! - [`kata_host`]: the host description `kata-qemu-args` takes, from a simulated host.
//! - [`readme`]: the README's own commands, section by section, for tests that run them.
//! - [`parts`]: where the real parts are (containerd releases, Kata), and how a missing one
//!   is reported.
//! - [`simhost`]: simulated GPU hosts, sysfs and `/dev` trees under a temp root that every
//!   path of the code under test goes through (the `kata-gpu-simhost` crate, which depends
//!   on nothing under test so that the plan crate's own tests can use it), and
//!   [`WriteCdiSpecs`] to give one the host's own CDI specs.

pub mod containerd;
pub mod cri;
pub mod guest;
pub mod image;
pub mod kata_host;
pub mod katans;
pub mod kubelet;
pub mod parts;
pub mod readme;
pub mod sandbox_config;
pub mod shimrig;
pub use kata_gpu_simhost as simhost;

pub use containerd::{busybox_rootfs, is_root, on_path, require, PrivateContainerd};
pub use parts::{available, Containerd, Kata, KataRs};
pub use simhost::{SimHost, VfioMode};

/// Gives a simulated host the CDI specs that `kata-gpu cdi generate` writes for it.
pub trait WriteCdiSpecs {
    /// Writes the host's own CDI specs into its `/var/run/cdi`.
    fn write_cdi_specs(&self);
}

impl WriteCdiSpecs for SimHost {
    fn write_cdi_specs(&self) {
        let host = kata_gpu_plan::Host::new(self.root());
        let found = kata_gpu_plan::host_spec::host_specs(&host).expect("host specs");
        self.write_specs(&found.specs);
    }
}

/// The path of a binary of this workspace, built (if stale) with the same cargo and
/// profile as the tests, for tests that need a binary of another package.
pub fn workspace_bin(package: &str, bin: &str) -> std::path::PathBuf {
    workspace_bin_inner(package, bin)
}

/// The built shim placed in the simulated host's `/usr/local/bin` (on containerd's PATH)
/// under every profile's name, as `make install` leaves it, without its record: for tests
/// of `kata-gpu install`, which fails on a node where containerd finds no shim.
pub fn place_built_shims(sim: &SimHost) {
    let shim = workspace_bin("kata-gpu-shim", &kata_gpu_plan::Profile::Snp.shim_binary());
    let bin = sim.path("usr/local/bin");
    std::fs::create_dir_all(&bin).expect("mkdir usr/local/bin");
    for p in kata_gpu_plan::Profile::ALL {
        let to = bin.join(p.shim_binary());
        // A hard link where the temp dir shares the build's file system, else a copy.
        if std::fs::hard_link(&shim, &to).is_err() {
            std::fs::copy(&shim, &to).expect("copy the built shim");
        }
    }
}

fn workspace_bin_inner(package: &str, bin: &str) -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "cargo build -p {package} --bin {bin} failed"
    );
    // Tests run from target/<profile>/deps; the binaries sit one level up.
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>");
    let path = dir.join(bin);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// Runs a command-line binary against a simulated host (`--host-root` added).
pub fn run_on_host(bin: &str, sim: &SimHost, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin)
        .args(args)
        .arg("--host-root")
        .arg(sim.root())
        .output()
        .expect("run the binary under test")
}

/// Runs a command-line binary against a simulated host under `umask 000`, as a careless
/// init system might start it (`--host-root` added). A shell sets the umask for the
/// command alone; the test process keeps its own.
pub fn run_on_host_umask_000(
    bin: &str,
    root: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$@\"")
        .arg("sh")
        .arg(bin)
        .args(args)
        .arg("--host-root")
        .arg(root)
        .output()
        .expect("run the binary under test")
}

/// Every entry under `dir` (links excepted: their mode means nothing) whose mode lets
/// group or others write, as `path mode`.
pub fn writable_by_others(dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        let meta = std::fs::symlink_metadata(&p).expect("stat");
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            out.push(format!("{} {mode:o}", p.display()));
        }
        if meta.is_dir() {
            out.extend(writable_by_others(&p));
        }
    }
    out
}

/// What a command printed, stdout then stderr, for assertions and failure messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The command of README.md's "Deploy on a cluster" whose line starts with `start`, as
/// words up to a pipe: the deployment tests run the README's own commands.
pub fn readme_command(start: &str) -> Vec<String> {
    let line = readme::Walkthrough::of("## Deploy on a cluster")
        .find(start)
        .unwrap_or_else(|| panic!("no line starting with {start:?} in \"Deploy on a cluster\""));
    readme::words(&line)
        .into_iter()
        .take_while(|w| w != "|")
        .collect()
}
