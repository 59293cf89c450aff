//! The proxy's Create asking kubelet's PodResources (a stand-in speaking the real
//! protocol) which devices a pod was allocated, through a real containerd 1.6 and `ctr`,
//! with the recording downstream capturing what reaches Kata's place.

use std::fs;
use std::path::PathBuf;

use kata_gpu_tests::kubelet::{Allocation, PodResourcesStandIn};
use kata_gpu_tests::shimrig::{err, Downstream, Rig};

/// The annotations CRI puts on a sandbox of pod `default/<pod>`.
fn sandbox_flags(id: &str, pod: &str) -> Vec<String> {
    [
        "io.kubernetes.cri.container-type=sandbox".to_owned(),
        format!("io.kubernetes.cri.sandbox-id={id}"),
        format!("io.kubernetes.cri.sandbox-name={pod}"),
        "io.kubernetes.cri.sandbox-namespace=default".to_owned(),
    ]
    .into_iter()
    .flat_map(|a| ["--annotation".to_owned(), a])
    .collect()
}

fn kubelet_socket(rig: &Rig) -> PathBuf {
    rig.sim().path("var/lib/kubelet/pod-resources/kubelet.sock")
}

fn run(rig: &Rig, id: &str, pod: &str, extra: &[&str]) -> std::process::Output {
    let mut flags: Vec<String> = vec!["-d".to_owned()];
    flags.extend(sandbox_flags(id, pod));
    flags.extend(extra.iter().map(|s| (*s).to_owned()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    rig.run(&flags, id, &["/bin/busybox", "sleep", "300"])
}

#[test]
fn a_pod_kubelet_allocated_a_gpu_gets_it_without_an_annotation() {
    let rig = Rig::new(Downstream::Recording, "");
    let kubelet = PodResourcesStandIn::start(
        &kubelet_socket(&rig),
        vec![Allocation {
            namespace: "default".into(),
            name: "gpu-pod".into(),
            containers: vec![
                (
                    "main".into(),
                    vec![
                        ("nvidia.com/pgpu".into(), vec!["0".into()]),
                        ("example.com/nic".into(), vec!["eth1".into()]),
                    ],
                ),
                ("side".into(), Vec::new()),
            ],
        }],
    );
    let id = Rig::id("allocated");
    let o = run(&rig, &id, "gpu-pod", &[]);
    assert!(o.status.success(), "{}\n{}", err(&o), rig.ctrd.log());
    assert_eq!(
        kubelet.asked(),
        [("default".to_owned(), "gpu-pod".to_owned())]
    );

    // The plan and the per-sandbox config are the annotation's.
    let state = rig.state_dir(&id);
    let config = fs::read_to_string(state.join("configuration.toml")).expect("config");
    assert!(config.contains("pcie_root_port = 1"), "{config}");
    assert!(
        config.contains("cold_plug_vfio = \"root-port\""),
        "{config}"
    );
    let plan: serde_json::Value =
        serde_json::from_slice(&fs::read(state.join("plan.json")).expect("plan")).expect("json");
    assert_eq!(
        plan["requested"],
        serde_json::json!(["nvidia.com/pgpu=0"]),
        "{plan}"
    );
    let plan_text = plan.to_string();
    assert!(plan_text.contains("0000:41:00.0"), "{plan_text}");

    // Kata is handed the same set: the sandbox's config.json names it.
    let record: serde_json::Value = serde_json::from_slice(
        &fs::read(rig.work.path().join(format!("records/{id}.json"))).expect("recorded Create"),
    )
    .expect("json");
    let bundle = PathBuf::from(record["bundle"].as_str().expect("bundle"));
    let spec: serde_json::Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).expect("config.json"))
            .expect("json");
    assert_eq!(
        spec["annotations"]["cdi.k8s.io/kata-gpu-allocated"],
        "nvidia.com/pgpu=0"
    );
    rig.kill_and_remove(&id, "SIGKILL");
    drop(kubelet);
    rig.assert_clean();
}

