//! A pod through the CRI API, the way kubelet drives containerd: a generated CRI client
//! (k8s-cri) against a private containerd with the CRI plugin (1.6, and 1.7, 2.1 and 2.3
//! with CDI on), the proxy registered as the runtime handler, a pause-like image built by
//! the test and imported with `ctr`, host networking, and the recording downstream standing
//! where Kata would. A container asks for the pod's GPU through CRI's CDI devices: containerd
//! applies it where it has CDI, the proxy where it has not, never both. A second pod asks
//! kubelet instead (`resources.limits`): the real device plugin answers Allocate for the
//! container, a PodResources stand-in tells the proxy at the sandbox's Create.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

use k8s_cri::v1::{
    CdiDevice, ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest,
    ImageSpec, LinuxContainerConfig, PodSandboxConfig, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use kata_gpu_device_plugin::{Config, Strategy};
use kata_gpu_kubelet_api::deviceplugin::v1beta1::device_plugin_client::DevicePluginClient;
use kata_gpu_kubelet_api::deviceplugin::v1beta1::{
    AllocateRequest, ContainerAllocateRequest, ContainerAllocateResponse,
};
use kata_gpu_tests::cri::{
    client, cri_table, cri_table_without_ours, host_network_pod, HANDLER, PAUSE_IMAGE as IMAGE,
};
use kata_gpu_tests::image::write_oci_archive;
use kata_gpu_tests::kubelet::{Allocation, DevicePlugin, KubeletRegistration, PodResourcesStandIn};
use kata_gpu_tests::shimrig::{pids_of, Downstream, Rig, SHIM};
use kata_gpu_tests::{available, Containerd};

/// The CRI tables of `release` with our handler as `kata-gpu containerd register` writes
/// it (its own code, the spec `handler_spec` builds: `options.ConfigPath` naming the base
/// Kata config, which CRI 2.x passes on every container's Create), in the file version the
/// private containerd's config declares.
fn cri_table_registered(release: Containerd, base_config: &std::path::Path) -> String {
    let version = if release.is_v2() { 3 } else { 2 };
    let text = format!("version = {version}\n{}", cri_table_without_ours(release));
    let profile = kata_gpu_plan::Profile::Snp;
    let spec = kata_gpu_containerd_config::HandlerSpec::new(
        profile.handler(),
        profile.runtime_type(),
        base_config.display().to_string(),
    );
    assert_eq!(spec.name, HANDLER);
    let registered = kata_gpu_containerd_config::register(
        &text,
        &spec,
        kata_gpu_containerd_config::Target {
            file: "config.toml",
            version: None,
        },
    )
    .expect("register");
    assert!(
        registered.text.contains("ConfigPath"),
        "{}",
        registered.text
    );
    registered
        .text
        .strip_prefix(&format!("version = {version}\n"))
        .expect("the version line stays first")
        .to_owned()
}

kata_gpu_tests::tests_per_release!(a_pod_on_the_registered_handler_with_runc_downstream:
    a_pod_on_the_registered_handler_with_runc_downstream_on_containerd_1_7 = V1_7,
    a_pod_on_the_registered_handler_with_runc_downstream_on_containerd_2_1 = V2_1,
    a_pod_on_the_registered_handler_with_runc_downstream_on_containerd_2_3 = V2_3,
);

/// A pod and a container of it on the handler as `register` writes it, with runc's shim
/// downstream: runc's shim never sees Kata's options type (CRI 2.x sends it on the
/// container's Create too), and nothing is left afterwards.
fn a_pod_on_the_registered_handler_with_runc_downstream(release: Containerd, test: &str) {
    let Some(_) = available(test, release.bin_dir()) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    // Where `register` points a node's handler; the proxy plans from its own settings'
    // base config and never reads this one (Kata would).
    let table = cri_table_registered(
        release,
        std::path::Path::new("/opt/kata-gpu/kata-qemu-nvidia-gpu-snp/current/configuration.toml"),
    );
    // The pod names its GPU by annotation: a node without kubelet, in annotation mode.
    let rig = Rig::on_with_cri(
        release,
        Downstream::Runc,
        "device_source = \"annotations\"\n",
        &table,
    );
    let archive = rig.work.path().join("pause.tar");
    write_oci_archive(
        &rig.rootfs,
        IMAGE,
        &["/bin/busybox", "sleep", "3600"],
        &archive,
    )
    .expect("image archive");
    rig.ctrd.import(&archive);
    runtime.block_on(async {
        let mut cri = client(rig.ctrd.address()).await;
        let pod_config = sandbox_config(&rig, "reg-pod", &Ask::Annotation);
        let pod = cri
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod_config.clone()),
                runtime_handler: HANDLER.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", rig.ctrd.log()))
            .into_inner()
            .pod_sandbox_id;
        let id = cri
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config("app", false, &Ask::Annotation)),
                sandbox_config: Some(pod_config.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", rig.ctrd.log()))
            .into_inner()
            .container_id;
        cri.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", rig.ctrd.log()));
        let echo = cri
            .exec_sync(ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["/bin/busybox".into(), "echo".into(), "ran".into()],
                timeout: 10,
            })
            .await
            .expect("ExecSync")
            .into_inner();
        assert_eq!(String::from_utf8_lossy(&echo.stdout).trim(), "ran");
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
}

/// How the pod asks for its GPU.
enum Ask {
    /// `cdi.k8s.io/gpu` on the pod, and CRI's CDI devices on the container.
    Annotation,
    /// `resources.limits` through kubelet: the container carries what the device plugin's
    /// Allocate answered, the sandbox nothing (the proxy asks PodResources).
    Kubelet(ContainerAllocateResponse),
}

fn sandbox_config(rig: &Rig, name: &str, ask: &Ask) -> PodSandboxConfig {
    let logs = rig.work.path().join("pod-logs").join(name);
    fs::create_dir_all(&logs).expect("log dir");
    PodSandboxConfig {
        annotations: match ask {
            Ask::Annotation => {
                HashMap::from([("cdi.k8s.io/gpu".to_owned(), "nvidia.com/pgpu=0".to_owned())])
            }
            Ask::Kubelet(_) => HashMap::new(),
        },
        ..host_network_pod(name, "default", &logs, false)
    }
}

/// A container of the pod; with `gpu` it carries the pod's GPU as `ask` says: CRI's CDI
/// devices, or (as kubelet passes an Allocate answer) its CDI devices and annotations.
/// kubelet would pass the answer's device nodes too; the host's `/dev` has no VFIO node
/// here, so the plugin runs without that form.
fn container_config(name: &str, gpu: bool, ask: &Ask) -> ContainerConfig {
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
        cdi_devices: match ask {
            _ if !gpu => Vec::new(),
            Ask::Annotation => vec![CdiDevice {
                name: "nvidia.com/pgpu=0".into(),
            }],
            Ask::Kubelet(answer) => answer
                .cdi_devices
                .iter()
                .map(|d| CdiDevice {
                    name: d.name.clone(),
                })
                .collect(),
        },
        annotations: match ask {
            Ask::Kubelet(answer) if gpu => answer.annotations.clone(),
            _ => HashMap::new(),
        },
        ..ContainerConfig::default()
    }
}

