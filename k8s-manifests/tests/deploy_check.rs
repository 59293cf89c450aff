//! The deployment's own check: clean as built, and each missing piece (node selector, GPU
//! toleration, privileged) or extra right (RBAC, a token, hostPID, privilege where none is
//! needed) named.

use kata_gpu_manifests::deploy::{DeployOptions, Deployment};
use kata_gpu_manifests::deploy_check::problems;
use kata_gpu_plan::Profile;
use serde_json::{json, Value};

fn objects() -> Vec<Value> {
    Deployment::new(&DeployOptions {
        profiles: vec![Profile::Snp, Profile::Tdx],
        ..DeployOptions::default()
    })
    .values()
    .expect("values")
}

/// Index of the node DaemonSet and of the device plugin's in `objects()`.
const NODE: usize = 2;
const PLUGIN: usize = 3;

fn with(edit: impl Fn(&mut Vec<Value>)) -> Vec<String> {
    let mut o = objects();
    edit(&mut o);
    problems(&o)
}

#[test]
fn the_deployment_as_built_has_no_problem() {
    assert_eq!(problems(&objects()), Vec::<String>::new());
    let o = objects();
    assert_eq!(o[NODE]["metadata"]["name"], "kata-gpu-node");
    assert_eq!(o[PLUGIN]["metadata"]["name"], "kata-gpu-device-plugin");
}

#[test]
fn a_daemonset_without_the_node_selector_or_the_gpu_toleration_is_refused() {
    for ds in [NODE, PLUGIN] {
        let got = with(|o| {
            o[ds]["spec"]["template"]["spec"]["nodeSelector"] = json!({});
        });
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].ends_with("no nodeSelector nvidia.com/gpu.workload.config=vm-passthrough"),
            "{got:?}"
        );
        let got = with(|o| {
            o[ds]["spec"]["template"]["spec"]["tolerations"] = Value::Null;
        });
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].contains("does not tolerate the nvidia.com/gpu NoSchedule taint"),
            "{got:?}"
        );
        let got = with(|o| {
            o[ds]["spec"]["template"]["spec"]["tolerations"][0]["effect"] = "NoExecute".into();
        });
        assert_eq!(got.len(), 1, "{got:?}");
        let got = with(|o| {
            o[ds]["spec"]["updateStrategy"] = Value::Null;
        });
        assert!(
            got[0].ends_with("no rollingUpdate.maxUnavailable"),
            "{got:?}"
        );
    }
}

#[test]
fn the_node_daemonset_needs_privileged_and_neither_needs_host_pid() {
    assert!(objects()[NODE]["spec"]["template"]["spec"]["hostPID"].is_null());
    let got = with(|o| o[NODE]["spec"]["template"]["spec"]["hostPID"] = true.into());
    assert_eq!(
        got,
        [
            "DaemonSet kata-gpu-node: hostPID, which no container needs (the agent enters PID 1's \
          mount namespace through the host's /proc at /host/proc); remove it"
        ]
    );
    let got = with(|o| {
        o[NODE]["spec"]["template"]["spec"]["initContainers"][0]["securityContext"] = Value::Null;
    });
    assert_eq!(
        got,
        ["DaemonSet kata-gpu-node: container vfio-bind changes the host and must be privileged"]
    );
    let got = with(|o| {
        o[NODE]["spec"]["template"]["spec"]["containers"][1]["securityContext"]["privileged"] =
            false.into();
    });
    assert_eq!(
        got,
        ["DaemonSet kata-gpu-node: container agent-tdx changes the host and must be privileged"]
    );
    let got = with(|o| {
        o[PLUGIN]["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] =
            true.into();
        o[PLUGIN]["spec"]["template"]["spec"]["hostPID"] = true.into();
    });
    assert_eq!(
        got,
        [
            "DaemonSet kata-gpu-device-plugin: container device-plugin is privileged and need not be",
            "DaemonSet kata-gpu-device-plugin: hostPID, which no container needs (the agent \
             enters PID 1's mount namespace through the host's /proc at /host/proc); remove it",
        ]
    );
}

#[test]
fn any_api_right_is_more_than_its_own_node() {
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": { "name": "kata-gpu-node" },
        "rules": [{ "apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"] }],
    });
    let got = with(|o| o.push(role.clone()));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(r#"ClusterRole kata-gpu-node: grants ["get","patch"] on ["nodes"]: every pod of a DaemonSet shares its ServiceAccount"#),
        "{got:?}"
    );
    let got = with(|o| {
        o.push(json!({ "kind": "ClusterRoleBinding", "metadata": { "name": "x" } }));
    });
    assert_eq!(
        got,
        ["ClusterRoleBinding x: binds a role, and the DaemonSets need none"]
    );
    let got = with(|o| o[1]["automountServiceAccountToken"] = true.into());
    assert_eq!(
        got,
        ["ServiceAccount kata-gpu-node: automountServiceAccountToken is not false"]
    );
    let got = with(|o| {
        o[PLUGIN]["spec"]["template"]["spec"]["automountServiceAccountToken"] = Value::Null;
    });
    assert_eq!(
        got,
        ["DaemonSet kata-gpu-device-plugin: mounts a service account token it has no use for"]
    );
}

