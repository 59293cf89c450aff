//! `make install` / `kata-gpu binaries install | remove` on simulated hosts: kata-gpu and the
//! shim under every profile's name, replaced atomically (a running binary keeps running),
//! found by `status` and `install` where containerd will look, and removed again.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{built, kata_gpu, make, text, tree, tree_but_lock};
use kata_gpu_tests::{SimHost, VfioMode};

const SNP: &str = common::SNP;
const TDX: &str = "containerd-shim-kata-qemu-nvidia-gpu-tdx-v2";
const GPU: &str = "containerd-shim-kata-qemu-nvidia-gpu-v2";

#[test]
fn make_install_puts_the_shim_under_every_name_where_containerd_finds_it() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let bin_dir = built();

    // Before: status says the shim is missing and where containerd would look.
    let out = kata_gpu(&sim, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(status["shim"], serde_json::Value::Null, "{status}");
    assert!(
        status.to_string().contains(&format!(
            "{SNP} is not on containerd's PATH or next to containerd ({}/usr/local/sbin:",
            sim.root().display()
        )),
        "{status}"
    );

    let out = make("install", &sim, &bin_dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    let bin = sim.path("usr/local/bin");
    assert!(
        said.contains(&format!("installed {}/{SNP}", bin.display())),
        "{said}"
    );
    assert!(
        !said.contains("warning"),
        "/usr/local/bin is on containerd's PATH: {said}"
    );
    for (name, profile) in [(SNP, "snp"), (TDX, "tdx"), (GPU, "gpu")] {
        let path = bin.join(name);
        let v = Command::new(&path)
            .arg("-v")
            .output()
            .expect("run the shim");
        let v = String::from_utf8_lossy(&v.stdout);
        assert!(
            v.starts_with(&format!("{name} {} ", env!("CARGO_PKG_VERSION"))),
            "{v}"
        );
        assert!(v.trim_end().ends_with(&format!("profile {profile}")), "{v}");
    }
    assert_eq!(fs::read_link(bin.join(TDX)).expect("link"), Path::new(SNP));
    let mode = fs::metadata(bin.join("kata-gpu"))
        .expect("kata-gpu")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        fs::read(bin.join("kata-gpu")).expect("installed"),
        fs::read(bin_dir.join("kata-gpu")).expect("built")
    );

    // status finds it as containerd will, with its version.
    for profile in ["snp", "tdx"] {
        let out = kata_gpu(&sim, &["status", "--json", "--profile", profile]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let shim = status["shim"].as_str().unwrap_or_default().to_owned();
        assert!(shim.ends_with(&format!("profile {profile}")), "{status}");
        assert!(
            status
                .to_string()
                .contains(&format!("shim: containerd runs {}/", bin.display())),
            "{status}"
        );
    }

    // install says which shim containerd will run; without one it warns.
    let out = kata_gpu(&sim, &["install", "--config-version", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "shim:         containerd will run {}/{SNP}",
            bin.display()
        )),
        "{}",
        text(&out)
    );
    let out = kata_gpu(
        &sim,
        &[
            "install",
            "--config-version",
            "2",
            "--profile",
            "gpu",
            "--runtime-path",
            "/opt/x/shim",
        ],
    );
    // Registered, but containerd would find no shim: not a node that can run the class.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("kata-gpu: kata-qemu-nvidia-gpu is registered but containerd finds no containerd-shim-kata-qemu-nvidia-gpu-v2: its pods cannot start; run `make install`"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains(&format!("shim:         NOT FOUND: pods of this class will not start\n              warning: {}/opt/x/shim (the handler's runtime_path) does not exist", sim.root().display())),
        "{}",
        text(&out)
    );
    for profile in ["snp", "gpu"] {
        let out = kata_gpu(&sim, &["uninstall", "--profile", profile]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }

    // A second install replaces, a removal takes exactly what was installed away.
    let before = tree(sim.root());
    let out = make("install", &sim, &bin_dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(tree(sim.root()), before, "a reinstall left something new");
    let out = make("uninstall", &sim, &bin_dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for name in ["kata-gpu", SNP, TDX, GPU] {
        assert!(fs::symlink_metadata(bin.join(name)).is_err(), "{name} left");
    }
    assert!(
        !sim.path("var/lib/kata-gpu/binaries.json").exists(),
        "record left"
    );
}

/// An upgrade replaces a binary that is running (a shim serving a sandbox): the running
/// process keeps the old one, the path names the new one. Writing over the file in place
/// instead fails with "Text file busy" (or, if it did not, would change a running binary).
#[test]
fn an_upgrade_replaces_a_running_binary_and_the_running_process_keeps_the_old_one() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let real = built();
    // An "old release" whose kata-gpu is a long-running program (sleep), with the real shim.
    let old = tempfile::tempdir().expect("tempdir");
    fs::copy("/bin/sleep", old.path().join("kata-gpu")).expect("copy sleep");
    std::os::unix::fs::symlink(real.join(SNP), old.path().join(SNP)).expect("link shim");
    let old_dir = old.path().display().to_string();
    let out = kata_gpu(&sim, &["binaries", "install", "--from", &old_dir]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let installed = sim.path("usr/local/bin/kata-gpu");
    let mut running = Command::new(&installed)
        .arg("600")
        .spawn()
        .expect("start the old binary");
    // Bound only a hang: wait until the process runs the installed file.
    let exe = PathBuf::from(format!("/proc/{}/exe", running.id()));
    kata_gpu_tests::shimrig::wait_until("the old binary runs", || {
        fs::read_link(&exe).is_ok_and(|p| p == installed)
    });

    let out = make("install", &sim, &real);
    let said = text(&out);
    let still = running.try_wait().expect("try_wait");
    let exe_now = fs::read_link(&exe).map(|p| p.display().to_string());
    let _ = running.kill();
    let _ = running.wait();
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert_eq!(still, None, "the running binary died");
    assert_eq!(
        exe_now.expect("exe"),
        format!("{} (deleted)", installed.display())
    );
    assert_eq!(
        fs::read(&installed).expect("installed"),
        fs::read(real.join("kata-gpu")).expect("built")
    );
}

/// A file under one of the shim's names that is not a kata-gpu shim (containerd may run it
/// for another runtime) is not replaced, and nothing else is written either.
#[test]
fn binaries_install_refuses_to_replace_a_foreign_file_under_a_shim_name() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let foreign = sim.path(&format!("usr/local/bin/{TDX}"));
    fs::create_dir_all(foreign.parent().expect("parent")).expect("mkdir");
    fs::write(&foreign, "#!/bin/sh\necho some other shim 9.9\n").expect("write");
    fs::set_permissions(&foreign, fs::Permissions::from_mode(0o755)).expect("chmod");
    let before = tree_but_lock(sim.root());
    let from = built().display().to_string();
    let out = kata_gpu(&sim, &["binaries", "install", "--from", &from]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "kata-gpu: {} is not the kata-gpu shim (some other shim 9.9); move it aside (containerd may run it for another runtime) and retry; nothing was installed\n",
            foreign.display()
        )
    );
    assert_eq!(tree_but_lock(sim.root()), before, "a refusal wrote");
}

