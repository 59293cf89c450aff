//! Simulated GPU hosts: the sysfs and `/dev` entries the shim reads, laid out as a real
//! kernel lays them out (symlinked device directories, IOMMU groups, vfio-dev cdevs),
//! with real-looking addresses, classes, BAR sizes and drivers.
//!
//! Device nodes are plain files: the code under test resolves them through sysfs, and the
//! CDI specs it writes carry explicit major/minor numbers.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

mod devices;

/// How a host exposes VFIO devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VfioMode {
    /// `/dev/vfio/devices/vfioN` character devices (and the group nodes beside them).
    Iommufd,
    /// Only `/dev/vfio/<group>` nodes, as before Linux 6.6.
    Legacy,
}

/// One PCI function to lay out.
#[derive(Clone, Debug)]
pub struct Function {
    /// `0000:41:00.0`.
    pub bdf: String,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// 24-bit class code.
    pub class: u32,
    /// Bound driver.
    pub driver: Option<String>,
    /// IOMMU group.
    pub group: Option<u32>,
    /// NUMA node (-1 for none).
    pub numa: i32,
    /// (BAR index, size, resource flags).
    pub bars: Vec<(usize, u64, u64)>,
    /// Extended (PCIe) config space.
    pub pcie: bool,
}

/// Flags of a 32-bit non-prefetchable memory BAR.
pub const MEM32: u64 = 0x0004_0200;
/// Flags of a 64-bit prefetchable memory BAR.
pub const MEM64_PREFETCH: u64 = 0x0014_220c;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// Major number of the simulated iommufd cdevs.
pub const VFIO_CDEV_MAJOR: u32 = 237;
/// Major number of the simulated legacy group nodes.
pub const VFIO_GROUP_MAJOR: u32 = 243;

impl Function {
    /// An NVIDIA GPU bound to vfio-pci, with the BARs of a Hopper board.
    pub fn hopper(bdf: &str, device: u16, group: u32, numa: i32) -> Self {
        Self {
            bdf: bdf.to_owned(),
            vendor: 0x10de,
            device,
            class: 0x030200,
            driver: Some("vfio-pci".to_owned()),
            group: Some(group),
            numa,
            bars: vec![
                (0, 16 * MIB, MEM32),
                (1, 128 * GIB, MEM64_PREFETCH),
                (3, 32 * MIB, MEM64_PREFETCH),
            ],
            pcie: true,
        }
    }

    /// An NVIDIA NVSwitch (class 0x0680) bound to vfio-pci.
    pub fn nvswitch(bdf: &str, group: u32, numa: i32) -> Self {
        Self {
            bdf: bdf.to_owned(),
            vendor: 0x10de,
            device: 0x22a3,
            class: 0x068000,
            driver: Some("vfio-pci".to_owned()),
            group: Some(group),
            numa,
            bars: vec![(0, 32 * MIB, MEM32)],
            pcie: true,
        }
    }
}

/// A simulated host under a temp root; removed on drop.
pub struct SimHost {
    dir: tempfile::TempDir,
    next_cdev: u32,
    next_group_minor: u32,
    /// (driver, bdf) pairs whose probe fails, for [`SimHost::kernel_write`].
    refusals: Mutex<Vec<(String, String)>>,
    /// Functions whose unbind does not finish: (bdf, the process that opens it meanwhile).
    stalls: Mutex<Vec<(String, Holder)>>,
}

/// A process holding a device node open: (pid, comm, node).
type Holder = (u32, String, String);

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir in simulated host");
    }
    fs::write(path, text).expect("write in simulated host");
}

fn link(target: &str, at: &Path) {
    if let Some(parent) = at.parent() {
        fs::create_dir_all(parent).expect("mkdir in simulated host");
    }
    let _ = fs::remove_file(at);
    symlink(target, at).expect("symlink in simulated host");
}

/// Where the kernel puts a function's directory: `sys/devices/pci<domain>:<bus>/<bdf>`.
fn real_dir(bdf: &str) -> String {
    format!("sys/devices/pci{}:{}/{bdf}", &bdf[..4], &bdf[5..7])
}

impl Default for SimHost {
    fn default() -> Self {
        Self::new()
    }
}

