//! The node's GPU sandboxes, read once: what the proxy keeps for each under its state
//! directory (`<state>/<namespace>/<sandbox>/`: the per-sandbox `configuration.toml`,
//! `plan.json`, `claims.json`), which of its processes run (our proxy, Kata's shim, QEMU:
//! found by their command lines), and each GPU and NVSwitch of the host with who holds it.
//!
//! A sandbox is *running* while any of its processes runs. One with none left whose state
//! remains (the proxy and Kata killed with the node's containerd, say, and no `delete`
//! since) is *gone*: its claim still holds its devices, and the shim refuses them to every
//! new pod. That is a leak, and [`Holder::Leaked`] names it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kata_gpu_configs::templates::KataRuntime;
use serde::{Deserialize, Serialize};

use crate::host::HostFacts;
use crate::processes::Process;

/// The directory of the proxies' sockets in a state directory: no namespace.
const PROXY_SOCKETS_DIR: &str = kata_gpu_fsutil::layout::PROXY_SOCKETS_DIR;

/// One sandbox the proxy keeps state for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sandbox {
    /// containerd's namespace (`k8s.io` for kubelet's pods).
    pub namespace: String,
    /// The sandbox id (the pod sandbox's, as `crictl pods` shows it).
    pub id: String,
    /// The pod, `namespace/name`, when CRI named one.
    pub pod: Option<String>,
    /// The profile it was planned for (`snp`, `tdx`, `gpu`).
    pub profile: Option<String>,
    /// Its runtime handler.
    pub handler: Option<String>,
    /// The Kata runtime its per-sandbox config is written for (`go`, `rs`).
    pub kata_runtime: Option<&'static str>,
    /// The CDI devices it asked for.
    pub requested: Vec<String>,
    /// The functions that pass through to its VM.
    pub devices: Vec<SandboxDevice>,
    /// Whether the per-sandbox config turns Kata's debug console on (`None`: unread).
    pub debug_console: Option<bool>,
    /// Its state directory, as the host sees it.
    pub dir: PathBuf,
    /// Its per-sandbox Kata config, as the host sees it, if written.
    pub config: Option<PathBuf>,
    /// Its plan, as the host sees it, if written.
    pub plan: Option<PathBuf>,
    /// Our proxy's pid, while it runs.
    pub proxy_pid: Option<u32>,
    /// Kata's shim's pid, while it runs.
    pub kata_pid: Option<u32>,
    /// QEMU's pid, while the VM runs.
    pub qemu_pid: Option<u32>,
    /// Seconds since its state was written.
    pub age_seconds: Option<u64>,
}

impl Sandbox {
    /// Whether any of its processes runs.
    pub fn running(&self) -> bool {
        self.proxy_pid.is_some() || self.kata_pid.is_some() || self.qemu_pid.is_some()
    }

    /// Who it is, in words: `pod default/a (sandbox 1234)` or `sandbox 1234 in namespace x`.
    pub fn holder(&self) -> String {
        match &self.pod {
            Some(pod) => format!("pod {pod} (sandbox {})", self.id),
            None => format!("sandbox {} in namespace {}", self.id, self.namespace),
        }
    }
}

/// A function a sandbox passes through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxDevice {
    /// Its PCI address.
    pub bdf: String,
    /// `vendor:device`.
    pub id: String,
    /// Its IOMMU group.
    pub iommu_group: Option<u32>,
    /// Its NUMA node, where the host says.
    pub numa_node: Option<u32>,
    /// Its CDI name on this host (`nvidia.com/pgpu=0`), where the host spec has it.
    #[serde(default)]
    pub cdi: Option<String>,
}

/// A GPU or NVSwitch of the host, and who holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostDevice {
    /// Its PCI address.
    pub bdf: String,
    /// `vendor:device`.
    pub id: String,
    /// `gpu` or `nvswitch`.
    pub kind: &'static str,
    /// Its CDI name on this host, if it has one (bound to vfio-pci).
    pub cdi: Option<String>,
    /// Its NUMA node, where the host says.
    pub numa_node: Option<u32>,
    /// Its driver now.
    pub driver: Option<String>,
    /// Who holds it.
    pub holder: Holder,
}

