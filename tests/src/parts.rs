//! Where the real parts are: Debian's containerd 1.6 on `PATH`, and the versions Debian 12 does
//! not ship (containerd 1.7.24, 2.1.9, 2.3.4, Kata 3.30 and Kata 4.1's Rust shim), which `make deps`
//! unpacks under
//! `KATA_GPU_PARTS` (default `<workspace>/parts`), one folder each: `containerd-<version>/bin/`,
//! `kata-<version>/bin/` and `kata-<version>/config/` (runtime-rs: `kata-rs-<version>/`); `kata-qemu-args-<version>/` (Kata's own
//! code printing the QEMU command line it would launch); and `guest/vmlinuz`, Debian 12's cloud
//! kernel for the boot test's guest. The boot test's firmware (Debian's `ovmf`) and busybox
//! (`busybox-static`) are Debian packages `make deps` installs.
//!
//! A test whose part is missing fails when `CI` is set, and otherwise says `SKIPPED <test>: …`
//! on the terminal (past cargo's output capture) and returns: never silently green.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A containerd release the tests run against, each with its own `ctr` and runc shim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Containerd {
    /// Debian 12's containerd 1.6.20, from `PATH`.
    Debian,
    /// containerd 1.7.24 (Debian 13's package).
    V1_7,
    /// containerd 2.1.9 (Debian unstable's package).
    V2_1,
    /// containerd 2.3.4 (built from the upstream tag).
    V2_3,
}

impl Containerd {
    /// Every version, oldest first: the matrix the shim is tested on.
    pub const ALL: [Containerd; 4] = [Self::Debian, Self::V1_7, Self::V2_1, Self::V2_3];

    /// Its version, as people name it.
    pub fn version(self) -> &'static str {
        match self {
            Self::Debian => "1.6.20",
            Self::V1_7 => "1.7.24",
            Self::V2_1 => "2.1.9",
            Self::V2_3 => "2.3.4",
        }
    }

    /// Whether it is a 2.x release: config version 3, CRI split into several plugins, shim
    /// sockets outside its state dir, task API v3 offered to shims.
    pub fn is_v2(self) -> bool {
        matches!(self, Self::V2_1 | Self::V2_3)
    }

    /// Whether its shim manager takes a `socket_dir`: 2.3 does; 2.1 has no such key and puts
    /// every shim socket under `/run/containerd/s`, whatever its `state` says.
    pub fn has_shim_socket_dir(self) -> bool {
        self == Self::V2_3
    }

    /// The folder holding its `containerd`, `ctr` and `containerd-shim-runc-v2`.
    pub fn bin_dir(self) -> Result<PathBuf, Missing> {
        match self {
            Self::Debian => {
                for program in ["containerd", "ctr", "runc", "containerd-shim-runc-v2"] {
                    if !crate::on_path(program) {
                        return Err(Missing(format!(
                            "{program} (Debian's containerd 1.6) is not on PATH"
                        )));
                    }
                }
                Ok(PathBuf::from("/usr/bin"))
            }
            _ => {
                let dir = parts_dir().join(format!("containerd-{}", self.version()));
                let bin = dir.join("bin");
                for program in ["containerd", "ctr", "containerd-shim-runc-v2"] {
                    if !bin.join(program).is_file() {
                        return Err(Missing(format!(
                            "containerd {} is not unpacked: {} is missing",
                            self.version(),
                            bin.join(program).display()
                        )));
                    }
                }
                Ok(bin)
            }
        }
    }

    /// Its runc shim, the downstream that stands in for Kata's past Kata's door.
    pub fn runc_shim(self) -> Result<PathBuf, Missing> {
        Ok(self.bin_dir()?.join("containerd-shim-runc-v2"))
    }
}

/// Kata 3.30's Go shim, `kata-runtime` and the QEMU configs its build generates.
#[derive(Clone, Debug)]
pub struct Kata {
    dir: PathBuf,
}

impl Kata {
    /// The Kata release the tests run against.
    pub const VERSION: &'static str = "3.30.0";

