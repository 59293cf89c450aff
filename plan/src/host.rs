//! The host as the shim sees it: PCI functions, IOMMU groups, VFIO device nodes and the
//! platform's virtualization features, all read through a root directory so that tests
//! (and `kata-gpu --host-root`) run against simulated hosts. Read-only.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

mod iommu;

pub use iommu::{iommu_fix, iommu_off_params, CpuVendor};

/// A PCI address, `domain:bus:device.function` (`0000:41:00.0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// PCI segment.
    pub domain: u32,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0 to 31.
    pub device: u8,
    /// Function number, 0 to 7.
    pub function: u8,
}

/// Text that is not a PCI address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a PCI address of the form 0000:41:00.0")]
pub struct BadBdf(pub String);

impl FromStr for Bdf {
    type Err = BadBdf;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadBdf(s.to_owned());
        let (domain, rest) = s.split_once(':').ok_or_else(bad)?;
        let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
        let (device, function) = rest.split_once('.').ok_or_else(bad)?;
        let hex = |t: &str, len: usize| {
            (t.len() == len && t.chars().all(|c| c.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(t, 16).ok())
                .flatten()
        };
        let bdf = Bdf {
            domain: hex(domain, 4).ok_or_else(bad)?,
            bus: hex(bus, 2)
                .and_then(|v| u8::try_from(v).ok())
                .ok_or_else(bad)?,
            device: hex(device, 2)
                .and_then(|v| u8::try_from(v).ok())
                .ok_or_else(bad)?,
            function: hex(function, 1)
                .and_then(|v| u8::try_from(v).ok())
                .ok_or_else(bad)?,
        };
        if bdf.device > 31 || bdf.function > 7 {
            return Err(bad());
        }
        Ok(bdf)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// One memory or I/O region of a function, from its `resource` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// The BAR index (0 to 5; 6 is the expansion ROM).
    pub index: usize,
    /// Size in bytes.
    pub size: u64,
    /// The kernel's resource flags (`IORESOURCE_*`).
    pub flags: u64,
}

impl Bar {
    /// Whether the region is 64-bit prefetchable memory (`IORESOURCE_PREFETCH | MEM_64`).
    pub fn is_prefetchable_64(&self) -> bool {
        const PREFETCH: u64 = 0x2000;
        const MEM_64: u64 = 0x0010_0000;
        self.flags & PREFETCH != 0 && self.flags & MEM_64 != 0
    }
}

/// PCI vendor id of NVIDIA.
pub const NVIDIA: u16 = 0x10de;

/// What the host knows of one PCI function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciFunction {
    /// Its address.
    pub bdf: Bdf,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Class code, 24 bits (`0x030200` for a 3D controller).
    pub class: u32,
    /// The bound driver, if any.
    pub driver: Option<String>,
    /// Its IOMMU group, when the IOMMU is on.
    pub iommu_group: Option<u32>,
    /// NUMA node, when the platform reports one.
    pub numa_node: Option<u32>,
    /// Non-empty regions, from the `resource` file; `Err` with why it could not be read
    /// (missing, unreadable), so that a plan can refuse rather than size a root port blind.
    pub bars: Result<Vec<Bar>, String>,
    /// PCI Express (extended config space) rather than conventional PCI.
    pub pcie: bool,
}

impl PciFunction {
    /// Host and PCI-to-PCI bridges: class exactly 0x0600 or 0x0604. They stay on the
    /// host when their group passes through; everything else in a group goes with it.
    pub fn is_bridge(&self) -> bool {
        matches!(self.class >> 8, 0x0600 | 0x0604)
    }

    /// An NVIDIA display or 3D controller (class 0x03xx).
    pub fn is_nvidia_gpu(&self) -> bool {
        self.vendor == NVIDIA && self.class >> 16 == 0x03
    }

    /// An NVIDIA NVSwitch (bridge class 0x0680, "other bridge").
    pub fn is_nvswitch(&self) -> bool {
        self.vendor == NVIDIA && self.class >> 8 == 0x0680
    }