/// Issue 24 item 1: NVIDIA's documented pod names `nvidia.com/pgpu=0` in an annotation and
/// asks one GPU through its limits; kubelet gives it GPU 1. It runs on GPU 1, and Kata is
/// told GPU 1 alone (failed before: refused). An annotation naming more is refused naming
/// both sets.
#[test]
fn nvidias_documented_pod_runs_on_the_gpu_kubelet_allocated() {
    let mut rig = Rig::new(Downstream::Recording, "");
    rig.add_gpu("0000:42:00.0", 41);
    let _kubelet = PodResourcesStandIn::start(
        &kubelet_socket(&rig),
        vec![
            // As kubelet reports NVIDIA's resource name, the one the plugin advertises.
            Allocation::one(
                "default",
                "nvidia-sample",
                "nvidia.com/GH100_H100_PCIE",
                &["0000:42:00.0"],
            ),
            Allocation::one("default", "greedy", "nvidia.com/pgpu", &["1"]),
        ],
    );
    let id = Rig::id("sample");
    let o = run(
        &rig,
        &id,
        "nvidia-sample",
        &[
            "--annotation",
            "cdi.k8s.io/gpu=nvidia.com/pgpu=0",
            "--annotation",
            "io.katacontainers.config.hypervisor.default_memory=16384",
        ],
    );
    assert!(o.status.success(), "{}\n{}", err(&o), rig.ctrd.log());
    let plan: serde_json::Value =
        serde_json::from_slice(&fs::read(rig.state_dir(&id).join("plan.json")).expect("plan"))
            .expect("json");
    assert_eq!(
        plan["requested"],
        serde_json::json!(["nvidia.com/pgpu=0000:42:00.0"]),
        "{plan}"
    );
    let plan_text = plan.to_string();
    assert!(plan_text.contains("0000:42:00.0"), "{plan_text}");
    assert!(!plan_text.contains("0000:41:00.0"), "{plan_text}");
    let record: serde_json::Value = serde_json::from_slice(
        &fs::read(rig.work.path().join(format!("records/{id}.json"))).expect("recorded Create"),
    )
    .expect("json");
    let bundle = PathBuf::from(record["bundle"].as_str().expect("bundle"));
    let spec: serde_json::Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).expect("config.json"))
            .expect("json");
    let cdi: Vec<(&String, &serde_json::Value)> = spec["annotations"]
        .as_object()
        .expect("annotations")
        .iter()
        .filter(|(k, _)| k.starts_with("cdi.k8s.io/"))
        .collect();
    assert_eq!(
        cdi,
        [(
            &"cdi.k8s.io/kata-gpu-allocated".to_owned(),
            &serde_json::json!("nvidia.com/pgpu=0000:42:00.0")
        )]
    );
    assert!(
        rig.ctrd
            .log()
            .contains("the sandbox gets the allocation (an annotation reads as that many devices of its kind)"),
        "the log says so"
    );

    // A container of the pod, on containerd 1.6 (no CDI there: the proxy applies it), gets
    // the pod's annotation copied (pod_annotations) beside the plugin's Allocate answer:
    // only the sandbox's device reaches it.
    let container = Rig::id("sample-c");
    let member = format!("io.kubernetes.cri.sandbox-id={id}");
    let o = rig.run(
        &[
            "-d",
            "--annotation",
            "io.kubernetes.cri.container-type=container",
            "--annotation",
            &member,
            "--annotation",
            "cdi.k8s.io/gpu=nvidia.com/pgpu=0",
            "--annotation",
            "cdi.k8s.io/kata-gpu-device-plugin_GH100_H100_PCIE=nvidia.com/pgpu=0000:42:00.0",
        ],
        &container,
        &["/bin/busybox", "sleep", "300"],
    );
    assert!(o.status.success(), "{}\n{}", err(&o), rig.ctrd.log());
    let record: serde_json::Value = serde_json::from_slice(
        &fs::read(rig.work.path().join(format!("records/{container}.json")))
            .expect("recorded container Create"),
    )
    .expect("json");
    let bundle = PathBuf::from(record["bundle"].as_str().expect("bundle"));
    let spec: serde_json::Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).expect("config.json"))
            .expect("json");
    let vfio: Vec<&str> = spec["linux"]["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["path"].as_str())
        .filter(|p| p.starts_with("/dev/vfio/devices/"))
        .collect();
    assert_eq!(
        vfio,
        ["/dev/vfio/devices/vfio1"],
        "{}",
        spec["linux"]["devices"]
    );
    rig.kill_and_remove(&container, "SIGKILL");

    // Two GPUs named, one allocated: refused, naming both sets.
    let greedy = Rig::id("greedy");
    let o = run(
        &rig,
        &greedy,
        "greedy",
        &[
            "--annotation",
            "cdi.k8s.io/gpu=nvidia.com/pgpu=0,nvidia.com/pgpu=1",
        ],
    );
    rig.assert_refused(
        &o,
        &greedy,
        "pod default/greedy names nvidia.com/pgpu=0,nvidia.com/pgpu=1 in its cdi.k8s.io/* annotations, more devices or other kinds than kubelet allocated it (nvidia.com/pgpu=1)",
    );
    assert!(!rig.state_dir(&greedy).exists());
    rig.kill_and_remove(&id, "SIGKILL");
    rig.assert_clean();
}