kata_gpu_tests::tests_per_release!(a_gpu_pod_through_cri:
    a_gpu_pod_through_cri_on_containerd_1_6 = Debian,
    a_gpu_pod_through_cri_on_containerd_1_7 = V1_7,
    a_gpu_pod_through_cri_on_containerd_2_1 = V2_1,
    a_gpu_pod_through_cri_on_containerd_2_3 = V2_3,
);

kata_gpu_tests::tests_per_release!(a_pod_kubelet_allocated_a_gpu_through_cri:
    a_pod_kubelet_allocated_a_gpu_through_cri_on_containerd_1_6 = Debian,
    a_pod_kubelet_allocated_a_gpu_through_cri_on_containerd_1_7 = V1_7,
);

/// One proxy and one downstream for the pod, its per-sandbox config, its container's CDI
/// device applied once (by containerd where it has CDI), nothing left afterwards.
fn a_gpu_pod_through_cri(release: Containerd, test: &str) {
    gpu_pod(release, test, false);
}

/// A pod whose GPU kubelet allocated: the real device plugin answers Allocate (as kubelet
/// asks it), the PodResources stand-in reports the allocation, the sandbox has no annotation.
fn a_pod_kubelet_allocated_a_gpu_through_cri(release: Containerd, test: &str) {
    gpu_pod(release, test, true);
}

