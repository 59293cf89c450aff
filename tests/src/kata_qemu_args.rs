//! Kata 3.30's own QEMU command line for a configuration and a simulated host, through
//! `kata-qemu-args` (Kata's code run offline, in a private mount namespace, up to
//! `LaunchQemu`): the host described as the JSON it reads, from the same sysfs tree the plan
//! reads, and its output with the parts Kata draws at random shown as the plan shows them.

use std::path::Path;
use std::process::Command;

use kata_gpu_plan::host::Host;
use kata_gpu_plan::sandbox::kata::{random_hex, RANDOM_UUID};
use kata_gpu_plan::sandbox::PassthroughDevice;
use serde_json::{json, Value};

/// The sandbox id `kata-qemu-args` names its VM after.
pub const TOOL_SANDBOX_ID: &str =
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The host as `kata-qemu-args` reads it: every PCI function under the root (with its BARs,
/// group and cdev), SEV-SNP and TDX as the root's KVM parameters say, no `hypervisor` CPU
/// flag, and `devices` as the device nodes of the pod's sandbox spec, in order.
pub fn host_json(root: &Path, cbitpos: u8, devices: &[PassthroughDevice]) -> Value {
    let host = Host::new(root);
    let platform = host.platform();
    let functions: Vec<Value> = host
        .pci_functions()
        .expect("the simulated host's PCI functions")
        .into_iter()
        .map(|f| {
            let cdev = host
                .vfio_cdev(f.bdf)
                .and_then(|(name, _)| name.trim_start_matches("vfio").parse::<u32>().ok());
            let bars: Vec<Value> = f
                .bars
                .unwrap_or_default()
                .iter()
                .map(|b| json!({"index": b.index, "size": b.size, "flags": b.flags}))
                .collect();
            json!({
                "bdf": f.bdf.to_string(), "vendor": f.vendor, "device": f.device,
                "class": f.class, "group": f.iommu_group, "numa": f.numa_node.unwrap_or(0),
                "cdev": cdev, "pcie": f.pcie, "bars": bars,
            })
        })
        .collect();
    let mut nodes: Vec<String> = Vec::new();
    for d in devices {
        let node = match &d.cdev {
            Some(cdev) => format!("/dev/vfio/devices/{cdev}"),
            None => format!("/dev/vfio/{}", d.group),
        };
        if !nodes.contains(&node) {
            nodes.push(node);
        }
    }
    json!({
        "sev_snp": platform.sev_snp, "tdx": platform.tdx, "nested": false,
        "cbitpos": cbitpos, "vsock_cid": 3, "veths": [],
        "functions": functions, "pod_devices": nodes,
    })
}

/// What `kata-qemu-args` printed: the QEMU binary and its arguments, or Kata's error.
pub struct KataArgv {
    /// The QEMU binary.
    pub qemu: String,
    /// The arguments, with Kata's random parts and the tool's placeholders as the plan
    /// shows them ([`normalize`]).
    pub args: Vec<String>,
}

/// Runs `kata-qemu-args` (needs root) on `config` for `host`; Kata's own error on failure.
pub fn run(tool: &Path, config: &Path, host: &Value) -> Result<KataArgv, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let host_file = dir.path().join("host.json");
    std::fs::write(&host_file, host.to_string()).expect("write host.json");
    let out = Command::new(tool)
        .arg("-config")
        .arg(config)
        .arg("-host")
        .arg(&host_file)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", tool.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut lines = stdout.lines().map(str::to_owned);
    let qemu = lines.next().unwrap_or_default();
    Ok(KataArgv {
        qemu,
        args: normalize(&lines.collect::<Vec<_>>()),
    })
}

/// `text` with every `prefix` followed by `n` hex digits given the plan's pattern instead.
fn mask_hex(text: &str, prefix: &str, n: usize) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let (head, tail) = rest.split_at(at + prefix.len());
        out.push_str(head);
        let digits = tail
            .get(..n)
            .filter(|d| d.chars().all(|c| c.is_ascii_hexdigit()));
        match digits {
            Some(_) => {
                out.push_str(&random_hex(n));
                rest = &tail[n..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// Kata's arguments with what it draws at random each run (`-uuid`, the image drive id, the
/// iommufd and vhost-user-fs chardev ids) and the tool's placeholders (the sandbox id, the
/// vsock fd and guest CID) written as the plan writes them.
pub fn normalize(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut after_uuid = false;
    for a in args {
        if after_uuid {
            out.push(RANDOM_UUID.to_owned());
            after_uuid = false;
            continue;
        }
        after_uuid = a == "-uuid";
        let mut a = a.replace(TOOL_SANDBOX_ID, "<sandbox id>");
        for prefix in ["image-", "iommufdvfio-", "char-"] {
            a = mask_hex(&a, prefix, 16);
        }
        a = a.replace(
            "vhostfd=4,id=vsock-3,guest-cid=3",
            "vhostfd=<vhost-vsock fd>,id=vsock-<guest cid>,guest-cid=<guest cid>",
        );
        out.push(a);
    }
    out
}