#[test]
fn max_unavailable_and_the_image_reach_the_daemonsets() {
    let o = Deployment::new(&DeployOptions {
        image: "registry.example/kata-gpu@sha256:0".into(),
        max_unavailable: 4,
        ..DeployOptions::default()
    })
    .values()
    .expect("values");
    for ds in [NODE, PLUGIN] {
        assert_eq!(
            o[ds]["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
            4
        );
        assert_eq!(
            o[ds]["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"],
            0
        );
        assert_eq!(
            o[ds]["spec"]["template"]["spec"]["containers"][0]["image"],
            "registry.example/kata-gpu@sha256:0"
        );
    }
}

/// The plugin's container, in `objects()`.
fn plugin_container(o: &mut [Value]) -> &mut Value {
    &mut o[PLUGIN]["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn the_device_plugin_mounts_only_what_it_reads_read_only_and_recursively() {
    let o = objects();
    let pod = &o[PLUGIN]["spec"]["template"]["spec"];
    let paths: Vec<&str> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "/dev/vfio",
            "/sys/bus/pci",
            "/sys/devices",
            "/sys/kernel/iommu_groups",
            "/sys/class",
            "/usr/share",
            "/var/lib/kubelet/device-plugins"
        ]
    );
    for m in pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("mounts")
    {
        let writable = m["mountPath"] == "/host/var/lib/kubelet/device-plugins";
        assert_eq!(m["readOnly"] == true, !writable, "{m}");
        assert_eq!(m["recursiveReadOnly"] == "IfPossible", !writable, "{m}");
    }

    // All of /dev, as the plugin once had it.
    let got = with(|o| {
        let pod = &mut o[PLUGIN]["spec"]["template"]["spec"];
        pod["volumes"]
            .as_array_mut()
            .expect("volumes")
            .push(json!({"name": "dev", "hostPath": {"path": "/dev"}}));
        pod["containers"][0]["volumeMounts"]
            .as_array_mut()
            .expect("mounts")
            .push(json!({"name": "dev", "mountPath": "/host/dev", "readOnly": true}));
    });
    assert_eq!(
        got,
        [
            "DaemonSet kata-gpu-device-plugin: container device-plugin mounts the host's /dev, \
          which the device plugin does not read; mount only /dev/vfio, /sys/bus/pci, \
          /sys/devices, /sys/kernel/iommu_groups, /sys/class, /usr/share"
        ]
    );
    let got = with(|o| {
        plugin_container(o)["volumeMounts"][1]["recursiveReadOnly"] = Value::Null;
    });
    assert_eq!(
        got,
        [
            "DaemonSet kata-gpu-device-plugin: container device-plugin mounts the host's \
          /sys/bus/pci read-only but not recursively; set recursiveReadOnly: IfPossible (or \
          Enabled) on its volumeMount"
        ]
    );
    let got = with(|o| {
        plugin_container(o)["volumeMounts"][0]["readOnly"] = false.into();
    });
    assert_eq!(
        got,
        [
            "DaemonSet kata-gpu-device-plugin: container device-plugin mounts the host's \
          /dev/vfio writable; set readOnly: true on its volumeMount"
        ]
    );
}

#[test]
fn the_node_daemonset_says_that_exec_into_it_is_node_root() {
    let o = objects();
    let said = o[NODE]["metadata"]["annotations"]["kata-gpu.io/node-root"]
        .as_str()
        .expect("annotation");
    assert!(
        said.contains("pods/exec") && said.contains("root on every GPU node"),
        "{said}"
    );
}

