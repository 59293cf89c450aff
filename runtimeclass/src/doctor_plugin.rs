//! `kata-gpu doctor`'s checks of the sandbox device plugin: kubelet's registration socket,
//! the plugin's own sockets (present, root-only), and that the ids it advertises are the
//! host's devices and names of the host CDI spec.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use kata_gpu_device_plugin::{inventory_of, Naming, Resource};
use kata_gpu_kubelet_api::deviceplugin::v1beta1::device_plugin_client::DevicePluginClient;
use kata_gpu_kubelet_api::deviceplugin::v1beta1::Empty;
use kata_gpu_kubelet_api::podresources::v1::pod_resources_lister_client::PodResourcesListerClient;
use kata_gpu_kubelet_api::podresources::v1::GetPodResourcesRequest;
use kata_gpu_kubelet_api::{connect_unix, DEVICE_PLUGINS_DIR, KUBELET_SOCKET};
use kata_gpu_node::facts::HostFacts;

use super::checks::{fail, ok, Check, Verdict};

/// How long the plugin may take to send its device list.
const PROBE: Duration = Duration::from_secs(5);

fn warn(name: &str, detail: String, fix: &str) -> Check {
    Check {
        name: name.to_owned(),
        verdict: Verdict::Warn,
        detail,
        fix: Some(fix.to_owned()),
    }
}

/// The ids the plugin advertises for `resource` against the host's devices now (`expected`)
/// and the names the installed host CDI spec defines (`installed`, qualified).
pub fn advertised(
    resource: &str,
    kind: &str,
    advertised: &[String],
    expected: &[String],
    installed: &BTreeSet<String>,
) -> Check {
    let name = format!("device plugin {resource}");
    let undefined: Vec<&str> = advertised
        .iter()
        .filter(|id| !installed.contains(&format!("{kind}={id}")))
        .map(String::as_str)
        .collect();
    if !undefined.is_empty() {
        return fail(
            &name,
            format!(
                "advertises {} which the host CDI spec does not define",
                undefined.join(", ")
            ),
            "kata-gpu cdi generate, then restart the device plugin",
        );
    }
    if advertised != expected {
        return fail(
            &name,
            format!(
                "advertises {}; the host has {}",
                list(advertised),
                list(expected)
            ),
            "restart the device plugin (kata-gpu device-plugin) so that it takes the host's devices again",
        );
    }
    ok(
        &name,
        format!(
            "advertises {} ({}), all in the host CDI spec",
            advertised.len(),
            list(advertised)
        ),
    )
}

fn list(ids: &[String]) -> String {
    if ids.is_empty() {
        "none".to_owned()
    } else {
        ids.join(", ")
    }
}

/// The ids the plugin serving on `socket` sends first.
fn probe(socket: &Path) -> Result<Vec<String>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(async {
        tokio::time::timeout(PROBE, async {
            let channel = connect_unix(socket)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
            let mut stream = DevicePluginClient::new(channel)
                .list_and_watch(Empty {})
                .await
                .map_err(|e| format!("ListAndWatch on {}: {}", socket.display(), e.message()))?
                .into_inner();
            let first = stream
                .message()
                .await
                .map_err(|e| format!("ListAndWatch on {}: {}", socket.display(), e.message()))?
                .ok_or_else(|| format!("{} sent no device list", socket.display()))?;
            Ok(first.devices.into_iter().map(|d| d.id).collect())
        })
        .await
        .map_err(|_| format!("{} sent no device list within {PROBE:?}", socket.display()))?
    })
}

/// The fix for a plugin that does not serve the host's devices as they are now: a running
/// plugin takes them again by itself; none running is the cause.
fn plugin_fix(running: Option<u32>) -> String {
    match running {
        Some(pid) => format!(
            "wait: the device plugin (pid {pid}) runs and takes the host's devices again within its --interval (5 s), and drops a departed one after a minute; if this stays, read its log (kubectl -n kata-gpu logs ds/kata-gpu-device-plugin)"
        ),
        None => "run the device plugin on this node (kata-gpu device-plugin, as a DaemonSet)".to_owned(),
    }
}