impl SimHost {
    /// An AMD EPYC host with KVM, the IOMMU and SEV-SNP on, and no PCI functions yet.
    pub fn new() -> Self {
        let host = Self {
            dir: tempfile::Builder::new()
                .prefix("simhost")
                .tempdir()
                .expect("tempdir for simulated host"),
            next_cdev: 0,
            next_group_minor: 0,
            refusals: Mutex::new(Vec::new()),
            stalls: Mutex::new(Vec::new()),
        };
        for d in [
            "sys/bus/pci/devices",
            "sys/kernel/iommu_groups",
            "sys/class/vfio-dev",
            "dev/vfio",
            "etc/cdi",
            "var/run/cdi",
        ] {
            fs::create_dir_all(host.path(d)).expect("mkdir simulated host");
        }
        write(&host.path("dev/kvm"), "");
        write(&host.path("dev/iommu"), "");
        write(&host.path("dev/vfio/vfio"), "");
        // The AMD IOMMU is on by default: no `amd_iommu=` (it has no `on` value).
        write(
            &host.path("proc/cmdline"),
            "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro iommu=pt mem_encrypt=on kvm_amd.sev=1\n",
        );
        host.set_cpu("AuthenticAMD", "AMD EPYC 9654 96-Core Processor");
        host.set_memory_mib(1024 * 1024);
        host.set_sev_snp(true);
        host
    }

