//! A CRI client over containerd's socket, the way kubelet connects (k8s-cri, tonic), and
//! the pod sandbox config the CRI tests share.

use std::path::PathBuf;

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata,
};
use tonic::transport::Channel;

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
