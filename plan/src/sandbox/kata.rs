//! The QEMU command line Kata 3.30's Go runtime launches for a sandbox, predicted from the
//! per-sandbox configuration and the host, argument for argument and in Kata's order.
//!
//! Kata builds the command line itself (`qemu.CreateVM`, `createPCIeTopology`, govmm's
//! `LaunchQemu`); nothing here adds to it. What the prediction follows was read in Kata's
//! code and is checked against that code run offline (`kata-qemu-args`, in
//! `tests/tests/kata_argv.rs`). The parts Kata draws at random each run are shown as
//! patterns ([`RANDOM_UUID`], [`random_hex`]); the pod's network devices, which Kata adds
//! after the vsock device, are not known when the sandbox is planned.

use super::sizing::{SANDBOX_CPU_PERIOD, SANDBOX_CPU_QUOTA, SANDBOX_MEMORY};
use super::PassthroughDevice;
use crate::profile::Tee;

/// The `-uuid` Kata draws at random for each VM.
pub const RANDOM_UUID: &str = "<random uuid>";

/// `<N random hex digits>`: an id Kata draws at random for each VM.
pub fn random_hex(digits: usize) -> String {
    format!("<{digits} random hex>")
}

/// The values of a Kata configuration that shape the QEMU command line, read from
/// `[hypervisor.qemu]`, `[agent.kata]` and `[runtime]`.
#[derive(Clone, Debug, PartialEq)]
pub struct KataValues {
    /// `path`: the QEMU binary.
    pub qemu_path: String,
    /// `kernel`.
    pub kernel: String,
    /// `image` (the guest root filesystem image).
    pub image: String,
    /// `firmware`.
    pub firmware: String,
    /// `machine_type`.
    pub machine_type: String,
    /// `cpu_features`, appended to the CPU model.
    pub cpu_features: String,
    /// `kernel_params`, appended to Kata's own.
    pub kernel_params: String,
    /// `default_vcpus` (a float in Kata).
    pub default_vcpus: f64,
    /// `default_maxvcpus`.
    pub default_maxvcpus: u32,
    /// `default_memory`, MiB.
    pub default_memory: u32,
    /// `memory_slots`.
    pub memory_slots: u32,
    /// `default_maxmemory`, MiB (0: the host's memory).
    pub default_maxmemory: u64,
    /// `memory_offset`, MiB, added to `maxmem`.
    pub memory_offset: u64,
    /// `default_bridges`.
    pub default_bridges: u32,
    /// `pcie_root_port`.
    pub pcie_root_port: u32,
    /// `confidential_guest`.
    pub confidential_guest: bool,
    /// `snp_guest_policy`.
    pub snp_guest_policy: u64,
    /// `tdx_quote_generation_service_socket_port`.
    pub tdx_quote_port: u32,
    /// `shared_fs`.
    pub shared_fs: String,
    /// `virtio_fs_queue_size`.
    pub virtio_fs_queue_size: u32,
    /// `entropy_source`.
    pub entropy_source: String,
    /// `rootfs_type`.
    pub rootfs_type: String,
    /// `[agent.kata] launch_process_timeout`, seconds.
    pub launch_process_timeout: u32,
    /// `[agent.kata] enable_debug`.
    pub agent_debug: bool,
    /// `[agent.kata] debug_console_enabled`.
    pub debug_console: bool,
    /// `[runtime] static_sandbox_resource_mgmt`.
    pub static_resources: bool,
    /// Settings this prediction does not follow, as `key = value`: where one is set, the
    /// command line shown may differ from Kata's.
    pub unmodeled: Vec<String>,
}

impl Default for KataValues {
    fn default() -> Self {
        Self {
            qemu_path: String::new(),
            kernel: String::new(),
            image: String::new(),
            firmware: String::new(),
            machine_type: "q35".to_owned(),
            cpu_features: String::new(),
            kernel_params: String::new(),
            default_vcpus: 1.0,
            default_maxvcpus: 0,
            default_memory: 2048,
            memory_slots: 10,
            default_maxmemory: 0,
            memory_offset: 0,
            default_bridges: 1,
            pcie_root_port: 0,
            confidential_guest: false,
            snp_guest_policy: 0x30000,
            tdx_quote_port: 4050,
            shared_fs: "none".to_owned(),
            virtio_fs_queue_size: 1024,
            entropy_source: "/dev/urandom".to_owned(),
            rootfs_type: "ext4".to_owned(),
            launch_process_timeout: 0,
            agent_debug: false,
            debug_console: false,
            static_resources: false,
            unmodeled: Vec::new(),
        }
    }
}