/// What the device plugin answers kubelet's Allocate of GPU 0 on the rig's host.
fn allocate_gpu_0(rig: &Rig, runtime: &tokio::runtime::Runtime) -> ContainerAllocateResponse {
    let kubelet = KubeletRegistration::start(rig.sim().root());
    let _plugin = DevicePlugin::start(Config {
        strategy: Strategy {
            device_specs: false,
            ..Strategy::default()
        },
        ..Config::new(rig.sim().root())
    });
    let endpoint = kubelet.dir().join(kubelet.next_registration().endpoint);
    runtime.block_on(async {
        let channel = kata_gpu_kubelet_api::connect_unix(&endpoint)
            .await
            .expect("the plugin's socket");
        DevicePluginClient::new(channel)
            .allocate(AllocateRequest {
                container_requests: vec![ContainerAllocateRequest {
                    devices_ids: vec!["0000:41:00.0".into()],
                }],
            })
            .await
            .expect("Allocate")
            .into_inner()
            .container_responses
            .remove(0)
    })
}

/// One proxy and one downstream for the pod, its per-sandbox config, its container's CDI
/// device applied once (by containerd where it has CDI), nothing left afterwards. With
/// `kubelet`, the GPU is kubelet's allocation rather than the pod's annotation.
fn gpu_pod(release: Containerd, test: &str, kubelet: bool) {
    let Some(_) = available(test, release.bin_dir()) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let table = cri_table(release, kubelet);
    // Without kubelet, the pod's annotation names its GPU: annotation mode, set explicitly.
    let settings = if kubelet {
        ""
    } else {
        "device_source = \"annotations\"\n"
    };
    let rig = Rig::on_with_cri(release, Downstream::Recording, settings, &table);
    let ask = if kubelet {
        Ask::Kubelet(allocate_gpu_0(&rig, &runtime))
    } else {
        Ask::Annotation
    };
    let pod_resources = kubelet.then(|| {
        PodResourcesStandIn::start(
            &rig.sim().path("var/lib/kubelet/pod-resources/kubelet.sock"),
            vec![Allocation::one(
                "default",
                "gpu-pod",
                "nvidia.com/GH100_H100_PCIE",
                &["0000:41:00.0"],
            )],
        )
    });
    let archive = rig.work.path().join("pause.tar");
    write_oci_archive(
        &rig.rootfs,
        IMAGE,
        &["/bin/busybox", "sleep", "3600"],
        &archive,
    )
    .expect("image archive");
    rig.ctrd.import(&archive);

    runtime.block_on(async {
        let mut cri = client(rig.ctrd.address()).await;
        let pod_config = sandbox_config(&rig, "gpu-pod", &ask);
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
        for (name, gpu) in [("cuda", true), ("sidecar", false)] {
            let id = cri
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(container_config(name, gpu, &ask)),
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

        // One proxy and one downstream for the whole pod.
        assert_eq!(
            pids_of(&rig, &[SHIM, "serve"]).len(),
            1,
            "one proxy for the pod"
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
        if let Some(kubelet) = &pod_resources {
            // The proxy asked kubelet for this pod, planned its GPU, and told Kata.
            assert_eq!(
                kubelet.asked(),
                [("default".to_owned(), "gpu-pod".to_owned())]
            );
            let plan = fs::read_to_string(config.with_file_name("plan.json")).expect("plan");
            assert!(plan.contains("\"nvidia.com/pgpu=0000:41:00.0\""), "{plan}");
            let bundle = PathBuf::from(record["bundle"].as_str().expect("bundle"));
            let spec: serde_json::Value = serde_json::from_slice(
                &fs::read(bundle.join("config.json")).expect("sandbox config.json"),
            )
            .expect("json");
            assert_eq!(
                spec["annotations"]["cdi.k8s.io/kata-gpu-allocated"],
                "nvidia.com/pgpu=0000:41:00.0"
            );
        }

        // The GPU container has its device once. containerd 1.6 has no CDI: the proxy
        // applied the request and rewrote config.json (pretty-printed). Later releases apply
        // it themselves, and the proxy leaves their config.json (one line of JSON) alone.
        let bundle = rig
            .ctrd
            .dir()
            .join("state/io.containerd.runtime.v2.task/k8s.io")
            .join(&containers[0])
            .join("config.json");
        let text = fs::read_to_string(&bundle).expect("the container's config.json");
        let spec: serde_json::Value = serde_json::from_str(&text).expect("config.json");
        let vfio = spec["linux"]["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["path"] == "/dev/vfio/devices/vfio0")
            .count();
        assert_eq!(vfio, 1, "{}", spec["linux"]["devices"]);
        let containerd_has_cdi = release != Containerd::Debian;
        assert_eq!(
            text.trim_end().lines().count() == 1,
            containerd_has_cdi,
            "config.json written by {}",
            if containerd_has_cdi {
                "the proxy, though containerd had applied the device"
            } else {
                "containerd alone: the proxy did not apply the device"
            }
        );
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
