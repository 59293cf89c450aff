//! A CRI client over containerd's socket, the way kubelet connects (k8s-cri, tonic), and
//! the pod sandbox config the CRI tests share.

use std::path::PathBuf;

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata,
};
use tonic::transport::Channel;

use crate::shimrig::CDI_SPEC_DIR;
use crate::Containerd;

/// The pause-like image the CRI tests build and import: the sandbox image of their tables.
pub const PAUSE_IMAGE: &str = "docker.io/library/kata-gpu-pause:test";
/// The runtime handler the CRI tests register: the snp profile's.
pub const HANDLER: &str = "kata-qemu-nvidia-gpu-snp";

/// Connects to the CRI runtime service on the unix socket `socket`, as `kata-gpu status`
/// does (one connector for both).
pub async fn client(socket: PathBuf) -> RuntimeServiceClient<Channel> {
    kata_gpu_containerd_config::cri::connect(&socket)
        .await
        .expect("connect to containerd's CRI")
}

/// A pod on the host's network (no CNI here), its logs under `logs`; `privileged` as the
/// node DaemonSet's pod is.
pub fn host_network_pod(
    name: &str,
    namespace: &str,
    logs: &std::path::Path,
    privileged: bool,
) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: namespace.into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                privileged,
                namespace_options: Some(NamespaceOption {
                    network: 2, // NODE
                    ..NamespaceOption::default()
                }),
                ..LinuxSandboxSecurityContext::default()
            }),
            ..LinuxPodSandboxConfig::default()
        }),
        ..PodSandboxConfig::default()
    }
}

/// The CRI tables of `release`, in its config format: our handler, runc's, the test's
/// sandbox image, and (where containerd has CDI) CDI on, reading the simulated host's spec.
pub fn cri_table(release: Containerd, kubelet: bool) -> String {
    // containerd 1.6 has no CDI: a device plugin's annotation form reaches the proxy
    // only through the container's annotations.
    let container_annotations = if kubelet && release == Containerd::Debian {
        "  container_annotations = [\"cdi.k8s.io/*\"]\n"
    } else {
        ""
    };
    let handler = |plugin: &str| {
        format!(
            "[plugins.\"{plugin}\".containerd.runtimes.{HANDLER}]\n  runtime_type = \"io.containerd.{HANDLER}.v2\"\n  \
             privileged_without_host_devices = true\n  pod_annotations = [\"cdi.k8s.io/*\", \"io.katacontainers.*\"]\n{container_annotations}"
        )
    };
    cri_table_without_ours(release) + &handler(runtime_plugin(release))
}

/// The plugin whose `containerd.runtimes` are CRI's handlers on `release`.
pub fn runtime_plugin(release: Containerd) -> &'static str {
    if release.is_v2() {
        "io.containerd.cri.v1.runtime"
    } else {
        "io.containerd.grpc.v1.cri"
    }
}

/// The CRI tables of `release` with runc's handler only: the sandbox image, and (where
/// containerd has CDI) CDI on, reading the simulated host's spec.
pub fn cri_table_without_ours(release: Containerd) -> String {
    let runc = |plugin: &str| {
        format!(
            "[plugins.\"{plugin}\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n"
        )
    };
    let cdi = format!("  enable_cdi = true\n  cdi_spec_dirs = [\"{CDI_SPEC_DIR}\"]\n");
    match release {
        Containerd::Debian | Containerd::V1_7 => {
            let plugin = "io.containerd.grpc.v1.cri";
            // containerd 1.6 has no CDI.
            let cdi = if release == Containerd::Debian {
                ""
            } else {
                &cdi
            };
            format!(
                "[plugins.\"{plugin}\"]\n  sandbox_image = \"{PAUSE_IMAGE}\"\n  disable_apparmor = true\n  restrict_oom_score_adj = true\n{cdi}\
                 [plugins.\"{plugin}\".containerd]\n  snapshotter = \"native\"\n"
            ) + &runc(plugin)
        }
        Containerd::V2_1 | Containerd::V2_3 => {
            let plugin = "io.containerd.cri.v1.runtime";
            format!(
                "[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"native\"\n\
                 [plugins.\"io.containerd.cri.v1.images\".pinned_images]\n  sandbox = \"{PAUSE_IMAGE}\"\n\
                 [plugins.\"{plugin}\"]\n  disable_apparmor = true\n  restrict_oom_score_adj = true\n{cdi}"
            ) + &runc(plugin)
        }
    }
}
