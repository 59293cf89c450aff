//! The checks of `kata-gpu doctor` as pure functions over facts gathered from the host,
//! and the node labels the host deserves.

use std::collections::BTreeMap;
use std::path::Path;

use kata_gpu_configs::KataRuntime;
use kata_gpu_plan::host::{Bar, PciFunction, Platform};
use kata_gpu_plan::sandbox::Room;
use kata_gpu_plan::sandbox::CC_CAPABLE_GPUS;
use kata_gpu_plan::vfio::VfioError;
use kata_gpu_plan::Profile;
use serde::Serialize;

use kata_gpu_node::status::Status;

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, but not as well as it could.
    Warn,
    /// Keeps confidential GPU pods from running.
    Fail,
}

/// One check: its verdict, what was found, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked (`kvm`, `gpu 0000:41:00.0`, …).
    pub name: String,
    /// Ok, warn or fail.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do about it (None when ok).
    pub fix: Option<String>,
}

impl Check {
    pub(crate) fn new(
        name: &str,
        verdict: Verdict,
        detail: impl Into<String>,
        fix: Option<String>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            verdict,
            detail: detail.into(),
            fix,
        }
    }

    fn ok(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, Verdict::Ok, detail, None)
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = match self.verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        write!(f, "{tag:<5} {}: {}", self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, " — fix: {fix}")?;
        }
        Ok(())
    }
}

/// An ok check.
pub fn ok(name: &str, detail: impl Into<String>) -> Check {
    Check::ok(name, detail)
}

/// A failed check with its fix.
pub fn fail(name: &str, detail: impl Into<String>, fix: &str) -> Check {
    Check::new(name, Verdict::Fail, detail, Some(fix.to_owned()))
}

pub use kata_gpu_node::facts::Device;

/// Whether a function is a CC-capable GPU.
pub fn cc_capable(f: &PciFunction) -> bool {
    f.is_nvidia_gpu() && !f.is_nvswitch() && CC_CAPABLE_GPUS.contains(&f.device)
}

/// `/dev/kvm`.
pub fn kvm(p: &Platform) -> Check {
    if p.kvm {
        Check::ok("kvm", "/dev/kvm present")
    } else {
        Check::new(
            "kvm",
            Verdict::Fail,
            "/dev/kvm missing",
            Some(
                "enable virtualization (SVM/VT-x) in the BIOS and load kvm_amd or kvm_intel"
                    .to_owned(),
            ),
        )
    }
}

/// IOMMU groups exist.
pub fn iommu(p: &Platform) -> Check {
    if p.iommu {
        Check::ok("iommu", "enabled (/sys/kernel/iommu_groups has groups)")
    } else {
        Check::new(
            "iommu",
            Verdict::Fail,
            "disabled: /sys/kernel/iommu_groups is empty",
            Some(format!(
                "{} (now: {})",
                p.iommu_fix(),
                if p.cmdline.is_empty() {
                    "unknown"
                } else {
                    &p.cmdline
                }
            )),
        )
    }
}

/// SEV-SNP or TDX, as the profile needs.
pub fn tee(profile: Profile, p: &Platform) -> Check {
    match profile {
        Profile::Snp if p.sev_snp => Check::ok("sev-snp", "kvm_amd reports sev_snp enabled"),
        Profile::Snp => Check::new(
            "sev-snp",
            Verdict::Fail,
            "kvm_amd does not report sev_snp (/sys/module/kvm_amd/parameters/sev_snp)",
            Some("enable SEV-SNP and SNP memory coverage in the BIOS, boot with kvm_amd.sev_snp=1 mem_encrypt=on, and update the SEV firmware".to_owned()),
        ),
        Profile::Tdx if p.tdx => Check::ok("tdx", "kvm_intel reports tdx enabled"),
        Profile::Tdx => Check::new(
            "tdx",
            Verdict::Fail,
            "kvm_intel does not report tdx (/sys/module/kvm_intel/parameters/tdx)",
            Some("enable TDX in the BIOS and boot a TDX host kernel with kvm_intel.tdx=1".to_owned()),
        ),
        Profile::Gpu => Check::ok(
            "tee",
            "the gpu profile needs no SEV-SNP or TDX",
        ),
    }
}

