//! `kata-gpu plan --pod` for pods that ask kubelet for GPUs (`resources.limits`), on
//! simulated hosts: the device plugin's preferred allocation, planned as the shim plans
//! what PodResources reports.

mod common;

use kata_gpu_tests::{SimHost, VfioMode, WriteCdiSpecs};

use common::{kata_gpu, text};

fn pod(gpus: &str, annotation: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: cuda\n{annotation}spec:\n  runtimeClassName: kata-qemu-nvidia-gpu\n  containers:\n  - name: a\n    resources:\n      limits:\n        nvidia.com/pgpu: {gpus}\n  - name: b\n"
    )
}

#[test]
fn the_sample_pod_asks_kubelet_and_plans_the_gpu_it_would_get() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    sim.write_cdi_specs();
    // The sample pod `kata-gpu runtimeclass` prints (its third document): no CDI annotation.
    let out = kata_gpu(&sim, &["runtimeclass", "--profile", "gpu"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let manifests = String::from_utf8_lossy(&out.stdout).into_owned();
    let sample = manifests
        .split("\n---\n")
        .find(|d| d.contains("kind: Pod"))
        .expect("a sample pod");
    assert!(!sample.contains("cdi.k8s.io/"), "{sample}");
    // It asks what the device plugin advertises for this host's GPU (issue 24 item 0).
    assert!(
        sample.contains("nvidia.com/GH100_H100_PCIE: '1'"),
        "{sample}"
    );
    let file = sim.path("sample.yaml");
    std::fs::write(&file, sample).expect("sample");
    let out = kata_gpu(
        &sim,
        &["plan", "--pod", &file.display().to_string(), "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        plan["allocated"],
        serde_json::json!(["nvidia.com/pgpu=0000:41:00.0"])
    );
    assert_eq!(
        plan["requested"],
        serde_json::json!(["nvidia.com/pgpu=0000:41:00.0"])
    );
    assert_eq!(plan["devices"][0]["bdf"], "0000:41:00.0");
}

/// Issue 24 item 0: NVIDIA's documented confidential-containers pod, unchanged (its
/// resource name, its `pgpu=0` annotation, its 16 GiB memory annotation without a memory
/// limit), plans on the GPU the plugin would allocate (failed before: no such resource).
#[test]
fn nvidias_documented_pod_plans_unchanged() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    sim.write_cdi_specs();
    let file = sim.path("nvidia.yaml");
    std::fs::write(
        &file,
        r#"apiVersion: v1
kind: Pod
metadata:
  name: cuda-vectoradd-kata
  annotations:
    cdi.k8s.io/gpu: "nvidia.com/pgpu=0"
    io.katacontainers.config.hypervisor.default_memory: "16384"
spec:
  runtimeClassName: kata-qemu-nvidia-gpu-snp
  restartPolicy: OnFailure
  containers:
  - name: cuda-vectoradd
    image: "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0-ubuntu22.04"
    resources:
      limits:
        "nvidia.com/GH100_H100_PCIE": 1
"#,
    )
    .expect("pod");
    let out = kata_gpu(
        &sim,
        &["plan", "--pod", &file.display().to_string(), "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        plan["allocated"],
        serde_json::json!(["nvidia.com/pgpu=0000:41:00.0"])
    );
    assert_eq!(plan["devices"][0]["bdf"], "0000:41:00.0");
}

#[test]
fn on_hgx_a_four_gpu_pod_gets_one_numa_node() {
    let sim = SimHost::hgx_8x_h100();
    sim.write_cdi_specs();
    let file = sim.path("pod.yaml");
    std::fs::write(&file, pod("4", "")).expect("pod");
    let out = kata_gpu(&sim, &["plan", "--pod", &file.display().to_string()]);
    let shown = text(&out);
    assert!(
        shown.starts_with("kubelet would allocate (the device plugin's preferred choice): nvidia.com/pgpu=0000:18:00.0,nvidia.com/pgpu=0000:2a:00.0,nvidia.com/pgpu=0000:3a:00.0,nvidia.com/pgpu=0000:5d:00.0\n"),
        "{shown}"
    );
    // Its one finding (exit 1): the pod sets no CPU limit, so Kata gives 4 GPUs one vCPU.
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("\nwarning: 4 GPUs and 1 vCPU: Kata sizes the VM from default_vcpus"),
        "{shown}"
    );
}

#[test]
fn bad_requests_are_refused_naming_what_and_where() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    sim.write_cdi_specs();
    let file = sim.path("pod.yaml");
    let path = file.display().to_string();
    let cases = [
        (
            pod("2", ""),
            format!("the pod asks for 2 nvidia.com/pgpu; this host advertises 1 healthy (0000:41:00.0); bind devices with `kata-gpu --host-root {} vfio bind`", sim.root().display()),
        ),
        (
            pod("lots", ""),
            format!("{path}: container a: resources.limits.nvidia.com/pgpu is \"lots\", not a whole number of devices"),
        ),
        (
            pod("1", "  annotations:\n    cdi.k8s.io/gpu: nvidia.com/pgpu=0,nvidia.com/pgpu=vfio9\n"),
            format!("pod {path} names nvidia.com/pgpu=0,nvidia.com/pgpu=vfio9 in its cdi.k8s.io/* annotations, more devices or other kinds than kubelet allocated it (nvidia.com/pgpu=0000:41:00.0)"),
        ),
        (
            pod("0", "  annotations:\n    cdi.k8s.io/gpu: nvidia.com/pgpu=0\n"),
            format!("pod {path} names nvidia.com/pgpu=0 in its cdi.k8s.io/* annotations but kubelet allocated it no device"),
        ),
    ];
    for (manifest, want) in cases {
        std::fs::write(&file, &manifest).expect("pod");
        let out = kata_gpu(&sim, &["plan", "--pod", &path]);
        assert_eq!(out.status.code(), Some(1), "{manifest}");
        assert!(text(&out).contains(&want), "{}\nwant: {want}", text(&out));
    }
    // The same GPU by another of its names is no conflict.
    std::fs::write(
        &file,
        pod(
            "1",
            "  annotations:\n    cdi.k8s.io/gpu: nvidia.com/pgpu=vfio0\n",
        ),
    )
    .expect("pod");
    let out = kata_gpu(&sim, &["plan", "--pod", &path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Another id of the kind, as many as allocated: planned on the allocation, said so.
    std::fs::write(
        &file,
        pod(
            "1",
            "  annotations:\n    cdi.k8s.io/gpu: nvidia.com/pgpu=vfio9\n",
        ),
    )
    .expect("pod");
    let out = kata_gpu(&sim, &["plan", "--pod", &path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("the sandbox gets the allocation"),
        "{}",
        text(&out)
    );
}
