//! What a deployment must hold, checked on the objects as they will be applied (JSON), so
//! that an edit that drops a node selector, a toleration, `hostPID`/`privileged` where
//! the node agent needs them, or adds API rights, is caught before it reaches a cluster.
//! `kata-gpu deploy` refuses to print objects that fail.

use serde_json::Value;

use crate::deploy::GPU_TAINT;
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
    let mut needs_host_pid = false;
    for c in containers(pod) {
        let privileged = c["securityContext"]["privileged"] == true;
        let needs = runs(c, "agent") || runs(c, "vfio");
        let cname = c["name"].as_str().unwrap_or("?");
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
        needs_host_pid |= runs(c, "agent");
    }
    match (needs_host_pid, pod["hostPID"] == true) {
        (true, false) => problems.push(format!(
            "{who}: the agent restarts containerd in PID 1's mount namespace and needs hostPID"
        )),
        (false, true) => problems.push(format!("{who}: hostPID without an agent to need it")),
        _ => {}
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