/// Settings that change Kata's command line in ways the prediction does not follow, with
/// the value that leaves it unchanged.
const UNMODELED: [(&[&str], Unchanged); 12] = [
    (
        &["hypervisor", "qemu", "machine_accelerators"],
        Unchanged::Str(""),
    ),
    (&["hypervisor", "qemu", "initrd"], Unchanged::Str("")),
    (
        &["hypervisor", "qemu", "enable_debug"],
        Unchanged::Bool(false),
    ),
    (
        &["hypervisor", "qemu", "enable_iommu"],
        Unchanged::Bool(false),
    ),
    (
        &["hypervisor", "qemu", "enable_hugepages"],
        Unchanged::Bool(false),
    ),
    (
        &["hypervisor", "qemu", "enable_virtio_mem"],
        Unchanged::Bool(false),
    ),
    (
        &["hypervisor", "qemu", "enable_numa"],
        Unchanged::Bool(false),
    ),
    (
        &["hypervisor", "qemu", "use_legacy_serial"],
        Unchanged::Bool(false),
    ),
    (
        &["hypervisor", "qemu", "disable_image_nvdimm"],
        Unchanged::Bool(true),
    ),
    (
        &["hypervisor", "qemu", "file_mem_backend"],
        Unchanged::Str(""),
    ),
    (
        &["hypervisor", "qemu", "firmware_volume"],
        Unchanged::Str(""),
    ),
    (&["agent", "kata", "enable_tracing"], Unchanged::Bool(false)),
];

#[derive(Clone, Copy)]
enum Unchanged {
    Bool(bool),
    Str(&'static str),
}

fn lookup<'a>(doc: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (last, tables) = path.split_last()?;
    let mut table = doc;
    for step in tables {
        table = table.get(*step)?.as_table()?;
    }
    table.get(*last)
}

impl KataValues {
    /// Reads the values from a Kata configuration's text; what is missing, of another type
    /// or unparsable keeps Kata's default (rendering reports real errors).
    pub fn from_config(text: &str) -> Self {
        text.parse::<toml::Table>()
            .map(|doc| Self::from_table(&doc))
            .unwrap_or_default()
    }

    /// The values of the configuration kata-gpu ships for `profile`.
    pub fn template(profile: crate::profile::Profile) -> Self {
        kata_gpu_configs::template(profile.name())
            .map(Self::from_config)
            .unwrap_or_default()
    }

    /// The values Kata will read once `overrides` are rendered into this configuration.
    pub fn with_overrides(&self, o: &kata_gpu_configs::Overrides) -> Self {
        let mut v = self.clone();
        if let Some(n) = o.pcie_root_port {
            v.pcie_root_port = n;
        }
        if let Some(m) = o.default_memory {
            v.default_memory = m;
        }
        if let Some(f) = &o.cpu_features {
            v.cpu_features = f.clone();
        }
        v.kernel_params =
            kata_gpu_configs::kernel_params_line(&v.kernel_params, &o.kernel_params_append);
        v
    }

