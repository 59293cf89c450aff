//! One device, one live sandbox (issue 24 item 6): through a real containerd 1.6 and `ctr`,
//! two sandboxes naming one GPU two ways (its index, then its IOMMU group or `vfioN`).

use kata_gpu_tests::shimrig::{err, Downstream, Rig};

/// `ctr` on a node without kubelet: devices by annotation, where nothing else would stop
/// two sandboxes from naming one GPU.
const ANNOTATION_MODE: &str = "device_source = \"annotations\"\n";

fn run_with(rig: &Rig, id: &str, device: &str) -> std::process::Output {
    let annotation = format!("cdi.k8s.io/gpu={device}");
    rig.run(
        &["-d", "--annotation", &annotation],
        id,
        &["/bin/busybox", "sleep", "300"],
    )
}

/// GPU 0 held by one sandbox is refused to another that names it by group (40) or cdev
/// (`vfio0`), naming the holder; once the holder is deleted, it is free (failed before:
/// both sandboxes got it).
#[test]
fn a_gpu_a_live_sandbox_holds_is_refused_to_another_naming_the_holder() {
    let rig = Rig::new(Downstream::Runc, ANNOTATION_MODE);
    let holder = Rig::id("holder");
    let o = run_with(&rig, &holder, "nvidia.com/pgpu=0");
    assert!(o.status.success(), "{}\n{}", err(&o), rig.ctrd.log());
    assert!(rig.state_dir(&holder).join("claims.json").is_file());
    for (i, name) in ["nvidia.com/pgpu=40", "nvidia.com/pgpu=vfio0"]
        .into_iter()
        .enumerate()
    {
        let rival = Rig::id(&format!("rival{i}"));
        let o = run_with(&rig, &rival, name);
        rig.assert_refused(
            &o,
            &rival,
            &format!(
                "0000:41:00.0 is held by sandbox {holder} in containerd namespace default, a live sandbox; one device goes to one sandbox at a time: delete that sandbox first, or ask for another device"
            ),
        );
        assert_eq!(err(&o).trim_end().lines().count(), 1, "{}", err(&o));
        assert!(!rig.state_dir(&rival).exists());
    }
    // Released on delete: the same GPU by its group name now starts.
    rig.kill_and_remove(&holder, "SIGKILL");
    let next = Rig::id("next");
    let o = run_with(&rig, &next, "nvidia.com/pgpu=40");
    assert!(o.status.success(), "{}", err(&o));
    rig.kill_and_remove(&next, "SIGKILL");
    rig.assert_clean();
}
