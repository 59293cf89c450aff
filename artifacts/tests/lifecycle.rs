//! verify, rollback, prune, remove, and installs that are interrupted or run concurrently.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};

use common::*;
use kata_gpu_artifacts::layout::{CONFIG_FILE, STAGING_PREFIX};
use kata_gpu_artifacts::{
    install, prune, remove_class, rollback, stage, verify, InstallOptions, InstallOutcome, Store,
};

fn opts() -> InstallOptions {
    InstallOptions::default()
}

fn two_sets(host: &Host) -> (Store, String, String) {
    let store = host.store();
    let a = install(&store, &write_dir(&host.src("a"), &full_set("a")), &opts()).expect("a");
    let b = install(&store, &write_dir(&host.src("b"), &full_set("b")), &opts()).expect("b");
    (store, a.version, b.version)
}

fn staging_dirs(host: &Host) -> Vec<String> {
    fs::read_dir(host.class_dir())
        .expect("class dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(STAGING_PREFIX))
        .collect()
}

#[test]
fn verify_names_every_file_that_changed() {
    let host = Host::new();
    let store = host.store();
    let r = install(&store, &write_dir(&host.src("a"), &full_set("a")), &opts()).expect("install");
    let reports = verify(&store, false).expect("verify");
    assert_eq!(reports.len(), 1);
    assert!(reports[0].findings.is_empty(), "{:?}", reports[0].findings);
    assert_eq!(reports[0].files, 6);

    let dir = host.class_dir().join(&r.version);
    let host_dir = format!("{ROOT}/{CLASS}/{}", r.version);
    tamper(&dir.join("AMDSEV.fd"), b"evil fw!");
    tamper(
        &dir.join(CONFIG_FILE),
        b"[hypervisor.qemu]\nkernel = \"/tmp/evil\"\n",
    );
    fs::remove_file(dir.join("sbom.spdx.json")).expect("rm");
    fs::write(dir.join("extra"), b"x").expect("write");
    let findings: Vec<String> = verify(&store, false).expect("verify")[0]
        .findings
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(findings.len(), 4, "{findings:#?}");
    assert_eq!(
        findings[0],
        format!(
            "{host_dir}/AMDSEV.fd: content changed (sha256 {}, manifest says {}); reinstall the set",
            kata_gpu_artifacts::digest::Sha256Digest::of(b"evil fw!").hex(),
            kata_gpu_artifacts::digest::Sha256Digest::of(b"firmware").hex()
        )
    );
    assert!(
        findings[1].starts_with(&format!(
            "{host_dir}/configuration.toml: size changed from "
        )),
        "{}",
        findings[1]
    );
    assert_eq!(
        findings[2],
        format!("{host_dir}/sbom.spdx.json: missing; reinstall the set")
    );
    assert_eq!(
        findings[3],
        format!("{host_dir}/extra: not part of the set (not in its manifest); remove it")
    );

    // Installing the same set again repairs it in place.
    fs::remove_file(dir.join("extra")).expect("rm");
    let again = install(&store, &host.src("a"), &opts()).expect("repair");
    assert_eq!(again.outcome, InstallOutcome::Repaired);
    assert!(verify(&store, false).expect("verify")[0]
        .findings
        .is_empty());
    assert!(staging_dirs(&host).is_empty());
}

#[test]
fn verify_without_a_set_says_how_to_install_one() {
    let host = Host::new();
    let e = verify(&host.store(), false).expect_err("nothing installed");
    assert_eq!(
        e.to_string(),
        // Where a user on this machine finds it: under the host root.
        format!(
            "{}{ROOT}/{CLASS}: no artifact set is installed (no `current` link); run `kata-gpu artifacts install SRC --class NAME`",
            host.root().display()
        )
    );
}

#[test]
fn rollback_switches_to_the_previous_set_and_back() {
    let host = Host::new();
    let (store, a, b) = two_sets(&host);
    let s = rollback(&store).expect("rollback");
    assert_eq!((s.from.as_str(), s.to.as_str()), (b.as_str(), a.as_str()));
    assert_eq!(store.current().expect("read"), Some(a.clone()));
    assert_eq!(store.previous().expect("read"), Some(b.clone()));
    rollback(&store).expect("roll forward");
    assert_eq!(store.current().expect("read"), Some(b));
}

#[test]
fn rollback_refuses_without_a_previous_set_or_to_a_damaged_one() {
    let host = Host::new();
    let store = host.store();
    let e = rollback(&store).expect_err("nothing");
    assert!(
        e.to_string().contains("no artifact set is installed"),
        "{e}"
    );
    install(&store, &write_dir(&host.src("a"), &full_set("a")), &opts()).expect("a");
    let e = rollback(&store).expect_err("no previous");
    assert_eq!(
        e.to_string(),
        format!(
            "{}{ROOT}/{CLASS}: no previous set to roll back to; install the set you want instead",
            host.root().display()
        )
    );
    let (store, a, _) = two_sets(&host);
    tamper(&host.class_dir().join(&a).join("AMDSEV.fd"), b"evil");
    let before = snapshot(&host.class_dir());
    let e = rollback(&store).expect_err("damaged");
    assert!(
        e.to_string().starts_with(&format!("{ROOT}/{CLASS}/previous: the previous set {a} is damaged ({ROOT}/{CLASS}/{a}/AMDSEV.fd: size changed from 8 to 4 bytes")),
        "{e}"
    );
    assert_eq!(snapshot(&host.class_dir()), before);
}

#[test]
fn prune_keeps_current_and_sets_running_sandboxes_use() {
    let host = Host::new();
    let store = host.store();
    let mut versions = Vec::new();
    for tag in ["a", "b", "c", "d"] {
        let r =
            install(&store, &write_dir(&host.src(tag), &full_set(tag)), &opts()).expect("install");
        versions.push(r.version);
    }
    // A sandbox started while "a" was current still boots from it.
    let a_config =
        fs::read_to_string(host.class_dir().join(&versions[0]).join(CONFIG_FILE)).expect("config");
    let sandbox = host.sandbox("pod-1", &a_config);
    let dry = prune(&store, 2, true).expect("dry run");
    assert_eq!(dry.removed, vec![versions[1].clone()]);
    assert_eq!(
        store.versions().expect("list").len(),
        4,
        "a dry run removes nothing"
    );

    let r = prune(&store, 1, false).expect("prune");
    let mut removed = r.removed.clone();
    removed.sort();
    let mut expected = vec![versions[1].clone(), versions[2].clone()];
    expected.sort();
    assert_eq!(removed, expected);
    let kept: Vec<(&str, Vec<String>)> = r
        .kept
        .iter()
        .map(|k| (k.version.as_str(), k.reasons.clone()))
        .collect();
    assert_eq!(
        kept,
        vec![
            (
                versions[3].as_str(),
                vec!["current".to_owned(), "within --keep".to_owned()]
            ),
            (
                versions[0].as_str(),
                vec![format!(
                    "in use by /run/kata-gpu/sandboxes/pod-1/configuration.toml"
                )]
            ),
        ]
    );
    assert_eq!(
        store.previous().expect("read"),
        None,
        "the pruned previous link is gone"
    );
    assert!(!host.class_dir().join(&versions[1]).exists());

    // The shim's own layout, <state dir>/<namespace>/<sandbox>/, counts as well.
    fs::remove_file(&sandbox).expect("rm");
    let dir = host.root().join("run/kata-gpu/k8s.io/pod-9");
    fs::create_dir_all(&dir).expect("mkdir");
    fs::write(dir.join(CONFIG_FILE), &a_config).expect("write");
    let r = prune(&store, 0, true).expect("dry run");
    assert_eq!(
        r.kept[1].reasons,
        vec!["in use by /run/kata-gpu/k8s.io/pod-9/configuration.toml".to_owned()]
    );
    fs::remove_dir_all(&dir).expect("rm");

    // prune --keep 0 still keeps the current set; the sandbox gone, "a" goes too.
    let r = prune(&store, 0, false).expect("prune");
    assert_eq!(r.removed, vec![versions[0].clone()]);
    assert_eq!(store.versions().expect("list"), vec![versions[3].clone()]);
}

#[test]
fn prune_refuses_when_a_sandbox_config_cannot_be_read() {
    let host = Host::new();
    let (store, _, _) = two_sets(&host);
    fs::create_dir_all(
        host.root()
            .join("run/kata-gpu/sandboxes/pod-2/configuration.toml"),
    )
    .expect("mkdir");
    let before = snapshot(&host.class_dir());
    let e = prune(&store, 1, false).expect_err("unreadable");
    assert!(
        e.to_string().starts_with(&format!(
            "{}: cannot be read (",
            host.root()
                .join("run/kata-gpu/sandboxes/pod-2/configuration.toml")
                .display()
        )),
        "{e}"
    );
    assert!(
        e.to_string()
            .ends_with("prune does not guess which sets are in use: fix or remove it"),
        "{e}"
    );
    assert_eq!(snapshot(&host.class_dir()), before);
}

#[test]
fn an_install_interrupted_between_copy_and_switch_changes_nothing() {
    let host = Host::new();
    let (store, _, b) = two_sets(&host);
    let before = snapshot(&host.class_dir());

    // Stopped cleanly (an error, a signal handled): the staging directory goes away.
    let staged = stage(&store, &write_dir(&host.src("c"), &full_set("c")), &opts()).expect("stage");
    let staging = staged.staging_dir().expect("copied").to_path_buf();
    assert!(
        staging.join(CONFIG_FILE).is_file(),
        "fully copied before the switch"
    );
    assert_eq!(store.current().expect("read"), Some(b.clone()));
    drop(staged);
    assert_eq!(snapshot(&host.class_dir()), before);

    // Killed between copy and switch: what a killed install leaves is its staging
    // directory, copied in full or in part. Readers never see it; `current` is untouched;
    // the next command that takes the lock removes it.
    let staged = stage(&store, &host.src("c"), &opts()).expect("stage");
    let src = staged.staging_dir().expect("copied").to_path_buf();
    let left = host.class_dir().join(format!("{STAGING_PREFIX}killed"));
    fs::create_dir(&left).expect("mkdir");
    fs::copy(src.join("AMDSEV.fd"), left.join("AMDSEV.fd")).expect("partial copy");
    drop(staged);
    assert_eq!(store.current().expect("read"), Some(b.clone()));
    assert_eq!(store.versions().expect("list").len(), 2);
    assert!(verify(&store, true)
        .expect("verify")
        .iter()
        .all(|r| r.findings.is_empty()));
    let c = install(&store, &host.src("c"), &opts()).expect("install after a crash");
    assert_eq!(c.outcome, InstallOutcome::Installed);
    assert!(staging_dirs(&host).is_empty());
    assert_eq!(store.previous().expect("read"), Some(b));
}

#[test]
fn a_second_installer_waits_for_the_lock_then_gives_up() {
    let host = Host::new();
    let store = host.store();
    install(&store, &write_dir(&host.src("a"), &full_set("a")), &opts()).expect("a");
    let staged = stage(&store, &write_dir(&host.src("b"), &full_set("b")), &opts()).expect("stage");
    let e =
        install(&store, &write_dir(&host.src("c"), &full_set("c")), &opts()).expect_err("locked");
    assert_eq!(
        e.to_string(),
        format!("{}: another `kata-gpu artifacts` command holds the store lock; wait for it to finish and retry", host.class_dir().join(".lock").display())
    );
    let r = staged.commit().expect("commit");
    assert_eq!(r.outcome, InstallOutcome::Installed);
    assert!(matches!(
        verify(&store, false).expect("verify")[0]
            .findings
            .as_slice(),
        []
    ));
}

#[test]
fn remove_class_removes_the_whole_store_and_then_its_directory() {
    let host = Host::new();
    let (store, a, b) = two_sets(&host);
    let before = snapshot(host.root());
    let dry = remove_class(&store, true).expect("dry run");
    let mut sets = [a.clone(), b.clone()];
    sets.sort();
    assert_eq!(
        dry.removed,
        ["current", "previous", &sets[0], &sets[1], ".lock"]
    );
    assert!(dry.present && dry.dir_removed && dry.kept.is_empty());
    assert_eq!(snapshot(host.root()), before, "a dry run removes nothing");

    let r = remove_class(&store, false).expect("remove");
    assert_eq!(r.removed, dry.removed);
    assert!(!host.class_dir().exists(), "class dir left");
    assert!(
        host.class_dir().parent().expect("root").is_dir(),
        "the store root stays"
    );
    assert_eq!(store.current().expect("read"), None);
    let again = remove_class(&store, false).expect("nothing left");
    assert!(!again.present && again.removed.is_empty());

    // A file the store did not write (the shim's settings) stays, and its directory.
    install(&store, &write_dir(&host.src("c"), &full_set("c")), &opts()).expect("install");
    fs::write(
        host.class_dir().join("shim.toml"),
        "state_dir = \"/run/x\"\n",
    )
    .expect("write");
    let r = remove_class(&store, false).expect("remove");
    assert_eq!(r.kept, ["shim.toml"]);
    assert!(!r.dir_removed);
    assert_eq!(
        fs::read_dir(host.class_dir())
            .expect("class dir")
            .map(|e| e.expect("entry").file_name())
            .collect::<Vec<_>>(),
        ["shim.toml"]
    );
}

#[test]
fn remove_class_refuses_a_store_a_running_sandbox_uses_and_changes_nothing() {
    let host = Host::new();
    let (store, a, _) = two_sets(&host);
    let a_config = fs::read_to_string(host.class_dir().join(&a).join(CONFIG_FILE)).expect("config");
    host.sandbox("pod-1", &a_config);
    let before = snapshot(host.root());
    for dry_run in [true, false] {
        let e = remove_class(&store, dry_run).expect_err("in use");
        assert_eq!(
            e.to_string(),
            format!(
                "{root}/opt/nvidia-gpu-operator/artifacts/runtimeclasses/{CLASS}: set {a} is in use by \
                 {root}/run/kata-gpu/sandboxes/pod-1/configuration.toml; nothing was removed: stop \
                 those pods (or delete the configuration a sandbox that is gone left behind) and retry",
                root = host.root().display()
            )
        );
        assert_eq!(snapshot(host.root()), before, "byte for byte");
    }

    // A configuration naming the store only through `current` counts too.
    fs::remove_dir_all(host.root().join("run/kata-gpu/sandboxes/pod-1")).expect("rm");
    let dir = host.root().join("run/kata-gpu/k8s.io/pod-2");
    fs::create_dir_all(&dir).expect("mkdir");
    fs::write(
        dir.join(CONFIG_FILE),
        format!(
            "kernel = \"/opt/nvidia-gpu-operator/artifacts/runtimeclasses/{CLASS}/current/vmlinuz\"\n"
        ),
    )
    .expect("write");
    let e = remove_class(&store, false).expect_err("in use");
    assert!(
        e.to_string().contains(&format!(
            ": the store is in use by {}/run/kata-gpu/k8s.io/pod-2/configuration.toml; nothing was removed",
            host.root().display()
        )),
        "{e}"
    );
    assert!(host.class_dir().join("current").exists());

    // An unreadable configuration is not guessed about.
    fs::remove_file(dir.join(CONFIG_FILE)).expect("rm");
    fs::create_dir(dir.join(CONFIG_FILE)).expect("mkdir");
    let e = remove_class(&store, false).expect_err("unreadable");
    assert!(
        e.to_string()
            .ends_with("remove does not guess which sets are in use: fix or remove it"),
        "{e}"
    );
    assert!(host.class_dir().join("current").exists());
}

#[test]
fn remove_class_unlinks_links_to_elsewhere_and_leaves_their_targets() {
    let host = Host::new();
    let (store, _, b) = two_sets(&host);
    let outside = host.src("outside");
    fs::create_dir_all(outside.join("sub")).expect("mkdir");
    fs::write(outside.join("keep"), "keep me").expect("write");
    fs::write(outside.join("sub/deeper"), "me too").expect("write");
    let targets = snapshot(&outside);
    // A link to a directory and one to a file inside a set, and a "set" that is a link.
    let set_dir = host.class_dir().join(&b);
    let mode = fs::metadata(&set_dir).expect("meta").permissions();
    fs::set_permissions(&set_dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    symlink(&outside, set_dir.join("escape")).expect("link");
    symlink(outside.join("keep"), set_dir.join("keep")).expect("link");
    fs::set_permissions(&set_dir, mode).expect("chmod");
    let fake = format!("sha256-{}", "ab".repeat(32));
    symlink(&outside, host.class_dir().join(&fake)).expect("link");

    let r = remove_class(&store, false).expect("remove");
    assert!(r.removed.contains(&fake), "{:?}", r.removed);
    assert!(!host.class_dir().exists(), "class dir left");
    assert_eq!(snapshot(&outside), targets, "a link's target was touched");
}

/// Replaces a file of an installed set and its record in the set's manifest, as someone
/// covering their tracks would: the manifest then agrees with the file.
fn tamper_with_manifest(dir: &std::path::Path, name: &str, data: &[u8]) {
    let genuine = fs::read(dir.join(name)).expect("read genuine");
    tamper(&dir.join(name), data);
    let manifest = dir.join(kata_gpu_artifacts::layout::MANIFEST_FILE);
    let text = fs::read_to_string(&manifest).expect("manifest");
    let hex = |b: &[u8]| kata_gpu_artifacts::digest::Sha256Digest::of(b).hex();
    // Same size, so that only the digest in the manifest changes.
    assert_eq!(genuine.len(), data.len());
    let forged = text.replace(&hex(&genuine), &hex(data));
    assert_ne!(forged, text, "the manifest lists {name}");
    tamper(&manifest, forged.as_bytes());
}

#[test]
fn verify_does_not_trust_a_manifest_changed_with_the_file() {
    let host = Host::new();
    let store = host.store();
    let r = install(&store, &write_dir(&host.src("a"), &full_set("a")), &opts()).expect("install");
    let dir = host.class_dir().join(&r.version);
    let host_dir = format!("{ROOT}/{CLASS}/{}", r.version);
    tamper_with_manifest(&dir, "vmlinuz-6.12.8-nvidia-gpu-confidential", b"kernel X");
    let reports = verify(&store, false).expect("verify");
    let findings: Vec<String> = reports[0]
        .findings
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert!(
        findings[0].starts_with(&format!(
            "{host_dir}/kata-gpu-manifest.json: the manifest does not match the set's name: \
             its files hash to sha256:"
        )),
        "{}",
        findings[0]
    );
    assert!(
        findings[0].ends_with(&format!(
            ", not the {} the set is named for; it was changed after install; reinstall the set \
             from its source",
            r.version.replacen('-', ":", 1)
        )),
        "{}",
        findings[0]
    );
}

#[test]
fn reinstalling_the_genuine_set_replaces_a_file_changed_with_its_manifest() {
    let host = Host::new();
    let store = host.store();
    let src = write_dir(&host.src("a"), &full_set("a"));
    let r = install(&store, &src, &opts()).expect("install");
    let dir = host.class_dir().join(&r.version);
    let genuine = fs::read(dir.join("vmlinuz-6.12.8-nvidia-gpu-confidential")).expect("kernel");
    tamper_with_manifest(&dir, "vmlinuz-6.12.8-nvidia-gpu-confidential", b"kernel X");

    let again = install(&store, &src, &opts()).expect("reinstall");
    assert_eq!(again.outcome, InstallOutcome::Repaired);
    assert_eq!(
        fs::read(dir.join("vmlinuz-6.12.8-nvidia-gpu-confidential")).expect("kernel"),
        genuine
    );
    assert!(verify(&store, false).expect("verify")[0]
        .findings
        .is_empty());

    assert!(staging_dirs(&host).is_empty());
}

#[test]
fn reinstalling_compares_the_fresh_config_with_the_stored_one() {
    let host = Host::new();
    let store = host.store();
    let src = write_dir(&host.src("a"), &full_set("a"));
    let r = install(&store, &src, &opts()).expect("install");
    let dir = host.class_dir().join(&r.version);
    let genuine = fs::read(dir.join(CONFIG_FILE)).expect("config");
    // The rewritten config is not part of the set digest (only the file as shipped is):
    // changed with its record, only a fresh rewrite tells.
    let mut evil = genuine.clone();
    let at = evil.len() - 2;
    evil[at] = b'#';
    tamper_with_manifest(&dir, CONFIG_FILE, &evil);

    let again = install(&store, &src, &opts()).expect("reinstall");
    assert_eq!(again.outcome, InstallOutcome::Repaired);
    assert_eq!(fs::read(dir.join(CONFIG_FILE)).expect("config"), genuine);
    assert!(staging_dirs(&host).is_empty());
}