/// Who holds a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Holder {
    /// No sandbox: a new pod may get it.
    Free,
    /// A running sandbox.
    Held {
        /// The sandbox's namespace.
        namespace: String,
        /// The sandbox id.
        sandbox: String,
        /// Its pod, when known.
        pod: Option<String>,
    },
    /// A sandbox that no longer runs but whose claim remains: no new pod gets it.
    Leaked {
        /// The sandbox's namespace.
        namespace: String,
        /// The sandbox id.
        sandbox: String,
        /// Its pod, when known.
        pod: Option<String>,
        /// Its state directory, as the host sees it: what to remove.
        dir: PathBuf,
    },
}

/// The node's sandboxes and devices.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sandboxes {
    /// Every sandbox with state, running or gone, by namespace and id.
    pub sandboxes: Vec<Sandbox>,
    /// Every NVIDIA GPU and NVSwitch of the host, in address order.
    pub devices: Vec<HostDevice>,
    /// What could not be read (a device list, a state file), in words.
    pub problems: Vec<String>,
}

impl Sandboxes {
    /// The sandboxes that are gone but still claim devices.
    pub fn leaks(&self) -> impl Iterator<Item = &Sandbox> {
        self.sandboxes
            .iter()
            .filter(|s| !s.running() && !s.devices.is_empty())
    }
}

/// What `claims.json` says (the shim's `Claim`).
#[derive(Deserialize)]
struct ClaimFile {
    #[serde(default)]
    pod: Option<String>,
    #[serde(default)]
    devices: Vec<String>,
}

/// What `plan.json` says, the part read here.
#[derive(Deserialize)]
struct PlanFile {
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    handler: Option<String>,
    #[serde(default)]
    requested: Vec<String>,
    #[serde(default)]
    devices: Vec<SandboxDevice>,
}

/// Reads the sandboxes under each state directory (host paths, as the shim settings of the
/// installed profiles name them) under the root of `host`, whose processes say which run
/// and whose devices and specs say which GPU each holds.
pub fn gather(host: &HostFacts, state_dirs: &[PathBuf], now: SystemTime) -> Sandboxes {
    let root = host.root.as_path();
    let mut out = Sandboxes::default();
    let cdi_names = cdi_names(host, &mut out.problems);
    let mut dirs: Vec<&PathBuf> = state_dirs.iter().collect();
    dirs.sort();
    dirs.dedup();
    for state in dirs {
        read_state_dir(root, state, &host.processes, &cdi_names, now, &mut out);
    }
    out.sandboxes
        .sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
    out.devices = host_devices(host, &cdi_names, &out.sandboxes, &mut out.problems);
    out
}

/// Each sandbox directory under one state directory.
fn read_state_dir(
    root: &Path,
    state: &Path,
    procs: &[Process],
    cdi_names: &BTreeMap<String, String>,
    now: SystemTime,
    out: &mut Sandboxes,
) {
    let real = match kata_gpu_fsutil::resolve_in_root(root, state) {
        Ok(real) => real,
        Err(e) => {
            out.problems
                .push(format!("cannot resolve {}: {e}", state.display()));
            return;
        }
    };
    for namespace in sorted_dirs(&real) {
        if namespace == PROXY_SOCKETS_DIR {
            continue;
        }
        for id in sorted_dirs(&real.join(&namespace)) {
            let dir = real.join(&namespace).join(&id);
            let host_dir = state.join(&namespace).join(&id);
            let mut sandbox = read_sandbox(&dir, host_dir, &namespace, &id, now, out);
            for d in &mut sandbox.devices {
                d.cdi = cdi_names.get(&d.bdf).cloned();
            }
            find_processes(&mut sandbox, procs);
            out.sandboxes.push(sandbox);
        }
    }
}

