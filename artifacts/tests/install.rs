//! Installing sets from every kind of source, and what the store looks like after.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use kata_gpu_artifacts::layout::{current_config_path, CONFIG_FILE, MANIFEST_FILE};
use kata_gpu_artifacts::{install, InstallOptions, InstallOutcome, Role};

fn opts() -> InstallOptions {
    InstallOptions::default()
}

#[test]
fn a_directory_is_installed_by_digest_and_made_current() {
    let host = Host::new();
    let src = write_dir(&host.src("set"), &full_set("a"));
    let store = host.store();
    let report = install(&store, &src, &opts()).expect("install");
    assert_eq!(report.outcome, InstallOutcome::Installed);
    assert!(report.version.starts_with("sha256-") && report.version.len() == 71);
    assert_eq!(
        report.manifest.digest,
        format!("sha256:{}", &report.version[7..])
    );
    assert_eq!(report.previous, None);

    let class_dir = host.class_dir();
    assert_eq!(
        fs::read_link(class_dir.join("current")).expect("current link"),
        Path::new(&report.version)
    );
    let set_dir = class_dir.join(&report.version);
    for name in [
        "vmlinuz-6.12.8-nvidia-gpu-confidential",
        "kata-containers-nvidia-gpu-confidential.img",
        "AMDSEV.fd",
        "qemu-system-x86_64",
        "sbom.spdx.json",
        CONFIG_FILE,
        MANIFEST_FILE,
    ] {
        assert!(set_dir.join(name).is_file(), "{name} installed");
    }
    assert!(!set_dir
        .join("configuration-qemu-nvidia-gpu-snp.toml")
        .exists());
    let mode = |n: &str| {
        fs::metadata(set_dir.join(n))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("qemu-system-x86_64"), 0o555);
    assert_eq!(mode("AMDSEV.fd"), 0o444);

    // containerd's ConfigPath goes through `current`.
    let config_path = host.root().join(
        current_config_path(Path::new(ROOT), CLASS)
            .strip_prefix("/")
            .expect("absolute"),
    );
    let config = fs::read_to_string(config_path).expect("config through current");
    let host_dir = format!("{ROOT}/{CLASS}/{}", report.version);
    let expected = BASE_CONFIG
        .replace(
            "/opt/kata/bin/qemu-snp-experimental",
            &format!("{host_dir}/qemu-system-x86_64"),
        )
        .replace(
            "/opt/kata/share/kata-containers/vmlinuz-nvidia-gpu-confidential.container",
            &format!("{host_dir}/vmlinuz-6.12.8-nvidia-gpu-confidential"),
        )
        .replace(
            "/opt/kata/share/kata-containers/kata-containers-nvidia-gpu-confidential.img",
            &format!("{host_dir}/kata-containers-nvidia-gpu-confidential.img"),
        )
        .replace(
            "/opt/kata/share/ovmf/AMDSEV.fd",
            &format!("{host_dir}/AMDSEV.fd"),
        );
    assert_eq!(
        config, expected,
        "every path of the set, comments and other keys kept"
    );

    let m = &report.manifest;
    let cfg = m.file_with(Role::Config).expect("config record");
    assert_eq!(cfg.path.as_str(), CONFIG_FILE);
    let original = cfg.original.as_ref().expect("original recorded");
    assert_eq!(
        original.path.as_str(),
        "configuration-qemu-nvidia-gpu-snp.toml"
    );
    assert_eq!(original.size, BASE_CONFIG.len() as u64);
    let kernel = m.file_with(Role::Kernel).expect("kernel record");
    assert_eq!(kernel.size, 8);
    assert_eq!(
        kernel.sha256,
        kata_gpu_artifacts::digest::Sha256Digest::of(b"kernel a").hex()
    );
    let on_disk: kata_gpu_artifacts::Manifest =
        serde_json::from_slice(&fs::read(set_dir.join(MANIFEST_FILE)).expect("manifest"))
            .expect("json");
    assert_eq!(&on_disk, m);
}

#[test]
fn one_set_has_one_digest_whatever_the_source_and_installs_once() {
    let host = Host::new();
    let files = full_set("a");
    let dir = write_dir(&host.src("dir"), &files);
    let tar = write_tar(&host.src("set.tar"), &files, &[], false);
    let tgz = write_tar(&host.src("set.tar.gz"), &files, &[], true);
    let oci = write_oci(&host.src("oci"), &files, "v1");
    let store = host.store();
    let first = install(&store, &dir, &opts()).expect("dir");
    let before = snapshot(&host.class_dir());
    for src in [&tar, &tgz, &oci, &dir] {
        let again = install(&store, src, &opts()).expect("same set");
        assert_eq!(
            again.outcome,
            InstallOutcome::Unchanged,
            "{}",
            src.display()
        );
        assert_eq!(again.version, first.version, "{}", src.display());
        assert_eq!(
            snapshot(&host.class_dir()),
            before,
            "nothing new from {}",
            src.display()
        );
    }
}

#[test]
fn a_second_set_becomes_current_and_the_first_previous() {
    let host = Host::new();
    let store = host.store();
    let a = install(&store, &write_dir(&host.src("a"), &full_set("a")), &opts()).expect("a");
    let b = install(&store, &write_dir(&host.src("b"), &full_set("b")), &opts()).expect("b");
    assert_ne!(a.version, b.version);
    assert_eq!(b.previous.as_deref(), Some(a.version.as_str()));
    assert_eq!(
        store.current().expect("read").as_deref(),
        Some(b.version.as_str())
    );
    assert_eq!(
        store.previous().expect("read").as_deref(),
        Some(a.version.as_str())
    );
    // Installing the first again switches back without copying anything new.
    let again = install(&store, &host.src("a"), &opts()).expect("a again");
    assert_eq!(again.outcome, InstallOutcome::Switched);
    assert_eq!(
        store.current().expect("read").as_deref(),
        Some(a.version.as_str())
    );
    assert_eq!(store.versions().expect("list").len(), 2);
    let listed = store.list().expect("list");
    assert!(listed[0].current && listed[1].previous, "{listed:?}");
}

