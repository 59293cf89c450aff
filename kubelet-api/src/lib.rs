//! kubelet's gRPC APIs as the node side of kata-gpu speaks them: the device plugin API
//! v1beta1 (the plugin registers with kubelet and serves it) and the `Get` of PodResources v1
//! (the shim asks which devices kubelet gave a pod).
//!
//! No maintained crate offered both with tonic 0.14 on our toolchain, so the messages are
//! declared in `proto/` from the published API (field numbers are the contract) and generated
//! at build time with `protoc`.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Device plugin API v1beta1: messages, the `Registration` client and server, the
/// `DevicePlugin` client and server.
#[allow(missing_docs, clippy::all)]
pub mod deviceplugin {
    /// Version v1beta1.
    pub mod v1beta1 {
        tonic::include_proto!("v1beta1");
    }
}

/// PodResources API v1 (`Get` only).
#[allow(missing_docs, clippy::all)]
pub mod podresources {
    /// Version v1.
    pub mod v1 {
        tonic::include_proto!("v1");
    }
}

/// The version string a plugin registers with.
pub const DEVICE_PLUGIN_VERSION: &str = "v1beta1";
/// kubelet's device-plugins directory: its registration socket and every plugin's.
pub const DEVICE_PLUGINS_DIR: &str = "/var/lib/kubelet/device-plugins";
/// The name of kubelet's registration socket inside [`DEVICE_PLUGINS_DIR`].
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// A device kubelet may hand out.
pub const HEALTHY: &str = "Healthy";
/// A device kubelet must not hand out.
pub const UNHEALTHY: &str = "Unhealthy";

/// A gRPC channel to a filesystem unix socket (the URI is only a placeholder: every
/// connection goes to `path`). Connects at once, so a missing or dead socket is an error here.
pub async fn connect_unix(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}
