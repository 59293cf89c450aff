//! `make demo` as the README gives it, on a machine without the third-party tarballs: the
//! demo installs and uses only Debian's containerd, runc, ctr and busybox, runs the whole
//! path on a simulated H100 through the shim, and leaves nothing behind.

use std::process::Command;

use kata_gpu_tests::{is_root, on_path, require};

#[test]
fn make_demo_runs_without_the_third_party_tarballs() {
    require(
        is_root(),
        "make demo runs as root (it starts a private containerd)",
    );
    require(on_path("containerd"), "Debian's containerd 1.6 on PATH");
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let none = tempfile::tempdir().expect("tempdir");
    let out = Command::new("make")
        .args(["-s", "-C", repo, "demo"])
        // Nothing there: the demo must not need the tarballs, QEMU or the guest kernel.
        .env("THIRD_PARTY", none.path().join("no-tarballs-here"))
        .env("PARTS", none.path().join("no-parts-here"))
        .output()
        .expect("run make demo");
    let shown = kata_gpu_tests::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    for line in [
        "deps: what the demo uses is here",
        "removed /tmp/kata-gpu-demo.",
    ] {
        assert!(shown.contains(line), "{line:?} not in:\n{shown}");
    }
    assert!(!shown.contains("bookworm-backports"), "{shown}");
    assert!(
        !none.path().join("no-parts-here").exists(),
        "the demo unpacked parts: {shown}"
    );
    let left = std::fs::read_dir("/tmp")
        .expect("/tmp")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("kata-gpu-demo.")
        })
        .count();
    assert_eq!(left, 0, "the demo left its work dir in /tmp");
}
