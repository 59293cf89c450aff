//! Kata's shims behind the proxy through CRI, the way kubelet drives containerd: a pod on
//! our handler whose sandbox's Create reaches Kata — 3.30's Go shim, or 4.1's Rust shim
//! (runtime-rs) — with the per-sandbox config the proxy rendered, on every containerd
//! release. Kata stops where the VM would start (no vhost-vsock here), `RunPodSandbox` fails
//! with Kata's reason in one line, and nothing is left: no proxy, no Kata daemon (runtime-rs
//! ignores SIGTERM), no socket, no per-sandbox state.

use std::fs;

use k8s_cri::v1::{ListPodSandboxRequest, RunPodSandboxRequest};
use kata_gpu_tests::cri::{client, cri_table, host_network_pod, HANDLER, PAUSE_IMAGE};
use kata_gpu_tests::image::write_oci_archive;
use kata_gpu_tests::parts::kata_parts;
use kata_gpu_tests::shimrig::{Downstream, Rig};
use kata_gpu_tests::{Containerd, Kata, KataRs};

kata_gpu_tests::tests_per_release!(go_kata_through_cri:
    go_kata_through_cri_on_1_6 = Debian,
    go_kata_through_cri_on_1_7 = V1_7,
    go_kata_through_cri_on_2_1 = V2_1,
    go_kata_through_cri_on_2_3 = V2_3,
);

kata_gpu_tests::tests_per_release!(kata_rs_through_cri:
    kata_rs_through_cri_on_1_6 = Debian,
    kata_rs_through_cri_on_1_7 = V1_7,
    kata_rs_through_cri_on_2_1 = V2_1,
    kata_rs_through_cri_on_2_3 = V2_3,
);

fn go_kata_through_cri(release: Containerd, test: &str) {
    let Some(_) = kata_parts(test, release, Kata::find()) else {
        return;
    };
    // Kata's Go shim names the file it loaded: the proxy's per-sandbox config.
    through_cri(release, Downstream::Kata, |rig, said| {
        let ours = rig.work.path().join("st/k8s.io").display().to_string();
        said.contains("host system doesn't support vsock")
            && said.contains(&ours)
            && said.contains("/configuration.toml")
    });
}

fn kata_rs_through_cri(release: Containerd, test: &str) {
    let Some(_) = kata_parts(test, release, KataRs::find()) else {
        return;
    };
    // runtime-rs answers the Debug form of its error (quoted, escaped, with a backtrace);
    // the proxy passes its words on in one line.
    through_cri(release, Downstream::KataRs, |_, said| {
        said.contains(
            "failed to handle message start sandbox in task handler: start vm: generate vhost vsock cid failed: ",
        ) && !said.contains("Stack backtrace")
            && !said.contains("\\n")
    });
}

/// A GPU-less pod (a node in annotation mode: no kubelet here) on our handler, `downstream`
/// (whose parts the caller found) behind the proxy: `RunPodSandbox` fails in one line that `reason` accepts, containerd
/// keeps no sandbox, and nothing is left.
fn through_cri(release: Containerd, downstream: Downstream, reason: impl Fn(&Rig, &str) -> bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let rig = Rig::on_with_cri(
        release,
        downstream,
        "device_source = \"annotations\"\n",
        &cri_table(release, false),
    );
    let archive = rig.work.path().join("pause.tar");
    write_oci_archive(
        &rig.rootfs,
        PAUSE_IMAGE,
        &["/bin/busybox", "sleep", "3600"],
        &archive,
    )
    .expect("image archive");
    rig.ctrd.import(&archive);
    let logs = rig.work.path().join("pod-logs");
    fs::create_dir_all(&logs).expect("log dir");
    runtime.block_on(async {
        let mut cri = client(rig.ctrd.address()).await;
        let refused = cri
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(host_network_pod("kata-pod", "default", &logs, false)),
                runtime_handler: HANDLER.into(),
            })
            .await
            .expect_err("a pod through Kata started with no vhost-vsock");
        let said = refused.message();
        assert!(!said.contains('\n'), "more than one line: {said:?}");
        assert!(reason(&rig, said), "{said}\n{}", rig.ctrd.log());
        let left = cri
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items;
        assert!(left.is_empty(), "containerd kept {left:?}");
    });
    rig.assert_clean();
    let state = rig.work.path().join("st/k8s.io");
    let left: Vec<_> = fs::read_dir(&state)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "per-sandbox state left: {left:?}");
    // The proxy logged the socket Kata served on; Kata's daemon is gone, and so is it.
    let log = rig.ctrd.log();
    let sockets: Vec<&str> = log
        .split("for downstream unix://")
        .skip(1)
        .filter_map(|rest| rest.split([' ', '"', '\\']).next())
        .collect();
    assert!(!sockets.is_empty(), "the proxy never reached Kata:\n{log}");
    for socket in sockets {
        assert!(
            !std::path::Path::new(socket).exists(),
            "Kata's socket left: {socket}"
        );
    }
}
