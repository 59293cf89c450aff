//! The objects that run kata-gpu on a cluster (`kata-gpu deploy`): a namespace, a
//! ServiceAccount that may do nothing in the API, the node DaemonSet (init: `vfio bind`;
//! main: `kata-gpu agent` per profile, which installs, labels the node through NFD once
//! `doctor` passes, and undoes it all on SIGTERM), the device plugin DaemonSet, and the
//! RuntimeClasses. Every DaemonSet runs only on nodes labelled
//! `nvidia.com/gpu.workload.config=vm-passthrough` and tolerates the GPU taint.
//!
//! Why no RBAC: the node labels go through NFD's local source (a file), and neither
//! DaemonSet calls the API server. Kubernetes RBAC could not have limited a node's pod to
//! its own Node anyway: `resourceNames` is fixed in the role and every pod of a DaemonSet
//! shares one ServiceAccount, so `patch nodes` would let any node relabel (and untaint)
//! every node; only an admission policy comparing the token's node claim with the object
//! could, and the NodeRestriction plugin covers kubelets' credentials, not ours.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, HostPathVolumeSource, Namespace, PodSpec, PodTemplateSpec,
    SeccompProfile, SecurityContext, ServiceAccount, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kata_gpu_plan::Profile;
use serde::Serialize;

use crate::{objects::labels, runtime_class, Error, Options, PASSTHROUGH_LABEL};

/// The namespace by default.
pub const DEFAULT_NAMESPACE: &str = "kata-gpu";
/// The image by default (what `make image` names it).
pub const DEFAULT_IMAGE: &str = "kata-gpu:dev";
/// The node DaemonSet's name.
pub const NODE_DAEMONSET: &str = "kata-gpu-node";
/// The device plugin DaemonSet's name.
pub const PLUGIN_DAEMONSET: &str = "kata-gpu-device-plugin";
/// The taint GPU nodes commonly carry, which the DaemonSets tolerate.
pub const GPU_TAINT: &str = "nvidia.com/gpu";
/// Where the DaemonSets see the host's root.
pub const HOST_MOUNT: &str = "/host";
/// kubelet's device plugin directory.
pub const DEVICE_PLUGINS: &str = "/var/lib/kubelet/device-plugins";

/// What `kata-gpu deploy` is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployOptions {
    /// The node image.
    pub image: String,
    /// The profiles to install (one agent container and one RuntimeClass each).
    pub profiles: Vec<Profile>,
    /// The namespace.
    pub namespace: String,
    /// `updateStrategy.rollingUpdate.maxUnavailable` of the node DaemonSet: how many
    /// nodes' containerd may restart at once.
    pub max_unavailable: u32,
    /// The RuntimeClasses' options.
    pub runtime_class: Options,
    /// A profile's artifact set on the node (a host path: directory, tarball or OCI
    /// layout), installed by its agent.
    pub artifacts: BTreeMap<Profile, String>,
    /// The Kata runtime behind the proxy on every node (its artifact sets must be that
    /// runtime's): the agents install with `--kata-runtime`.
    pub kata_runtime: kata_gpu_configs::KataRuntime,
}

impl Default for DeployOptions {
    fn default() -> Self {
        DeployOptions {
            image: DEFAULT_IMAGE.to_owned(),
            profiles: vec![Profile::Snp],
            namespace: DEFAULT_NAMESPACE.to_owned(),
            max_unavailable: 1,
            runtime_class: Options::default(),
            artifacts: BTreeMap::new(),
            kata_runtime: kata_gpu_configs::KataRuntime::Go,
        }
    }
}

/// Every object of a deployment, in the order `kubectl apply` should create them.
#[derive(Clone, Debug, PartialEq)]
pub struct Deployment {
    /// The namespace.
    pub namespace: Namespace,
    /// The ServiceAccount both DaemonSets run as.
    pub service_account: ServiceAccount,
    /// The node DaemonSet and the device plugin DaemonSet.
    pub daemonsets: Vec<DaemonSet>,
    /// One RuntimeClass per profile.
    pub runtime_classes: Vec<RuntimeClass>,
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels(None)),
        ..ObjectMeta::default()
    }
}

