//! Every refusal: the exact message, and proof that nothing changed on disk.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use kata_gpu_artifacts::{install, InstallOptions};

/// Installs a good set, then `src`; the second must fail and leave the store exactly as
/// it was. Returns the message.
fn refused(host: &Host, src: &Path) -> String {
    let store = host.store();
    install(
        &store,
        &write_dir(&host.src("good"), &full_set("good")),
        &InstallOptions::default(),
    )
    .expect("good set");
    let before = snapshot(&host.class_dir());
    let err = install(&store, src, &InstallOptions::default()).expect_err("refused");
    assert_eq!(
        snapshot(&host.class_dir()),
        before,
        "the store changed: {err}"
    );
    err.to_string()
}

/// Like `refused` on an empty host: not even the store's directories may appear.
fn refused_first(host: &Host, src: &Path) -> String {
    let err = install(&host.store(), src, &InstallOptions::default()).expect_err("refused");
    assert!(
        !host.root().join("opt").exists(),
        "the store was created: {err}"
    );
    err.to_string()
}

fn tar_with(host: &Host, name: &str, extra: &[Entry<'_>]) -> PathBuf {
    write_tar(&host.src(name), &full_set("x"), extra, false)
}

#[test]
fn a_set_without_a_kernel_is_refused_naming_the_files() {
    let host = Host::new();
    let src = write_dir(
        &host.src("s"),
        &without(&full_set("x"), "vmlinuz-6.12.8-nvidia-gpu-confidential"),
    );
    let msg = refused(&host, &src);
    assert_eq!(
        msg,
        format!(
            "{}: no kernel (vmlinuz-*) among the files [AMDSEV.fd, configuration-qemu-nvidia-gpu-snp.toml, kata-containers-nvidia-gpu-confidential.img, qemu-system-x86_64, sbom.spdx.json]; add one",
            src.display()
        )
    );
}

#[test]
fn a_set_without_an_image_or_a_config_is_refused() {
    let host = Host::new();
    let src = write_dir(
        &host.src("s"),
        &without(
            &full_set("x"),
            "kata-containers-nvidia-gpu-confidential.img",
        ),
    );
    let msg = refused(&host, &src);
    assert!(
        msg.starts_with(&format!(
            "{}: no guest image or initrd (*.img, *initrd*) among the files [",
            src.display()
        )),
        "{msg}"
    );
    let src = write_dir(
        &host.src("t"),
        &without(&full_set("x"), "configuration-qemu-nvidia-gpu-snp.toml"),
    );
    let msg = refused(&host, &src);
    assert!(
        msg.contains(": no base Kata configuration (configuration-*.toml) among the files ["),
        "{msg}"
    );
}

#[test]
fn two_candidates_for_a_role_are_refused_naming_both() {
    let host = Host::new();
    let mut files = full_set("x");
    files.push(f("vmlinuz-6.1", "old kernel"));
    let src = write_dir(&host.src("s"), &files);
    assert_eq!(
        refused(&host, &src),
        format!(
            "{}: 2 candidates for the kernel (vmlinuz-*): vmlinuz-6.1, vmlinuz-6.12.8-nvidia-gpu-confidential; keep exactly one",
            src.display()
        )
    );
    let mut files = full_set("x");
    files.push(f("kata-containers-initrd.img", "initrd"));
    let src = write_dir(&host.src("t"), &files);
    assert_eq!(
        refused(&host, &src),
        format!(
            "{}: 2 candidates for the guest image or initrd (*.img, *initrd*): kata-containers-initrd.img, kata-containers-nvidia-gpu-confidential.img; keep exactly one",
            src.display()
        )
    );
}

#[test]
fn escaping_tar_entries_are_refused_before_anything_is_written() {
    let cases: [(&str, Entry<'_>, &str); 6] = [
        ("dotdot.tar", Entry::File("../evil", b"x"), "entry \"../evil\" climbs out of the set with `..`"),
        ("deep.tar", Entry::File("a/../../evil", b"x"), "entry \"a/../../evil\" climbs out of the set with `..`"),
        ("abs.tar", Entry::File("/etc/evil", b"x"), "entry \"/etc/evil\" is an absolute path"),
        ("sym.tar", Entry::Symlink("vmlinuz.container", "/etc/passwd"), "entry \"vmlinuz.container -> /etc/passwd\" is a link to an absolute path, outside the set"),
        ("symup.tar", Entry::Symlink("a/link", "../../etc/passwd"), "entry \"a/link -> ../../etc/passwd\" is a link that climbs out of the set with `..`"),
        ("hard.tar", Entry::Hardlink("h", "../outside"), "entry \"h => ../outside\" is a hard link whose target climbs out of the set with `..`"),
    ];
    for (name, entry, why) in cases {
        let host = Host::new();
        let src = tar_with(&host, name, &[entry]);
        let msg = refused_first(&host, &src);
        assert_eq!(
            msg,
            format!("{}: {why}; nothing was installed: rebuild the source with every path inside its root", src.display())
        );
        // And with a set installed, that set stays current, untouched.
        let msg2 = refused(&host, &src);
        assert_eq!(msg, msg2);
    }
}

#[test]
fn odd_entries_are_refused() {
    let cases: [(&str, Vec<Entry<'_>>, &str); 5] = [
        (
            "fifo.tar",
            vec![Entry::Fifo("pipe")],
            "entry \"pipe\" is a FIFO",
        ),
        (
            "dup.tar",
            vec![Entry::File("AMDSEV.fd", b"again")],
            "entry \"AMDSEV.fd\" appears twice; rebuild the source with each file once",
        ),
        (
            "dangling.tar",
            vec![Entry::Symlink("l", "nothing")],
            "entry \"l -> nothing\" is a link to nothing in the set",
        ),
        (
            "todir.tar",
            vec![Entry::Dir("d/"), Entry::Symlink("l", "d")],
            "entry \"l -> d\" is a link to a directory",
        ),
        (
            "under.tar",
            vec![Entry::File("AMDSEV.fd/x", b"x")],
            "entry \"AMDSEV.fd/x\" is under AMDSEV.fd, which is not a directory",
        ),
    ];
    for (name, entries, why) in cases {
        let host = Host::new();
        let src = tar_with(&host, name, &entries);
        let msg = refused_first(&host, &src);
        assert!(
            msg.starts_with(&format!("{}: {why}", src.display())),
            "{msg}"
        );
    }
}

#[test]
fn a_directory_with_a_link_outside_is_refused() {
    let host = Host::new();
    let src = write_dir(&host.src("s"), &full_set("x"));
    std::os::unix::fs::symlink("/etc/passwd", src.join("passwd")).expect("symlink");
    let msg = refused(&host, &src);
    assert_eq!(
        msg,
        format!("{}: entry \"passwd -> /etc/passwd\" is a link to an absolute path, outside the set; nothing was installed: rebuild the source with every path inside its root", src.display())
    );
}

#[test]
fn a_tampered_oci_blob_is_refused_with_both_digests() {
    let host = Host::new();
    let oci = write_oci(&host.src("oci"), &full_set("x"), "v1");
    let kernel = kata_gpu_artifacts::digest::Sha256Digest::of(b"kernel x");
    let blob = oci.join("blobs/sha256").join(kernel.hex());
    fs::write(&blob, b"kernel y").expect("tamper");
    let msg = refused(&host, &oci);
    assert_eq!(
        msg,
        format!(
            "{}: content is {} but its descriptor says {kernel}; the blob is corrupt or was tampered with: pull the artifact again",
            blob.display(),
            kata_gpu_artifacts::digest::Sha256Digest::of(b"kernel y")
        )
    );
    // A truncated blob is caught by its size, before any copy.
    fs::write(&blob, b"kernel").expect("truncate");
    assert_eq!(
        refused(&host, &oci),
        format!("{}: 6 bytes but its descriptor says 8; the blob is truncated or was replaced: pull the artifact again", blob.display())
    );
}

#[test]
fn a_tampered_oci_manifest_or_tar_layer_is_refused() {
    let host = Host::new();
    let oci = write_oci(&host.src("oci"), &full_set("x"), "v1");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(oci.join("index.json")).expect("index")).expect("json");
    let md = index["manifests"][0]["digest"]
        .as_str()
        .expect("digest")
        .to_owned();
    let mpath = oci.join("blobs/sha256").join(&md[7..]);
    let mut m = fs::read(&mpath).expect("manifest");
    m[0] = b' ';
    fs::write(&mpath, &m).expect("tamper");
    let msg = refused(&host, &oci);
    assert!(
        msg.starts_with(&format!("{}: content is sha256:", mpath.display())),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("but its descriptor says {md}")),
        "{msg}"
    );

    let host = Host::new();
    let oci = host.src("layer");
    let layer = tar_bytes(&full_set("x"), &[]);
    let d = blob(&oci, &layer);
    let lpath = oci.join("blobs/sha256").join(d.hex());
    let mut bad = layer.clone();
    bad[600] ^= 1; // inside the first file's data
    fs::write(&lpath, &bad).expect("tamper");
    add_manifest(
        &oci,
        vec![
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": layer.len()}),
        ],
        "v1",
    );
    let msg = refused_first(&host, &oci);
    assert!(
        msg.starts_with(&format!("{}: content is sha256:", lpath.display())),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("but its descriptor says {d}")),
        "{msg}"
    );
}

