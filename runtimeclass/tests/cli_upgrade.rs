//! Upgrading the shim while sandboxes run, with `kata-gpu binaries install` (what `make
//! install` runs), in front of a private containerd with runc's shim downstream: the
//! running sandbox's server keeps the binary it started with, a new sandbox starts from the
//! new one, and the new binary deletes the old sandbox from the state the old one wrote.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::text;
use kata_gpu_plan::Profile;
use kata_gpu_tests::shimrig::{err, pids_of, Downstream, Install, Rig, SHIM};

/// The servers (wrapper daemons) running now, with what `/proc/<pid>/exe` names.
fn servers(rig: &Rig) -> Vec<(u32, String)> {
    pids_of(rig, &[SHIM, "serve"])
        .into_iter()
        .map(|pid| {
            let exe = fs::read_link(format!("/proc/{pid}/exe"))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            (pid, exe)
        })
        .collect()
}

#[test]
fn replacing_the_shim_under_a_running_sandbox_keeps_it_and_serves_new_ones() {
    let rig = Rig::new(Downstream::Runc, "");
    // The "old release": a copy where containerd finds the shim (the rig's PATH dir).
    rig.install_as(Profile::Snp, Install::Copy);
    let work = rig.work.path();
    let installed = work.join("bin").join(SHIM);
    let old_inode = fs::metadata(&installed).expect("installed").ino();
    let old = Rig::id("upgrade-old");
    let o = rig.run(&["-d"], &old, &["/bin/busybox", "sleep", "300"]);
    assert!(o.status.success(), "{}\n{}", err(&o), rig.ctrd.log());
    let before = servers(&rig);
    assert_eq!(before.len(), 1, "{before:?}");

    // The upgrade, as make install runs it, with the rig's directory as the host's root
    // (so PREFIX=/ puts the shim in its bin, where containerd finds it).
    let from = common::built().display().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kata-gpu"))
        .args(["binaries", "install", "--from", &from, "--prefix", "/"])
        .arg("--host-root")
        .arg(work)
        .output()
        .expect("run kata-gpu");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_ne!(fs::metadata(&installed).expect("new").ino(), old_inode);

    // The running server runs the old, replaced binary and still answers.
    let (pid, exe) = &before[0];
    assert_eq!(exe, &installed.display().to_string(), "pid {pid}");
    let now = fs::read_link(format!("/proc/{pid}/exe")).expect("still running");
    assert_eq!(
        now.display().to_string(),
        format!("{} (deleted)", installed.display())
    );
    let o = rig.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "probe",
        &old,
        "/bin/busybox",
        "true",
    ]);
    assert!(o.status.success(), "{}", err(&o));

    // A new sandbox starts from the new binary.
    let new = Rig::id("upgrade-new");
    let o = rig.run(&["-d"], &new, &["/bin/busybox", "sleep", "300"]);
    assert!(o.status.success(), "{}\n{}", err(&o), rig.ctrd.log());
    let after = servers(&rig);
    assert!(
        after
            .iter()
            .any(|(p, exe)| p != pid && *exe == installed.display().to_string()),
        "{after:?}"
    );

    // Both go away, the old one through the new binary's `delete`: the state in the
    // wrapper's state directory is read the same by both.
    rig.kill_and_remove(&old, "SIGKILL");
    rig.kill_and_remove(&new, "SIGKILL");
    rig.assert_clean();
}

/// A node set up by the release before this one (its record has no boot unit, nothing
/// installed one): `install` of this release adds the unit, changes nothing it had
/// already set up, and `uninstall` removes both generations' files.
#[test]
fn install_over_an_earlier_releases_install_adds_what_is_new_and_keeps_the_rest() {
    use kata_gpu_tests::{SimHost, VfioMode};
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    // containerd finds the shim, as after `make install`: install succeeds.
    kata_gpu_tests::place_built_shims(&sim);
    let out = common::kata_gpu(&sim, &["install", "--config-version", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Make it the earlier release's node: no unit, and a record without the field.
    let handler = "kata-qemu-nvidia-gpu-snp";
    let state = sim.path(&format!("var/lib/kata-gpu/state/{handler}.json"));
    let mut record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&state).expect("state")).expect("json");
    record
        .as_object_mut()
        .expect("object")
        .remove("boot_unit")
        .expect("this release records the unit");
    fs::write(&state, record.to_string()).expect("write");
    let unit = sim.path(&format!("etc/systemd/system/kata-gpu-{handler}.service"));
    let link = sim.path(&format!(
        "etc/systemd/system/multi-user.target.wants/kata-gpu-{handler}.service"
    ));
    fs::remove_file(&unit).expect("rm unit");
    fs::remove_file(&link).expect("rm link");
    let config = fs::read_to_string(sim.path("etc/containerd/config.toml")).expect("config");

    let out = common::kata_gpu(&sim, &["install", "--config-version", "2"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("boot:         wrote "), "{said}");
    assert!(said.contains("containerd:   nothing to change"), "{said}");
    assert!(
        said.contains("cdi:          host specs up to date"),
        "{said}"
    );
    assert_eq!(
        fs::read_to_string(sim.path("etc/containerd/config.toml")).expect("config"),
        config
    );
    assert!(unit.is_file() && fs::read_link(&link).is_ok());

    let out = common::kata_gpu(&sim, &["uninstall"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!unit.exists() && fs::symlink_metadata(&link).is_err());
    assert!(!sim.path("etc/containerd/config.toml").exists());
}
