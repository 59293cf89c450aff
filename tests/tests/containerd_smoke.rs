//! The real parts CI installs start and run a container: a private containerd 1.6 with
//! runc's v2 shim. Later issues put our shim in front of the same parts.

use kata_gpu_tests::{busybox_rootfs, PrivateContainerd};

#[test]
fn a_private_containerd_runs_a_busybox_container_through_runc() {
    let ctrd = PrivateContainerd::start("");
    let version = ctrd.ctr(&["version"]);
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(text.contains("Server:"), "{text}");

    let plugins = String::from_utf8_lossy(&ctrd.ctr(&["plugins", "ls"]).stdout).into_owned();
    assert!(plugins.contains("io.containerd.runtime.v2"), "{plugins}");

    let work = tempfile::tempdir().expect("tempdir");
    let rootfs = busybox_rootfs(work.path());
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.runc.v2",
        "--rootfs",
        &rootfs.display().to_string(),
        "smoke",
        "/bin/busybox",
        "echo",
        "hello from runc",
    ]);
    assert!(
        out.status.success(),
        "ctr run failed: {}\ncontainerd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        ctrd.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello from runc"
    );
    let left = String::from_utf8_lossy(&ctrd.ctr(&["containers", "ls", "-q"]).stdout).into_owned();
    assert!(left.trim().is_empty(), "container left behind: {left}");
}