    /// `vendor:device` as lspci prints it (`10de:2331`).
    pub fn id(&self) -> String {
        format!("{:04x}:{:04x}", self.vendor, self.device)
    }
}

/// A VFIO device node named in a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VfioNode {
    /// `/dev/vfio/<group>`: the legacy group interface.
    Group(u32),
    /// `/dev/vfio/devices/vfioN`: an iommufd character device, bound to one function.
    Cdev {
        /// `vfioN`.
        name: String,
        /// The function behind it.
        bdf: Bdf,
    },
}

/// Virtualization facts of the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `/dev/kvm` exists.
    pub kvm: bool,
    /// The IOMMU is on (`/sys/kernel/iommu_groups` has groups).
    pub iommu: bool,
    /// `/dev/iommu` exists (iommufd).
    pub iommufd: bool,
    /// KVM offers SEV-SNP guests (`/sys/module/kvm_amd/parameters/sev_snp`).
    pub sev_snp: bool,
    /// KVM offers TDX guests (`/sys/module/kvm_intel/parameters/tdx`).
    pub tdx: bool,
    /// The kernel command line.
    pub cmdline: String,
    /// The CPU's maker: how the IOMMU is turned on depends on it.
    pub cpu_vendor: CpuVendor,
}

impl Platform {
    /// How to turn the IOMMU on here (see [`iommu_fix`]).
    pub fn iommu_fix(&self) -> String {
        iommu_fix(self.cpu_vendor, &self.cmdline)
    }
}

/// Why the host could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A file or link could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The path, under the root.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A sysfs value has the wrong shape.
    #[error("{}: {value:?} is not {expected}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Its content.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// No such PCI function.
    #[error("PCI device {0} is not present in /sys/bus/pci/devices")]
    NoSuchDevice(Bdf),
    /// A path that is not a VFIO device node.
    #[error(
        "{0} is not a VFIO device node (expected /dev/vfio/<group> or /dev/vfio/devices/vfioN)"
    )]
    NotVfio(String),
    /// An iommufd node whose function cannot be found.
    #[error("{path}: no PCI function found behind {name} (checked /sys/class/vfio-dev/{name}/device and /sys/dev/char)")]
    UnknownCdev {
        /// The node.
        path: String,
        /// `vfioN`.
        name: String,
    },
}

/// The host, read through `root`.
#[derive(Clone, Debug)]
pub struct Host {
    root: PathBuf,
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> HostError + '_ {
    move |source| HostError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn read_trimmed(path: &Path) -> Result<String, HostError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(read_err(path))
}

fn parse_hex(path: &Path, expected: &'static str) -> Result<u64, HostError> {
    let text = read_trimmed(path)?;
    let digits = text.strip_prefix("0x").unwrap_or(&text);
    u64::from_str_radix(digits, 16).map_err(|_| HostError::Parse {
        path: path.to_path_buf(),
        value: text.clone(),
        expected,
    })
}

