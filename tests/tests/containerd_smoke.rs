//! Fixture check, not a test of the project: every containerd release the shim is tested on
//! starts privately (its own root, state and sockets; under 2.x its shim sockets too) and runs
//! a container through its own runc shim. When this fails, the shim tests' failures on that
//! release say nothing about the shim.

use kata_gpu_tests::{available, busybox_rootfs, Containerd, PrivateContainerd};

kata_gpu_tests::tests_per_release!(runs_a_busybox_container_through_runc:
    containerd_1_6_runs_a_busybox_container_through_runc = Debian,
    containerd_1_7_runs_a_busybox_container_through_runc = V1_7,
    containerd_2_1_runs_a_busybox_container_through_runc = V2_1,
    containerd_2_3_runs_a_busybox_container_through_runc = V2_3,
);

fn runs_a_busybox_container_through_runc(release: Containerd, test: &str) {
    let Some(_) = available(test, release.bin_dir()) else {
        return;
    };
    let ctrd = PrivateContainerd::start_release(release, "", &[]);
    let version = ctrd.ctr(&["version"]);
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(
        text.contains(&format!("Version:  {}", release.version()))
            || text.contains(&format!("Version:  v{}", release.version())),
        "{test}: {text}"
    );

    let plugins = String::from_utf8_lossy(&ctrd.ctr(&["plugins", "ls"]).stdout).into_owned();
    assert!(plugins.contains("io.containerd.runtime.v2"), "{plugins}");

    let work = tempfile::tempdir().expect("tempdir");
    let rootfs = busybox_rootfs(work.path());
    // runc keeps its state under /run/containerd/runc/<namespace> whatever containerd's state
    // dir is: ids must differ across the containerds running at once.
    let id = format!(
        "smoke-{}-{}",
        release.version().replace('.', "-"),
        std::process::id()
    );
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.runc.v2",
        "--rootfs",
        &rootfs.display().to_string(),
        &id,
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
    if release.has_shim_socket_dir() {
        // 2.x puts shim sockets under /run/containerd/s unless told otherwise: ours are private.
        let log = ctrd.log();
        let ours = ctrd.dir().join("s").display().to_string();
        assert!(
            log.contains(&ours) && !log.contains("/run/containerd/s/"),
            "{test}: shim socket not under {ours}:\n{log}"
        );
    }
}