/// Whether kubelet's PodResources `socket` (a host path) answers `Get` within `limit`, on a
/// node with kubelet (`/var/lib/kubelet`); `None` on a node without one. Every kubelet
/// pod's Create asks it in kubelet device mode.
pub fn pod_resources(root: &Path, socket: &Path, limit: Duration) -> Option<Check> {
    const NAME: &str = "kubelet PodResources";
    let kubelet = kata_gpu_fsutil::resolve_in_root(root, Path::new("/var/lib/kubelet")).ok()?;
    if !kubelet.is_dir() {
        return None;
    }
    let shown = socket.display();
    let fix_missing = "start kubelet (its PodResources socket is on by default); if kubelet runs with another --root-dir, set pod_resources_socket in the kata-gpu shim settings";
    let real = match kata_gpu_fsutil::resolve_in_root(root, socket) {
        Ok(p) if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_socket()) => p,
        _ => {
            return Some(fail(
                NAME,
                format!("{shown} missing: every pod's Create will be refused"),
                fix_missing,
            ))
        }
    };
    let asked = (|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        runtime.block_on(async {
            tokio::time::timeout(limit, async {
                let channel = connect_unix(&real)
                    .await
                    .map_err(|e| format!("cannot connect to {shown}: {e}"))?;
                // A pod no node has: kubelet answers "not found", which is an answer.
                let answer = PodResourcesListerClient::new(channel)
                    .get(GetPodResourcesRequest {
                        pod_name: "kata-gpu-doctor-probe".to_owned(),
                        pod_namespace: "kata-gpu-doctor-probe".to_owned(),
                    })
                    .await;
                match answer {
                    Err(status)
                        if status.code() == tonic::Code::Unimplemented
                            || status.message().contains("disabled") =>
                    {
                        Err(format!("{shown} refuses Get: {}", status.message()))
                    }
                    _ => Ok(()),
                }
            })
            .await
            .map_err(|_| format!("{shown} accepts and gives no answer within {limit:?}"))?
        })
    })();
    Some(match asked {
        Ok(()) => ok(NAME, format!("{shown} answers Get")),
        Err(e) if e.contains("refuses Get") => fail(
            NAME,
            e,
            "on kubelet before 1.34 turn on the feature gate KubeletPodResourcesGet",
        ),
        Err(e) => fail(
            NAME,
            format!("{e}; no answer within the bound means every pod's Create is refused"),
            "check that kubelet runs and is healthy (systemctl status kubelet)",
        ),
    })
}

