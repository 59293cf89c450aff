//! The same inputs give the same image, byte for byte, whatever the files' dates, owners
//! or the time of the build; the commit changes the digest and shows in label and
//! annotation; the layer holds the binaries, the shim's profile names and the libraries.

use std::fs;
use std::path::Path;

use kata_gpu_image::{build, Built, Error, ImageSpec, REVISION};
use kata_gpu_plan::Profile;

fn spec(dir: &Path, revision: &str) -> ImageSpec {
    ImageSpec {
        name: "example.invalid/kata-gpu:test".into(),
        revision: revision.into(),
        kata_gpu: dir.join("kata-gpu"),
        shim: dir.join("shim"),
        shim_names: vec!["containerd-shim-a-v2".into(), "containerd-shim-b-v2".into()],
        artifacts: Vec::new(),
    }
}

fn inputs(dir: &Path) {
    // Any dynamically linked binary does: what counts is that ldd finds its libraries.
    fs::copy("/bin/true", dir.join("kata-gpu")).expect("copy");
    fs::copy("/bin/false", dir.join("shim")).expect("copy");
}

/// Every blob of the archive, in its order.
fn blobs(built: &Built) -> Vec<Vec<u8>> {
    let mut a = tar::Archive::new(&built.archive[..]);
    a.entries()
        .expect("entries")
        .map(|e| {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut e.expect("entry"), &mut bytes).expect("read");
            bytes
        })
        .collect()
}

fn blob(built: &Built, want: impl Fn(&str) -> bool) -> Vec<u8> {
    blobs(built)
        .into_iter()
        .find(|b| want(&String::from_utf8_lossy(b)))
        .expect("no such blob")
}

#[test]
fn the_same_inputs_give_the_same_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    inputs(dir.path());
    let first = build(&spec(dir.path(), "abc123")).expect("build");
    // New dates and modes on the inputs change nothing.
    inputs(dir.path());
    let f = fs::File::options()
        .append(true)
        .open(dir.path().join("shim"))
        .expect("open");
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(12345))
        .expect("touch");
    let second = build(&spec(dir.path(), "abc123")).expect("build");
    assert_eq!(first.digest, second.digest);
    assert!(first.archive == second.archive, "archives differ");

    let other = build(&spec(dir.path(), "def456")).expect("build");
    assert_ne!(
        first.digest, other.digest,
        "the revision is part of the image"
    );
}

#[test]
fn the_revision_is_labelled_and_the_layer_holds_what_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    inputs(dir.path());
    let built = build(&spec(dir.path(), "abc123")).expect("build");
    let config: serde_json::Value =
        serde_json::from_slice(&blob(&built, |t| t.contains("\"diff_ids\""))).expect("config");
    assert_eq!(config["config"]["Labels"][REVISION], "abc123");
    assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/kata-gpu");
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(&built, |t| t.contains("\"layers\":"))).expect("manifest");
    assert_eq!(manifest["annotations"][REVISION], "abc123");
    for want in [
        "/usr/local/bin/kata-gpu",
        "/usr/local/bin/containerd-shim-a-v2",
        "/usr/local/bin/containerd-shim-b-v2",
        "/lib64/ld-linux-x86-64.so.2",
        "/host",
    ] {
        assert!(
            built.paths.iter().any(|p| p == want),
            "{want} not in {:?}",
            built.paths
        );
    }
    assert!(
        built.paths.iter().any(|p| p.ends_with("/libc.so.6")),
        "{:?}",
        built.paths
    );
    // Nothing but the binaries, the libraries and their directories.
    let files = built
        .paths
        .iter()
        .filter(|p| p.contains(".so") || p.starts_with("/usr/local/bin/"));
    assert_eq!(
        files.count() + dirs(&built.paths),
        built.paths.len(),
        "{:?}",
        built.paths
    );
}

fn dirs(paths: &[String]) -> usize {
    paths
        .iter()
        .filter(|p| {
            paths.iter().any(|q| q.starts_with(&format!("{p}/"))) || *p == "/host" || *p == "/tmp"
        })
        .count()
}

#[test]
fn a_missing_binary_is_named_and_nothing_is_built() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = build(&spec(dir.path(), "")).expect_err("missing");
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("kata-gpu"), "{err}");
    inputs(dir.path());
    let mut s = spec(dir.path(), "");
    s.shim_names.clear();
    assert_eq!(
        build(&s).expect_err("no names").to_string(),
        "no name for the shim"
    );
}