/// One check per NVIDIA GPU and NVSwitch: driver, IOMMU group, CC-capable verdict.
pub fn devices(profile: Profile, devices: &[Device]) -> Vec<Check> {
    if devices.is_empty() {
        return vec![Check::new(
            "gpus",
            Verdict::Warn,
            "no NVIDIA GPU or NVSwitch found",
            Some("install a GPU, or check lspci -d 10de:".to_owned()),
        )];
    }
    devices
        .iter()
        .map(|d| {
            let f = &d.function;
            let what = if f.is_nvswitch() { "nvswitch" } else { "gpu" };
            let name = format!("{what} {}", f.bdf);
            let driver = f.driver.as_deref().unwrap_or("no driver");
            let group = f
                .iommu_group
                .map_or("no IOMMU group".to_owned(), |g| format!("IOMMU group {g}"));
            let cc = if f.is_nvswitch() {
                ""
            } else if cc_capable(f) {
                ", CC-capable"
            } else {
                ", NOT CC-capable"
            };
            let resource = match &f.bars {
                Ok(_) => String::new(),
                Err(why) => format!(
                    ", /sys/bus/pci/devices/{}/resource unreadable ({why})",
                    f.bdf
                ),
            };
            let detail = format!("{} driver {driver}, {group}{cc}{resource}", f.id());
            if f.iommu_group.is_none() {
                Check::new(
                    &name,
                    Verdict::Fail,
                    detail,
                    Some("enable the IOMMU (see the iommu check)".to_owned()),
                )
            } else if f.driver.as_deref() != Some("vfio-pci") {
                let fix = if d.foreign.is_empty() {
                    format!("kata-gpu vfio bind {}", f.bdf)
                } else {
                    // What `vfio bind` would refuse with; it names the way out.
                    format!(
                        "`kata-gpu vfio bind {}` refuses: {}",
                        f.bdf,
                        VfioError::Foreign(d.foreign.clone())
                    )
                };
                Check::new(&name, Verdict::Fail, detail, Some(fix))
            } else if !f.is_nvswitch() && !cc_capable(f) && profile.confidential() {
                let ids = CC_CAPABLE_GPUS
                    .iter()
                    .map(|id| format!("10de:{id:04x}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                Check::new(
                    &name,
                    Verdict::Warn,
                    detail,
                    Some(format!(
                        "use a CC-capable GPU ({ids}) for confidential pods, or the gpu profile"
                    )),
                )
            } else if f.bars.is_err() {
                Check::new(
                    &name,
                    Verdict::Warn,
                    detail,
                    Some(
                        "a sandbox asking for it is refused: its root port cannot be sized for \
                         its BARs; check that /sys is the host's sysfs"
                            .to_owned(),
                    ),
                )
            } else {
                Check::ok(&name, detail)
            }
        })
        .collect()
}

/// Whether the node's whole set of passthrough devices fits one guest's physical address
/// space: the figure the plan writes as `phys-bits` per sandbox, and what the host allows
/// (its width, less SEV's reduced bits and below the C-bit, or less TDX's shared bit).
pub fn address_bits(
    profile: Profile,
    devices: &[Device],
    room: impl Fn(&[Vec<Bar>]) -> Room,
) -> Check {
    const NAME: &str = "address bits";
    let bars: Vec<Vec<Bar>> = devices
        .iter()
        .filter(|d| d.function.driver.as_deref() == Some("vfio-pci"))
        .filter_map(|d| d.function.bars.clone().ok())
        .filter(|bars| bars.iter().any(|b| b.is_prefetchable_64() && b.size > 0))
        .collect();
    let gpus = |n: usize| {
        if n == 1 {
            "1 GPU".to_owned()
        } else {
            format!("{n} GPUs")
        }
    };
    let all = room(&bars);
    let Some((limit, why)) = all.limit.clone() else {
        return Check::new(
            NAME,
            Verdict::Warn,
            format!(
                "a sandbox of all {} on vfio-pci needs {} physical address bits; this host's width is unknown (/proc/cpuinfo has no \"address sizes\")",
                gpus(bars.len()),
                all.needed
            ),
            Some("check that /proc is the host's".to_owned()),
        );
    };
    let tee = match profile.tee() {
        kata_gpu_plan::profile::Tee::SevSnp => "SEV-SNP guests",
        kata_gpu_plan::profile::Tee::Tdx => "TDX guests",
        kata_gpu_plan::profile::Tee::None => "guests",
    };
    let written = match all.model_bits {
        Some(b) if b < all.needed => format!(" (the plan writes phys-bits={} into each such sandbox's cpu_features; the CPU model alone gives {b})", all.needed),
        _ => String::new(),
    };
    if all.needed <= limit {
        return Check::ok(
            NAME,
            format!(
                "a sandbox of all {} on vfio-pci needs {} physical address bits{written}; {tee} here can have {limit} ({why})",
                gpus(bars.len()),
                all.needed
            ),
        );
    }
    let fits = (0..bars.len())
        .rev()
        .find(|&n| room(&bars[..n]).needed <= limit)
        .unwrap_or(0);
    Check::new(
        NAME,
        Verdict::Warn,
        format!(
            "a sandbox of all {} on vfio-pci needs {} physical address bits, but {tee} here can have {limit} ({why}): at most {} fit in one sandbox",
            gpus(bars.len()),
            all.needed,
            gpus(fits)
        ),
        Some(format!(
            "ask for at most {fits} GPUs (or less memory) per pod; larger sandboxes are refused at Create"
        )),
    )
}

/// `/dev/iommu` and a cdev for every passthrough device bound to vfio-pci. Confidential
/// guests need iommufd; the plain gpu profile can use the legacy group nodes.
pub fn iommufd(profile: Profile, p: &Platform, devices: &[Device]) -> Check {
    let bound: Vec<&Device> = devices
        .iter()
        .filter(|d| d.function.driver.as_deref() == Some("vfio-pci"))
        .collect();
    let without: Vec<String> = bound
        .iter()
        .filter(|d| d.cdev.is_none())
        .map(|d| d.function.bdf.to_string())
        .collect();
    let severity = if profile.confidential() {
        Verdict::Fail
    } else {
        Verdict::Warn
    };
    let fix = || {
        Some("use a kernel with CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV (6.6 or later), then rebind with kata-gpu vfio bind".to_owned())
    };
    if !p.iommufd {
        Check::new("iommufd", severity, "/dev/iommu missing", fix())
    } else if !without.is_empty() {
        Check::new(
            "iommufd",
            severity,
            format!("no vfio cdev for {}", without.join(", ")),
            fix(),
        )
    } else {
        let cdevs: Vec<&str> = bound.iter().filter_map(|d| d.cdev.as_deref()).collect();
        Check::ok(
            "iommufd",
            if cdevs.is_empty() {
                "/dev/iommu present".to_owned()
            } else {
                format!("/dev/iommu present; cdevs {}", cdevs.join(", "))
            },
        )
    }
}

/// containerd registration and the artifact set, from `kata-gpu status`'s findings.
pub fn registration(profile: Profile, status: Result<&Status, String>) -> Vec<Check> {
    let s = match status {
        Ok(s) => s,
        Err(e) => {
            return vec![
                Check::new(
                    "containerd",
                    Verdict::Fail,
                    e.clone(),
                    Some("kata-gpu status".to_owned()),
                ),
                Check::new(
                    "artifacts",
                    Verdict::Fail,
                    e,
                    Some("kata-gpu status".to_owned()),
                ),
            ]
        }
    };
    let about = |prefix: &str| {
        s.details
            .iter()
            .filter_map(|d| d.strip_prefix(prefix))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let p = profile.name();
    let mut containerd = about("containerd: ");
    if !s.registered {
        // What containerd loads from a config without the handler adds nothing.
        containerd = s
            .details
            .iter()
            .filter_map(|d| d.strip_prefix("containerd: "))
            .filter(|d| !d.starts_with("cannot ask the running containerd"))
            .collect::<Vec<_>>()
            .join("; ");
    }
    let containerd = if !s.registered {
        Check::new(
            "containerd",
            Verdict::Fail,
            containerd,
            Some(format!(
                "kata-gpu containerd register --profile {p} (or kata-gpu install --profile {p})"
            )),
        )
    } else if s.restart_pending || s.loaded == Some(false) {
        Check::new(
            "containerd",
            Verdict::Fail,
            containerd,
            Some("restart containerd so that it loads the registration".to_owned()),
        )
    } else if s.loaded.is_none() {
        Check::new(
            "containerd",
            Verdict::Warn,
            containerd,
            Some(
                "start containerd with its CRI plugin (or pass --socket) so that it can be asked what it serves"
                    .to_owned(),
            ),
        )
    } else {
        Check::ok("containerd", containerd)
    };
    let detail = about("artifacts: ");
    let artifacts = if !s.installed {
        Check::new(
            "artifacts",
            Verdict::Fail,
            detail,
            Some(format!("kata-gpu install --profile {p} --artifacts SRC")),
        )
    } else if s.verified != Some(true) {
        Check::new(
            "artifacts",
            Verdict::Fail,
            detail,
            Some(format!("kata-gpu artifacts verify, then reinstall: kata-gpu install --profile {p} --artifacts SRC")),
        )
    } else {
        Check::ok("artifacts", format!("{detail}, verified"))
    };
    vec![containerd, artifacts]
}

/// The host CDI spec: every device the host should have named, none it no longer has.
/// `expected` and `installed` map qualified names to their device node paths.
pub fn cdi(
    expected: &BTreeMap<String, Vec<String>>,
    installed: &BTreeMap<String, Vec<String>>,
    notes: &[String],
) -> Check {
    let missing: Vec<&str> = expected
        .keys()
        .filter(|k| !installed.contains_key(*k))
        .map(String::as_str)
        .collect();
    let differ: Vec<&str> = expected
        .iter()
        .filter(|(k, v)| installed.get(*k).is_some_and(|i| i != *v))
        .map(|(k, _)| k.as_str())
        .collect();
    let stale: Vec<&str> = installed
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .map(String::as_str)
        .collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("missing {}", missing.join(", ")));
    }
    if !differ.is_empty() {
        problems.push(format!("different device nodes for {}", differ.join(", ")));
    }
    if !stale.is_empty() {
        problems.push(format!(
            "names devices the host no longer has: {}",
            stale.join(", ")
        ));
    }
    problems.extend(notes.iter().cloned());
    if !missing.is_empty() || !differ.is_empty() || !stale.is_empty() {
        return Check::new(
            "cdi",
            Verdict::Fail,
            problems.join("; "),
            Some("kata-gpu cdi generate".to_owned()),
        );
    }
    if !notes.is_empty() {
        return Check::new(
            "cdi",
            Verdict::Warn,
            problems.join("; "),
            Some("kata-gpu cdi generate".to_owned()),
        );
    }
    Check::ok(
        "cdi",
        if expected.is_empty() {
            "no passthrough devices, none in the host spec".to_owned()
        } else {
            format!(
                "host spec present and consistent ({} names)",
                expected.len()
            )
        },
    )
}