#[test]
fn a_descriptor_digest_that_is_not_sha256_hex_is_refused() {
    let host = Host::new();
    let oci = host.src("oci");
    add_manifest(
        &oci,
        vec![
            serde_json::json!({"mediaType": "x", "digest": "sha256:../../../etc/passwd", "size": 1, "annotations": {"org.opencontainers.image.title": "vmlinuz-1"}}),
        ],
        "v1",
    );
    let msg = refused_first(&host, &oci);
    assert!(msg.ends_with("descriptor digest \"sha256:../../../etc/passwd\" is not sha256:<64 lowercase hex digits>; only sha256 blobs are supported"), "{msg}");
    let host = Host::new();
    let oci = host.src("oci");
    add_manifest(
        &oci,
        vec![
            serde_json::json!({"mediaType": "x", "digest": format!("sha256:{}", "0".repeat(64)), "size": 1, "annotations": {"org.opencontainers.image.title": "../vmlinuz-1"}}),
        ],
        "v1",
    );
    fs::write(oci.join("blobs/sha256").join("0".repeat(64)), "k").expect("blob");
    let msg = refused_first(&host, &oci);
    assert!(
        msg.contains("entry \"../vmlinuz-1\" climbs out of the set"),
        "{msg}"
    );
}

#[test]
fn a_broken_base_config_is_refused() {
    let host = Host::new();
    let mut files = without(&full_set("x"), "configuration-qemu-nvidia-gpu-snp.toml");
    files.push(f(
        "configuration-qemu-nvidia-gpu-snp.toml",
        "[hypervisor.qemu\nkernel = 1\n",
    ));
    let src = write_dir(&host.src("s"), &files);
    let msg = refused(&host, &src);
    assert!(
        msg.starts_with(&format!(
            "{}: not valid TOML at line 1:",
            src.join("configuration-qemu-nvidia-gpu-snp.toml").display()
        )),
        "{msg}"
    );
    assert!(
        msg.ends_with("; fix the base configuration in the source"),
        "{msg}"
    );
    let mut files = without(&full_set("x"), "configuration-qemu-nvidia-gpu-snp.toml");
    files.push(f("configuration-qemu-nvidia-gpu-snp.toml", "[runtime]\n"));
    let src = write_dir(&host.src("t"), &files);
    assert_eq!(
        refused(&host, &src),
        format!(
            "{}: no [hypervisor.<name>] table; a Kata configuration names its hypervisor there",
            src.join("configuration-qemu-nvidia-gpu-snp.toml").display()
        )
    );
}

#[test]
fn an_unknown_source_is_refused() {
    let host = Host::new();
    let src = host.src("set.zip");
    fs::write(&src, b"PK\x03\x04 not a tar").expect("write");
    assert_eq!(
        refused(&host, &src),
        format!("{}: not a directory, .tar, .tar.gz or OCI image layout (index.json + blobs/sha256/); give one of those", src.display())
    );
    let missing = host.src("missing");
    let msg = refused(&host, &missing);
    assert!(
        msg.starts_with(&format!(
            "{}: cannot read source: No such file or directory",
            missing.display()
        )),
        "{msg}"
    );
}

#[test]
fn a_bad_class_name_is_refused() {
    let host = Host::new();
    let e = kata_gpu_artifacts::Store::new(host.config(), "../etc").expect_err("bad class");
    assert_eq!(
        e.to_string(),
        "runtime class \"../etc\" is not a plain name (letters, digits, '.', '_', '-'); use e.g. kata-qemu-nvidia-gpu-snp"
    );
}