    /// Finds the unpacked Kata part.
    pub fn find() -> Result<Self, Missing> {
        let dir = parts_dir().join(format!("kata-{}", Self::VERSION));
        let kata = Self { dir };
        for path in [kata.shim(), kata.runtime(), kata.config_dir()] {
            if !path.exists() {
                return Err(Missing(format!(
                    "Kata {} is not unpacked: {} is missing",
                    Self::VERSION,
                    path.display()
                )));
            }
        }
        Ok(kata)
    }

    /// `containerd-shim-kata-v2`.
    pub fn shim(&self) -> PathBuf {
        self.dir.join("bin/containerd-shim-kata-v2")
    }

    /// `kata-runtime`.
    pub fn runtime(&self) -> PathBuf {
        self.dir.join("bin/kata-runtime")
    }

    /// The folder of generated `configuration-qemu*.toml` files.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// One generated config, e.g. `configuration-qemu-nvidia-gpu-snp.toml`.
    pub fn config(&self, name: &str) -> PathBuf {
        self.config_dir().join(name)
    }
}

/// Kata 4.1's Rust shim (runtime-rs) and the QEMU configs its build generates
/// (`configuration-qemu-nvidia-gpu{,-snp,-tdx}-runtime-rs.toml` among them); no `kata-runtime`.
#[derive(Clone, Debug)]
pub struct KataRs {
    dir: PathBuf,
}

impl KataRs {
    /// The Kata release whose Rust shim the tests run against.
    pub const VERSION: &'static str = "4.1.0";

    /// Finds the unpacked runtime-rs part (`kata-rs-<version>/`).
    pub fn find() -> Result<Self, Missing> {
        Self::find_in(&parts_dir())
    }

    /// [`KataRs::find`] under a given parts directory.
    pub fn find_in(parts: &Path) -> Result<Self, Missing> {
        let kata = Self {
            dir: parts.join(format!("kata-rs-{}", Self::VERSION)),
        };
        for path in [
            kata.shim(),
            kata.config("configuration-qemu-nvidia-gpu-snp-runtime-rs.toml"),
        ] {
            if !path.exists() {
                return Err(Missing(format!(
                    "Kata {}'s Rust shim (runtime-rs) is not unpacked: {} is missing",
                    Self::VERSION,
                    path.display()
                )));
            }
        }
        Ok(kata)
    }

    /// runtime-rs's `containerd-shim-kata-v2`.
    pub fn shim(&self) -> PathBuf {
        self.dir.join("bin/containerd-shim-kata-v2")
    }

    /// The folder of generated `configuration-*-runtime-rs.toml` files.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// One generated config, e.g. `configuration-qemu-nvidia-gpu-snp-runtime-rs.toml`.
    pub fn config(&self, name: &str) -> PathBuf {
        self.config_dir().join(name)
    }
}

/// `kata-qemu-args`: Kata 3.30's Go runtime run up to `LaunchQemu`, printing the argv it would
/// exec for a `configuration.toml` and a host described in JSON; with the host files it ships.
#[derive(Clone, Debug)]
pub struct KataQemuArgs {
    dir: PathBuf,
}

impl KataQemuArgs {
    /// Finds the unpacked part; it runs only as root (it re-executes itself under `unshare -m`
    /// to fake the host's files in a private mount namespace), so a non-root run is missing it.
    pub fn find() -> Result<Self, Missing> {
        let dir = parts_dir().join(format!("kata-qemu-args-{}", Kata::VERSION));
        let tool = Self { dir };
        if !tool.bin().is_file() {
            return Err(Missing(format!(
                "kata-qemu-args is not unpacked: {} is missing",
                tool.bin().display()
            )));
        }
        if !crate::is_root() {
            return Err(Missing(
                "kata-qemu-args runs only as root (it unshares a mount namespace)".to_owned(),
            ));
        }
        Ok(tool)
    }

    /// `bin/kata-qemu-args`.
    pub fn bin(&self) -> PathBuf {
        self.dir.join("bin/kata-qemu-args")
    }