#[test]
fn binaries_install_refuses_what_is_not_a_build_and_writes_nothing() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let before = tree(sim.root());
    let empty = tempfile::tempdir().expect("tempdir");
    let from = empty.path().display().to_string();
    let one_line = |out: &Output, want: &str| {
        assert_eq!(out.status.code(), Some(1), "{}", text(out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{err}");
    };
    one_line(
        &kata_gpu(&sim, &["binaries", "install", "--from", &from]),
        &format!("{from}/kata-gpu: No such file or directory (os error 2); build it first"),
    );
    // A file under the shim's name that is not our shim.
    fs::copy(
        env!("CARGO_BIN_EXE_kata-gpu"),
        empty.path().join("kata-gpu"),
    )
    .expect("copy");
    let fake = empty.path().join(SNP);
    fs::write(&fake, "#!/bin/sh\necho some other shim 9.9\n").expect("write");
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).expect("chmod");
    one_line(
        &kata_gpu(&sim, &["binaries", "install", "--from", &from]),
        "-v says \"some other shim 9.9\", not the kata-gpu shim; nothing was installed",
    );
    one_line(
        &kata_gpu(&sim, &["binaries", "install", "--prefix", "usr/local"]),
        "--prefix usr/local: the prefix must be absolute",
    );
    assert_eq!(tree(sim.root()), before, "a refusal wrote");
    let out = kata_gpu(&sim, &["binaries", "remove"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).starts_with("nothing to remove: no record in"),
        "{}",
        text(&out)
    );
}

#[test]
fn binaries_remove_waits_for_every_profile_to_be_uninstalled() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let bin_dir = built();
    let from = bin_dir.display().to_string();
    let out = kata_gpu(&sim, &["binaries", "install", "--from", &from]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = kata_gpu(
        &sim,
        &[
            "containerd",
            "register",
            "--profile",
            "tdx",
            "--config-version",
            "2",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = tree(sim.root());
    let out = kata_gpu(&sim, &["binaries", "remove"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "kata-gpu: a profile is still registered with containerd, whose pods need the shim: run \
             kata-gpu --host-root {} uninstall --profile tdx first; nothing was removed\n",
            sim.root().display()
        )
    );
    assert_eq!(tree(sim.root()), before);
    let out = kata_gpu(&sim, &["containerd", "unregister", "--profile", "tdx"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = kata_gpu(&sim, &["binaries", "remove"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(text(&out).lines().count(), 4, "{}", text(&out));
    assert!(!sim.path(&format!("usr/local/bin/{SNP}")).exists());
}

#[test]
fn binaries_install_takes_a_from_dir_relative_to_where_it_runs() {
    // `make install` passes `target/release`, relative to the checkout: it names the build
    // there, not `/target/release`.
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let bin_dir = built();
    let (parent, name) = (
        bin_dir.parent().expect("the build dir's parent"),
        bin_dir.file_name().expect("the build dir's name"),
    );
    let out = Command::new(bin_dir.join("kata-gpu"))
        .current_dir(parent)
        .arg("binaries")
        .arg("install")
        .arg("--from")
        .arg(name)
        .arg("--prefix")
        .arg("/usr/local")
        .arg("--host-root")
        .arg(sim.root())
        .output()
        .expect("run kata-gpu");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        sim.path("usr/local/bin").join(SNP).is_file(),
        "{}",
        text(&out)
    );
}