fn host_path(name: &str, path: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_owned(),
            type_: Some("Directory".to_owned()),
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, at: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: at.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn privileged() -> Option<SecurityContext> {
    Some(SecurityContext {
        privileged: Some(true),
        ..SecurityContext::default()
    })
}

fn container(name: &str, image: &str, args: &[&str]) -> Container {
    Container {
        name: name.to_owned(),
        image: Some(image.to_owned()),
        args: Some(args.iter().map(|a| (*a).to_owned()).collect()),
        ..Container::default()
    }
}

/// A DaemonSet on passthrough nodes, tolerating the GPU taint.
fn daemonset(name: &str, o: &DeployOptions, mut pod: PodSpec) -> DaemonSet {
    let selector = BTreeMap::from([("app.kubernetes.io/name".to_owned(), name.to_owned())]);
    let mut pod_labels = labels(None);
    pod_labels.extend(selector.clone());
    let (k, v) = PASSTHROUGH_LABEL;
    pod.node_selector = Some(BTreeMap::from([(k.to_owned(), v.to_owned())]));
    pod.tolerations = Some(vec![Toleration {
        key: Some(GPU_TAINT.to_owned()),
        operator: Some("Exists".to_owned()),
        effect: Some("NoSchedule".to_owned()),
        ..Toleration::default()
    }]);
    pod.service_account_name = Some(NODE_DAEMONSET.to_owned());
    pod.automount_service_account_token = Some(false);
    pod.priority_class_name = Some("system-node-critical".to_owned());
    DaemonSet {
        metadata: meta(name, Some(&o.namespace)),
        spec: DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(
                        i32::try_from(o.max_unavailable).unwrap_or(i32::MAX),
                    )),
                    max_surge: Some(IntOrString::Int(0)),
                }),
            }),
            ..DaemonSetSpec::default()
        },
        status: None,
    }
}

/// The node DaemonSet: `vfio bind` first, then one agent per profile, all with the host's
/// root at /host (the host's `/proc` with it: the agent reaches PID 1's mount namespace to
/// restart containerd through `/host/proc/1/ns/mnt`, so no `hostPID`); long enough a grace
/// period for uninstall and that restart.
pub fn node_daemonset(o: &DeployOptions) -> DaemonSet {
    let host = ["--host-root", HOST_MOUNT];
    let mut bind = container(
        "vfio-bind",
        &o.image,
        &[&host[..], &["vfio", "bind"]].concat(),
    );
    bind.security_context = privileged();
    bind.volume_mounts = Some(vec![mount("host-root", HOST_MOUNT, false)]);
    let agents = o
        .profiles
        .iter()
        .map(|p| {
            let set = o.artifacts.get(p).map(|a| format!("{HOST_MOUNT}{a}"));
            let set: Vec<&str> = set
                .as_deref()
                .map_or(Vec::new(), |s| vec!["--artifacts", s]);
            let agent = [
                "agent",
                "--profile",
                p.name(),
                "--label",
                "--restart-containerd",
            ];
            // The Go runtime is the agent's default: its argv stays as it was.
            let runtime: Vec<&str> = match o.kata_runtime {
                kata_gpu_configs::KataRuntime::Go => Vec::new(),
                rs => vec!["--kata-runtime", rs.name()],
            };
            // The other profiles' agents run beside this one: it restarts containerd once
            // their change is made too.
            let peers: Vec<&str> = o
                .profiles
                .iter()
                .filter(|q| *q != p)
                .flat_map(|q| ["--peer-profile", q.name()])
                .collect();
            let args = [&host[..], &agent[..], &peers[..], &set[..], &runtime[..]].concat();
            let mut c = container(&format!("agent-{}", p.name()), &o.image, &args);
            c.security_context = privileged();
            c.volume_mounts = Some(vec![mount("host-root", HOST_MOUNT, false)]);
            c
        })
        .collect();
    let mut ds = daemonset(
        NODE_DAEMONSET,
        o,
        PodSpec {
            init_containers: Some(vec![bind]),
            containers: agents,
            termination_grace_period_seconds: Some(300),
            volumes: Some(vec![host_path("host-root", "/")]),
            ..PodSpec::default()
        },
    );
    let mut said = BTreeMap::from([
        (
            NODE_ROOT_ANNOTATION.0.to_owned(),
            NODE_ROOT_ANNOTATION.1.to_owned(),
        ),
        (
            HOST_ROOT_WRITABLE_ANNOTATION.0.to_owned(),
            HOST_ROOT_WRITABLE_ANNOTATION.1.to_owned(),
        ),
        (why_privileged("vfio-bind"), WHY_PRIVILEGED_BIND.to_owned()),
    ]);
    for p in &o.profiles {
        said.insert(
            why_privileged(&format!("agent-{}", p.name())),
            WHY_PRIVILEGED_AGENT.to_owned(),
        );
    }
    ds.metadata.annotations = Some(said);
    ds
}

