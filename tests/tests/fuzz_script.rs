//! `make fuzz` (fuzz/run.sh) on a machine without cargo-fuzz: it says, before the long
//! install starts, that it installs cargo-fuzz and that this takes minutes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn the_fuzz_script_says_it_installs_cargo_fuzz_before_it_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A cargo without the fuzz subcommand that records what it is asked and refuses to
    // install (so that nothing is built here).
    let record = dir.path().join("cargo.args");
    let cargo = dir.path().join("cargo");
    fs::write(
        &cargo,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\necho \"cargo $1: not here\" >&2\nexit 1\n",
            record.display()
        ),
    )
    .expect("write cargo");
    fs::set_permissions(&cargo, fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/run.sh"))
        .arg("1")
        .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
        .output()
        .expect("run fuzz/run.sh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    let notice = err
        .find("installing it first with cargo install cargo-fuzz --locked (a build of several minutes")
        .expect("the notice");
    let failure = err
        .find("cargo install: not here")
        .expect("the install ran");
    assert!(notice < failure, "{err}");
    assert_eq!(
        fs::read_to_string(&record).expect("args"),
        "fuzz --version\ninstall cargo-fuzz --locked\n"
    );
}
