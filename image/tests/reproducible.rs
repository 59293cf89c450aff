//! The same inputs give the same image, byte for byte, whatever the files' dates, owners
//! or the time of the build; the commit changes the digest and shows in label and
//! annotation; the layer holds the binaries, the shim's profile names and the libraries.

use std::fs;
use std::path::Path;

use kata_gpu_image::{build, Built, Error, ImageSpec, REVISION};

fn spec(dir: &Path, revision: &str) -> ImageSpec {
    ImageSpec {
        name: "example.invalid/kata-gpu:test".into(),
        revision: revision.into(),
        kata_gpu: dir.join("kata-gpu"),
        shim: dir.join("shim"),
        shim_names: vec!["containerd-shim-a-v2".into(), "containerd-shim-b-v2".into()],
    }
}

fn inputs(dir: &Path) {
    // Any dynamically linked binary does: what counts is that ldd finds its libraries.
    fs::copy("/bin/true", dir.join("kata-gpu")).expect("copy");
    fs::copy("/bin/false", dir.join("shim")).expect("copy");
}

fn blob(built: &Built, want: impl Fn(&str) -> bool) -> Vec<u8> {
    let mut a = tar::Archive::new(&built.archive[..]);
    for e in a.entries().expect("entries") {
        let mut e = e.expect("entry");
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut bytes).expect("read");
        if want(&String::from_utf8_lossy(&bytes)) {
            return bytes;
        }
    }
    panic!("no such blob");
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
