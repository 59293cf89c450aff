//! The runtime handler to register: what containerd is told about it.

use serde::{Deserialize, Serialize};

/// Pod annotations a Kata handler passes to its shim: Kata's own, and the CDI device
/// requests the shim resolves.
pub const DEFAULT_POD_ANNOTATIONS: [&str; 2] = ["io.katacontainers.*", "cdi.k8s.io/*"];

/// One runtime handler: the table `…containerd.runtimes.<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerSpec {
    /// The handler name, which is also the RuntimeClass's `handler`.
    pub name: String,
    /// `runtime_type`, e.g. `io.containerd.kata-qemu-nvidia-gpu-snp.v2`.
    pub runtime_type: String,
    /// `runtime_path`: the shim binary, when it is not found from `runtime_type` on PATH.
    pub runtime_path: Option<String>,
    /// `options.ConfigPath`: the base Kata config of the profile.
    pub config_path: String,
    /// `pod_annotations`: patterns of annotations passed on to the shim. Entries already in
    /// the file are kept; these are added if missing.
    pub pod_annotations: Vec<String>,
    /// `snapshotter`, when the handler needs its own.
    pub snapshotter: Option<String>,
}

impl HandlerSpec {
    /// A handler with the default pod annotations and no runtime path or snapshotter.
    pub fn new(
        name: impl Into<String>,
        runtime_type: impl Into<String>,
        config_path: impl Into<String>,
    ) -> Self {
        HandlerSpec {
            name: name.into(),
            runtime_type: runtime_type.into(),
            runtime_path: None,
            config_path: config_path.into(),
            pod_annotations: DEFAULT_POD_ANNOTATIONS.map(str::to_owned).to_vec(),
            snapshotter: None,
        }
    }
}