/// A stand-in artifact set as a directory (with a link, as sets have) at `dir/set`, and as a
/// gzip tarball at `dir/set.tar.gz`.
fn sets(dir: &Path) {
    let set = dir.join("set");
    fs::create_dir_all(set.join("fw")).expect("mkdir");
    fs::write(set.join("vmlinuz"), b"kernel").expect("write");
    fs::write(set.join("fw/AMDSEV.fd"), b"fw").expect("write");
    let _ = fs::remove_file(set.join("vmlinuz.container"));
    std::os::unix::fs::symlink("vmlinuz", set.join("vmlinuz.container")).expect("link");
    fs::write(dir.join("set.tar.gz"), b"\x1f\x8bnot really").expect("write");
}

/// The layer's files and links, path to bytes (a link's target).
fn layer_files(built: &Built) -> std::collections::BTreeMap<String, Vec<u8>> {
    for bytes in blobs(built) {
        let mut gz = flate2::read::GzDecoder::new(&bytes[..]);
        let mut layer = Vec::new();
        if std::io::Read::read_to_end(&mut gz, &mut layer).is_err() {
            continue;
        }
        let mut files = std::collections::BTreeMap::new();
        for f in tar::Archive::new(&layer[..]).entries().expect("layer") {
            let mut f = f.expect("entry");
            let path = format!("/{}", f.path().expect("path").display());
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut content).expect("read");
            if let Some(target) = f.link_name().expect("link") {
                content = target.display().to_string().into_bytes();
            }
            files.insert(path, content);
        }
        return files;
    }
    panic!("no layer");
}

#[test]
fn the_artifact_sets_are_in_the_layer_and_their_digest_is_stable() {
    let dir = tempfile::tempdir().expect("tempdir");
    inputs(dir.path());
    sets(dir.path());
    let with_sets = |dir: &Path| {
        let mut s = spec(dir, "abc123");
        s.artifacts = vec![
            (Profile::Snp, dir.join("set")),
            (Profile::Tdx, dir.join("set.tar.gz")),
        ];
        build(&s).expect("build")
    };
    let first = with_sets(dir.path());
    let files = layer_files(&first);
    assert_eq!(files["/artifacts/snp/vmlinuz"], b"kernel");
    assert_eq!(files["/artifacts/snp/fw/AMDSEV.fd"], b"fw");
    assert_eq!(files["/artifacts/snp/vmlinuz.container"], b"vmlinuz");
    assert_eq!(files["/artifacts/tdx.tar"], b"\x1f\x8bnot really");
    assert!(!files.contains_key("/artifacts/gpu"));

    // Rewritten with new dates and a stricter umask: the same digest.
    sets(dir.path());
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(
            dir.path().join("set/vmlinuz"),
            fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
    }
    let again = with_sets(dir.path());
    assert_eq!(first.digest, again.digest);
    assert!(first.archive == again.archive, "archives differ");
    assert_ne!(
        first.digest,
        build(&spec(dir.path(), "abc123")).expect("build").digest,
        "the sets are part of the image"
    );

    // Another byte in the set: another image.
    fs::write(dir.path().join("set/vmlinuz"), b"kernel2").expect("write");
    assert_ne!(first.digest, with_sets(dir.path()).digest);
}

#[test]
fn a_missing_or_doubled_set_is_named_and_nothing_is_built() {
    let dir = tempfile::tempdir().expect("tempdir");
    inputs(dir.path());
    sets(dir.path());
    let mut s = spec(dir.path(), "");
    s.artifacts = vec![(Profile::Snp, dir.path().join("nope"))];
    let err = build(&s).expect_err("missing set");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: No such file or directory (os error 2)",
            dir.path().join("nope").display()
        )
    );
    s.artifacts = vec![
        (Profile::Snp, dir.path().join("set")),
        (Profile::Snp, dir.path().join("set.tar.gz")),
    ];
    assert_eq!(
        build(&s).expect_err("two sets").to_string(),
        format!(
            "{}: a second artifact set for snp; give one per profile",
            dir.path().join("set.tar.gz").display()
        )
    );
}