/// The Kata runtime the class's installed base config (`config`: shown path and text) is
/// written for, against the one its shim settings hand the sandboxes to (`settings`):
/// runtime-rs refuses the Go runtime's keys at every sandbox's Create, and the Go runtime
/// reads none of runtime-rs's. `None` when there is no base config (the artifacts check
/// says so) or the settings name no Kata runtime.
pub fn kata_runtime(
    profile: Profile,
    config: Option<(String, String)>,
    settings: Option<KataRuntime>,
) -> Option<Check> {
    let ((file, text), to) = (config?, settings?);
    Some(match KataRuntime::of_config(&text) {
        Some((found, key)) if found != to => fail(
            "kata runtime",
            format!(
                "{file}: {key} is a key of {}'s configuration, but the shim settings hand the sandboxes to {}: every sandbox's Create fails",
                found.describe(),
                to.describe()
            ),
            &format!(
                "make them agree: kata-gpu install --profile {} --kata-runtime {found} (or install a base config of {})",
                profile.name(),
                to.describe()
            ),
        ),
        Some(_) => ok(
            "kata runtime",
            format!("{} (the base config and the shim settings agree)", to.describe()),
        ),
        None => ok(
            "kata runtime",
            format!(
                "{} by the shim settings (no key of the base config tells its runtime)",
                to.describe()
            ),
        ),
    })
}