#[test]
fn the_device_plugin_keeps_seccomp_no_capabilities_and_no_escalation() {
    let o = objects();
    let sc = &o[PLUGIN]["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(sc["runAsUser"], 0, "{sc}");
    // Why UID 0 is said on the object itself.
    let why = o[PLUGIN]["metadata"]["annotations"]["kata-gpu.io/why-uid-0"]
        .as_str()
        .expect("annotation");
    assert!(why.contains("kubelet.sock"), "{why}");

    let who = "DaemonSet kata-gpu-device-plugin: container device-plugin";
    for (field, value, said) in [
        (
            "seccompProfile",
            Value::Null,
            "has no seccompProfile RuntimeDefault; set securityContext.seccompProfile.type: RuntimeDefault",
        ),
        (
            "seccompProfile",
            json!({"type": "Unconfined"}),
            "has no seccompProfile RuntimeDefault; set securityContext.seccompProfile.type: RuntimeDefault",
        ),
        (
            "capabilities",
            json!({"drop": ["NET_RAW"]}),
            "keeps capabilities; set securityContext.capabilities.drop: [ALL]",
        ),
        (
            "capabilities",
            json!({"drop": ["ALL"], "add": ["SYS_ADMIN"]}),
            "adds capabilities; remove securityContext.capabilities.add",
        ),
        (
            "allowPrivilegeEscalation",
            Value::Null,
            "may gain privileges; set securityContext.allowPrivilegeEscalation: false",
        ),
        (
            "readOnlyRootFilesystem",
            false.into(),
            "has a writable root; set securityContext.readOnlyRootFilesystem: true",
        ),
    ] {
        let got = with(|o| {
            plugin_container(o)["securityContext"][field] = value.clone();
        });
        assert_eq!(got, [format!("{who} {said}")], "{field}");
    }
    // A pod-level RuntimeDefault is as good as the container's.
    let got = with(|o| {
        plugin_container(o)["securityContext"]["seccompProfile"] = Value::Null;
        o[PLUGIN]["spec"]["template"]["spec"]["securityContext"] =
            json!({"seccompProfile": {"type": "RuntimeDefault"}});
    });
    assert_eq!(got, Vec::<String>::new());
    let got = with(|o| o[PLUGIN]["spec"]["template"]["spec"]["hostNetwork"] = true.into());
    assert_eq!(
        got,
        ["DaemonSet kata-gpu-device-plugin: hostNetwork without a container that needs it; remove it"]
    );
}

/// Each privilege of the node DaemonSet is explained on the object (the YAML is
/// generated, so annotations are where it says so), and a manifest that loses an
/// explanation is refused.
#[test]
fn every_privilege_says_why_and_a_manifest_that_loses_it_is_refused() {
    let o = objects();
    let said = &o[NODE]["metadata"]["annotations"];
    for (key, want) in [
        ("kata-gpu.io/why-privileged.vfio-bind", "driver_override"),
        ("kata-gpu.io/why-privileged.agent-snp", "mount namespace"),
        ("kata-gpu.io/why-privileged.agent-tdx", "mount namespace"),
        ("kata-gpu.io/why-host-root-writable", "containerd's config"),
    ] {
        let why = said[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key}: {said}"));
        assert!(why.contains(want), "{key}: {why}");
    }
    for (ds, key, problem) in [
        (
            NODE,
            "kata-gpu.io/why-privileged.vfio-bind",
            "DaemonSet kata-gpu-node: container vfio-bind is privileged without the annotation kata-gpu.io/why-privileged.vfio-bind saying why; keep kata-gpu deploy's annotations",
        ),
        (
            NODE,
            "kata-gpu.io/why-host-root-writable",
            "DaemonSet kata-gpu-node: mounts the host's / writable without the annotation kata-gpu.io/why-host-root-writable saying why; keep kata-gpu deploy's annotations",
        ),
        (
            PLUGIN,
            "kata-gpu.io/why-uid-0",
            "DaemonSet kata-gpu-device-plugin: container device-plugin runs as UID 0 without the annotation kata-gpu.io/why-uid-0 saying why; keep kata-gpu deploy's annotations",
        ),
    ] {
        let got = with(|o| {
            if let Some(a) = o[ds]["metadata"]["annotations"].as_object_mut() {
                a.remove(key);
            }
        });
        assert_eq!(got, [problem], "{key}");
    }
}