fn read_sandbox(
    dir: &Path,
    host_dir: PathBuf,
    namespace: &str,
    id: &str,
    now: SystemTime,
    out: &mut Sandboxes,
) -> Sandbox {
    let mut problem = |what: String| out.problems.push(what);
    let claim: Option<ClaimFile> = read_json(dir, "claims.json", &host_dir, &mut problem);
    let plan: Option<PlanFile> = read_json(dir, "plan.json", &host_dir, &mut problem);
    let config_text = fs::read_to_string(dir.join("configuration.toml")).ok();
    let debug_console = config_text.as_deref().and_then(|t| {
        let doc: toml_edit::DocumentMut = t.parse().ok()?;
        Some(
            doc.get("agent")
                .and_then(|a| a.get("kata"))
                .and_then(|k| k.get("debug_console_enabled"))
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        )
    });
    let age_seconds = fs::metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| now.duration_since(t).ok())
        .map(|d| d.as_secs());
    let present = |name: &str| dir.join(name).is_file().then(|| host_dir.join(name));
    let (profile, handler, requested, mut devices) = match plan {
        Some(p) => (p.profile, p.handler, p.requested, p.devices),
        None => (None, None, Vec::new(), Vec::new()),
    };
    // A plan without devices but a claim (an older plan): the claim's addresses.
    let (pod, claimed) = claim.map_or((None, Vec::new()), |c| (c.pod, c.devices));
    for bdf in claimed {
        if !devices.iter().any(|d| d.bdf == bdf) {
            devices.push(SandboxDevice {
                bdf,
                id: String::new(),
                iommu_group: None,
                numa_node: None,
                cdi: None,
            });
        }
    }
    Sandbox {
        namespace: namespace.to_owned(),
        id: id.to_owned(),
        pod,
        profile,
        handler,
        kata_runtime: config_text
            .as_deref()
            .and_then(KataRuntime::of_config)
            .map(|(r, _)| r.name()),
        requested,
        devices,
        debug_console,
        config: present("configuration.toml"),
        plan: present("plan.json"),
        dir: host_dir,
        proxy_pid: None,
        kata_pid: None,
        qemu_pid: None,
        age_seconds,
    }
}

/// A state file, parsed; a file that is there but does not parse is a problem.
fn read_json<T: for<'de> Deserialize<'de>>(
    dir: &Path,
    name: &str,
    host_dir: &Path,
    problem: &mut impl FnMut(String),
) -> Option<T> {
    let text = fs::read(dir.join(name)).ok()?;
    match serde_json::from_slice(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            problem(format!("{}: {e}", host_dir.join(name).display()));
            None
        }
    }
}

/// The sandbox's processes: our proxy (a kata-gpu shim serving it: `-id <id> … serve`),
/// Kata's shim (`containerd-shim-kata-v2 … -id <id>`), QEMU (`-name sandbox-<id>`).
fn find_processes(sandbox: &mut Sandbox, procs: &[Process]) {
    let vm_name = format!("sandbox-{}", sandbox.id);
    for p in procs {
        let serves = p.flag("-id") == Some(sandbox.id.as_str())
            && p.flag("-namespace") == Some(sandbox.namespace.as_str());
        let program = p.program();
        if serves
            && program.starts_with("containerd-shim-kata-qemu-nvidia-gpu")
            && p.argv.last().is_some_and(|a| a == "serve")
        {
            sandbox.proxy_pid.get_or_insert(p.pid);
        } else if serves && program == "containerd-shim-kata-v2" {
            sandbox.kata_pid.get_or_insert(p.pid);
        } else if program.starts_with("qemu-system")
            && p.flag("-name")
                .and_then(|n| n.split(',').next())
                .is_some_and(|n| n == vm_name)
        {
            sandbox.qemu_pid.get_or_insert(p.pid);
        }
    }
}

/// PCI address → CDI name by index (`nvidia.com/pgpu=0`), as the host spec names it.
fn cdi_names(host: &HostFacts, problems: &mut Vec<String>) -> BTreeMap<String, String> {
    let specs = match &host.specs {
        Ok(specs) => specs,
        Err(e) => {
            problems.push(format!("cannot read the host's devices: {e}"));
            return BTreeMap::new();
        }
    };
    let mut names = BTreeMap::new();
    // Each function's names end with its address, and functions come in index order.
    for spec in &specs.specs {
        let addresses = spec
            .devices
            .iter()
            .filter(|d| d.name.parse::<kata_gpu_plan::host::Bdf>().is_ok());
        for (index, d) in addresses.enumerate() {
            names.insert(d.name.clone(), format!("{}={index}", spec.kind));
        }
    }
    names
}