/// The node's sandboxes: one that no longer runs (no proxy, Kata shim or QEMU of its own)
/// but left its state keeps the devices it claimed from every new pod: a leak, with its fix.
/// `root` shows where the state lies on a host under `--host-root`.
pub fn sandboxes(facts: &kata_gpu_node::sandboxes::Sandboxes, root: &Path) -> Vec<Check> {
    let running = facts.sandboxes.iter().filter(|s| s.running()).count();
    let gone: Vec<&kata_gpu_node::sandboxes::Sandbox> =
        facts.sandboxes.iter().filter(|s| !s.running()).collect();
    if gone.is_empty() {
        return vec![Check::new(
            "sandboxes",
            Verdict::Ok,
            format!("{running} running, none gone with its state left"),
            None,
        )];
    }
    gone.iter()
        .map(|s| {
            let held: Vec<String> = s
                .devices
                .iter()
                .map(|d| d.cdi.as_ref().map_or(d.bdf.clone(), |c| format!("{c} ({})", d.bdf)))
                .collect();
            let what = if held.is_empty() {
                "its state is left".to_owned()
            } else {
                format!(
                    "it still claims {}, which no new pod gets until its state goes",
                    held.join(", ")
                )
            };
            Check::new(
                &format!("sandbox {}", s.id),
                Verdict::Warn,
                format!(
                    "{} no longer runs (no proxy, Kata shim or QEMU of its own): {what}",
                    s.holder()
                ),
                Some(format!(
                    "check that nothing of it runs (kata-gpu sandboxes {}), then remove its state: rm -r {}",
                    s.id,
                    crate::node_state::shown(root, &s.dir)
                )),
            )
        })
        .collect()
}