/// The annotation that says why container `container` is privileged.
pub fn why_privileged(container: &str) -> String {
    format!("{WHY_PRIVILEGED_PREFIX}{container}")
}

/// [`why_privileged`]'s key before the container's name.
pub const WHY_PRIVILEGED_PREFIX: &str = "kata-gpu.io/why-privileged.";

/// Why the init container is privileged.
pub const WHY_PRIVILEGED_BIND: &str =
    "vfio bind writes the host's sysfs (each GPU's driver_override, unbind and the \
     vfio-pci bind under /host/sys), which only a privileged container can write; it runs before the agents so that doctor finds the GPUs on vfio-pci";

/// Why each agent container is privileged.
pub const WHY_PRIVILEGED_AGENT: &str =
    "host-exec enters the host's PID 1 mount namespace (setns on /host/proc/1/ns/mnt needs \
     CAP_SYS_ADMIN and CAP_SYS_PTRACE) to run systemctl restart of containerd's unit and nothing else; \
     install writes files owned by root anywhere under the host's /";

/// Why the host's `/` is mounted read-write, on the node DaemonSet.
pub const HOST_ROOT_WRITABLE_ANNOTATION: (&str, &str) = (
    "kata-gpu.io/why-host-root-writable",
    "install writes the shim (/usr/local/bin), containerd's config and its drop-in, the \
     Kata artifact sets (/opt), the CDI specs (/var/run/cdi), the boot unit (/etc/systemd) \
     and NFD's features.d file; uninstall puts each back as it was; no hostPID: the host's \
     /proc comes with its /",
);

/// What the node DaemonSet's privileges mean for whoever may reach its pods, on the
/// DaemonSet itself.
pub const NODE_ROOT_ANNOTATION: (&str, &str) = (
    "kata-gpu.io/node-root",
    "privileged, the host's / writable at /host: whoever may kubectl exec or attach into \
     these pods (pods/exec, pods/attach in this namespace), create pods here or change this \
     DaemonSet is root on every GPU node; grant those as node root",
);

/// What of the host the device plugin reads (under `--host-root /host`), and nothing
/// else: the VFIO nodes it advertises and checks; the PCI functions (`/sys/bus/pci`, whose
/// `devices/*` are links into `/sys/devices`, where a function's `vfio-dev/vfioN` lives);
/// their IOMMU groups; and the VFIO classes (`/sys/class/vfio-dev`, `/sys/class/vfio`, links
/// into `/sys/devices` that exist only once their module is loaded, so their parent
/// `/sys/class` is mounted). Every one read-only. None holds a mount of its own below it,
/// so read-only reaches all of it even where the runtime cannot make it recursive.
pub const PLUGIN_READS: [&str; 6] = [
    "/dev/vfio",
    "/sys/bus/pci",
    "/sys/devices",
    "/sys/kernel/iommu_groups",
    "/sys/class",
    // pci.ids (/usr/share/misc or /usr/share/hwdata): the resource names NVIDIA's plugin gives.
    "/usr/share",
];

/// `recursiveReadOnly` of the plugin's read-only mounts. `IfPossible`, not `Enabled`:
/// kubelet (1.33+: GA) refuses a pod with `Enabled` when the runtime does not report
/// recursive read-only mounts, and containerd before 2.0 (1.6, 1.7, which kata-gpu
/// supports) does not; with `IfPossible` containerd 2.x makes them recursive and 1.x plain
/// read-only, which over [`PLUGIN_READS`] (no submounts) is the same.
pub const RECURSIVE_READ_ONLY: &str = "IfPossible";

