//! The node image as a CRI pod on a real containerd (1.6), the way the node DaemonSet runs
//! it: the README's `make image` line (on debug binaries) twice gives one
//! digest; `ctr images import` loads the tar; a privileged container with a simulated
//! host's root mounted at /host runs `kata-gpu agent`, which installs against that host's
//! containerd config (the registration shows in `containerd config dump`), leaves the node
//! unlabelled while doctor finds problems, and on SIGTERM (StopContainer) uninstalls: the
//! config is byte-identical to before and the shim is gone. A second run does the same.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerStatusRequest, CreateContainerRequest, ImageSpec,
    LinuxContainerConfig, LinuxContainerSecurityContext, Mount, PodSandboxConfig,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use kata_gpu_tests::cri::{client, host_network_pod};
use kata_gpu_tests::image::write_oci_archive;
use kata_gpu_tests::shimrig::wait_until;
use kata_gpu_tests::{busybox_rootfs, readme_command, PrivateContainerd, SimHost, VfioMode};

const PAUSE: &str = "docker.io/library/kata-gpu-pause:test";
const SHIM: &str = "usr/local/bin/containerd-shim-kata-qemu-nvidia-gpu-snp-v2";
const CONFIG: &str = "etc/containerd/config.toml";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The image's name, from the README's `make image IMAGE=…`.
fn image_name() -> String {
    readme_command("make image")
        .iter()
        .find_map(|w| w.strip_prefix("IMAGE="))
        .expect("the README's make image line names IMAGE=")
        .to_owned()
}

/// The README's `make image` line on debug binaries, into `tar`; its printed manifest digest.
fn make_image(tar: &Path) -> String {
    let line = readme_command("make image");
    let out = Command::new(&line[0])
        .current_dir(workspace())
        .env(
            "CARGO",
            std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
        )
        .arg("--no-print-directory")
        .args(&line[1..])
        .arg("IMAGE_PROFILE=dev")
        .arg(format!("IMAGE_TAR={}", tar.display()))
        .output()
        .expect("run make image");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "make image: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = said.lines().last().unwrap_or_default();
    let digest = line.rsplit(' ').next().unwrap_or_default();
    assert!(digest.starts_with("sha256:"), "{said}");
    digest.to_owned()
}

fn cri_config() -> String {
    let plugin = "io.containerd.grpc.v1.cri";
    format!(
        "[plugins.\"{plugin}\"]\n  sandbox_image = \"{PAUSE}\"\n  disable_apparmor = true\n  restrict_oom_score_adj = true\n\
         [plugins.\"{plugin}\".containerd]\n  snapshotter = \"native\"\n"
    )
}

fn pod_config(logs: &Path) -> PodSandboxConfig {
    host_network_pod("kata-gpu-node", "kata-gpu", logs, true)
}

/// The agent container as the DaemonSet runs it, with the simulated host as /host.
fn agent_config(root: &Path, attempt: u32) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "agent".into(),
            attempt,
        }),
        image: Some(ImageSpec {
            image: image_name(),
            ..ImageSpec::default()
        }),
        args: [
            "--host-root",
            "/host",
            "agent",
            "--profile",
            "snp",
            "--label",
            "--",
            "--containerd-config",
            "/etc/containerd/config.toml",
        ]
        .map(String::from)
        .to_vec(),
        mounts: vec![Mount {
            container_path: "/host".into(),
            host_path: root.display().to_string(),
            ..Mount::default()
        }],
        log_path: format!("agent-{attempt}.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                privileged: true,
                ..LinuxContainerSecurityContext::default()
            }),
            ..LinuxContainerConfig::default()
        }),
        ..ContainerConfig::default()
    }
}

fn dump(ctrd: &PrivateContainerd, config: &Path) -> String {
    let out = Command::new(ctrd.bin_dir().join("containerd"))
        .arg("--config")
        .arg(config)
        .args(["config", "dump"])
        .output()
        .expect("containerd config dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_node_image_runs_as_a_pod_and_undoes_itself_on_sigterm() {
    let ctrd = PrivateContainerd::start_cri(&cri_config(), &[]);
    let work = tempfile::tempdir().expect("tempdir");

    // The image: reproducible, and loadable with ctr.
    let tar = work.path().join("kata-gpu.tar");
    let first = make_image(&tar);
    let again = make_image(&work.path().join("again.tar"));
    assert_eq!(first, again, "two builds of one commit differ");
    let pause = work.path().join("pause.tar");
    let rootfs = busybox_rootfs(work.path());
    write_oci_archive(&rootfs, PAUSE, &["/bin/busybox", "sleep", "3600"], &pause)
        .expect("pause image");
    for archive in [&tar, &pause] {
        ctrd.import(archive);
    }
    let listed = ctrd.ctr(&["-n", "k8s.io", "images", "ls", "-q"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&image_name()));

    // A simulated H100 host whose containerd config is containerd's own default.
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let root = sim.root().to_path_buf();
    let config = root.join(CONFIG);
    fs::create_dir_all(config.parent().expect("dir")).expect("mkdir");
    let default = Command::new(ctrd.bin_dir().join("containerd"))
        .args(["config", "default"])
        .output()
        .expect("containerd config default");
    fs::write(&config, &default.stdout).expect("write config");
    let before = fs::read(&config).expect("config");
    assert!(!dump(&ctrd, &config).contains("kata-qemu-nvidia-gpu-snp"));

    let logs = work.path().join("logs");
    fs::create_dir_all(&logs).expect("logs");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    runtime.block_on(async {
        let mut cri = client(ctrd.address()).await;
        let pod = cri
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod_config(&logs)),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", ctrd.log()))
            .into_inner()
            .pod_sandbox_id;
        let mut dumps = Vec::new();
        for attempt in 0..2 {
            let log = logs.join(format!("agent-{attempt}.log"));
            let id = cri
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(agent_config(&root, attempt)),
                    sandbox_config: Some(pod_config(&logs)),
                })
                .await
                .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", ctrd.log()))
                .into_inner()
                .container_id;
            cri.start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", ctrd.log()));
            let read = || fs::read_to_string(&log).unwrap_or_default();
            // Doctor finds the restart owed and no Kata: the agent keeps checking.
            wait_until("the agent says what it waits for", || {
                read().contains("not ready, checking again in")
            });
            let text = dump(&ctrd, &config);
            assert!(
                text.contains("runtimes.kata-qemu-nvidia-gpu-snp]")
                    && text.contains("io.containerd.kata-qemu-nvidia-gpu-snp.v2"),
                "{text}\n{}",
                read()
            );
            assert!(root.join(SHIM).is_file(), "{}", read());
            assert!(!read().contains("ready;"), "{}", read());
            assert!(!root
                .join("etc/kubernetes/node-feature-discovery/features.d")
                .exists());
            dumps.push(text);

            cri.stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout: 60,
            })
            .await
            .expect("StopContainer");
            let status = cri
                .container_status(ContainerStatusRequest {
                    container_id: id,
                    verbose: false,
                })
                .await
                .expect("ContainerStatus")
                .into_inner()
                .status
                .expect("status");
            assert_eq!(status.exit_code, 0, "{}", read());
            assert!(read().contains("SIGTERM: uninstalling"), "{}", read());
            assert!(
                fs::read(&config).expect("config") == before,
                "the config is not what it was:\n{}",
                read()
            );
            assert!(!root.join(SHIM).exists(), "{}", read());
        }
        assert_eq!(
            dumps[0], dumps[1],
            "the second run registered something else"
        );
        cri.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("StopPodSandbox");
        cri.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .expect("RemovePodSandbox");
    });
}