/// One resource's plugin socket and what it advertises.
fn resource_check(
    dir: &Path,
    resource: &Resource,
    installed: &BTreeSet<String>,
    running: Option<u32>,
) -> Check {
    let name = format!("device plugin {}", resource.name);
    let socket = dir.join(resource.socket_name());
    let shown = Path::new(DEVICE_PLUGINS_DIR).join(resource.socket_name());
    let meta = match std::fs::symlink_metadata(&socket) {
        Ok(m) if m.file_type().is_socket() => m,
        _ => {
            return fail(
                &name,
                format!(
                    "{} missing: pods asking for {} stay Pending",
                    shown.display(),
                    resource.name
                ),
                &plugin_fix(running),
            )
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode != 0o600 {
        return fail(
            &name,
            format!("{} has mode {mode:o}, not 600", shown.display()),
            "restart the device plugin; it makes its socket 0600",
        );
    }
    let expected: Vec<String> = resource.devices.iter().map(|d| d.id.clone()).collect();
    match probe(&socket) {
        Ok(ids) => {
            let mut c = advertised(&resource.name, &resource.kind, &ids, &expected, installed);
            if c.verdict == Verdict::Fail && ids != expected && running.is_some() {
                c.fix = Some(plugin_fix(running));
            }
            c
        }
        Err(e) => fail(&name, e, "restart the device plugin"),
    }
}

/// Every device plugin check for the host, from its facts (the specs its devices call for
/// and the installed ones, as the other checks read them).
pub fn checks(host: &HostFacts) -> Vec<Check> {
    let root = host.root.as_path();
    let dir = match kata_gpu_fsutil::resolve_in_root(root, Path::new(DEVICE_PLUGINS_DIR)) {
        Ok(d) if d.is_dir() => d,
        _ => {
            return vec![ok(
                "device plugin",
                format!("no kubelet here ({DEVICE_PLUGINS_DIR} missing); pods ask for GPUs by cdi.k8s.io annotation"),
            )]
        }
    };
    let mut out = Vec::new();
    if std::fs::symlink_metadata(dir.join(KUBELET_SOCKET)).is_ok_and(|m| m.file_type().is_socket())
    {
        out.push(ok(
            "kubelet registration",
            format!("{DEVICE_PLUGINS_DIR}/{KUBELET_SOCKET} present"),
        ));
    } else {
        out.push(warn(
            "kubelet registration",
            format!("{DEVICE_PLUGINS_DIR}/{KUBELET_SOCKET} missing: kubelet is not running"),
            "start kubelet; the device plugin registers again by itself",
        ));
    }
    let specs = match &host.specs {
        Ok(specs) => specs,
        Err(e) => {
            out.push(fail(
                "device plugin",
                format!("cannot list the host's devices: {e}"),
                "check that /sys is mounted",
            ));
            return out;
        }
    };
    let view = host.host();
    // The plugin's naming is its flag; the sockets it serves under say which.
    let serving = |naming| {
        let rs = inventory_of(&view, specs, naming);
        let any = rs
            .iter()
            .any(|r| std::fs::symlink_metadata(dir.join(r.socket_name())).is_ok());
        (rs, any)
    };
    let resources = match (serving(Naming::Nvidia), serving(Naming::Pgpu)) {
        ((nvidia, true), _) => nvidia,
        (_, (pgpu, true)) => pgpu,
        ((nvidia, false), _) => nvidia,
    };
    if resources.is_empty() {
        out.push(ok(
            "device plugin",
            "no passthrough device to advertise (none bound to vfio-pci)",
        ));
        return out;
    }
    let installed: BTreeSet<String> = host
        .registry
        .devices()
        .map(|(n, _)| n.to_string())
        .collect();
    let running = host.device_plugin();
    out.extend(
        resources
            .iter()
            .map(|r| resource_check(&dir, r, &installed, running)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn advertised_ids_must_be_the_hosts_and_defined_in_the_spec() {
        let installed: BTreeSet<String> = ["nvidia.com/pgpu=0", "nvidia.com/pgpu=1"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let c = advertised(
            "nvidia.com/pgpu",
            "nvidia.com/pgpu",
            &ids(&["0", "1"]),
            &ids(&["0", "1"]),
            &installed,
        );
        assert_eq!(c.verdict, Verdict::Ok);
        assert_eq!(c.detail, "advertises 2 (0, 1), all in the host CDI spec");

        let c = advertised(
            "nvidia.com/pgpu",
            "nvidia.com/pgpu",
            &ids(&["0", "2"]),
            &ids(&["0", "2"]),
            &installed,
        );
        assert_eq!(c.verdict, Verdict::Fail);
        assert_eq!(
            c.detail,
            "advertises 2 which the host CDI spec does not define"
        );
        assert_eq!(
            c.fix.as_deref(),
            Some("kata-gpu cdi generate, then restart the device plugin")
        );

        let c = advertised(
            "nvidia.com/pgpu",
            "nvidia.com/pgpu",
            &ids(&["0"]),
            &ids(&["0", "1"]),
            &installed,
        );
        assert_eq!(c.verdict, Verdict::Fail);
        assert_eq!(c.detail, "advertises 0; the host has 0, 1");
    }
}