/// Issue 24 item 1, a pod author in bad faith: with no GPU in its limits, it names GPU 0 in
/// an annotation, then sets the shim's own key, then names a device of another kind beside
/// its allocation. Each is refused in one line (failed before: the first two got GPU 0).
#[test]
fn a_pod_gets_no_gpu_by_annotation_alone() {
    let rig = Rig::new(Downstream::Recording, "");
    let _kubelet = PodResourcesStandIn::start(
        &kubelet_socket(&rig),
        vec![
            Allocation::one("default", "thief", "example.com/nic", &["eth1"]),
            Allocation::one("default", "gpu-pod", "nvidia.com/pgpu", &["0"]),
        ],
    );
    let cases = [
        (
            "thief",
            "cdi.k8s.io/x=nvidia.com/pgpu=0",
            "pod default/thief names nvidia.com/pgpu=0 in its cdi.k8s.io/* annotations but kubelet allocated it no device; an annotation grants nothing on this node",
        ),
        (
            "thief",
            "cdi.k8s.io/kata-gpu-allocated=nvidia.com/pgpu=0",
            "pod default/thief sets cdi.k8s.io/kata-gpu-allocated, which only the kata-gpu shim writes",
        ),
        (
            "gpu-pod",
            "cdi.k8s.io/x=example.com/hooked=all",
            "pod default/gpu-pod names example.com/hooked=all in its cdi.k8s.io/* annotations, more devices or other kinds than kubelet allocated it (nvidia.com/pgpu=0)",
        ),
    ];
    for (i, (pod, annotation, want)) in cases.into_iter().enumerate() {
        let id = Rig::id(&format!("bad{i}"));
        let o = run(&rig, &id, pod, &["--annotation", annotation]);
        rig.assert_refused(&o, &id, want);
        assert_eq!(err(&o).trim_end().lines().count(), 1, "{}", err(&o));
        assert!(!rig.state_dir(&id).exists());
    }
    rig.assert_clean();
}

/// Issue 24 item 1: no kubelet socket on a kubelet node is an error, not an open door; a
/// sandbox that is no kubelet pod (`ctr`) asks for no device there (failed before: both
/// got GPU 0).
#[test]
fn a_missing_kubelet_socket_is_an_error_not_an_open_door() {
    let rig = Rig::new(Downstream::Recording, "");
    let id = Rig::id("nokubelet");
    let o = run(
        &rig,
        &id,
        "gpu-pod",
        &["--annotation", "cdi.k8s.io/gpu=nvidia.com/pgpu=0"],
    );
    rig.assert_refused(
        &o,
        &id,
        &format!(
            "cannot ask kubelet which devices pod default/gpu-pod was allocated: {} does not exist; is kubelet running",
            kubelet_socket(&rig).display()
        ),
    );
    assert!(!rig.state_dir(&id).exists());
    let plain = Rig::id("plain");
    let o = rig.run(
        &["-d", "--annotation", "cdi.k8s.io/gpu=nvidia.com/pgpu=0"],
        &plain,
        &["/bin/busybox", "sleep", "300"],
    );
    rig.assert_refused(
        &o,
        &plain,
        &format!("sandbox {plain} asks for nvidia.com/pgpu=0 but is not a kubelet pod"),
    );
    assert!(
        err(&o).contains("set device_source = \"annotations\""),
        "{}",
        err(&o)
    );
    rig.assert_clean();
}