/// Every NVIDIA GPU and NVSwitch of the host, with its holder.
fn host_devices(
    host: &HostFacts,
    cdi_names: &BTreeMap<String, String>,
    sandboxes: &[Sandbox],
    problems: &mut Vec<String>,
) -> Vec<HostDevice> {
    let devices = match &host.devices {
        Ok(d) => d,
        Err(e) => {
            problems.push(e.clone());
            return Vec::new();
        }
    };
    devices
        .iter()
        .map(|d| &d.function)
        .map(|f| {
            let bdf = f.bdf.to_string();
            let holder = sandboxes
                .iter()
                .find(|s| s.devices.iter().any(|d| d.bdf == bdf))
                .map_or(Holder::Free, |s| {
                    let (namespace, sandbox, pod) =
                        (s.namespace.clone(), s.id.clone(), s.pod.clone());
                    if s.running() {
                        Holder::Held {
                            namespace,
                            sandbox,
                            pod,
                        }
                    } else {
                        Holder::Leaked {
                            namespace,
                            sandbox,
                            pod,
                            dir: s.dir.clone(),
                        }
                    }
                });
            HostDevice {
                id: format!("{:04x}:{:04x}", f.vendor, f.device),
                kind: if f.is_nvswitch() { "nvswitch" } else { "gpu" },
                cdi: cdi_names.get(&bdf).cloned(),
                numa_node: f.numa_node,
                driver: f.driver.clone(),
                holder,
                bdf,
            }
        })
        .collect()
}