    /// Keeps the tree on disk after the value is dropped; returns its root.
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }

    /// A preset by name, as the `simhost` tool and the demo name them.
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "h100" | "h100-iommufd" => Self::h100_pcie(VfioMode::Iommufd),
            "h100-legacy" => Self::h100_pcie(VfioMode::Legacy),
            "hgx" => Self::hgx_8x_h100(),
            "audio-bridge" => Self::gpu_with_audio_and_bridge(),
            "nvidia-bound" => Self::gpu_bound_to_nvidia(),
            "a100" => Self::a100(),
            "no-iommu" => Self::no_iommu(),
            "no-snp" => Self::no_snp(),
            "nvme-in-group" => Self::gpu_with_nvme_in_group(),
            "intel-no-iommu" => Self::intel_no_iommu(),
            "shared-group" => Self::two_gpus_in_one_group(VfioMode::Iommufd),
            _ => return None,
        })
    }

    /// The names [`SimHost::preset`] knows.
    pub const PRESETS: [&'static str; 11] = [
        "h100",
        "h100-legacy",
        "hgx",
        "audio-bridge",
        "nvidia-bound",
        "a100",
        "no-iommu",
        "no-snp",
        "nvme-in-group",
        "intel-no-iommu",
        "shared-group",
    ];

    /// The root directory (`--host-root`).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A path under the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel.trim_start_matches('/'))
    }

    /// Sets the CPU `/proc/cpuinfo` shows (`vendor_id`, `model name`), for one core with
    /// 52 physical address bits (EPYC Genoa's, and Sapphire Rapids').
    pub fn set_cpu(&self, vendor_id: &str, model: &str) {
        self.set_cpuinfo(&format!(
            "processor\t: 0\nvendor_id\t: {vendor_id}\nmodel name\t: {model}\naddress sizes\t: 52 bits physical, 57 bits virtual\n"
        ));
    }

    /// Replaces `/proc/cpuinfo` whole.
    pub fn set_cpuinfo(&self, text: &str) {
        write(&self.path("proc/cpuinfo"), text);
    }

    /// Sets the host's memory (`/proc/meminfo` MemTotal), MiB.
    pub fn set_memory_mib(&self, mib: u64) {
        write(
            &self.path("proc/meminfo"),
            &format!("MemTotal:       {} kB\n", mib * 1024),
        );
    }

    /// Replaces the kernel command line (`/proc/cmdline`).
    pub fn set_cmdline(&self, cmdline: &str) {
        write(&self.path("proc/cmdline"), &format!("{cmdline}\n"));
    }

    /// Turns KVM's SEV-SNP support on or off.
    pub fn set_sev_snp(&self, on: bool) {
        write(
            &self.path("sys/module/kvm_amd/parameters/sev_snp"),
            if on { "Y\n" } else { "N\n" },
        );
    }

    /// Turns KVM's TDX support on or off.
    pub fn set_tdx(&self, on: bool) {
        write(
            &self.path("sys/module/kvm_intel/parameters/tdx"),
            if on { "Y\n" } else { "N\n" },
        );
    }

    /// Lays out one PCI function.
    pub fn add(&mut self, f: &Function) -> &mut Self {
        let real = real_dir(&f.bdf);
        let dir = self.path(&real);
        fs::create_dir_all(&dir).expect("mkdir pci function");
        write(&dir.join("vendor"), &format!("0x{:04x}\n", f.vendor));
        write(&dir.join("device"), &format!("0x{:04x}\n", f.device));
        write(&dir.join("class"), &format!("0x{:06x}\n", f.class));
        write(&dir.join("numa_node"), &format!("{}\n", f.numa));
        let mut resource = String::new();
        let mut start: u64 = 0x3800_0000_0000;
        for index in 0..13 {
            match f.bars.iter().find(|(i, _, _)| *i == index) {
                Some((_, size, flags)) => {
                    resource.push_str(&format!(
                        "0x{start:016x} 0x{:016x} 0x{flags:016x}\n",
                        start + size - 1
                    ));
                    start += size;
                }
                None => {
                    resource.push_str("0x0000000000000000 0x0000000000000000 0x0000000000000000\n")
                }
            }
        }
        write(&dir.join("resource"), &resource);
        fs::write(
            dir.join("config"),
            vec![0u8; if f.pcie { 4096 } else { 256 }],
        )
        .expect("config space");
        if let Some(driver) = &f.driver {
            fs::create_dir_all(self.path(&format!("sys/bus/pci/drivers/{driver}")))
                .expect("mkdir driver");
            link(
                &format!("../../../bus/pci/drivers/{driver}"),
                &dir.join("driver"),
            );
        }
        if let Some(group) = f.group {
            let gdir = self.path(&format!("sys/kernel/iommu_groups/{group}/devices"));
            fs::create_dir_all(&gdir).expect("mkdir group");
            link(
                &format!("../../../kernel/iommu_groups/{group}"),
                &dir.join("iommu_group"),
            );
            link(
                &format!("../../../../devices/{}", &real["sys/devices/".len()..]),
                &gdir.join(&f.bdf),
            );
        }
        link(
            &format!("../../../{}", &real["sys/".len()..]),
            &self.path(&format!("sys/bus/pci/devices/{}", f.bdf)),
        );
        self
    }

    /// Exposes a vfio-pci function through VFIO: its group node, and in iommufd mode its
    /// `vfioN` cdev with the sysfs links the kernel makes. Returns the cdev name, if any.
    pub fn expose(&mut self, bdf: &str, group: u32, mode: VfioMode) -> Option<String> {
        let gnode = self.path(&format!("dev/vfio/{group}"));
        if !gnode.exists() {
            write(&gnode, "");
            write(
                &self.path(&format!("sys/class/vfio/{group}/dev")),
                &format!("{VFIO_GROUP_MAJOR}:{}\n", self.next_group_minor),
            );
            self.next_group_minor += 1;
        }
        if mode == VfioMode::Legacy {
            return None;
        }
        let n = self.next_cdev;
        self.next_cdev += 1;
        let name = format!("vfio{n}");
        let rel = format!("{}/vfio-dev/{name}", &real_dir(bdf)["sys/".len()..]);
        let cdev_dir = self.path("sys").join(&rel);
        assert!(
            cdev_dir
                .parent()
                .and_then(Path::parent)
                .is_some_and(Path::is_dir),
            "lay out {bdf} before exposing it"
        );
        write(&cdev_dir.join("dev"), &format!("{VFIO_CDEV_MAJOR}:{n}\n"));
        link(&format!("../../../{bdf}"), &cdev_dir.join("device"));
        link(
            &format!("../../{rel}"),
            &self.path(&format!("sys/class/vfio-dev/{name}")),
        );
        link(
            &format!("../../{rel}"),
            &self.path(&format!("sys/dev/char/{VFIO_CDEV_MAJOR}:{n}")),
        );
        write(&self.path(&format!("dev/vfio/devices/{name}")), "");
        Some(name)
    }

    /// Lays out a function and, when bound to vfio-pci, exposes it.
    pub fn add_exposed(&mut self, f: &Function, mode: VfioMode) -> &mut Self {
        self.add(f);
        if let (Some("vfio-pci"), Some(group)) = (f.driver.as_deref(), f.group) {
            self.expose(&f.bdf, group, mode);
        }
        self
    }

    /// One H100 PCIe (10de:2331) at 0000:41:00.0 in IOMMU group 40.
    pub fn h100_pcie(mode: VfioMode) -> Self {
        let mut host = Self::new();
        host.add_exposed(&Function::hopper("0000:41:00.0", 0x2331, 40, 0), mode);
        host
    }

    /// An HGX board: 8 H100 SXM (10de:2330) and 4 NVSwitches, each in its own group.
    pub fn hgx_8x_h100() -> Self {
        let mut host = Self::new();
        for (i, bus) in [0x05u8, 0x06, 0x07, 0x08].iter().enumerate() {
            host.add_exposed(
                &Function::nvswitch(&format!("0000:{bus:02x}:00.0"), 50 + i as u32, 0),
                VfioMode::Iommufd,
            );
        }
        for (i, bus) in [0x18u8, 0x2a, 0x3a, 0x5d, 0x9a, 0xab, 0xba, 0xdb]
            .iter()
            .enumerate()
        {
            let numa = if i < 4 { 0 } else { 1 };
            host.add_exposed(
                &Function::hopper(&format!("0000:{bus:02x}:00.0"), 0x2330, 30 + i as u32, numa),
                VfioMode::Iommufd,
            );
        }
        host
    }

    /// Two H100 PCIe (10de:2331) behind one switch without ACS: 0000:41:00.0 and
    /// 0000:42:00.0, both in IOMMU group 40, so neither passes through without the other.
    pub fn two_gpus_in_one_group(mode: VfioMode) -> Self {
        let mut host = Self::new();
        host.add_exposed(&Function::hopper("0000:41:00.0", 0x2331, 40, 0), mode);
        host.add_exposed(&Function::hopper("0000:42:00.0", 0x2331, 40, 0), mode);
        host
    }

    /// An H100 PCIe whose group 40 also holds its audio function and the PCI bridge above it.
    pub fn gpu_with_audio_and_bridge() -> Self {
        let mut host = Self::new();
        host.add(&Function {
            bdf: "0000:40:01.1".to_owned(),
            vendor: 0x1022,
            device: 0x14ab,
            class: 0x060400,
            driver: Some("pcieport".to_owned()),
            group: Some(40),
            numa: 0,
            bars: vec![],
            pcie: true,
        });
        host.add_exposed(
            &Function::hopper("0000:41:00.0", 0x2331, 40, 0),
            VfioMode::Iommufd,
        );
        host.add_exposed(
            &Function {
                bdf: "0000:41:00.1".to_owned(),
                vendor: 0x10de,
                device: 0x22ba,
                class: 0x040300,
                driver: Some("vfio-pci".to_owned()),
                group: Some(40),
                numa: 0,
                bars: vec![(0, 16 * 1024, MEM32)],
                pcie: true,
            },
            VfioMode::Iommufd,
        );
        host
    }

    /// An H100 PCIe (0000:41:00.0, group 40) and an NVSwitch (0000:42:00.0) in legacy VFIO
    /// groups only: the switch in group 40 with the GPU when `shared`, else alone in 41.
    pub fn legacy_gpu_and_nvswitch(shared: bool) -> Self {
        let mut host = Self::new();
        host.add_exposed(
            &Function::hopper("0000:41:00.0", 0x2331, 40, 0),
            VfioMode::Legacy,
        );
        host.add_exposed(
            &Function::nvswitch("0000:42:00.0", if shared { 40 } else { 41 }, 0),
            VfioMode::Legacy,
        );
        host
    }

    /// An H100 PCIe still bound to the `nvidia` driver (no VFIO nodes).
    pub fn gpu_bound_to_nvidia() -> Self {
        let mut host = Self::new();
        let mut gpu = Function::hopper("0000:41:00.0", 0x2331, 40, 0);
        gpu.driver = Some("nvidia".to_owned());
        host.add_exposed(&gpu, VfioMode::Iommufd);
        host
    }

    /// An A100 80GB PCIe (10de:20b5), not on the CC-capable list (Ampere has no CC mode).
    pub fn a100() -> Self {
        let mut host = Self::new();
        host.add_exposed(
            &Function::hopper("0000:41:00.0", 0x20b5, 40, 0),
            VfioMode::Iommufd,
        );
        host
    }

    /// An H100 PCIe on a host booted without the IOMMU: no groups, no VFIO nodes.
    pub fn no_iommu() -> Self {
        let mut host = Self::new();
        let mut gpu = Function::hopper("0000:41:00.0", 0x2331, 40, 0);
        gpu.group = None;
        gpu.driver = None;
        host.add(&gpu);
        fs::remove_file(host.path("dev/iommu")).expect("rm /dev/iommu");
        write(
            &host.path("proc/cmdline"),
            "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro\n",
        );
        host
    }

    /// The [`SimHost::no_iommu`] host with an Intel Xeon and KVM offering TDX: VT-d is off
    /// by default there, and the command line does not turn it on.
    pub fn intel_no_iommu() -> Self {
        let host = Self::no_iommu();
        host.set_cpu("GenuineIntel", "Intel(R) Xeon(R) Platinum 8480+");
        host.set_sev_snp(false);
        host.set_tdx(true);
        host
    }

    /// An H100 PCIe in iommufd mode on a host whose KVM offers no SEV-SNP.
    pub fn no_snp() -> Self {
        let host = Self::h100_pcie(VfioMode::Iommufd);
        host.set_sev_snp(false);
        host
    }
}