    /// Reads the values from a Kata configuration; a key missing or of another type keeps
    /// Kata's default (rendering refuses wrong types with the key named).
    pub fn from_table(doc: &toml::Table) -> Self {
        let d = Self::default();
        let q = |key: &str| lookup(doc, &["hypervisor", "qemu", key]);
        let string = |key: &str, default: &str| {
            q(key)
                .and_then(toml::Value::as_str)
                .unwrap_or(default)
                .to_owned()
        };
        let int = |v: Option<&toml::Value>, default: u64| {
            v.and_then(toml::Value::as_integer)
                .and_then(|i| u64::try_from(i).ok())
                .unwrap_or(default)
        };
        let u32_of = |v: Option<&toml::Value>, default: u32| {
            u32::try_from(int(v, u64::from(default))).unwrap_or(default)
        };
        let boolean = |v: Option<&toml::Value>, default: bool| {
            v.and_then(toml::Value::as_bool).unwrap_or(default)
        };
        let agent = |key: &str| lookup(doc, &["agent", "kata", key]);
        let mut unmodeled = Vec::new();
        for (path, unchanged) in UNMODELED {
            let Some(value) = lookup(doc, path) else {
                continue;
            };
            let same = match unchanged {
                Unchanged::Bool(b) => value.as_bool() == Some(b),
                Unchanged::Str(s) => value.as_str() == Some(s),
            };
            if !same {
                unmodeled.push(format!("{} = {value}", path.join(".")));
            }
        }
        let shared_fs = string("shared_fs", &d.shared_fs);
        if !matches!(shared_fs.as_str(), "none" | "virtio-fs") {
            unmodeled.push(format!("hypervisor.qemu.shared_fs = {shared_fs:?}"));
        }
        Self {
            qemu_path: string("path", &d.qemu_path),
            kernel: string("kernel", &d.kernel),
            image: string("image", &d.image),
            firmware: string("firmware", &d.firmware),
            machine_type: string("machine_type", &d.machine_type),
            cpu_features: string("cpu_features", &d.cpu_features),
            kernel_params: string("kernel_params", &d.kernel_params),
            default_vcpus: q("default_vcpus")
                .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
                .unwrap_or(d.default_vcpus),
            default_maxvcpus: u32_of(q("default_maxvcpus"), d.default_maxvcpus),
            default_memory: u32_of(q("default_memory"), d.default_memory),
            memory_slots: u32_of(q("memory_slots"), d.memory_slots),
            default_maxmemory: int(q("default_maxmemory"), d.default_maxmemory),
            memory_offset: int(q("memory_offset"), d.memory_offset),
            default_bridges: u32_of(q("default_bridges"), d.default_bridges),
            pcie_root_port: u32_of(q("pcie_root_port"), d.pcie_root_port),
            confidential_guest: boolean(q("confidential_guest"), d.confidential_guest),
            snp_guest_policy: int(q("snp_guest_policy"), d.snp_guest_policy),
            tdx_quote_port: u32_of(
                q("tdx_quote_generation_service_socket_port"),
                d.tdx_quote_port,
            ),
            shared_fs,
            virtio_fs_queue_size: u32_of(q("virtio_fs_queue_size"), d.virtio_fs_queue_size),
            entropy_source: string("entropy_source", &d.entropy_source),
            rootfs_type: string("rootfs_type", &d.rootfs_type),
            launch_process_timeout: u32_of(
                agent("launch_process_timeout"),
                d.launch_process_timeout,
            ),
            agent_debug: boolean(agent("enable_debug"), d.agent_debug),
            debug_console: boolean(agent("debug_console_enabled"), d.debug_console),
            static_resources: boolean(
                lookup(doc, &["runtime", "static_sandbox_resource_mgmt"]),
                d.static_resources,
            ),
            unmodeled,
        }
    }
}

/// What Kata reads of the host when it sizes and shapes the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmHost {
    /// CPUs the runtime may use (Go's `runtime.NumCPU`; `/proc/cpuinfo` under the root).
    pub cpus: u32,
    /// The host's memory, MiB (`/proc/meminfo` MemTotal).
    pub memory_mib: u64,
    /// The SEV C-bit position (CPUID 0x8000001F); 0 makes Kata drop the SNP object.
    pub cbitpos: u8,
    /// SEV's reduced physical address bits.
    pub reduced_phys_bits: u8,
}

/// The guest's size as Kata computes it: vCPUs, the most vCPUs, memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmSize {
    /// `-smp` CPUs.
    pub vcpus: u32,
    /// `maxcpus` (and `nr_cpus=` on the kernel command line).
    pub max_vcpus: u32,
    /// `-m`, MiB.
    pub memory_mib: u32,
    /// `maxmem`, MiB, for guests with memory hotplug (not confidential ones).
    pub max_memory_mib: Option<u64>,
}

/// The pod's resources as CRI passes them to the sandbox (containerd's
/// `io.kubernetes.cri.sandbox-*` annotations), which Kata adds to the base size when
/// `static_sandbox_resource_mgmt` is on.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Workload {
    /// CPUs: quota / period.
    pub cpus: f64,
    /// Memory, MiB.
    pub memory_mib: u32,
}

impl Workload {
    /// Reads the workload's size from the sandbox's annotations as Kata's
    /// `CalculateSandboxSizing` does (an unparsable value counts as 0).
    pub fn from_annotations<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Self {
        let period: u64 = get(SANDBOX_CPU_PERIOD)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let quota: i64 = get(SANDBOX_CPU_QUOTA)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let memory: i64 = get(SANDBOX_MEMORY)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Self {
            cpus: if quota >= 0 && period != 0 {
                quota as f64 / period as f64
            } else {
                0.0
            },
            memory_mib: u32::try_from(memory.max(0) / 1024 / 1024).unwrap_or(u32::MAX),
        }
    }
}

