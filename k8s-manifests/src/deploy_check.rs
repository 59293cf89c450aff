//! What a deployment must hold, checked on the objects as they will be applied (JSON), so
//! that an edit that drops a node selector, a toleration, `privileged` where the node
//! agent needs it, or adds `hostPID` or API rights, is caught before it reaches a cluster.
//! Each privilege says why on its DaemonSet (`kata-gpu.io/why-privileged.<container>`,
//! `kata-gpu.io/why-host-root-writable`, `kata-gpu.io/why-uid-0`), and losing one is a
//! problem. `kata-gpu deploy` refuses to print objects that fail. The device plugin's container
//! must stay confined: seccomp `RuntimeDefault`, every capability dropped and none added,
//! no privilege escalation, a read-only root, and of the host only what it reads
//! ([`PLUGIN_READS`], read-only with `recursiveReadOnly`) and kubelet's plugin directory.

use serde_json::Value;

use crate::deploy::{
    why_privileged, DEVICE_PLUGINS, GPU_TAINT, HOST_ROOT_WRITABLE_ANNOTATION, PLUGIN_READS,
    ROOT_ANNOTATION,
};
use crate::PASSTHROUGH_LABEL;

fn name(o: &Value) -> String {
    format!(
        "{} {}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn runs(c: &Value, command: &str) -> bool {
    c["args"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == command))
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .filter_map(|k| pod[k].as_array())
        .flatten()
}

/// The seccomp profile a container runs under: its own, else the pod's.
fn seccomp<'a>(pod: &'a Value, c: &'a Value) -> &'a Value {
    let own = &c["securityContext"]["seccompProfile"]["type"];
    if own.is_null() {
        &pod["securityContext"]["seccompProfile"]["type"]
    } else {
        own
    }
}

/// What the device plugin's container must keep: it is the one container a pod author's
/// device reaches that needs no privilege.
fn confined(who: &str, pod: &Value, c: &Value, problems: &mut Vec<String>) {
    let cname = c["name"].as_str().unwrap_or("?");
    let sc = &c["securityContext"];
    let mut say = |what: &str| problems.push(format!("{who}: container {cname} {what}"));
    if seccomp(pod, c) != "RuntimeDefault" {
        say("has no seccompProfile RuntimeDefault; set securityContext.seccompProfile.type: RuntimeDefault");
    }
    let drops_all = sc["capabilities"]["drop"]
        .as_array()
        .is_some_and(|d| d.iter().any(|x| x == "ALL"));
    if !drops_all {
        say("keeps capabilities; set securityContext.capabilities.drop: [ALL]");
    }
    if sc["capabilities"]["add"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        say("adds capabilities; remove securityContext.capabilities.add");
    }
    if sc["allowPrivilegeEscalation"] != false {
        say("may gain privileges; set securityContext.allowPrivilegeEscalation: false");
    }
    if sc["readOnlyRootFilesystem"] != true {
        say("has a writable root; set securityContext.readOnlyRootFilesystem: true");
    }
    let host_paths: Vec<(&str, &str)> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["name"].as_str()?, v["hostPath"]["path"].as_str()?)))
        .collect();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let Some(&(_, path)) = host_paths.iter().find(|(n, _)| m["name"] == *n) else {
            continue;
        };
        let path = path.trim_end_matches('/');
        if path == DEVICE_PLUGINS {
            continue;
        }
        if !PLUGIN_READS.contains(&path) {
            say(&format!(
                "mounts the host's {path}, which the device plugin does not read; mount only {}",
                PLUGIN_READS.join(", ")
            ));
        } else if m["readOnly"] != true {
            say(&format!(
                "mounts the host's {path} writable; set readOnly: true on its volumeMount"
            ));
        } else if m["recursiveReadOnly"] != "IfPossible" && m["recursiveReadOnly"] != "Enabled" {
            say(&format!(
                "mounts the host's {path} read-only but not recursively; set recursiveReadOnly: IfPossible (or Enabled) on its volumeMount"
            ));
        }
    }
}

