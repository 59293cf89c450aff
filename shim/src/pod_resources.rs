//! At a sandbox's Create: the devices kubelet allocated to the pod, from its PodResources API.
//!
//! kubelet passes no devices to the sandbox (pause) container, yet the VM's PCIe topology is
//! fixed when it is created: so the shim asks PodResources `Get` for the pod named by CRI's
//! annotations, takes the allocations of the device plugin's resources (NVIDIA's names,
//! `nvidia.com/GH100_H100_PCIE`, or the kinds `nvidia.com/pgpu`, `nvidia.com/nvswitch`) as
//! the CDI names `<kind>=<id>`, and hands them to the plan and to Kata as the sandbox's one
//! `cdi.k8s.io/*` annotation: the pod's own are checked against them and removed
//! ([`kata_gpu_plan::sandbox::allocated`]). A gRPC runtime is built only when a lookup is
//! made. Where devices come from is the node's setting (`device_source`): kubelet's
//! allocation by default, the pod's annotations only on a node that says so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cdi::{QualifiedName, Registry};
use kata_gpu_kubelet_api::podresources::v1::pod_resources_lister_client::PodResourcesListerClient;
use kata_gpu_kubelet_api::podresources::v1::{GetPodResourcesRequest, PodResources};
use oci_spec::runtime::Spec as OciSpec;

use kata_gpu_plan::host::Host;
use kata_gpu_plan::host_spec::{NVSWITCH_KIND, PGPU_KIND};
use kata_gpu_plan::resource_names::host_resources;
#[cfg(test)]
use kata_gpu_plan::sandbox::allocated::list;
use kata_gpu_plan::sandbox::allocated::{grant, refuse_pod_set_allocated, refuse_unallocated};
use kata_gpu_plan::settings::DeviceSource;

/// CRI's (containerd's) annotation naming the sandbox's pod.
pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
/// CRI's (containerd's) annotation naming the sandbox's pod namespace.
pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
/// CRI-O's annotation naming the pod.
pub const CRIO_NAME: &str = "io.kubernetes.cri-o.KubeName";
/// CRI-O's annotation naming the pod namespace.
pub const CRIO_NAMESPACE: &str = "io.kubernetes.cri-o.Namespace";
/// The resource names whose allocations become CDI names under either naming of the device
/// plugin: the kinds, always, and NVIDIA's names of the host's devices
/// ([`kata_gpu_plan::resource_names::host_resources`]), each with its CDI kind.
pub const KIND_RESOURCES: [&str; 2] = [PGPU_KIND, NVSWITCH_KIND];

/// The pod a sandbox belongs to, as (namespace, name), from CRI's or CRI-O's annotations.
/// CRI-O's first: CRI-O hands the runtime every annotation of the pod and then sets its
/// own, so under CRI-O containerd's keys are the pod author's and could name another pod
/// (and so its allocation); containerd passes a pod's annotations only as its
/// `pod_annotations` allow, which does not take `io.kubernetes.*`.
pub fn pod_of(annotations: &std::collections::HashMap<String, String>) -> Option<(&str, &str)> {
    [
        (CRIO_NAMESPACE, CRIO_NAME),
        (SANDBOX_NAMESPACE, SANDBOX_NAME),
    ]
    .into_iter()
    .find_map(|(ns, name)| {
        Some((
            annotations.get(ns)?.as_str(),
            annotations.get(name)?.as_str(),
        ))
    })
    .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
}

