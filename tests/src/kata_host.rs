//! The host description `kata-qemu-args` takes (its README's host.json), written from a
//! simulated host's own sysfs and `/dev` tree, so that Kata's command line can be had for the
//! same host the plan and the shim are tested on.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use crate::SimHost;

/// AMD EPYC's SEV C-bit position (CPUID 0x8000001F EBX[5:0]); a simulated host has no CPUID.
pub const EPYC_CBITPOS: u32 = 51;

fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

fn hex(path: &Path) -> Result<u64, String> {
    let text = read(path).ok_or_else(|| format!("{} is missing", path.display()))?;
    u64::from_str_radix(text.trim_start_matches("0x"), 16)
        .map_err(|e| format!("{}: {text:?}: {e}", path.display()))
}

/// The last path component of a symlink's target (`../../kernel/iommu_groups/40` → `40`).
fn link_name(path: &Path) -> Option<String> {
    fs::read_link(path)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// host.json for `sim`: every PCI function it lays out (ids, class, IOMMU group, NUMA node,
/// its `vfioN` cdev if any, PCIe when its config space is larger than 256 bytes, its BARs
/// from `resource`), KVM's SEV-SNP and TDX switches, and `pod_devices`, the device nodes the
/// pod's sandbox spec carries (`/dev/vfio/devices/vfioN` or `/dev/vfio/<group>`), in order.
pub fn host_json(sim: &SimHost, pod_devices: &[&str]) -> Result<Value, String> {
    let devices = sim.path("sys/bus/pci/devices");
    let mut bdfs: Vec<String> = fs::read_dir(&devices)
        .map_err(|e| format!("{}: {e}", devices.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    bdfs.sort();
    let mut functions = Vec::new();
    for bdf in &bdfs {
        let dir = devices.join(bdf);
        let mut bars = Vec::new();
        let resource = read(&dir.join("resource")).unwrap_or_default();
        // Lines 0–5 are the BARs (then the ROM and bridge windows).
        for (index, line) in resource.lines().take(6).enumerate() {
            let fields: Vec<u64> = line
                .split_whitespace()
                .map(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{bdf}/resource {line:?}: {e}"))?;
            let [start, end, flags] = fields[..] else {
                return Err(format!("{bdf}/resource: {line:?} is not three numbers"));
            };
            if end > start {
                bars.push(json!({"index": index, "size": end - start + 1, "flags": flags}));
            }
        }
        let cdev = fs::read_dir(dir.join("vfio-dev"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
            .and_then(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_prefix("vfio")
                    .and_then(|n| n.parse::<u32>().ok())
            });
        let group = link_name(&dir.join("iommu_group")).and_then(|g| g.parse::<u32>().ok());
        let numa: i64 = read(&dir.join("numa_node"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(-1);
        let config = fs::metadata(dir.join("config")).map_or(0, |m| m.len());
        functions.push(json!({
            "bdf": bdf,
            "vendor": hex(&dir.join("vendor"))?,
            "device": hex(&dir.join("device"))?,
            "class": hex(&dir.join("class"))?,
            "group": group,
            "numa": numa,
            "cdev": cdev,
            "pcie": config > 256,
            "bars": bars,
        }));
    }
    let switch = |rel: &str| read(&sim.path(rel)).is_some_and(|v| v == "Y" || v == "1");
    let nested = read(&sim.path("proc/cpuinfo")).is_some_and(|c| {
        c.lines()
            .any(|l| l.starts_with("flags") && l.contains(" hypervisor"))
    });
    Ok(json!({
        "sev_snp": switch("sys/module/kvm_amd/parameters/sev_snp"),
        "tdx": switch("sys/module/kvm_intel/parameters/tdx"),
        "nested": nested,
        "cbitpos": EPYC_CBITPOS,
        "vsock_cid": 3,
        "veths": [],
        "functions": functions,
        "pod_devices": pod_devices,
    }))
}

/// Kata's QEMU arguments (without the binary) for `config` on `sim`, a pod carrying `pod_devices`, each
/// of `sets` passed as `-set key=value`; and the BARs of the host's functions, for
/// [`crate::guest::boot`]. host.json is written to a temp dir removed before returning.
pub fn kata_argv(
    tool: &crate::parts::KataQemuArgs,
    config: &Path,
    sim: &SimHost,
    pod_devices: &[&str],
    sets: &[&str],
) -> Result<(Vec<String>, crate::guest::BarsByHostBdf), String> {
    let value = host_json(sim, pod_devices)?;
    let dir = tempfile::Builder::new()
        .prefix("kata-gpu-host.")
        .tempdir()
        .map_err(|e| format!("a temp dir: {e}"))?;
    let path = dir.path().join("host.json");
    fs::write(&path, value.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
    let argv = tool.argv(config, &path, sets)?;
    let bars = crate::guest::bars_from_host_json(&value)?;
    Ok((argv, bars))
}

/// The sandbox id `kata-qemu-args` names its VM after.
pub const TOOL_SANDBOX_ID: &str =
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// `text` with every `prefix` followed by `n` hex digits given the plan's pattern instead.
fn mask_hex(text: &str, prefix: &str, n: usize) -> String {
    use kata_gpu_plan::sandbox::kata::random_hex;
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let (head, tail) = rest.split_at(at + prefix.len());
        out.push_str(head);
        rest = tail;
        let digits = tail.get(..n);
        if digits.is_some_and(|d| d.chars().all(|c| c.is_ascii_hexdigit())) {
            out.push_str(&random_hex(n));
            rest = &tail[n..];
        }
    }
    out.push_str(rest);
    out
}

/// Kata's arguments (without the QEMU path) with what Kata draws at random each run (the
/// `-uuid`, the image drive's id, the iommufd and vhost-user-fs chardev ids) and the tool's
/// placeholders (its sandbox id, the vsock fd and guest CID) written as the plan shows them.
pub fn as_the_plan_shows(args: &[String]) -> Vec<String> {
    use kata_gpu_plan::sandbox::kata::RANDOM_UUID;
    let mut out: Vec<String> = Vec::with_capacity(args.len());
    for a in args {
        if out.last().is_some_and(|prev| prev == "-uuid") {
            out.push(RANDOM_UUID.to_owned());
            continue;
        }
        let mut a = a.replace(TOOL_SANDBOX_ID, "<sandbox id>");
        for prefix in ["image-", "iommufdvfio-", "char-"] {
            a = mask_hex(&a, prefix, 16);
        }
        out.push(a.replace(
            "vhostfd=4,id=vsock-3,guest-cid=3",
            "vhostfd=<vhost-vsock fd>,id=vsock-<guest cid>,guest-cid=<guest cid>",
        ));
    }
    out
}