impl SimHost {
    /// Writes `specs` into `/var/run/cdi`, where `kata-gpu cdi generate` writes the host's
    /// own specs (the fixture cannot build them itself: the plan crate's tests use it).
    pub fn write_specs(&self, specs: &[cdi::model::Spec]) {
        for spec in specs {
            cdi::write_spec(&self.path("var/run/cdi"), spec).expect("write host spec");
        }
    }

    /// The host's CDI registry (the spec files are the test's own, so not root-owned).
    pub fn registry(&self) -> cdi::Registry {
        cdi::Registry::new(cdi::RegistryConfig {
            require_root_owned: false,
            ..cdi::RegistryConfig::under_root(self.root())
        })
    }
}

impl SimHost {
    /// Moves a function to another driver (or none), as the kernel does after a bind,
    /// unbind or `drivers_probe`: relinks `<function>/driver`. The simulated kernel never
    /// does this by itself, so tests of `kata-gpu vfio` call it to model the kernel.
    pub fn set_driver(&self, bdf: &str, driver: Option<&str>) {
        let at = self.path(&real_dir(bdf)).join("driver");
        let _ = fs::remove_file(&at);
        if let Some(driver) = driver {
            fs::create_dir_all(self.path(&format!("sys/bus/pci/drivers/{driver}")))
                .expect("mkdir driver");
            link(&format!("../../../bus/pci/drivers/{driver}"), &at);
        }
    }
}