/// Why the plugin runs as UID 0, on the DaemonSet as an annotation (the manifests are
/// generated, so this is where the YAML says it).
pub const ROOT_ANNOTATION: (&str, &str) = (
    "kata-gpu.io/why-uid-0",
    "kubelet's /var/lib/kubelet/device-plugins is root's and writable only by root, and \
     kubelet.sock in it is root's with no write permission for others (connecting to a \
     socket needs it), so placing the plugin's sockets there and registering need UID 0; \
     every capability is dropped, so UID 0 here overrides no file permission",
);

/// The device plugin DaemonSet (`kata-gpu device-plugin`): not privileged, UID 0 (see
/// [`ROOT_ANNOTATION`]) with every capability dropped, no privilege escalation, seccomp
/// `RuntimeDefault`, a read-only root, [`PLUGIN_READS`] read-only (recursively where the
/// runtime can), and only kubelet's device plugin directory writable.
pub fn device_plugin_daemonset(o: &DeployOptions) -> DaemonSet {
    let at = |p: &str| format!("{HOST_MOUNT}{p}");
    let volume_name = |p: &str| p.trim_start_matches('/').replace(['/', '_'], "-");
    let mut c = container(
        "device-plugin",
        &o.image,
        &["--host-root", HOST_MOUNT, "device-plugin"],
    );
    c.security_context = Some(SecurityContext {
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_user: Some(0),
        run_as_non_root: Some(false),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    });
    let mut mounts: Vec<VolumeMount> = PLUGIN_READS
        .iter()
        .map(|p| VolumeMount {
            recursive_read_only: Some(RECURSIVE_READ_ONLY.to_owned()),
            ..mount(&volume_name(p), &at(p), true)
        })
        .collect();
    mounts.push(mount("device-plugins", &at(DEVICE_PLUGINS), false));
    c.volume_mounts = Some(mounts);
    let mut volumes: Vec<Volume> = PLUGIN_READS
        .iter()
        .map(|p| host_path(&volume_name(p), p))
        .collect();
    volumes.push(host_path("device-plugins", DEVICE_PLUGINS));
    let mut ds = daemonset(
        PLUGIN_DAEMONSET,
        o,
        PodSpec {
            containers: vec![c],
            volumes: Some(volumes),
            ..PodSpec::default()
        },
    );
    let (k, v) = ROOT_ANNOTATION;
    ds.metadata.annotations = Some(BTreeMap::from([(k.to_owned(), v.to_owned())]));
    ds
}

impl Deployment {
    /// The objects for `o`.
    pub fn new(o: &DeployOptions) -> Deployment {
        Deployment {
            namespace: Namespace {
                metadata: meta(&o.namespace, None),
                ..Namespace::default()
            },
            service_account: ServiceAccount {
                metadata: meta(NODE_DAEMONSET, Some(&o.namespace)),
                automount_service_account_token: Some(false),
                ..ServiceAccount::default()
            },
            daemonsets: vec![node_daemonset(o), device_plugin_daemonset(o)],
            runtime_classes: o
                .profiles
                .iter()
                .map(|p| runtime_class(*p, &o.runtime_class))
                .collect(),
        }
    }

    /// Every object as JSON values, in apply order.
    pub fn values(&self) -> Result<Vec<serde_json::Value>, Error> {
        let mut v = vec![value(&self.namespace)?, value(&self.service_account)?];
        for d in &self.daemonsets {
            v.push(value(d)?);
        }
        for r in &self.runtime_classes {
            v.push(value(r)?);
        }
        Ok(v)
    }

    /// One multi-document YAML stream, for `kubectl apply -f -`.
    pub fn to_yaml(&self) -> Result<String, Error> {
        let docs: Result<Vec<String>, Error> = self
            .values()?
            .iter()
            .map(|v| Ok(serde_yaml_ng::to_string(v)?))
            .collect();
        Ok(docs?.join("---\n"))
    }

    /// A `v1` List of the objects, for `kubectl apply -f` of JSON.
    pub fn to_json(&self) -> Result<String, Error> {
        let list =
            serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": self.values()? });
        Ok(serde_json::to_string_pretty(&list)?)
    }
}

fn value(object: &impl Serialize) -> Result<serde_json::Value, Error> {
    Ok(serde_json::to_value(object)?)
}