#[test]
fn an_initrd_set_and_a_set_without_qemu_or_firmware_install() {
    let host = Host::new();
    let mut files = without(&without(&full_set("a"), "qemu-system-x86_64"), "AMDSEV.fd");
    files.retain(|x| !x.name.ends_with(".img"));
    files.push(f("kata-containers-initrd-confidential.img", "initrd"));
    let store = host.store();
    let r = install(&store, &write_dir(&host.src("s"), &files), &opts()).expect("install");
    let config =
        fs::read_to_string(host.class_dir().join(&r.version).join(CONFIG_FILE)).expect("config");
    assert!(config.contains(&format!(
        "initrd = \"{ROOT}/{CLASS}/{}/kata-containers-initrd-confidential.img\"",
        r.version
    )));
    assert!(!config.contains("\nimage ="), "{config}");
    // Without QEMU or firmware in the set, the shipped paths stay.
    assert!(config.contains("path = \"/opt/kata/bin/qemu-snp-experimental\""));
    assert!(config.contains("firmware = \"/opt/kata/share/ovmf/AMDSEV.fd\" # SNP firmware"));
}

#[test]
fn links_inside_the_set_are_aliases_and_nested_files_keep_their_place() {
    let host = Host::new();
    let mut files = full_set("a");
    files[0].name = "share/vmlinuz-6.12.8".into();
    let tar = write_tar(
        &host.src("set.tgz"),
        &files,
        &[
            Entry::Dir("share/"),
            Entry::Symlink("share/vmlinuz.container", "vmlinuz-6.12.8"),
            Entry::Hardlink(
                "kata.img.link",
                "kata-containers-nvidia-gpu-confidential.img",
            ),
        ],
        true,
    );
    let store = host.store();
    let r = install(&store, &tar, &opts()).expect("install");
    assert_eq!(
        r.aliases,
        vec![
            (
                "kata.img.link".to_owned(),
                "kata-containers-nvidia-gpu-confidential.img".to_owned()
            ),
            (
                "share/vmlinuz.container".to_owned(),
                "share/vmlinuz-6.12.8".to_owned()
            ),
        ]
    );
    let dir = host.class_dir().join(&r.version);
    assert!(dir.join("share/vmlinuz-6.12.8").is_file());
    assert!(!dir.join("share/vmlinuz.container").exists());
    let config = fs::read_to_string(dir.join(CONFIG_FILE)).expect("config");
    assert!(config.contains(&format!("{}/share/vmlinuz-6.12.8\"", r.version)));
}

#[test]
fn an_oci_layout_with_several_tags_installs_the_one_named() {
    let host = Host::new();
    let oci = host.src("oci");
    write_oci(&oci, &full_set("a"), "v1");
    write_oci(&oci, &full_set("b"), "v2");
    let store = host.store();
    let e = install(&store, &oci, &opts()).expect_err("ambiguous");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: lists 2 manifests; name one with --ref TAG (tags: [v1, v2])",
            oci.join("index.json").display()
        )
    );
    let r = install(
        &store,
        &oci,
        &InstallOptions {
            oci_ref: Some("v2".into()),
        },
    )
    .expect("v2");
    let kernel = r.manifest.file_with(Role::Kernel).expect("kernel");
    assert_eq!(
        kernel.sha256,
        kata_gpu_artifacts::digest::Sha256Digest::of(b"kernel b").hex()
    );
    let e = install(
        &store,
        &oci,
        &InstallOptions {
            oci_ref: Some("v3".into()),
        },
    )
    .expect_err("no v3");
    assert!(
        e.to_string()
            .ends_with("no manifest is tagged \"v3\" (tags: [v1, v2]); name one of those"),
        "{e}"
    );
}

#[test]
fn an_oci_tar_layer_contributes_its_entries() {
    let host = Host::new();
    let oci = host.src("oci");
    let layer = gzip(&tar_bytes(&full_set("a"), &[]));
    let d = blob(&oci, &layer);
    add_manifest(
        &oci,
        vec![serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d.to_string(),
            "size": layer.len(),
        })],
        "v1",
    );
    let store = host.store();
    let r = install(&store, &oci, &opts()).expect("install");
    let from_dir =
        install(&store, &write_dir(&host.src("d"), &full_set("a")), &opts()).expect("dir");
    assert_eq!(from_dir.version, r.version);
}

/// The base config of a set is read from every kind of source as the set ships it (before
/// an install rewrites it), and nothing is written: a caller checks it first.
#[test]
fn the_base_config_is_read_from_every_source_without_writing() {
    let host = Host::new();
    let files = full_set("a");
    let want = files
        .iter()
        .find(|f| f.name.starts_with("configuration"))
        .map(|f| String::from_utf8(f.data.clone()).expect("text"))
        .expect("a config in the set");
    let sources = [
        write_dir(&host.src("set"), &files),
        write_tar(&host.src("set.tar"), &files, &[], false),
        write_tar(&host.src("set.tar.gz"), &files, &[], true),
        write_oci(&host.src("oci"), &files, "v1"),
    ];
    for src in &sources {
        let (at, text) = kata_gpu_artifacts::read_base_config(src, &opts())
            .unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        assert_eq!(text, want, "{}", src.display());
        assert!(
            at.display().to_string().ends_with(".toml"),
            "{}",
            at.display()
        );
    }
    assert!(!host.class_dir().exists(), "reading wrote the store");
}