impl SimHost {
    /// Has process `pid` (command name `comm`) hold `dev` (a host path such as
    /// `/dev/nvidia0`) open, as `/proc/<pid>/fd/<n>` shows it: a symlink to the node, on the
    /// next free descriptor from 3. What `kata-gpu vfio` looks for before it moves a device.
    pub fn hold_open(&self, pid: u32, comm: &str, dev: &str) {
        write(
            &self.path(&format!("proc/{pid}/comm")),
            &format!("{comm}\n"),
        );
        let fds = self.path(&format!("proc/{pid}/fd"));
        fs::create_dir_all(&fds).expect("mkdir in simulated host");
        let fd = (3..)
            .find(|n| fds.join(n.to_string()).symlink_metadata().is_err())
            .expect("a free descriptor");
        link(dev, &fds.join(fd.to_string()));
    }
}

/// Linux's errno for a device no driver matches, or one not bound to the driver named.
const ENODEV: i32 = 19;
/// Linux's errno for binding a device that already has a driver.
const EBUSY: i32 = 16;

/// What a write to a PCI sysfs attribute asks the kernel to do.
enum KernelAction {
    /// `drivers_probe`: find the device a driver.
    Probe,
    /// `drivers/<driver>/bind`.
    Bind(String),
    /// `drivers/<driver>/unbind`, also reached as `devices/<bdf>/driver/unbind`.
    Unbind(String),
    /// Any other attribute (`driver_override`): stored, nothing moves.
    Store,
    /// `devices/<bdf>/driver/unbind` of a function without a driver: no such file.
    Missing,
}

impl SimHost {
    /// Has `driver` refuse `bdf` from now on, as a driver whose probe fails does: binding
    /// it there fails and `drivers_probe` leaves the function without a driver. Models
    /// the faults `kata-gpu vfio` must survive (vfio-pci not loaded, a driver that will
    /// not take a device back).
    pub fn refuse(&self, driver: &str, bdf: &str) {
        self.refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((driver.to_owned(), bdf.to_owned()));
    }

    /// Has the next unbind of `bdf` not finish: process `pid` (`comm`) opens `dev` just
    /// before it, as one that opens a GPU between `vfio bind`'s check and its unbind does,
    /// and the driver's remove waits for it. The write then fails with `TimedOut`, as
    /// `KernelSysfs` reports an unbind that outlasts its bound; the function stays on its
    /// driver.
    pub fn stall_unbind(&self, bdf: &str, pid: u32, comm: &str, dev: &str) {
        self.stalls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((bdf.to_owned(), (pid, comm.to_owned(), dev.to_owned())));
    }