/// The CDI names of the pod's allocations of our resources (`resources`: resource name and
/// CDI kind), in kubelet's order, once each: `<kind>=<id>`.
pub fn allocated_names(
    pod: &PodResources,
    resources: &[(String, &str)],
) -> Result<Vec<QualifiedName>, String> {
    let mut out: Vec<QualifiedName> = Vec::new();
    for container in &pod.containers {
        for devices in &container.devices {
            let Some((_, kind)) = resources.iter().find(|(r, _)| *r == devices.resource_name)
            else {
                continue;
            };
            for id in &devices.device_ids {
                let text = format!("{kind}={id}");
                let name: QualifiedName = text.parse().map_err(|e| {
                    format!(
                        "kubelet allocated {} {id:?} to pod {}/{}, and {text:?} is not a CDI name: {e}",
                        devices.resource_name, pod.namespace, pod.name
                    )
                })?;
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
    }
    Ok(out)
}

/// Asks kubelet's PodResources `Get` on `socket` for pod `namespace/name`, within `timeout`.
pub fn get(
    socket: &Path,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<PodResources, String> {
    let what = format!(
        "cannot ask kubelet which devices pod {namespace}/{name} was allocated: {}",
        socket.display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("{what}: cannot start a runtime: {e}"))?;
    let request = GetPodResourcesRequest {
        pod_name: name.to_owned(),
        pod_namespace: namespace.to_owned(),
    };
    let answer = runtime.block_on(async {
        tokio::time::timeout(timeout, async {
            let channel = kata_gpu_kubelet_api::connect_unix(socket)
                .await
                .map_err(|e| format!("{what}: {}", kata_gpu_fsutil::error_line(&e)))?;
            PodResourcesListerClient::new(channel)
                .get(request)
                .await
                .map_err(|status| {
                    format!(
                        "{what}: {} {} (kubelet before 1.34 needs the feature gate KubeletPodResourcesGet)",
                        status.code(),
                        status.message()
                    )
                })
        })
        .await
    });
    match answer {
        Err(_) => Err(format!(
            "{what}: no answer within {}s; is kubelet running?",
            timeout.as_secs_f32()
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(response)) => response
            .into_inner()
            .pod_resources
            .ok_or_else(|| format!("{what}: kubelet answered without the pod's resources")),
    }
}

/// Where and how long to ask kubelet, and whether to.
#[derive(Clone, Debug)]
pub struct Lookup {
    /// kubelet's PodResources socket, already under the host root; `None`: never ask.
    pub socket: Option<PathBuf>,
    /// How long the lookup may take, connection included.
    pub timeout: Duration,
    /// Where devices come from.
    pub source: DeviceSource,
    /// The host's root, whose devices name the device plugin's resources.
    pub host_root: PathBuf,
}

impl Lookup {
    /// The lookup the shim's settings ask for. The socket is found under the host root as
    /// the host would find it (`/var/lib/kubelet` is often a link to a data disk, and an
    /// absolute link's target starts again at the root); a path that cannot be resolved
    /// (a link loop) is taken as written, and the connection says why it fails.
    pub fn from_settings(settings: &kata_gpu_plan::settings::Settings) -> Self {
        let path = settings.pod_resources_socket.display().to_string();
        let root = &settings.host_root;
        Self {
            socket: (!path.is_empty()).then(|| {
                kata_gpu_fsutil::resolve_in_root(root, &settings.pod_resources_socket)
                    .unwrap_or_else(|_| cdi::inject::under_root(root, &path))
            }),
            timeout: Duration::from_secs(settings.pod_resources_timeout_seconds),
            source: settings.device_source,
            host_root: settings.host_root.clone(),
        }
    }
}

/// For a sandbox (`sandbox` its id): makes its devices what the node's device source says,
/// and returns true when `spec` changed (then the bundle's `config.json` must be rewritten,
/// for Kata cold-plugs what it names).
///
/// - `device_source = "kubelet"` (the default): a kubelet pod gets exactly what kubelet
///   allocated it ([`grant`]): its own `cdi.k8s.io/*` annotations are checked against the
///   allocation and replaced by it. kubelet's socket missing, or not answering, is an
///   error. A sandbox that is no kubelet pod (`ctr`) may ask for no device.
/// - `device_source = "annotations"`: the pod's annotations name its devices, and kubelet
///   is never asked.
///
/// Either way the key the shim writes, set by the pod, is refused.
pub fn sandbox_devices(
    lookup: &Lookup,
    spec: &mut OciSpec,
    registry: &Registry,
    sandbox: &str,
) -> Result<bool, String> {
    let annotations = spec.annotations().clone().unwrap_or_default();
    let pod = pod_of(&annotations);
    let who = pod.map_or_else(
        || format!("sandbox {sandbox}"),
        |(ns, name)| format!("pod {ns}/{name}"),
    );
    refuse_pod_set_allocated(spec, &who).map_err(|e| e.to_string())?;
    if lookup.source == DeviceSource::Annotations {
        return Ok(false);
    }
    let Some((namespace, name)) = pod else {
        refuse_unallocated(spec, sandbox).map_err(|e| e.to_string())?;
        return Ok(false);
    };
    let what = format!("cannot ask kubelet which devices pod {namespace}/{name} was allocated");
    let Some(socket) = lookup.socket.as_deref() else {
        return Err(format!(
            "{what}: pod_resources_socket is empty; name kubelet's socket in the kata-gpu shim settings, or on a node without kubelet set device_source = \"annotations\""
        ));
    };
    if std::fs::symlink_metadata(socket).is_err() {
        return Err(format!(
            "{what}: {} does not exist; is kubelet running (with its root elsewhere, set pod_resources_socket)? On a node without kubelet set device_source = \"annotations\" in the kata-gpu shim settings",
            socket.display()
        ));
    }
    let pod = get(socket, namespace, name, lookup.timeout)?;
    let resources = host_resources(&Host::new(&lookup.host_root)).map_err(|e| {
        format!("cannot tell which of kubelet's resources are the host's devices: {e}")
    })?;
    let allocated = allocated_names(&pod, &resources)?;
    let done = grant(spec, registry, &format!("{namespace}/{name}"), &allocated)
        .map_err(|e| e.to_string())?;
    if let Some(note) = &done.note {
        tracing::info!("{note}");
    }
    Ok(done.changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kata_gpu_kubelet_api::podresources::v1::{ContainerDevices, ContainerResources};

    #[test]
    fn kubelets_socket_is_found_through_links_under_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let data = root.path().join("data/kubelet/pod-resources");
        std::fs::create_dir_all(&data).expect("mkdir");
        std::fs::create_dir_all(root.path().join("var/lib")).expect("mkdir");
        // As on a node whose kubelet state lives on a data disk: an absolute link, which
        // must start again at the root, not at this machine's `/`.
        std::os::unix::fs::symlink("/data/kubelet", root.path().join("var/lib/kubelet"))
            .expect("link");
        let settings = kata_gpu_plan::settings::Settings {
            host_root: root.path().to_path_buf(),
            ..Default::default()
        };
        let lookup = Lookup::from_settings(&settings);
        assert_eq!(lookup.socket, Some(data.join("kubelet.sock")));
        let none = Lookup::from_settings(&kata_gpu_plan::settings::Settings {
            pod_resources_socket: PathBuf::new(),
            ..settings
        });
        assert_eq!(none.socket, None);
    }

    fn pod(devices: &[(&str, &[&str])]) -> PodResources {
        PodResources {
            name: "p".into(),
            namespace: "ns".into(),
            containers: vec![ContainerResources {
                name: "c".into(),
                devices: devices
                    .iter()
                    .map(|(r, ids)| ContainerDevices {
                        resource_name: (*r).to_owned(),
                        device_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
                        topology: None,
                    })
                    .collect(),
            }],
        }
    }

    fn ours() -> Vec<(String, &'static str)> {
        vec![
            (PGPU_KIND.to_owned(), PGPU_KIND),
            (NVSWITCH_KIND.to_owned(), NVSWITCH_KIND),
            ("nvidia.com/GH100_H100_PCIE".to_owned(), PGPU_KIND),
            ("nvidia.com/GH100_H100_NVSWITCH".to_owned(), NVSWITCH_KIND),
        ]
    }

    /// Issue 24 item 0: NVIDIA's resource names map back to the CDI kinds (failed before:
    /// only nvidia.com/pgpu and nvidia.com/nvswitch were read).
    #[test]
    fn only_our_resources_become_cdi_names() {
        let names = allocated_names(
            &pod(&[
                ("nvidia.com/pgpu", &["0", "3"]),
                ("example.com/nic", &["eth1"]),
                ("nvidia.com/nvswitch", &["1"]),
                ("nvidia.com/pgpu", &["0"]),
                ("nvidia.com/GH100_H100_PCIE", &["5"]),
                ("nvidia.com/GH100_H100_NVSWITCH", &["2"]),
                ("nvidia.com/gpu", &["GPU-1234"]),
            ]),
            &ours(),
        )
        .expect("names");
        assert_eq!(
            list(&names),
            "nvidia.com/pgpu=0,nvidia.com/pgpu=3,nvidia.com/nvswitch=1,nvidia.com/pgpu=5,nvidia.com/nvswitch=2"
        );
    }

    #[test]
    fn an_id_that_is_no_cdi_name_is_refused_naming_it() {
        let err =
            allocated_names(&pod(&[("nvidia.com/pgpu", &["a b"])]), &ours()).expect_err("refused");
        assert!(
            err.starts_with(
                "kubelet allocated nvidia.com/pgpu \"a b\" to pod ns/p, and \"nvidia.com/pgpu=a b\" is not a CDI name"
            ),
            "{err}"
        );
    }

    #[test]
    fn the_pod_comes_from_cri_or_cri_o_annotations() {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<std::collections::HashMap<_, _>>()
        };
        assert_eq!(
            pod_of(&map(&[(SANDBOX_NAME, "a"), (SANDBOX_NAMESPACE, "n")])),
            Some(("n", "a"))
        );
        assert_eq!(
            pod_of(&map(&[(CRIO_NAME, "b"), (CRIO_NAMESPACE, "m")])),
            Some(("m", "b"))
        );
        assert_eq!(pod_of(&map(&[(SANDBOX_NAME, "a")])), None);
        // Under CRI-O, a pod setting containerd's keys does not name another pod.
        assert_eq!(
            pod_of(&map(&[
                (SANDBOX_NAME, "victim"),
                (SANDBOX_NAMESPACE, "other"),
                (CRIO_NAME, "b"),
                (CRIO_NAMESPACE, "m")
            ])),
            Some(("m", "b"))
        );
        assert_eq!(
            pod_of(&map(&[(SANDBOX_NAME, ""), (SANDBOX_NAMESPACE, "n")])),
            None
        );
    }
}