/// Kata's vCPU and memory sizing (`defaultVCPUs`, `defaultMaxVCPUs`, `defaultMaxMemSz`,
/// and static sandbox sizing); `vcpus_override` is the pod's `default_vcpus` annotation.
pub fn vm_size(
    values: &KataValues,
    host: &VmHost,
    workload: &Workload,
    vcpus_override: Option<f64>,
) -> VmSize {
    let cpus = f64::from(host.cpus.max(1));
    let mut vcpus = match vcpus_override.unwrap_or(values.default_vcpus) {
        v if v < 0.0 || v > cpus => cpus,
        0.0 => 1.0,
        v => v,
    };
    let mut max_vcpus = match values.default_maxvcpus {
        0 => host.cpus.max(1),
        n => n.min(host.cpus.max(1)),
    };
    let mut memory = values.default_memory;
    if values.static_resources {
        vcpus += workload.cpus;
        memory = memory.saturating_add(workload.memory_mib);
        max_vcpus = vcpus.ceil() as u32;
    }
    let max_memory = match values.default_maxmemory {
        0 => host.memory_mib,
        m => m.min(host.memory_mib),
    };
    // x86 adds 1 GiB to maxmem for an NVDIMM image device (`genericMemoryTopology`);
    // confidential guests get no memory hotplug at all.
    let max_memory = max_memory + values.memory_offset + 1024;
    VmSize {
        vcpus: vcpus.ceil() as u32,
        max_vcpus,
        memory_mib: memory,
        max_memory_mib: (!values.confidential_guest).then_some(max_memory),
    }
}

/// The CPU model Kata names for a TEE on x86 (`EPYC-v4` under SNP, else `host`).
pub fn cpu_model(tee: Tee) -> &'static str {
    match tee {
        Tee::SevSnp => "EPYC-v4",
        Tee::Tdx | Tee::None => "host",
    }
}

/// The guest kernel command line Kata assembles: its x86 defaults, the root filesystem,
/// the consoles, the agent's parameters, then `kernel_params`.
pub fn kernel_command_line(values: &KataValues, size: &VmSize) -> String {
    let mut params: Vec<String> = [
        "tsc=reliable",
        "no_timer_check",
        "rcupdate.rcu_expedited=1",
        "i8042.direct=1",
        "i8042.dumbkbd=1",
        "i8042.nopnp=1",
        "i8042.noaux=1",
        "noreplace-smp",
        "reboot=k",
        "cryptomgr.notests",
        "net.ifnames=0",
        "pci=lastbus=0",
    ]
    .map(str::to_owned)
    .to_vec();
    if !values.image.is_empty() {
        params.push("root=/dev/vda1".into());
        params.push("rootflags=data=ordered,errors=remount-ro ro".into());
        params.push(format!("rootfstype={}", values.rootfs_type));
    }
    params.extend(
        [
            "console=hvc0",
            "console=hvc1",
            "quiet",
            "systemd.show_status=false",
        ]
        .map(str::to_owned),
    );
    params.push("panic=1".into());
    params.push(format!("nr_cpus={}", size.max_vcpus));
    params.extend(
        [
            "selinux=0",
            "systemd.unit=kata-containers.target",
            "systemd.mask=systemd-networkd.service",
            "systemd.mask=systemd-networkd.socket",
            "scsi_mod.scan=none",
        ]
        .map(str::to_owned),
    );
    if values.agent_debug {
        params.push("agent.log=debug".into());
    }
    if values.debug_console {
        params.push("agent.debug_console".into());
        params.push("agent.debug_console_vport=1026".into());
    }
    if values.launch_process_timeout > 0 {
        params.push(format!(
            "agent.launch_process_timeout={}",
            values.launch_process_timeout
        ));
    }
    let user = values.kernel_params.split_whitespace();
    params.extend(user.map(str::to_owned));
    params.join(" ")
}

/// Where Kata keeps a VM's sockets and pid file.
fn vm_dir(sandbox: &str) -> String {
    format!("/run/vc/vm/{sandbox}")
}

