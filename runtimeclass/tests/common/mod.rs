//! What the node life-cycle tests share: the built binaries, a file tree to compare, the
//! simulated kernel, a reboot and the boot unit's commands run as systemd would.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kata_gpu_plan::host::{Bdf, Host};
use kata_gpu_plan::vfio::{self, Sysfs, Targets};
use kata_gpu_tests::SimHost;

/// The shim's name under the snp profile.
pub const SNP: &str = "containerd-shim-kata-qemu-nvidia-gpu-snp-v2";

/// Runs this package's kata-gpu against the simulated host.
pub fn kata_gpu(sim: &SimHost, args: &[&str]) -> Output {
    kata_gpu_tests::run_on_host(env!("CARGO_BIN_EXE_kata-gpu"), sim, args)
}

/// What a command printed.
pub fn text(o: &Output) -> String {
    kata_gpu_tests::output_text(o)
}

/// The directory the tests' kata-gpu and shim were built into.
pub fn built() -> PathBuf {
    let shim = kata_gpu_tests::workspace_bin("kata-gpu-shim", SNP);
    let dir = shim.parent().expect("target dir").to_path_buf();
    assert!(dir.join("kata-gpu").is_file(), "{}", dir.display());
    dir
}

/// `make TARGET` as the README gives it, onto the simulated host.
pub fn make(target: &str, sim: &SimHost, bin_dir: &Path) -> Output {
    Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .arg(target)
        .arg(format!("BIN_DIR={}", bin_dir.display()))
        .arg(format!("DESTDIR={}", sim.root().display()))
        .arg("PREFIX=/usr/local")
        .output()
        .expect("run make")
}

/// Everything under `dir` (not `sys`, `dev` or `proc`), with each file's size and each
/// link's target.
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    let mut entries: Vec<_> = entries.map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for p in entries {
        let meta = fs::symlink_metadata(&p).expect("stat");
        if meta.is_dir() {
            out.push(format!("{}/", p.display()));
            out.extend(tree(&p));
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&p).expect("link");
            out.push(format!("{} -> {}", p.display(), target.display()));
        } else {
            out.push(format!("{} {}", p.display(), meta.len()));
        }
    }
    out
}

/// [`tree`] less the node lock (`/run/lock`), which a refused command may have taken: what
/// a refusal must leave as it was.
pub fn tree_but_lock(dir: &Path) -> Vec<String> {
    let run = format!("{}/run/", dir.display());
    tree(dir)
        .into_iter()
        .filter(|l| *l != run && !l.starts_with(&format!("{run}lock")))
        .collect()
}

/// A stand-in artifact set in `dir` (made if missing) whose kernel file says `kernel`:
/// kernel, guest image, firmware and the snp template as the base config.
pub fn artifact_set(dir: &Path, kernel: &str) -> String {
    fs::create_dir_all(dir).expect("mkdir");
    for (name, body) in [
        ("vmlinuz-6.12-nvidia-gpu-confidential", kernel),
        ("kata-containers-confidential.img", "image"),
        ("AMDSEV.fd", "fw"),
    ] {
        fs::write(dir.join(name), body).expect("write");
    }
    fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../configs/templates/configuration-qemu-nvidia-gpu-snp.toml"
        ),
        dir.join("configuration-qemu-nvidia-gpu-snp.toml"),
    )
    .expect("config");
    dir.display().to_string()
}

/// The simulated host's kernel, acting on sysfs writes as the real one does.
pub struct Kernel<'a>(pub &'a SimHost);

impl Sysfs for Kernel<'_> {
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        self.0.kernel_write(path, value)
    }
}

/// Wipes what a reboot wipes: the tmpfs `/run` (and `/var/run`), and the vfio binding of
/// `gpu`, which comes back on nvidia with no `driver_override`.
pub fn reboot(sim: &SimHost, gpu: &str) {
    for dir in ["run", "var/run"] {
        let _ = fs::remove_dir_all(sim.path(dir));
    }
    sim.set_driver(gpu, Some("nvidia"));
    let _ = fs::remove_file(sim.path(&format!("sys/bus/pci/devices/{gpu}/driver_override")));
}

/// `kata-gpu vfio bind|unbind BDF…` as the binary does it, in this process with the
/// simulated kernel (which moves no device for another process); the binary's own plan
/// (`--dry-run`) is checked to say `expect` first.
pub fn vfio(sim: &SimHost, args: &[&str], expect: &str) {
    let out = kata_gpu(sim, &[args, &["--dry-run"]].concat());
    assert!(text(&out).contains(expect), "{}", text(&out));
    let bdfs: Vec<Bdf> = args[2..].iter().map(|b| b.parse().expect("bdf")).collect();
    let host = Host::new(sim.root());
    let targets = if bdfs.is_empty() {
        Targets::All
    } else {
        Targets::Named(&bdfs)
    };
    let steps = match args[1] {
        "bind" => vfio::plan_bind(&host, targets, false),
        _ => vfio::plan_unbind(&host, targets),
    }
    .expect("plan");
    vfio::apply(&host, &Kernel(sim), &steps).expect("vfio");
}

/// The boot unit's `ExecStart` lines, split into words.
pub fn exec_starts(unit: &str) -> Vec<Vec<String>> {
    unit.lines()
        .filter_map(|l| l.strip_prefix("ExecStart="))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// Runs the unit's commands in order, as the host would: the installed kata-gpu (under
/// the root) for each, `vfio bind` through [`vfio`].
pub fn run_unit(sim: &SimHost, execs: &[Vec<String>], gpu: &str) {
    for argv in execs {
        let installed = sim.path(argv[0].trim_start_matches('/'));
        let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
        if args[..2] == ["vfio", "bind"] {
            vfio(
                sim,
                &args,
                &format!("{gpu} 10de:2331 group 40: nvidia → vfio-pci"),
            );
        } else {
            let out = Command::new(&installed)
                .args(&args)
                .arg("--host-root")
                .arg(sim.root())
                .output()
                .expect("run the unit's command");
            assert_eq!(out.status.code(), Some(0), "{argv:?}: {}", text(&out));
        }
    }
}