#[test]
fn kubelet_not_answering_fails_the_sandbox_naming_the_socket_and_leaves_nothing() {
    let rig = Rig::new(Downstream::Recording, "pod_resources_timeout_seconds = 1\n");
    let socket = kubelet_socket(&rig);
    fs::create_dir_all(socket.parent().expect("dir")).expect("dir");

    // A socket nobody serves any more (kubelet died): refused at once.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    let id = Rig::id("dead");
    let o = run(&rig, &id, "gpu-pod", &[]);
    rig.assert_refused(
        &o,
        &id,
        &format!(
            "cannot ask kubelet which devices pod default/gpu-pod was allocated: {}: ",
            socket.display()
        ),
    );
    assert!(err(&o).contains("Connection refused"), "{}", err(&o));
    assert!(!rig.state_dir(&id).exists());
    fs::remove_file(&socket).expect("remove");

    // A kubelet that accepts and never answers: refused when the lookup's time is up.
    let _hung = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let id = Rig::id("hung");
    let o = run(&rig, &id, "gpu-pod", &[]);
    rig.assert_refused(
        &o,
        &id,
        &format!(
            "cannot ask kubelet which devices pod default/gpu-pod was allocated: {}: no answer within 1s; is kubelet running?",
            socket.display()
        ),
    );
    let line = err(&o);
    assert_eq!(line.trim_end().lines().count(), 1, "{line}");
    assert!(!rig.state_dir(&id).exists());
    rig.assert_clean();
}

#[test]
fn a_pod_kubelet_does_not_know_is_refused_with_kubelets_answer() {
    let rig = Rig::new(Downstream::Recording, "");
    let _kubelet = PodResourcesStandIn::start(&kubelet_socket(&rig), Vec::new());
    let id = Rig::id("unknown");
    let o = run(&rig, &id, "ghost", &[]);
    rig.assert_refused(&o, &id, "pod ghost not found in namespace default");
    rig.assert_clean();
}

/// Annotation mode (a node without kubelet): the pod's annotation names its devices and
/// kubelet is never asked, but the shim's own key is still the shim's.
#[test]
fn annotation_mode_never_asks_kubelet() {
    let rig = Rig::new(Downstream::Recording, "device_source = \"annotations\"\n");
    let kubelet = PodResourcesStandIn::start(
        &kubelet_socket(&rig),
        vec![Allocation::one(
            "default",
            "gpu-pod",
            "nvidia.com/pgpu",
            &["0"],
        )],
    );
    let id = Rig::id("off");
    let o = run(&rig, &id, "gpu-pod", &[]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(kubelet.asked().is_empty(), "{:?}", kubelet.asked());
    let plan: serde_json::Value =
        serde_json::from_slice(&fs::read(rig.state_dir(&id).join("plan.json")).expect("plan"))
            .expect("json");
    assert_eq!(plan["requested"], serde_json::json!([]), "{plan}");
    assert_eq!(plan["devices"], serde_json::json!([]), "{plan}");
    rig.kill_and_remove(&id, "SIGKILL");

    let named = Rig::id("named");
    let o = run(
        &rig,
        &named,
        "gpu-pod",
        &["--annotation", "cdi.k8s.io/gpu=nvidia.com/pgpu=0"],
    );
    assert!(o.status.success(), "{}", err(&o));
    let plan = fs::read_to_string(rig.state_dir(&named).join("plan.json")).expect("plan");
    assert!(plan.contains("0000:41:00.0"), "{plan}");
    rig.kill_and_remove(&named, "SIGKILL");

    let forged = Rig::id("forged");
    let o = run(
        &rig,
        &forged,
        "gpu-pod",
        &[
            "--annotation",
            "cdi.k8s.io/kata-gpu-allocated=nvidia.com/pgpu=0",
        ],
    );
    rig.assert_refused(
        &o,
        &forged,
        "pod default/gpu-pod sets cdi.k8s.io/kata-gpu-allocated, which only the kata-gpu shim writes",
    );
    assert!(kubelet.asked().is_empty(), "{:?}", kubelet.asked());
    drop(kubelet);
    rig.assert_clean();
}
