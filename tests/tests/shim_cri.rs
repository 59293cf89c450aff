//! A pod through the CRI API, the way kubelet drives containerd: a generated CRI client
//! (k8s-cri) against a private containerd 1.6 with the CRI plugin, the wrapper registered
//! as the runtime handler, a pause-like image built by the test and imported with `ctr`,
//! host networking, and the recording downstream standing where Kata would.

use std::collections::HashMap;
use std::fs;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxContainerConfig, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest,
};
use kata_gpu_tests::image::write_oci_archive;
use kata_gpu_tests::shimrig::{err, pids_of, Downstream, Rig, SHIM};
use tonic::transport::{Endpoint, Uri};

const IMAGE: &str = "docker.io/library/kata-gpu-pause:test";
const HANDLER: &str = "kata-qemu-nvidia-gpu-snp";

fn cri_table() -> String {
    format!(
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{IMAGE}\"\n  disable_apparmor = true\n  restrict_oom_score_adj = true\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"native\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{HANDLER}]\n  runtime_type = \"io.containerd.{HANDLER}.v2\"\n  \
         privileged_without_host_devices = true\n  pod_annotations = [\"cdi.k8s.io/*\", \"io.katacontainers.*\"]\n"
    )
}

async fn client(rig: &Rig) -> RuntimeServiceClient<tonic::transport::Channel> {
    let socket = rig.ctrd.address();
    let channel = Endpoint::try_from("http://[::]:50051")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect to containerd's CRI");
    RuntimeServiceClient::new(channel)
}

fn sandbox_config(rig: &Rig, name: &str) -> PodSandboxConfig {
    let logs = rig.work.path().join("pod-logs").join(name);
    fs::create_dir_all(&logs).expect("log dir");
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),

        log_directory: logs.display().to_string(),
        annotations: HashMap::from([("cdi.k8s.io/gpu".to_owned(), "nvidia.com/pgpu=0".to_owned())]),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: 2, // NODE: host network, no CNI
                    ..NamespaceOption::default()
                }),
                ..LinuxSandboxSecurityContext::default()
            }),
            ..LinuxPodSandboxConfig::default()
        }),
        ..PodSandboxConfig::default()
    }
}

fn container_config(name: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE.into(),
            ..ImageSpec::default()
        }),
        command: vec!["/bin/busybox".into(), "sleep".into(), "300".into()],
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig::default()),
        ..ContainerConfig::default()
    }
}

#[test]
fn a_gpu_pod_through_cri_gets_one_wrapper_its_config_and_leaves_nothing() {
    let rig = Rig::with_cri(Downstream::Recording, "", &cri_table());
    let archive = rig.work.path().join("pause.tar");
    write_oci_archive(
        &rig.rootfs,
        IMAGE,
        &["/bin/busybox", "sleep", "3600"],
        &archive,
    )
    .expect("image archive");
    let o = rig.ctr(&[
        "-n",
        "k8s.io",
        "images",
        "import",
        &archive.display().to_string(),
    ]);
    assert!(
        o.status.success(),
        "import: {}\n{}",
        err(&o),
        rig.ctrd.log()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    runtime.block_on(async {
        let mut cri = client(&rig).await;
        let pod_config = sandbox_config(&rig, "gpu-pod");
        let pod = cri
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod_config.clone()),
                runtime_handler: HANDLER.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", rig.ctrd.log()))
            .into_inner()
            .pod_sandbox_id;

        let mut containers = Vec::new();
        for name in ["cuda", "sidecar"] {
            let id = cri
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(container_config(name)),
                    sandbox_config: Some(pod_config.clone()),
                })
                .await
                .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", rig.ctrd.log()))
                .into_inner()
                .container_id;
            cri.start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e}\n{}", rig.ctrd.log()));
            containers.push(id);
        }

        // One wrapper and one downstream for the whole pod.
        assert_eq!(
            pids_of(&rig, &[SHIM, "serve"]).len(),
            1,
            "one wrapper for the pod"
        );
        assert_eq!(
            pids_of(&rig, &["recording-shim", "serve"]).len(),
            1,
            "one downstream for the pod"
        );

        // The sandbox got its per-sandbox Kata config, and Kata's place saw it in Create.
        let config = rig
            .work
            .path()
            .join("st/k8s.io")
            .join(&pod)
            .join("configuration.toml");
        let text = fs::read_to_string(&config).expect("per-sandbox config");
        assert!(
            text.contains("pcie_root_port = 1") && text.contains("cold_plug_vfio = \"root-port\""),
            "{text}"
        );
        let record: serde_json::Value = serde_json::from_slice(
            &fs::read(rig.work.path().join(format!("records/{pod}.json")))
                .expect("recorded sandbox Create"),
        )
        .expect("json");
        assert_eq!(record["options_type_url"], "runtimeoptions.v1.Options");
        assert_eq!(record["config_path"], config.display().to_string());

        // containerd 1.6 has no CDI: the wrapper applied the pod's request to the container.
        let ls = cri
            .exec_sync(ExecSyncRequest {
                container_id: containers[0].clone(),
                cmd: vec![
                    "/bin/busybox".into(),
                    "ls".into(),
                    "/dev/vfio/devices".into(),
                ],
                timeout: 10,
            })
            .await
            .expect("ExecSync")
            .into_inner();
        assert_eq!(
            String::from_utf8_lossy(&ls.stdout).trim(),
            "vfio0",
            "{}",
            String::from_utf8_lossy(&ls.stderr)
        );

        cri.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("StopPodSandbox");
        cri.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("RemovePodSandbox");
    });
    rig.assert_clean();
    let st = rig.work.path().join("st/k8s.io");
    let left: Vec<_> = fs::read_dir(&st)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "sandbox state left: {left:?}");
}
