//! Fixture check: building a workspace binary that is up to date leaves it alone. The rigs
//! of tests running in parallel each build the shim (`workspace_bin`) while the others' shims
//! run from it; a relinked binary makes a running shim's re-exec of itself (its proxy)
//! fail with "No such file or directory".

use std::os::unix::fs::MetadataExt;

use kata_gpu_tests::workspace_bin;

#[test]
fn building_the_shim_again_leaves_the_binary_alone() {
    let bin = workspace_bin("kata-gpu-shim", kata_gpu_tests::shimrig::SHIM);
    let before = std::fs::metadata(&bin).expect("stat the shim");
    let again = workspace_bin("kata-gpu-shim", kata_gpu_tests::shimrig::SHIM);
    let after = std::fs::metadata(&again).expect("stat the shim");
    assert_eq!(
        (before.ino(), before.mtime(), before.mtime_nsec()),
        (after.ino(), after.mtime(), after.mtime_nsec()),
        "cargo relinked {} though nothing changed",
        bin.display()
    );
}