/// Kata's whole QEMU command line (without the binary, which is `values.qemu_path`) for
/// `devices` cold-plugged on root ports, for the sandbox named `sandbox` (its id, or a
/// pattern where it is not known yet).
pub fn command_line(
    values: &KataValues,
    tee: Tee,
    host: &VmHost,
    size: &VmSize,
    devices: &[PassthroughDevice],
    sandbox: &str,
) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |flag: &str, value: String| {
        a.push(flag.to_owned());
        a.push(value);
    };
    let snp_object = tee == Tee::SevSnp && host.cbitpos != 0;
    push("-name", format!("sandbox-{sandbox}"));
    push("-uuid", RANDOM_UUID.to_owned());
    let mut machine = format!("{},accel=kvm", values.machine_type);
    match tee {
        Tee::SevSnp => machine.push_str(",kernel_irqchip=split,confidential-guest-support=snp"),
        Tee::Tdx => machine.push_str(",kernel_irqchip=split,confidential-guest-support=tdx"),
        Tee::None => {}
    }
    push("-machine", machine);
    let mut cpu = cpu_model(tee).to_owned();
    if !values.cpu_features.is_empty() {
        cpu.push_str(&format!(",{}", values.cpu_features));
    }
    push("-cpu", cpu);
    push("-qmp", "unix:fd=3,server=on,wait=off".to_owned());
    push(
        "-m",
        match size.max_memory_mib {
            Some(max) => format!(
                "{}M,slots={},maxmem={max}M",
                size.memory_mib, values.memory_slots
            ),
            None => format!("{}M", size.memory_mib),
        },
    );
    for i in 0..values.default_bridges {
        push(
            "-device",
            format!(
                "pci-bridge,bus=pcie.0,id=pci-bridge-{i},chassis_nr={},shpc=off,addr={},io-reserve=4k,mem-reserve=1m,pref64-reserve=1m",
                i + 1,
                i + 2
            ),
        );
    }
    let dir = vm_dir(sandbox);
    push(
        "-device",
        "virtio-serial-pci,disable-modern=false,id=serial0".to_owned(),
    );
    push(
        "-device",
        "virtconsole,chardev=charconsole0,id=console0".to_owned(),
    );
    push(
        "-chardev",
        format!("socket,id=charconsole0,path={dir}/console.sock,server=on,wait=off"),
    );
    if !values.image.is_empty() {
        let drive = format!("image-{}", random_hex(16));
        push(
            "-device",
            format!("virtio-blk-pci,disable-modern=false,drive={drive},config-wce=off,share-rw=on,serial={drive}"),
        );
        push(
            "-drive",
            format!(
                "id={drive},file={},aio=threads,format=raw,if=none,readonly=on",
                values.image
            ),
        );
    }
    push(
        "-device",
        "virtio-scsi-pci,id=scsi0,disable-modern=false".to_owned(),
    );
    if !values.confidential_guest && !values.entropy_source.is_empty() {
        push(
            "-object",
            format!("rng-random,id=rng0,filename={}", values.entropy_source),
        );
        push("-device", "virtio-rng-pci,rng=rng0".to_owned());
    }
    match tee {
        Tee::SevSnp if snp_object => push(
            "-object",
            format!(
                "sev-snp-guest,id=snp,cbitpos={},reduced-phys-bits={},kernel-hashes=on,policy={}",
                host.cbitpos, host.reduced_phys_bits, values.snp_guest_policy
            ),
        ),
        Tee::Tdx => push(
            "-object",
            format!(
                "{{\"qom-type\":\"tdx-guest\",\"id\":\"tdx\",\"quote-generation-socket\":{{\"type\":\"vsock\",\"cid\":\"2\",\"port\":\"{}\"}}}}",
                values.tdx_quote_port
            ),
        ),
        _ => {}
    }
    let ports = (devices.len() as u32).max(values.pcie_root_port);
    for i in 0..ports {
        push(
            "-device",
            format!("pcie-root-port,id=rp{i},bus=pcie.0,chassis=0,slot={i},multifunction=off"),
        );
    }
    for (i, d) in devices.iter().enumerate() {
        let mut device = format!(
            "vfio-pci,host={},x-pci-vendor-id={:#06x},x-pci-device-id={:#06x},bus=rp{i}",
            d.bdf, d.vendor, d.device
        );
        if let Some(cdev) = &d.cdev {
            let index = cdev.trim_start_matches("vfio");
            let id = format!("iommufdvfio-{}{index}", random_hex(16));
            push("-object", format!("iommufd,id={id}"));
            device.push_str(&format!(",iommufd={id}"));
        }
        push("-device", device);
    }
    push(
        "-device",
        "vhost-vsock-pci,disable-modern=false,vhostfd=<vhost-vsock fd>,id=vsock-<guest cid>,guest-cid=<guest cid>".to_owned(),
    );
    if values.shared_fs == "virtio-fs" && !values.confidential_guest {
        let chardev = format!("char-{}", random_hex(16));
        push(
            "-chardev",
            format!("socket,id={chardev},path={dir}/vhost-fs.sock"),
        );
        push(
            "-device",
            format!(
                "vhost-user-fs-pci,chardev={chardev},tag=kataShared,queue-size={}",
                values.virtio_fs_queue_size
            ),
        );
    }
    push("-rtc", "base=utc,driftfix=slew,clock=host".to_owned());
    push("-global", "kvm-pit.lost_tick_policy=discard".to_owned());
    push("-vga", "none".to_owned());
    a.extend(
        [
            "-no-user-config",
            "-nodefaults",
            "-nographic",
            "--no-reboot",
        ]
        .map(str::to_owned),
    );
    let mut push = |flag: &str, value: String| {
        a.push(flag.to_owned());
        a.push(value);
    };
    push(
        "-object",
        format!("memory-backend-ram,id=dimm1,size={}M", size.memory_mib),
    );
    push("-numa", "node,memdev=dimm1".to_owned());
    push("-kernel", values.kernel.clone());
    push("-append", kernel_command_line(values, size));
    let firmware = !values.firmware.is_empty() && (tee != Tee::SevSnp || snp_object);
    if firmware {
        push("-bios", values.firmware.clone());
    }
    push("-pidfile", format!("{dir}/pid"));
    push(
        "-smp",
        format!(
            "{},cores=1,threads=1,sockets={},maxcpus={}",
            size.vcpus, size.max_vcpus, size.max_vcpus
        ),
    );
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(cpus: u32) -> VmHost {
        VmHost {
            cpus,
            memory_mib: 24_105,
            cbitpos: 51,
            reduced_phys_bits: 1,
        }
    }

    #[test]
    fn the_vm_is_sized_as_kata_sizes_it() {
        // Kata's sizing (oci.CalculateSandboxSizing and static sandbox resources): the
        // base vCPUs and memory plus the pod's limits; maxcpus the rounded-up vCPUs.
        let snp = KataValues::template(crate::profile::Profile::Snp);
        let limits = Workload::from_annotations(|k| match k {
            SANDBOX_CPU_QUOTA => Some("350000"),
            SANDBOX_CPU_PERIOD => Some("100000"),
            SANDBOX_MEMORY => Some("17179869184"),
            _ => None,
        });
        assert_eq!(limits.cpus, 3.5);
        assert_eq!(limits.memory_mib, 16_384);
        let size = vm_size(&snp, &host(96), &limits, None);
        assert_eq!(
            size,
            VmSize {
                vcpus: 5,
                max_vcpus: 5,
                memory_mib: 8192 + 16_384,
                max_memory_mib: None,
            }
        );
        // No limits: 1 vCPU and default_memory; -1 quota is no limit.
        let none = Workload::from_annotations(|k| (k == SANDBOX_CPU_QUOTA).then_some("-1"));
        let size = vm_size(&snp, &host(96), &none, None);
        assert_eq!((size.vcpus, size.max_vcpus, size.memory_mib), (1, 1, 8192));
        // default_vcpus beyond the host's CPUs is cut to them (Kata's defaultVCPUs).
        let size = vm_size(&snp, &host(2), &Workload::default(), Some(4.0));
        assert_eq!((size.vcpus, size.max_vcpus), (2, 2));
        // Without a TEE: maxmem is the host's memory + memory_offset + 1 GiB.
        let gpu = KataValues::template(crate::profile::Profile::Gpu);
        let size = vm_size(&gpu, &host(2), &Workload::default(), None);
        assert_eq!(size.max_memory_mib, Some(24_105 + 1024));
    }

    #[test]
    fn the_kernel_command_line_ends_with_kata_params_then_the_configs() {
        let mut v = KataValues::template(crate::profile::Profile::Snp);
        v.kernel_params = "a=1 b".to_owned();
        let size = VmSize {
            vcpus: 2,
            max_vcpus: 2,
            memory_mib: 8192,
            max_memory_mib: None,
        };
        let line = kernel_command_line(&v, &size);
        assert!(line.starts_with("tsc=reliable no_timer_check "), "{line}");
        assert!(
            line.ends_with(" nr_cpus=2 selinux=0 systemd.unit=kata-containers.target systemd.mask=systemd-networkd.service systemd.mask=systemd-networkd.socket scsi_mod.scan=none agent.launch_process_timeout=15 a=1 b"),
            "{line}"
        );
    }
}