/// The node labels the host deserves.
pub fn labels(p: &Platform, devices: &[Device]) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    if p.sev_snp {
        labels.insert(
            "feature.node.kubernetes.io/cpu-security.sev.snp.enabled".to_owned(),
            "true".to_owned(),
        );
    }
    if p.tdx {
        labels.insert(
            "feature.node.kubernetes.io/cpu-security.tdx.enabled".to_owned(),
            "true".to_owned(),
        );
    }
    let hopper = devices.iter().any(|d| cc_capable(&d.function));
    let cc = hopper && p.iommu && (p.sev_snp || p.tdx);
    labels.insert("nvidia.com/cc.capable".to_owned(), cc.to_string());
    for (tee, on) in [("snp", p.sev_snp), ("tdx", p.tdx)] {
        if cc && on {
            labels.insert(
                format!("feature.node.kubernetes.io/kata-gpu.{tee}-hopper"),
                "true".to_owned(),
            );
        }
    }
    if devices.iter().any(|d| {
        d.function.is_nvidia_gpu()
            && !d.function.is_nvswitch()
            && d.function.driver.as_deref() == Some("vfio-pci")
    }) {
        labels.insert(
            "nvidia.com/gpu.workload.config".to_owned(),
            "vm-passthrough".to_owned(),
        );
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use kata_gpu_plan::host::CpuVendor;

    fn platform() -> Platform {
        Platform {
            kvm: true,
            iommu: false,
            iommufd: true,
            sev_snp: false,
            tdx: true,
            cmdline: "ro".to_owned(),
            cpu_vendor: CpuVendor::Intel,
        }
    }

    fn gpu(device: u16) -> Device {
        Device {
            function: PciFunction {
                bdf: "0000:41:00.0".parse().expect("bdf"),
                vendor: 0x10de,
                device,
                class: 0x030200,
                driver: Some("vfio-pci".to_owned()),
                iommu_group: Some(40),
                numa_node: None,
                bars: Ok(Vec::new()),
                pcie: true,
            },
            cdev: Some("vfio0".to_owned()),
            foreign: Vec::new(),
        }
    }

    #[test]
    fn labels_of_an_h100_an_h200_an_a100_and_a_host_without_snp() {
        let snp = Platform {
            iommu: true,
            sev_snp: true,
            tdx: false,
            cpu_vendor: CpuVendor::Amd,
            ..platform()
        };
        let h100 = labels(&snp, &[gpu(0x2331)]);
        assert_eq!(
            h100.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
            [
                "feature.node.kubernetes.io/cpu-security.sev.snp.enabled=true",
                "feature.node.kubernetes.io/kata-gpu.snp-hopper=true",
                "nvidia.com/cc.capable=true",
                "nvidia.com/gpu.workload.config=vm-passthrough",
            ]
        );
        assert_eq!(
            labels(&snp, &[gpu(0x20b5)])["nvidia.com/cc.capable"],
            "false"
        );
        // The H200 SXM is CC-capable (NVIDIA's list; issue 27 item 11).
        assert_eq!(
            labels(&snp, &[gpu(0x2335)])["nvidia.com/cc.capable"],
            "true"
        );
        let no_snp = Platform {
            sev_snp: false,
            tdx: false,
            ..snp
        };
        assert_eq!(
            labels(&no_snp, &[gpu(0x2331)]),
            BTreeMap::from([
                ("nvidia.com/cc.capable".to_owned(), "false".to_owned()),
                (
                    "nvidia.com/gpu.workload.config".to_owned(),
                    "vm-passthrough".to_owned()
                ),
            ])
        );
    }

    fn status() -> Status {
        Status {
            handler: "kata-qemu-nvidia-gpu-snp".to_owned(),
            installed: true,
            verified: Some(true),
            registered: true,
            loaded: Some(true),
            restart_pending: false,
            shim: Some("containerd-shim-kata-qemu-nvidia-gpu-snp-v2 0.1.0".to_owned()),
            kata_shim: true,
            device_source: Some("kubelet".to_owned()),
            kata_runtime: Some("go".to_owned()),
            details: vec![
                "artifacts: current set v1".to_owned(),
                "containerd: registered in place in /etc/containerd/config.toml".to_owned(),
            ],
            probes: Default::default(),
        }
    }

    #[test]
    fn iommu_hint_follows_the_cpu_vendor_and_the_command_line() {
        // (vendor, command line, the fix)
        let table = [
            (
                CpuVendor::Intel,
                "ro",
                "add intel_iommu=on to the kernel command line and reboot (and enable VT-d in \
                 the firmware setup) (now: ro)",
            ),
            (
                CpuVendor::Amd,
                "ro",
                "enable the IOMMU (AMD-Vi) in the firmware setup and reboot; the kernel turns \
                 it on by itself, no parameter is needed (now: ro)",
            ),
            (
                CpuVendor::Amd,
                "ro amd_iommu=off",
                "remove amd_iommu=off from the kernel command line and reboot (now: ro \
                 amd_iommu=off)",
            ),
            (
                CpuVendor::Intel,
                "ro iommu=off",
                "remove iommu=off from the kernel command line, add intel_iommu=on, and \
                 reboot (now: ro iommu=off)",
            ),
        ];
        for (cpu_vendor, cmdline, fix) in table {
            let p = Platform {
                cpu_vendor,
                cmdline: cmdline.to_owned(),
                ..platform()
            };
            let c = iommu(&p);
            assert_eq!(c.verdict, Verdict::Fail);
            assert_eq!(c.fix.as_deref(), Some(fix), "{cpu_vendor} {cmdline}");
        }
        assert_eq!(tee(Profile::Tdx, &platform()).verdict, Verdict::Ok);
        assert_eq!(tee(Profile::Snp, &platform()).verdict, Verdict::Fail);
    }

    #[test]
    fn registration_verdicts() {
        let s = status();
        let checks = registration(Profile::Snp, Ok(&s));
        assert!(
            checks.iter().all(|c| c.verdict == Verdict::Ok),
            "{checks:?}"
        );
        assert_eq!(checks[1].detail, "current set v1, verified");

        let s = Status {
            restart_pending: true,
            ..status()
        };
        assert_eq!(registration(Profile::Snp, Ok(&s))[0].verdict, Verdict::Fail);
        let s = Status {
            loaded: None,
            ..status()
        };
        assert_eq!(registration(Profile::Snp, Ok(&s))[0].verdict, Verdict::Warn);
        let s = Status {
            verified: Some(false),
            ..status()
        };
        assert_eq!(registration(Profile::Snp, Ok(&s))[1].verdict, Verdict::Fail);
        let failed = registration(Profile::Snp, Err("broken state".to_owned()));
        assert!(failed.iter().all(|c| c.verdict == Verdict::Fail));
    }

    #[test]
    fn cdi_consistency() {
        let node = |p: &str| vec![p.to_owned()];
        let expected = BTreeMap::from([(
            "nvidia.com/pgpu=0".to_owned(),
            node("/dev/vfio/devices/vfio0"),
        )]);
        assert_eq!(cdi(&expected, &expected, &[]).verdict, Verdict::Ok);
        let moved = BTreeMap::from([("nvidia.com/pgpu=0".to_owned(), node("/dev/vfio/40"))]);
        let c = cdi(&expected, &moved, &[]);
        assert_eq!(c.verdict, Verdict::Fail);
        assert_eq!(c.detail, "different device nodes for nvidia.com/pgpu=0");
        let c = cdi(&expected, &expected, &["x.yaml: skipped".to_owned()]);
        assert_eq!(c.verdict, Verdict::Warn);
    }

    #[test]
    fn the_base_config_and_the_shim_settings_must_name_one_kata_runtime() {
        let go = kata_gpu_configs::template("snp")
            .expect("template")
            .to_owned();
        let rs = kata_gpu_configs::template_for("snp", KataRuntime::Rs)
            .expect("template")
            .to_owned();
        let config = |text: &str| Some(("/c.toml".to_owned(), text.to_owned()));
        let check = |text: &str, to| kata_runtime(Profile::Snp, config(text), Some(to));
        let mixed = check(&go, KataRuntime::Rs).expect("a check");
        assert_eq!(mixed.verdict, Verdict::Fail);
        assert!(
            mixed
                .detail
                .starts_with("/c.toml: agent.kata.dial_timeout is a key of Kata's Go runtime's"),
            "{mixed}"
        );
        assert_eq!(
            mixed.fix.as_deref(),
            Some("make them agree: kata-gpu install --profile snp --kata-runtime go (or install a base config of Kata's Rust runtime (runtime-rs))")
        );
        let mixed = check(&rs, KataRuntime::Go).expect("a check");
        assert_eq!(mixed.verdict, Verdict::Fail);
        assert!(mixed.detail.contains("dial_timeout_ms"), "{mixed}");
        for (text, to) in [(&go, KataRuntime::Go), (&rs, KataRuntime::Rs)] {
            assert_eq!(check(text, to).expect("a check").verdict, Verdict::Ok);
        }
        assert_eq!(
            check("[hypervisor.qemu]\n", KataRuntime::Rs).map(|c| c.verdict),
            Some(Verdict::Ok)
        );
        // No base config, or a downstream that is no Kata (runc): nothing to compare.
        assert!(kata_runtime(Profile::Snp, None, Some(KataRuntime::Go)).is_none());
        assert!(kata_runtime(Profile::Snp, config(&go), None).is_none());
    }

    #[test]
    fn display_has_the_fix() {
        let c = fail("kvm", "/dev/kvm missing", "load kvm_amd");
        assert_eq!(
            c.to_string(),
            "FAIL  kvm: /dev/kvm missing — fix: load kvm_amd"
        );
        assert_eq!(
            ok("kvm", "/dev/kvm present").to_string(),
            "ok    kvm: /dev/kvm present"
        );
    }
}