/// The last component of a symlink's target (`.../drivers/vfio-pci` → `vfio-pci`).
fn link_name(path: &Path) -> Option<String> {
    fs::read_link(path)
        .ok()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

fn flag(path: &Path) -> bool {
    fs::read_to_string(path)
        .map(|v| matches!(v.trim(), "Y" | "y" | "1"))
        .unwrap_or(false)
}

impl Host {
    /// The host whose `/` is `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// An absolute host path under the root.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    fn pci_dir(&self, bdf: Bdf) -> PathBuf {
        self.path("/sys/bus/pci/devices").join(bdf.to_string())
    }

    /// Reads one PCI function.
    pub fn pci_function(&self, bdf: Bdf) -> Result<PciFunction, HostError> {
        let dir = self.pci_dir(bdf);
        if !dir.exists() {
            return Err(HostError::NoSuchDevice(bdf));
        }
        let id = |name: &str| -> Result<u16, HostError> {
            let p = dir.join(name);
            let v = parse_hex(&p, "a 16-bit hex id")?;
            u16::try_from(v).map_err(|_| HostError::Parse {
                path: p,
                value: format!("{v:#x}"),
                expected: "a 16-bit hex id",
            })
        };
        let class_path = dir.join("class");
        let class =
            u32::try_from(parse_hex(&class_path, "a 24-bit class code")?).map_err(|_| {
                HostError::Parse {
                    path: class_path.clone(),
                    value: String::new(),
                    expected: "a 24-bit class code",
                }
            })?;
        let iommu_group = match link_name(&dir.join("iommu_group")) {
            Some(n) => Some(n.parse().map_err(|_| HostError::Parse {
                path: dir.join("iommu_group"),
                value: n,
                expected: "an IOMMU group number",
            })?),
            None => None,
        };
        let numa_node = fs::read_to_string(dir.join("numa_node"))
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .and_then(|n| u32::try_from(n).ok());
        let config_len = fs::metadata(dir.join("config"))
            .map(|m| m.len())
            .unwrap_or(0);
        Ok(PciFunction {
            bdf,
            vendor: id("vendor")?,
            device: id("device")?,
            class,
            driver: link_name(&dir.join("driver")),
            iommu_group,
            numa_node,
            bars: self.bars(&dir.join("resource"))?,
            pcie: config_len > 256,
        })
    }

    /// The BARs in `path`; the outer `Err` for a file with the wrong shape, the inner one
    /// for a file that cannot be read.
    fn bars(&self, path: &Path) -> Result<Result<Vec<Bar>, String>, HostError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let mut bars = Vec::new();
        for (index, line) in text.lines().enumerate().take(7) {
            let fields: Vec<u64> = line
                .split_whitespace()
                .map(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16))
                .collect::<Result<_, _>>()
                .map_err(|_| HostError::Parse {
                    path: path.to_path_buf(),
                    value: line.to_owned(),
                    expected: "three hex numbers: start end flags",
                })?;
            if let [start, end, flags] = fields[..] {
                if end > start {
                    bars.push(Bar {
                        index,
                        size: end - start + 1,
                        flags,
                    });
                }
            }
        }
        Ok(Ok(bars))
    }

    /// The IOMMU group of a function (one readlink), `None` when it has none.
    pub fn iommu_group_of(&self, bdf: Bdf) -> Result<Option<u32>, HostError> {
        let dir = self.pci_dir(bdf);
        if !dir.exists() {
            return Err(HostError::NoSuchDevice(bdf));
        }
        Ok(link_name(&dir.join("iommu_group")).and_then(|n| n.parse().ok()))
    }

    /// Every PCI function, sorted by address.
    pub fn pci_functions(&self) -> Result<Vec<PciFunction>, HostError> {
        self.bdfs()?
            .into_iter()
            .map(|b| self.pci_function(b))
            .collect()
    }

    /// Every function's address, sorted.
    fn bdfs(&self) -> Result<Vec<Bdf>, HostError> {
        let dir = self.path("/sys/bus/pci/devices");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(read_err(&dir)(e)),
        };
        let mut bdfs: Vec<Bdf> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        bdfs.sort();
        Ok(bdfs)
    }

    /// Every function's vendor id and class code, and nothing else: what counting a
    /// board's GPUs and NVSwitches needs (a function whose files cannot be read is left out).
    pub fn pci_classes(&self) -> Result<Vec<(u16, u32)>, HostError> {
        Ok(self
            .bdfs()?
            .into_iter()
            .filter_map(|b| {
                let dir = self.pci_dir(b);
                let vendor = parse_hex(&dir.join("vendor"), "a 16-bit hex id").ok()?;
                let class = parse_hex(&dir.join("class"), "a 24-bit class code").ok()?;
                Some((u16::try_from(vendor).ok()?, u32::try_from(class).ok()?))
            })
            .collect())
    }

    /// The functions of an IOMMU group, sorted by address.
    pub fn iommu_group_members(&self, group: u32) -> Result<Vec<Bdf>, HostError> {
        let dir = self.path(&format!("/sys/kernel/iommu_groups/{group}/devices"));
        let mut members: Vec<Bdf> = fs::read_dir(&dir)
            .map_err(read_err(&dir))?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        members.sort();
        Ok(members)
    }

    /// The iommufd character device of a function bound to vfio-pci, as (`vfioN`, `maj:min`).
    pub fn vfio_cdev(&self, bdf: Bdf) -> Option<(String, String)> {
        let dir = self.pci_dir(bdf).join("vfio-dev");
        let name = fs::read_dir(dir.clone())
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .find(|n| n.starts_with("vfio"))?;
        let dev = read_trimmed(&dir.join(&name).join("dev")).ok()?;
        Some((name, dev))
    }

    /// What a VFIO device node path in a spec stands for.
    pub fn vfio_node(&self, path: &str) -> Result<VfioNode, HostError> {
        let not_vfio = || HostError::NotVfio(path.to_owned());
        if let Some(name) = path.strip_prefix("/dev/vfio/devices/") {
            let ok = name
                .strip_prefix("vfio")
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            if !ok {
                return Err(not_vfio());
            }
            return self.cdev_function(path, name);
        }
        match path.strip_prefix("/dev/vfio/") {
            Some(group) if !group.is_empty() && group.chars().all(|c| c.is_ascii_digit()) => {
                group.parse().map(VfioNode::Group).map_err(|_| not_vfio())
            }
            _ => Err(not_vfio()),
        }
    }

    fn cdev_function(&self, path: &str, name: &str) -> Result<VfioNode, HostError> {
        let unknown = || HostError::UnknownCdev {
            path: path.to_owned(),
            name: name.to_owned(),
        };
        let by_class = self.path(&format!("/sys/class/vfio-dev/{name}/device"));
        let by_dev = || {
            use std::os::unix::fs::MetadataExt;
            let meta = fs::metadata(self.path(path)).ok()?;
            let (major, minor) = cdi::inject::split_dev(meta.rdev());
            let link = self.path(&format!("/sys/dev/char/{major}:{minor}/device"));
            fs::canonicalize(link).ok()
        };
        let target = fs::canonicalize(&by_class)
            .ok()
            .or_else(by_dev)
            .ok_or_else(unknown)?;
        let bdf = target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .ok_or_else(unknown)?;
        Ok(VfioNode::Cdev {
            name: name.to_owned(),
            bdf,
        })
    }

    /// The platform's virtualization facts.
    pub fn platform(&self) -> Platform {
        let groups = self.path("/sys/kernel/iommu_groups");
        Platform {
            kvm: self.path("/dev/kvm").exists(),
            iommu: fs::read_dir(groups).is_ok_and(|mut d| d.next().is_some()),
            iommufd: self.path("/dev/iommu").exists(),
            sev_snp: flag(&self.path("/sys/module/kvm_amd/parameters/sev_snp")),
            tdx: flag(&self.path("/sys/module/kvm_intel/parameters/tdx")),
            cmdline: read_trimmed(&self.path("/proc/cmdline")).unwrap_or_default(),
            cpu_vendor: fs::read_to_string(self.path("/proc/cpuinfo"))
                .map_or(CpuVendor::Unknown, |t| CpuVendor::from_cpuinfo(&t)),
        }
    }
}

