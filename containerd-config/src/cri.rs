//! What the running containerd loaded, asked over its socket rather than read from its
//! config file: CRI's `Status` with `verbose` answers the CRI plugin's config as JSON
//! (`info["config"]`), whose `containerd.runtimes` are the handlers it serves now.

use std::path::Path;
use std::time::Duration;

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::StatusRequest;
use tonic::transport::Channel;

use crate::error::Error;

/// A CRI runtime client over containerd's socket `socket` (a filesystem socket), for
/// kubelet's view of it; the connector is the one kubelet's APIs use.
pub async fn connect(
    socket: &Path,
) -> Result<RuntimeServiceClient<Channel>, tonic::transport::Error> {
    Ok(RuntimeServiceClient::new(
        kata_gpu_kubelet_api::connect_unix(socket).await?,
    ))
}

/// How long the running containerd has to answer CRI's Status.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The runtime handlers the containerd serving CRI on `socket` has loaded, sorted; `Err`
/// says why it could not be asked (no socket, no CRI, no answer within `timeout`).
pub fn loaded_handlers(socket: &Path, timeout: Duration) -> Result<Vec<String>, Error> {
    let failed = |detail: String| Error::Cri {
        path: socket.to_path_buf(),
        detail,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(format!("cannot start a runtime: {e}")))?;
    let info = rt
        .block_on(async {
            let ask = async {
                let mut client = connect(socket)
                    .await
                    .map_err(|e| format!("cannot connect: {}", kata_gpu_fsutil::error_line(&e)))?;
                let reply = client
                    .status(StatusRequest { verbose: true })
                    .await
                    .map_err(|e| format!("CRI Status failed: {}", e.message()))?;
                Ok::<_, String>(reply.into_inner().info)
            };
            tokio::time::timeout(timeout, ask)
                .await
                .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
        })
        .map_err(failed)?;
    let config = info
        .get("config")
        .ok_or_else(|| failed("CRI Status has no \"config\" in its verbose info".to_owned()))?;
    handlers_in(config).map_err(failed)
}

/// The runtime names under `containerd.runtimes` in the CRI plugin's config JSON.
pub fn handlers_in(config: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value =
        serde_json::from_str(config).map_err(|e| format!("CRI config is not JSON: {e}"))?;
    let runtimes = v
        .pointer("/containerd/runtimes")
        .and_then(serde_json::Value::as_object)
        .ok_or("CRI config has no containerd.runtimes")?;
    let mut names: Vec<String> = runtimes.keys().cloned().collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handlers_are_the_keys_of_containerd_runtimes() {
        let config = r#"{"containerd":{"defaultRuntimeName":"runc","runtimes":{"runc":{},"kata-qemu-nvidia-gpu-snp":{"runtimeType":"io.containerd.kata-qemu-nvidia-gpu-snp.v2"}}}}"#;
        assert_eq!(
            handlers_in(config).expect("handlers"),
            ["kata-qemu-nvidia-gpu-snp", "runc"]
        );
        assert!(handlers_in("{}").is_err());
        assert!(handlers_in("not json").is_err());
    }

    #[test]
    fn an_absent_socket_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = loaded_handlers(&dir.path().join("none.sock"), Duration::from_secs(5))
            .expect_err("absent");
        assert!(err.to_string().contains(": cannot connect: "), "{err}");
    }
}