/// The names of the directories in `dir`, sorted.
fn sorted_dirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use kata_gpu_simhost::SimHost;

    const STATE: &str = "/run/kata-gpu";

    fn put(sim: &SimHost, rel: &str, bytes: &[u8]) {
        let p = sim.path(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, bytes).expect("write");
    }

    /// A sandbox's state as the shim writes it, holding `bdfs`.
    fn sandbox(sim: &SimHost, ns: &str, id: &str, pod: &str, bdfs: &[&str]) {
        let dir = format!("run/kata-gpu/{ns}/{id}");
        let claim = serde_json::json!({
            "namespace": ns, "sandbox": id, "pod": pod, "devices": bdfs,
        });
        put(
            sim,
            &format!("{dir}/claims.json"),
            claim.to_string().as_bytes(),
        );
        let devices: Vec<serde_json::Value> = bdfs
            .iter()
            .map(|b| serde_json::json!({"root_port": "rp0", "bdf": b, "id": "10de:2330", "class": "030200", "iommu_group": 30, "numa_node": 0, "cdev": "vfio0", "reason": "requested"}))
            .collect();
        let plan = serde_json::json!({
            "profile": "snp", "handler": "kata-qemu-nvidia-gpu-snp",
            "requested": ["nvidia.com/pgpu=0"], "devices": devices,
        });
        put(
            sim,
            &format!("{dir}/plan.json"),
            plan.to_string().as_bytes(),
        );
        put(
            sim,
            &format!("{dir}/configuration.toml"),
            b"[agent.kata]\ndial_timeout = 30\n",
        );
    }

    fn process(sim: &SimHost, pid: u32, argv: &[&str]) {
        put(
            sim,
            &format!("proc/{pid}/cmdline"),
            argv.join("\0").as_bytes(),
        );
    }

    #[test]
    fn running_sandboxes_hold_their_gpus_and_a_gone_one_leaks_them() {
        let sim = SimHost::hgx_8x_h100();
        // A running pod: proxy, Kata's shim and QEMU.
        sandbox(&sim, "k8s.io", "aaa", "default/train", &["0000:18:00.0"]);
        let gpu = "/usr/local/bin/containerd-shim-kata-qemu-nvidia-gpu-snp-v2";
        process(
            &sim,
            100,
            &[
                gpu,
                "-namespace",
                "k8s.io",
                "-id",
                "aaa",
                "-address",
                "/c.sock",
                "serve",
            ],
        );
        let kata = "/opt/kata/bin/containerd-shim-kata-v2";
        process(
            &sim,
            101,
            &[
                kata,
                "-namespace",
                "k8s.io",
                "-address",
                "/c.sock",
                "-id",
                "aaa",
            ],
        );
        process(
            &sim,
            102,
            &[
                "/opt/kata/bin/qemu-system-x86_64",
                "-name",
                "sandbox-aaa,debug-threads=on",
            ],
        );
        // A gone one: its state is left, nothing runs.
        sandbox(&sim, "k8s.io", "bbb", "default/old", &["0000:2a:00.0"]);
        // Kata's shim of another sandbox does not count for bbb.
        process(&sim, 103, &[kata, "-namespace", "k8s.io", "-id", "ccc"]);
        // The proxies' sockets are no namespace.
        put(&sim, "run/kata-gpu/s/0a1b.downstream", b"2 unix:///x 100\n");

        let now = SystemTime::now();
        let found = gather(
            &HostFacts::gather(sim.root()),
            &[PathBuf::from(STATE), PathBuf::from(STATE)],
            now,
        );
        assert_eq!(found.problems, Vec::<String>::new());
        let ids: Vec<(&str, bool)> = found
            .sandboxes
            .iter()
            .map(|s| (s.id.as_str(), s.running()))
            .collect();
        assert_eq!(ids, [("aaa", true), ("bbb", false)]);
        let a = &found.sandboxes[0];
        assert_eq!(
            (a.proxy_pid, a.kata_pid, a.qemu_pid),
            (Some(100), Some(101), Some(102))
        );
        assert_eq!(a.pod.as_deref(), Some("default/train"));
        assert_eq!(a.kata_runtime, Some("go"));
        assert_eq!(a.debug_console, Some(false));
        assert_eq!(
            a.config,
            Some(PathBuf::from("/run/kata-gpu/k8s.io/aaa/configuration.toml"))
        );
        // The HGX's GPUs in address order: 0000:18 is pgpu=0, 0000:2a pgpu=1.
        assert_eq!(a.devices[0].cdi.as_deref(), Some("nvidia.com/pgpu=0"));
        let holder = |bdf: &str| {
            found
                .devices
                .iter()
                .find(|d| d.bdf == bdf)
                .map(|d| d.holder.clone())
                .expect("a device")
        };
        assert_eq!(
            holder("0000:18:00.0"),
            Holder::Held {
                namespace: "k8s.io".into(),
                sandbox: "aaa".into(),
                pod: Some("default/train".into())
            }
        );
        assert_eq!(
            holder("0000:2a:00.0"),
            Holder::Leaked {
                namespace: "k8s.io".into(),
                sandbox: "bbb".into(),
                pod: Some("default/old".into()),
                dir: PathBuf::from("/run/kata-gpu/k8s.io/bbb"),
            }
        );
        assert_eq!(holder("0000:3a:00.0"), Holder::Free);
        assert_eq!(found.devices.len(), 12);
        assert_eq!(
            found
                .devices
                .iter()
                .filter(|d| d.kind == "nvswitch")
                .count(),
            4
        );
        let leaks: Vec<&str> = found.leaks().map(|s| s.id.as_str()).collect();
        assert_eq!(leaks, ["bbb"]);
    }

    #[test]
    fn a_state_file_that_does_not_parse_is_named_and_the_rest_is_read() {
        let sim = SimHost::hgx_8x_h100();
        sandbox(&sim, "k8s.io", "aaa", "default/train", &["0000:18:00.0"]);
        put(&sim, "run/kata-gpu/k8s.io/aaa/plan.json", b"{not json");
        let host = HostFacts::gather(sim.root());
        let found = gather(&host, &[PathBuf::from(STATE)], SystemTime::now());
        assert_eq!(found.problems.len(), 1, "{:?}", found.problems);
        assert!(
            found.problems[0].starts_with("/run/kata-gpu/k8s.io/aaa/plan.json: "),
            "{:?}",
            found.problems
        );
        // The claim still names what it holds.
        assert_eq!(found.sandboxes[0].devices[0].bdf, "0000:18:00.0");
        assert!(
            gather(&host, &[PathBuf::from("/nowhere")], SystemTime::now())
                .sandboxes
                .is_empty()
        );
    }
}