/// What the host's `/proc` says of its CPUs and memory: what Kata sizes a VM from, and the
/// physical address width a guest can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuMemory {
    /// Processors listed in `/proc/cpuinfo` (at least 1).
    pub cpus: u32,
    /// `address sizes : N bits physical` of `/proc/cpuinfo`, if it says.
    pub phys_bits: Option<u8>,
    /// `MemTotal` of `/proc/meminfo`, MiB, if it says.
    pub memory_mib: Option<u64>,
}

impl CpuMemory {
    /// Reads the texts of `/proc/cpuinfo` and `/proc/meminfo`.
    pub fn parse(cpuinfo: &str, meminfo: &str) -> Self {
        let field = |line: &str, key: &str| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        };
        let cpus = cpuinfo
            .lines()
            .filter(|l| field(l, "processor").is_some())
            .count();
        let phys_bits = cpuinfo
            .lines()
            .find_map(|l| field(l, "address sizes"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok());
        let memory_mib = meminfo
            .lines()
            .find_map(|l| field(l, "MemTotal"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib / 1024);
        Self {
            cpus: u32::try_from(cpus).unwrap_or(u32::MAX).max(1),
            phys_bits,
            memory_mib,
        }
    }
}

impl Host {
    /// The host's CPUs, address width and memory, from `/proc` under the root.
    pub fn cpu_memory(&self) -> CpuMemory {
        let read = |p: &str| fs::read_to_string(self.path(p)).unwrap_or_default();
        CpuMemory::parse(&read("/proc/cpuinfo"), &read("/proc/meminfo"))
    }
}

/// The SEV C-bit position of this CPU: CPUID leaf 0x8000001F, EBX bits 5:0. `None` on
/// CPUs without the leaf (no SEV) and on other architectures.
pub fn cpu_cbitpos() -> Option<u8> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        let max_ext = __cpuid(0x8000_0000).eax;
        if max_ext < 0x8000_001f {
            return None;
        }
        let ebx = __cpuid(0x8000_001f).ebx;
        let pos = (ebx & 0x3f) as u8;
        (pos != 0).then_some(pos)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory_come_from_proc() {
        let cpuinfo = "processor\t: 0\naddress sizes\t: 52 bits physical, 57 bits virtual\n\nprocessor\t: 1\n";
        let got = CpuMemory::parse(cpuinfo, "MemTotal:       25732096 kB\nMemFree: 1 kB\n");
        assert_eq!(
            got,
            CpuMemory {
                cpus: 2,
                phys_bits: Some(52),
                memory_mib: Some(25129)
            }
        );
        let none = CpuMemory::parse("", "");
        assert_eq!(
            (none.cpus, none.phys_bits, none.memory_mib),
            (1, None, None)
        );
    }