fn daemonset(o: &Value, problems: &mut Vec<String>) {
    let who = name(o);
    let pod = &o["spec"]["template"]["spec"];
    let (k, v) = PASSTHROUGH_LABEL;
    if pod["nodeSelector"][k] != v {
        problems.push(format!("{who}: no nodeSelector {k}={v}"));
    }
    let tolerated = pod["tolerations"].as_array().is_some_and(|ts| {
        ts.iter().any(|t| {
            t["key"] == GPU_TAINT
                && t["operator"] == "Exists"
                && (t["effect"].is_null() || t["effect"] == "NoSchedule")
        })
    });
    if !tolerated {
        problems.push(format!(
            "{who}: does not tolerate the {GPU_TAINT} NoSchedule taint"
        ));
    }
    if pod["automountServiceAccountToken"] != false {
        problems.push(format!(
            "{who}: mounts a service account token it has no use for"
        ));
    }
    if o["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"].is_null() {
        problems.push(format!("{who}: no rollingUpdate.maxUnavailable"));
    }
    let said = |key: &str| {
        o["metadata"]["annotations"][key]
            .as_str()
            .is_some_and(|v| !v.trim().is_empty())
    };
    let unsaid = |what: String, key: &str| {
        format!("{who}: {what} without the annotation {key} saying why; keep kata-gpu deploy's annotations")
    };
    let root_volumes: Vec<&str> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["hostPath"]["path"] == "/")
        .filter_map(|v| v["name"].as_str())
        .collect();
    let root_writable = containers(pod).any(|c| {
        c["volumeMounts"].as_array().into_iter().flatten().any(|m| {
            m["readOnly"] != true
                && m["name"]
                    .as_str()
                    .is_some_and(|n| root_volumes.contains(&n))
        })
    });
    let (root_key, _) = HOST_ROOT_WRITABLE_ANNOTATION;
    if root_writable && !said(root_key) {
        problems.push(unsaid("mounts the host's / writable".to_owned(), root_key));
    }
    for c in containers(pod) {
        let privileged = c["securityContext"]["privileged"] == true;
        let cname = c["name"].as_str().unwrap_or("?");
        let key = why_privileged(cname);
        let needs = runs(c, "agent") || runs(c, "vfio");
        // (A container privileged that need not be is refused below, for that.)
        if needs && privileged && !said(&key) {
            problems.push(unsaid(format!("container {cname} is privileged"), &key));
        }
        let (uid_key, _) = ROOT_ANNOTATION;
        if runs(c, "device-plugin") && c["securityContext"]["runAsUser"] == 0 && !said(uid_key) {
            problems.push(unsaid(format!("container {cname} runs as UID 0"), uid_key));
        }
        if needs && !privileged {
            problems.push(format!(
                "{who}: container {cname} changes the host and must be privileged"
            ));
        }
        if !needs && privileged {
            problems.push(format!(
                "{who}: container {cname} is privileged and need not be"
            ));
        }
        if runs(c, "device-plugin") {
            confined(&who, pod, c, problems);
        }
    }
    for host in ["hostNetwork", "hostIPC"] {
        if pod[host] == true {
            problems.push(format!(
                "{who}: {host} without a container that needs it; remove it"
            ));
        }
    }
    if pod["hostPID"] == true {
        problems.push(format!(
            "{who}: hostPID, which no container needs (the agent enters PID 1's mount \
             namespace through the host's /proc at /host/proc); remove it"
        ));
    }
}

/// The problems of `objects` (the JSON of each object to apply); empty when all is well.
pub fn problems(objects: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for o in objects {
        match o["kind"].as_str() {
            Some("DaemonSet") => daemonset(o, &mut problems),
            Some("ServiceAccount") if o["automountServiceAccountToken"] != false => {
                problems.push(format!(
                    "{}: automountServiceAccountToken is not false",
                    name(o)
                ));
            }
            Some("Role" | "ClusterRole") => {
                for rule in o["rules"].as_array().into_iter().flatten() {
                    problems.push(format!(
                        "{}: grants {} on {}: every pod of a DaemonSet shares its ServiceAccount, \
                         so that is every node's, not only its own (the agent needs no API access)",
                        name(o),
                        rule["verbs"],
                        rule["resources"]
                    ));
                }
            }
            Some("RoleBinding" | "ClusterRoleBinding") => problems.push(format!(
                "{}: binds a role, and the DaemonSets need none",
                name(o)
            )),
            _ => {}
        }
    }
    problems
}