    fn refuses(&self, driver: &str, bdf: &str) -> bool {
        self.refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|(d, b)| d == driver && b == bdf)
    }

    /// The driver `bdf` is bound to, read from its `driver` link as the code under test
    /// reads it.
    pub fn driver(&self, bdf: &str) -> Option<String> {
        fs::read_link(self.path(&format!("sys/bus/pci/devices/{bdf}/driver")))
            .ok()?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    }

    /// The function's `driver_override`, `None` when unset (the kernel shows `(null)`).
    fn driver_override(&self, bdf: &str) -> Option<String> {
        let path = self.path(&format!("sys/bus/pci/devices/{bdf}/driver_override"));
        let text = fs::read_to_string(path).ok()?;
        let name = text.trim();
        (!name.is_empty() && name != "(null)").then(|| name.to_owned())
    }

    /// Writes `value` to the attribute at `path` (under the root) and does what the
    /// kernel does on that write, so that tests see devices move as on a real host:
    /// `drivers_probe` binds a driverless function to its `driver_override`,
    /// `drivers/<d>/bind` and `unbind` move it, with the kernel's errors (`ENODEV` when
    /// the driver does not match or refuses, `EBUSY` when the function has a driver). The
    /// value stays in the file, for tests to read what was written.
    pub fn kernel_write(&self, path: &Path, value: &str) -> io::Result<()> {
        let action = self.kernel_action(path);
        if let KernelAction::Missing = action {
            return Err(io::ErrorKind::NotFound.into());
        }
        fs::write(path, value)?;
        let bdf = value.trim();
        let no_device = || io::Error::from_raw_os_error(ENODEV);
        match action {
            KernelAction::Store | KernelAction::Missing => {}
            KernelAction::Probe => {
                if !self.path(&format!("sys/bus/pci/devices/{bdf}")).exists() {
                    return Err(no_device());
                }
                if self.driver(bdf).is_none() {
                    if let Some(d) = self.driver_override(bdf) {
                        if !self.refuses(&d, bdf) {
                            self.set_driver(bdf, Some(&d));
                        }
                    }
                }
            }
            KernelAction::Bind(d) => {
                let matches = self.driver_override(bdf).is_none_or(|o| o == d);
                if !matches || self.refuses(&d, bdf) {
                    return Err(no_device());
                }
                if self.driver(bdf).is_some() {
                    return Err(io::Error::from_raw_os_error(EBUSY));
                }
                self.set_driver(bdf, Some(&d));
            }
            KernelAction::Unbind(d) => {
                if self.driver(bdf).as_deref() != Some(d.as_str()) {
                    return Err(no_device());
                }
                let stall = {
                    let mut stalls = self
                        .stalls
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let at = stalls.iter().position(|(b, _)| b == bdf);
                    at.map(|i| stalls.remove(i).1)
                };
                if let Some((pid, comm, dev)) = stall {
                    self.hold_open(pid, &comm, &dev);
                    return Err(io::ErrorKind::TimedOut.into());
                }
                self.set_driver(bdf, None);
            }
        }
        Ok(())
    }

    /// Which action a write to `path` asks for, resolving `devices/<bdf>/driver` to the
    /// driver it links to, as the kernel's path walk does.
    fn kernel_action(&self, path: &Path) -> KernelAction {
        let Ok(rel) = path.strip_prefix(self.root()) else {
            return KernelAction::Store;
        };
        let parts: Vec<_> = rel.iter().map(|p| p.to_string_lossy()).collect();
        let parts: Vec<&str> = parts.iter().map(AsRef::as_ref).collect();
        match parts.as_slice() {
            ["sys", "bus", "pci", "drivers_probe"] => KernelAction::Probe,
            ["sys", "bus", "pci", "drivers", d, "bind"] => KernelAction::Bind((*d).to_owned()),
            ["sys", "bus", "pci", "drivers", d, "unbind"] => KernelAction::Unbind((*d).to_owned()),
            ["sys", "bus", "pci", "devices", bdf, "driver", "unbind"] => self
                .driver(bdf)
                .map_or(KernelAction::Missing, KernelAction::Unbind),
            _ => KernelAction::Store,
        }
    }
}