    #[test]
    fn bdfs_parse_and_print() {
        for ok in ["0000:41:00.0", "0001:ff:1f.7", "0000:05:00.1"] {
            let b: Bdf = ok.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(b.to_string(), ok);
        }
        for bad in [
            "",
            "41:00.0",
            "0000:41:00",
            "0000:41:20.0",
            "0000:41:00.8",
            "000g:41:00.0",
            "0000:041:00.0",
        ] {
            assert!(bad.parse::<Bdf>().is_err(), "{bad}");
        }
    }

    #[test]
    fn classes_sort_functions() {
        let f = |vendor, class| PciFunction {
            bdf: Bdf {
                domain: 0,
                bus: 0,
                device: 0,
                function: 0,
            },
            vendor,
            device: 0,
            class,
            driver: None,
            iommu_group: None,
            numa_node: None,
            bars: Ok(Vec::new()),
            pcie: true,
        };
        assert!(f(0x8086, 0x060400).is_bridge());
        assert!(f(0x8086, 0x060000).is_bridge());
        assert!(
            !f(NVIDIA, 0x068000).is_bridge(),
            "NVSwitch stays with its group"
        );
        assert!(f(NVIDIA, 0x068000).is_nvswitch());
        assert!(f(NVIDIA, 0x030200).is_nvidia_gpu());
        assert!(f(NVIDIA, 0x030000).is_nvidia_gpu());
        assert!(!f(NVIDIA, 0x040300).is_nvidia_gpu());
    }

    #[test]
    fn vfio_paths_are_recognised_or_refused() {
        let host = Host::new("/nonexistent-root");
        assert_eq!(
            host.vfio_node("/dev/vfio/40").ok(),
            Some(VfioNode::Group(40))
        );
        for bad in [
            "/dev/vfio/vfio",
            "/dev/nvidia0",
            "/dev/vfio/devices/vfio",
            "/dev/vfio/devices/x1",
            "/dev/vfio/4a",
        ] {
            assert!(
                matches!(host.vfio_node(bad), Err(HostError::NotVfio(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            host.vfio_node("/dev/vfio/devices/vfio3"),
            Err(HostError::UnknownCdev { .. })
        ));
    }
}