    /// One of the host files it ships, e.g. `hgx-8gpu-4nvswitch-snp.json`.
    pub fn host(&self, name: &str) -> PathBuf {
        self.dir.join("hosts").join(name)
    }

    /// The arguments Kata would exec QEMU with (`-0` output: without the QEMU path) for
    /// `config` on the host `host_json`,
    /// each `sets` entry passed as `-set key=value`.
    pub fn argv(
        &self,
        config: &Path,
        host_json: &Path,
        sets: &[&str],
    ) -> Result<Vec<String>, String> {
        let mut command = std::process::Command::new(self.bin());
        command
            .arg("-0")
            .arg("-config")
            .arg(config)
            .arg("-host")
            .arg(host_json);
        for set in sets {
            command.arg("-set").arg(set);
        }
        let out = command
            .output()
            .map_err(|e| format!("{}: {e}", self.bin().display()))?;
        if !out.status.success() {
            return Err(format!(
                "kata-qemu-args {sets:?} on {}: {}: {}",
                host_json.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let text = String::from_utf8(out.stdout)
            .map_err(|e| format!("kata-qemu-args printed something not UTF-8: {e}"))?;
        Ok(text
            .split('\0')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect())
    }
}

/// Debian 12's generic OVMF build (package `ovmf`), the boot test's stand-in for Kata's
/// firmware: Kata's SNP configs name an AmdSevX64 build, which cannot start a kernel without
/// SEV. Returns the firmware image and the package's version.
pub fn ovmf() -> Result<(PathBuf, String), Missing> {
    let path = PathBuf::from("/usr/share/ovmf/OVMF.fd");
    if !path.is_file() {
        return Err(Missing(format!(
            "{} is missing (Debian package ovmf)",
            path.display()
        )));
    }
    let version = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "ovmf"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    Ok((path, version))
}

/// Debian 12's cloud kernel, unpacked by `make deps` into `<parts>/guest/`: the boot test's
/// stand-in for Kata's guest kernel. Returns `vmlinuz` and the package it came from.
pub fn guest_kernel() -> Result<(PathBuf, String), Missing> {
    let dir = parts_dir().join("guest");
    let kernel = dir.join("vmlinuz");
    if !kernel.is_file() {
        return Err(Missing(format!(
            "the guest kernel is not unpacked: {} is missing",
            kernel.display()
        )));
    }
    let package = std::fs::read_to_string(dir.join("version"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    Ok((kernel, package))
}

/// Debian's `busybox-static` at `/bin/busybox`, for an initramfs with nothing else in it: a
/// dynamically linked busybox (Debian's `busybox` package) would not start there.
pub fn busybox_static() -> Result<PathBuf, Missing> {
    let path = PathBuf::from("/bin/busybox");
    let bytes = std::fs::read(&path)
        .map_err(|e| Missing(format!("{} (busybox-static): {e}", path.display())))?;
    if bytes.windows(b"/ld-linux".len()).any(|w| w == b"/ld-linux") {
        return Err(Missing(format!(
            "{} is linked dynamically; the package busybox-static is needed",
            path.display()
        )));
    }
    Ok(path)
}

/// `qemu-system-x86_64` from `PATH`, if it is QEMU 10 or later: the first with both
/// `sev-snp-guest` and `iommufd` (Debian 12's own 7.2 has neither; `make deps` installs 10
/// from bookworm-backports).
pub fn qemu() -> Result<PathBuf, Missing> {
    const QEMU: &str = "qemu-system-x86_64";
    const MIN_MAJOR: u32 = 10;
    let path = std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(QEMU))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| Missing(format!("{QEMU} is not on PATH")))?;
    let out = std::process::Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|e| Missing(format!("{} --version: {e}", path.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("QEMU emulator version "))
        .unwrap_or_default()
        .to_owned();
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < MIN_MAJOR {
        return Err(Missing(format!(
            "{} is QEMU {version:?}; {MIN_MAJOR} or later is needed (sev-snp-guest, iommufd)",
            path.display()
        )));
    }
    Ok(path)
}

/// One `#[test]` per containerd release, each running `body(release, "<test name>")`, so that
/// a matrix test is one body and one line per release:
/// `tests_per_release!(battery: ctr_battery_on_containerd_1_6 = Debian, …);`
#[macro_export]
macro_rules! tests_per_release {
    ($body:ident: $($test:ident = $release:ident),+ $(,)?) => {$(
        #[test]
        fn $test() {
            $body($crate::Containerd::$release, stringify!($test));
        }
    )+};
}

/// A real part that is not on this machine, and what is missing.
#[derive(Debug)]
pub struct Missing(pub String);

/// Where `make deps` unpacked the parts: `KATA_GPU_PARTS`, else `<workspace>/parts`.
pub fn parts_dir() -> PathBuf {
    std::env::var_os("KATA_GPU_PARTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or(Path::new("."))
                .join("parts")
        })
}

/// Whether the tests run in CI, where a missing part is a failure.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The part, or `None` after saying `SKIPPED <test>: <why>` on the terminal; in CI a missing
/// part panics instead.
pub fn available<T>(test: &str, part: Result<T, Missing>) -> Option<T> {
    available_in(test, part, in_ci())
}

/// What a test of Kata behind the proxy needs: containerd `release`, the Kata part `kata`
/// (Kata 3.30's [`Kata::find`] or runtime-rs's [`KataRs::find`]) and QEMU 10, each through
/// [`available`]; the Kata part when all three are there.
pub fn kata_parts<T>(test: &str, release: Containerd, kata: Result<T, Missing>) -> Option<T> {
    available(test, release.bin_dir())?;
    let kata = available(test, kata)?;
    available(test, qemu())?;
    Some(kata)
}

/// [`available`], told whether this is CI.
fn available_in<T>(test: &str, part: Result<T, Missing>, ci: bool) -> Option<T> {
    match part {
        Ok(part) => Some(part),
        Err(Missing(why)) => {
            assert!(
                !ci,
                "{test}: a real part is missing in CI: {why}. Run `make deps` (KATA_GPU_PARTS \
                 points at the unpacked parts)."
            );
            // Written to the process's stderr, not through `eprintln!`, which cargo captures
            // for passing tests: a skip must show.
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED {test}: {why} (run `make deps`)"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 29 item 1: runtime-rs is found where `make deps` unpacks it, and a parts
    /// directory without it says which file is missing.
    #[test]
    fn kata_rs_is_found_and_a_missing_one_names_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Missing(why) = KataRs::find_in(dir.path()).expect_err("nothing unpacked");
        assert!(
            why.contains("runtime-rs") && why.contains("kata-rs-4.1.0/bin/containerd-shim-kata-v2"),
            "{why}"
        );
        let root = dir.path().join("kata-rs-4.1.0");
        std::fs::create_dir_all(root.join("bin")).expect("bin");
        std::fs::create_dir_all(root.join("config")).expect("config");
        std::fs::write(root.join("bin/containerd-shim-kata-v2"), "").expect("shim");
        let Missing(why) = KataRs::find_in(dir.path()).expect_err("no config");
        assert!(
            why.contains("configuration-qemu-nvidia-gpu-snp-runtime-rs.toml"),
            "{why}"
        );
        std::fs::write(
            root.join("config/configuration-qemu-nvidia-gpu-snp-runtime-rs.toml"),
            "",
        )
        .expect("config");
        let found = KataRs::find_in(dir.path()).expect("found");
        assert_eq!(found.shim(), root.join("bin/containerd-shim-kata-v2"));
    }

    /// In CI a missing part is a failure, not a skip.
    #[test]
    fn a_missing_kata_rs_fails_under_ci() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = KataRs::find_in(dir.path());
        // `available` asks `in_ci()`; asked here as CI would answer.
        let outcome = std::panic::catch_unwind(|| available_in("t", missing, true));
        let message = outcome
            .expect_err("a missing part under CI panics")
            .downcast::<String>()
            .map(|s| *s)
            .unwrap_or_default();
        assert!(
            message.contains("t: a real part is missing in CI") && message.contains("runtime-rs"),
            "{message}"
        );
    }
}
