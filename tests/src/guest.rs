//! Boots the VM shape Kata builds, with stand-ins where this machine has no GPU, and reads
//! back which BARs the guest placed.
//!
//! Input: a QEMU argv exactly as Kata prints it (`kata-qemu-args`), and for each
//! `vfio-pci,host=BDF,…` device the BARs of that host function. [`stand_in_shape`] rewrites
//! only what cannot run here (each rewrite says why, in a comment and in [`Shape::rewrites`]);
//! it keeps `-machine q35`, `-cpu` (Kata's `cpu_features` reach it: the guest's physical address
//! width is the point), `-m`, `-smp`, the pci-bridge and every root port. [`boot`] starts the
//! guest under TCG with Debian's OVMF and cloud kernel and a busybox initramfs built here,
//! whose init prints every PCI function's `resource` file on the serial console and powers
//! off; every wait is bounded and QEMU is killed on timeout.
//!
//! A stand-in per host function, on the function's own root port:
//! - function 0: `pci-testdev,membar=<size>`, one 64-bit prefetchable BAR (its BAR 2) of the
//!   host function's first 64-bit prefetchable BAR (an H100's 128 GiB BAR1);
//! - function 1 (the slot made multifunction): `ivshmem-plain` over a memory backend of the
//!   second one's size (its BAR 2 is 64-bit prefetchable; an H100's 32 MiB BAR3);
//! - a function with no 64-bit prefetchable BAR (an NVSwitch: one 32 MiB BAR0) gets a
//!   `pci-testdev` of its largest memory BAR's size. That stand-in BAR is 64-bit
//!   prefetchable, so it asks more of the 64-bit window than the real one, which sits below
//!   4 GiB: a conservative stand-in.
//!
//! Not reproduced: 32-bit non-prefetchable BARs of a chosen size (an H100's 16 MiB BAR0): no
//! QEMU device offers one. They are placed below 4 GiB, apart from the 64-bit BARs.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::parts::{self, Missing};

/// One BAR of a host PCI function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Its index (0–5); a 64-bit BAR is named by its first register.
    pub index: u8,
    /// Its size in bytes.
    pub size: u64,
    /// Whether it is 64-bit and prefetchable (what lands in a bridge's 64-bit window).
    pub prefetchable_64: bool,
}

/// The BARs of each host function, by its BDF (`0000:41:00.0`).
pub type BarsByHostBdf = BTreeMap<String, Vec<Bar>>;

/// `IORESOURCE_MEM` | `IORESOURCE_PREFETCH` | `IORESOURCE_MEM_64`, as the kernel's `resource`
/// file and `kata-qemu-args`'s host.json write a BAR's flags.
const IORESOURCE_MEM: u64 = 0x200;
const IORESOURCE_PREFETCH: u64 = 0x2000;
const IORESOURCE_MEM_64: u64 = 0x10_0000;

/// The BARs of the functions a `kata-qemu-args` host.json describes
/// (`functions[].bdf`, `functions[].bars[].{index,size,flags}`).
pub fn bars_from_host_json(host: &serde_json::Value) -> Result<BarsByHostBdf, String> {
    let functions = host["functions"]
        .as_array()
        .ok_or("host.json has no functions array")?;
    let mut out = BarsByHostBdf::new();
    for f in functions {
        let bdf = f["bdf"]
            .as_str()
            .ok_or_else(|| format!("a function without bdf: {f}"))?;
        let mut bars = Vec::new();
        for b in f["bars"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let field = |k: &str| {
                b[k].as_u64()
                    .ok_or_else(|| format!("{bdf}: a BAR without a numeric {k}: {b}"))
            };
            let flags = field("flags")?;
            bars.push(Bar {
                index: u8::try_from(field("index")?).map_err(|e| format!("{bdf}: {e}"))?,
                size: field("size")?,
                prefetchable_64: flags & (IORESOURCE_MEM | IORESOURCE_PREFETCH | IORESOURCE_MEM_64)
                    == IORESOURCE_MEM | IORESOURCE_PREFETCH | IORESOURCE_MEM_64,
            });
        }
        out.insert(bdf.to_owned(), bars);
    }
    Ok(out)
}

/// What the guest is booted with besides Kata's argv.
#[derive(Clone, Debug)]
pub struct Options {
    /// The longest the guest may take from QEMU's start to its power-off.
    pub timeout: Duration,
    /// For an argv with `-cpu host` (the `gpu` profile): the host's physical address width,
    /// which KVM gives a `host` CPU and TCG does not. `None` refuses such an argv.
    pub host_phys_bits: Option<u8>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            host_phys_bits: None,
        }
    }
}

/// The parts a boot needs: QEMU 10, the firmware, the kernel and a static busybox.
#[derive(Clone, Debug)]
pub struct GuestParts {
    /// `qemu-system-x86_64`, version 10 or later.
    pub qemu: PathBuf,
    /// Debian's generic OVMF image, and its package version.
    pub ovmf: (PathBuf, String),
    /// Debian's cloud kernel, and the package it came from.
    pub kernel: (PathBuf, String),
    /// `busybox-static`.
    pub busybox: PathBuf,
}

impl GuestParts {
    /// Finds every part, or says which is missing.
    pub fn find() -> Result<Self, Missing> {
        Ok(Self {
            qemu: parts::qemu()?,
            ovmf: parts::ovmf()?,
            kernel: parts::guest_kernel()?,
            busybox: parts::busybox_static()?,
        })
    }
}

/// One function of a stand-in, and the host BAR it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StandInFunction {
    /// Its function number in the slot.
    pub function: u8,
    /// Its PCI vendor and device id, as the guest sees them.
    pub vendor: u16,
    /// Its PCI device id.
    pub device: u16,
    /// Which guest BAR (line of `resource`) carries the size.
    pub guest_bar: usize,
    /// The host BAR it stands for.
    pub host_bar: Bar,
}

/// The stand-in for one `vfio-pci` device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StandIn {
    /// The host function Kata passes through.
    pub host_bdf: String,
    /// The root port Kata put it on (`rpN`).
    pub port: String,
    /// Its functions.
    pub functions: Vec<StandInFunction>,
}

/// Kata's argv with stand-ins, ready to boot.
#[derive(Clone, Debug)]
pub struct Shape {
    /// QEMU's arguments (without the program).
    pub args: Vec<String>,
    /// What was rewritten and why, one line each.
    pub rewrites: Vec<String>,
    /// The stand-ins, in argv order.
    pub stand_ins: Vec<StandIn>,
    /// The ids of the `pcie-root-port` devices, in argv order.
    pub root_ports: Vec<String>,
}

const PCI_TESTDEV: (u16, u16) = (0x1b36, 0x0005);
const IVSHMEM: (u16, u16) = (0x1af4, 0x1110);
const ROOT_PORT: (u16, u16) = (0x1b36, 0x000c);

/// Flags QEMU takes without a value, among those Kata prints.
const BARE_FLAGS: &[&str] = &[
    "-no-user-config",
    "-nodefaults",
    "-nographic",
    "--no-reboot",
    "-no-reboot",
    "-S",
    "-enable-kvm",
];

/// The `key=value` properties of a `type,key=value,…` argument (the type under `""`).
fn props(arg: &str) -> Vec<(&str, &str)> {
    arg.split(',')
        .enumerate()
        .map(|(i, kv)| match kv.split_once('=') {
            Some((k, v)) => (k, v),
            None if i == 0 => ("", kv),
            None => (kv, ""),
        })
        .collect()
}

fn prop<'a>(arg: &'a str, key: &str) -> Option<&'a str> {
    props(arg)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// A size in QEMU's notation with the largest exact unit (`128G`, `32M`).
fn qemu_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Kata's argv (the QEMU path first, as `kata-qemu-args` prints it; or without it) rewritten
/// to run here with stand-ins. Files it needs (the initramfs, an empty disk image, the
/// console log) go under `dir`.
pub fn stand_in_shape(
    kata_argv: &[String],
    bars: &BarsByHostBdf,
    parts: &GuestParts,
    dir: &Path,
    options: &Options,
) -> Result<Shape, String> {
    let args = match kata_argv.first() {
        Some(program) if !program.starts_with('-') => &kata_argv[1..],
        _ => kata_argv,
    };
    // Pairs of (flag, value), or a bare flag.
    let mut items: Vec<(String, Option<String>)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let flag = &args[i];
        if !flag.starts_with('-') {
            return Err(format!("argument {i} {flag:?} is not a flag"));
        }
        if BARE_FLAGS.contains(&flag.as_str()) {
            items.push((flag.clone(), None));
            i += 1;
        } else {
            let value = args
                .get(i + 1)
                .ok_or_else(|| format!("{flag} has no value"))?;
            items.push((flag.clone(), Some(value.clone())));
            i += 2;
        }
    }
    // Chardevs that are sockets to processes that do not exist here (Kata's console, virtiofsd).
    let socket_chardevs: Vec<String> = items
        .iter()
        .filter(|(f, v)| f == "-chardev" && v.as_deref().is_some_and(|v| v.starts_with("socket,")))
        .filter_map(|(_, v)| v.as_deref().and_then(|v| prop(v, "id")).map(str::to_owned))
        .collect();

    let mut out: Vec<String> = Vec::new();
    let mut rewrites: Vec<String> = Vec::new();
    let mut stand_ins: Vec<StandIn> = Vec::new();
    let mut root_ports: Vec<String> = Vec::new();
    let mut note = |r: String| {
        if !rewrites.contains(&r) {
            rewrites.push(r);
        }
    };
    let push = |out: &mut Vec<String>, f: &str, v: &str| {
        out.push(f.to_owned());
        out.push(v.to_owned());
    };
    let initrd = dir.join("initrd.cpio");
    write_initramfs(&parts.busybox, &initrd)
        .map_err(|e| format!("writing {}: {e}", initrd.display()))?;
    let console = dir.join("console.log");

    for (flag, value) in &items {
        let Some(v) = value.as_deref() else {
            out.push(flag.clone());
            continue;
        };
        let ty = v.split(',').next().unwrap_or_default();
        match flag.as_str() {
            "-machine" => {
                // No KVM here: TCG instead. The confidential guest (SNP/TDX) and KVM's split
                // irqchip need KVM; the machine type (q35) and anything else stay.
                let kept: Vec<&str> = v
                    .split(',')
                    .filter(|p| {
                        !p.starts_with("accel=")
                            && !p.starts_with("kernel_irqchip=")
                            && !p.starts_with("confidential-guest-support=")
                    })
                    .collect();
                if kept.first() != Some(&"q35") {
                    return Err(format!("-machine {v}: not q35"));
                }
                push(&mut out, flag, &format!("{},accel=tcg", kept.join(",")));
                note(format!("-machine {v} → accel=tcg, no confidential-guest-support or kernel_irqchip (no KVM, no SEV/TDX here)"));
            }
            "-cpu" => {
                let model = ty;
                if model == "host" {
                    // KVM's `host` CPU takes the host's physical address width; TCG has no
                    // host CPU and ignores host-phys-bits, so `max` with the width stated.
                    let bits = options.host_phys_bits.ok_or_else(|| {
                        format!("-cpu {v}: a `host` CPU needs Options::host_phys_bits (the host's address width)")
                    })?;
                    let mut cpu = v.replacen("host", "max", 1);
                    if prop(v, "phys-bits").is_none() {
                        cpu.push_str(&format!(",phys-bits={bits}"));
                    }
                    note(format!("-cpu {v} → {cpu} (KVM's host CPU has the host's width, {bits} bits stated; TCG has no host CPU)"));
                    push(&mut out, flag, &cpu);
                } else {
                    push(&mut out, flag, v);
                }
            }
            "-object" if matches!(ty, "sev-snp-guest" | "sev-guest" | "tdx-guest") => {
                // A confidential guest needs SEV or TDX in the host's KVM.
                note(format!("-object {ty} dropped (needs SEV/TDX under KVM)"));
            }
            "-object" if ty == "iommufd" => {
                // Only vfio-pci uses it, and the stand-ins replace vfio-pci.
                note("-object iommufd dropped (only vfio-pci uses it)".to_owned());
            }
            "-qmp" => {
                // `unix:fd=3` is a socket the shim passes; nothing speaks QMP here.
                note(format!(
                    "-qmp {v} dropped (a socket Kata's shim passes as fd 3)"
                ));
            }
            "-pidfile" => {
                // Under Kata's /run/vc/vm; QEMU is waited on directly here.
                note(format!("-pidfile {v} dropped"));
            }
            "-chardev" if ty == "socket" => {
                // A socket Kata (console) or virtiofsd serves; neither runs here.
                note(format!(
                    "-chardev {v} dropped, with the devices on it (no peer here)"
                ));
            }
            "-netdev" => {
                return Err(format!(
                    "-netdev {v}: network endpoints are not stood in for yet"
                ));
            }
            "-global" if v.starts_with("kvm-") => {
                // A property of KVM's in-kernel device model, absent under TCG.
                note(format!(
                    "-global {v} dropped (KVM's device, absent under TCG)"
                ));
            }
            "-drive" => {
                // Kata's guest image is not here and the guest boots from an initramfs: the
                // drive keeps its id and the same virtio-blk device, over an empty file.
                let image = dir.join("image.raw");
                fs::write(&image, vec![0u8; 1 << 20])
                    .map_err(|e| format!("{}: {e}", image.display()))?;
                let drive: Vec<String> = v
                    .split(',')
                    .map(|p| match p.split_once('=') {
                        Some(("file", _)) => format!("file={}", image.display()),
                        _ => p.to_owned(),
                    })
                    .collect();
                note(format!(
                    "-drive file={} → an empty 1 MiB image (Kata's image is not here; the initramfs is the root)",
                    prop(v, "file").unwrap_or_default()
                ));
                push(&mut out, flag, &drive.join(","));
            }
            "-kernel" => {
                // Kata's guest kernel is not here: Debian's cloud kernel, with an initramfs.
                push(&mut out, flag, &parts.kernel.0.to_string_lossy());
                push(&mut out, "-initrd", &initrd.to_string_lossy());
                note(format!(
                    "-kernel {v} → {} ({}), -initrd added (a busybox initramfs built here)",
                    parts.kernel.0.display(),
                    parts.kernel.1
                ));
            }
            "-append" => {
                // Kata's kernel parameters stay (pci=realloc pci=nocrs pci=assign-busses …);
                // its consoles are virtio ones this guest does not have, so the serial port
                // is the console, and the initramfs's /init runs.
                let mut params: Vec<&str> = v
                    .split_whitespace()
                    .filter(|p| !p.starts_with("console=hvc"))
                    .collect();
                params.extend(["console=ttyS0", "rdinit=/init"]);
                push(&mut out, flag, &params.join(" "));
                note(
                    "-append: Kata's parameters, console=hvc* → console=ttyS0, rdinit=/init added"
                        .to_owned(),
                );
            }
            "-bios" => {
                // Kata's firmware is not here, and its SNP build (AmdSevX64) cannot start a
                // kernel without SEV: Debian's generic OVMF.
                push(&mut out, flag, &parts.ovmf.0.to_string_lossy());
                note(format!(
                    "-bios {v} → {} (Debian ovmf {})",
                    parts.ovmf.0.display(),
                    parts.ovmf.1
                ));
            }
            "-device" => {
                if prop(v, "chardev").is_some_and(|c| socket_chardevs.iter().any(|s| s == c)) {
                    note(format!(
                        "-device {ty} dropped (its chardev is a socket with no peer here)"
                    ));
                    continue;
                }
                match ty {
                    "vhost-vsock-pci" => {
                        // Needs /dev/vhost-vsock and the fd Kata opens on it.
                        note(format!("-device {v} dropped (needs /dev/vhost-vsock)"));
                    }
                    "pcie-root-port" => {
                        let id = prop(v, "id").ok_or_else(|| format!("-device {v}: no id"))?;
                        root_ports.push(id.to_owned());
                        push(&mut out, flag, v);
                    }
                    "vfio-pci" => {
                        let host =
                            prop(v, "host").ok_or_else(|| format!("-device {v}: no host="))?;
                        let bus = prop(v, "bus").ok_or_else(|| format!("-device {v}: no bus="))?;
                        // The stand-in takes the slot's functions 0 and 1, which only a
                        // root port of its own leaves free.
                        if !root_ports.iter().any(|p| p == bus) {
                            return Err(format!(
                                "-device {v}: bus {bus} is not a pcie-root-port of the argv \
                                 (before it); stand-ins go only on a root port of their own"
                            ));
                        }
                        let host_bars = bars
                            .get(host)
                            .ok_or_else(|| format!("-device {v}: no BARs given for {host}"))?;
                        let stand_in = stand_in(host, bus, host_bars, stand_ins.len())?;
                        out.extend(stand_in.1);
                        note("-device vfio-pci → a stand-in on the same root port (no host device here)".to_owned());
                        stand_ins.push(stand_in.0);
                    }
                    _ => push(&mut out, flag, v),
                }
            }
            _ => push(&mut out, flag, v),
        }
    }
    out.extend(["-serial".to_owned(), format!("file:{}", console.display())]);
    Ok(Shape {
        args: out,
        rewrites,
        stand_ins,
        root_ports,
    })
}

/// The stand-in for one host function on `bus`, and its QEMU arguments.
fn stand_in(
    host: &str,
    bus: &str,
    bars: &[Bar],
    n: usize,
) -> Result<(StandIn, Vec<String>), String> {
    let mut pref: Vec<Bar> = bars.iter().copied().filter(|b| b.prefetchable_64).collect();
    pref.sort_by_key(|b| b.index);
    if pref.len() > 2 {
        return Err(format!(
            "{host}: {} 64-bit prefetchable BARs; a stand-in has at most 2",
            pref.len()
        ));
    }
    if pref.is_empty() {
        // No 64-bit prefetchable BAR (an NVSwitch): its largest memory BAR, conservatively as
        // a 64-bit prefetchable one.
        let largest = bars
            .iter()
            .copied()
            .max_by_key(|b| b.size)
            .ok_or_else(|| format!("{host}: no BAR given"))?;
        pref.push(largest);
    }
    for b in &pref {
        if !b.size.is_power_of_two() {
            return Err(format!(
                "{host}: BAR{} size {} is not a power of two",
                b.index, b.size
            ));
        }
    }
    let mut args = Vec::new();
    let mut functions = Vec::new();
    let multifunction = if pref.len() > 1 {
        ",multifunction=on"
    } else {
        ""
    };
    args.extend([
        "-device".to_owned(),
        format!(
            "pci-testdev,bus={bus},addr=0.0{multifunction},membar={}",
            qemu_size(pref[0].size)
        ),
    ]);
    functions.push(StandInFunction {
        function: 0,
        vendor: PCI_TESTDEV.0,
        device: PCI_TESTDEV.1,
        guest_bar: 2,
        host_bar: pref[0],
    });
    if let Some(second) = pref.get(1) {
        let mem = format!("standin{n}-bar{}", second.index);
        args.extend([
            "-object".to_owned(),
            format!(
                "memory-backend-ram,id={mem},size={}",
                qemu_size(second.size)
            ),
            "-device".to_owned(),
            format!("ivshmem-plain,bus={bus},addr=0.1,memdev={mem}"),
        ]);
        functions.push(StandInFunction {
            function: 1,
            vendor: IVSHMEM.0,
            device: IVSHMEM.1,
            guest_bar: 2,
            host_bar: *second,
        });
    }
    Ok((
        StandIn {
            host_bdf: host.to_owned(),
            port: bus.to_owned(),
            functions,
        },
        args,
    ))
}

/// The init the guest runs: every PCI function's ids, sysfs path and `resource` lines, the
/// kernel's lines about BARs it could not place, then power-off. Lines start with `@@` so
/// that kernel messages on the same console cannot be mistaken for them.
const INIT: &str = r#"#!/bin/sh
/bin/busybox --install -s /bin
mount -t sysfs sysfs /sys
mount -t proc proc /proc
for d in /sys/bus/pci/devices/*; do
  echo "@@DEV ${d##*/} $(cat $d/vendor) $(cat $d/device) $(cat $d/class) $(readlink -f $d)"
  while read s e f; do echo "@@RES $s $e $f"; done < $d/resource
done
dmesg | grep -E 'no space for|failed to assign' | sed 's/^/@@LOG /'
echo "@@END"
poweroff -f
"#;

/// Writes an initramfs (cpio, newc format, uncompressed) holding busybox and [`INIT`].
pub fn write_initramfs(busybox: &Path, out: &Path) -> io::Result<()> {
    let mut w = io::BufWriter::new(fs::File::create(out)?);
    let busybox = fs::read(busybox)?;
    let mut ino = 1u32;
    let mut entry = |w: &mut io::BufWriter<fs::File>,
                     name: &str,
                     mode: u32,
                     rdev: (u32, u32),
                     data: &[u8]|
     -> io::Result<()> {
        let name_len = name.len() + 1;
        let size = u32::try_from(data.len()).map_err(io::Error::other)?;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name_len as u32,
            0,
        ];
        ino += 1;
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08X}"));
        }
        w.write_all(header.as_bytes())?;
        w.write_all(name.as_bytes())?;
        w.write_all(&[0])?;
        w.write_all(&vec![0; (4 - (110 + name_len) % 4) % 4])?;
        w.write_all(data)?;
        w.write_all(&vec![0; (4 - data.len() % 4) % 4])
    };
    for d in ["bin", "dev", "proc", "sys"] {
        entry(&mut w, d, 0o040755, (0, 0), &[])?;
    }
    entry(&mut w, "dev/console", 0o020600, (5, 1), &[])?;
    entry(&mut w, "bin/busybox", 0o100755, (0, 0), &busybox)?;
    entry(&mut w, "bin/sh", 0o120777, (0, 0), b"busybox")?;
    entry(&mut w, "init", 0o100755, (0, 0), INIT.as_bytes())?;
    entry(&mut w, "TRAILER!!!", 0, (0, 0), &[])?;
    w.flush()
}

/// One line of a guest function's `resource` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource {
    /// First address, 0 when unassigned.
    pub start: u64,
    /// Last address.
    pub end: u64,
    /// The kernel's `IORESOURCE_*` flags.
    pub flags: u64,
}

/// A PCI function as the guest lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestFunction {
    /// Its address (`0000:02:00.0`).
    pub bdf: String,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Class code (24 bits).
    pub class: u32,
    /// Its sysfs device path (`/sys/devices/pci0000:00/0000:00:03.0/0000:02:00.0`).
    pub path: String,
    /// Its `resource` lines, BAR 0 first.
    pub resources: Vec<Resource>,
}

impl GuestFunction {
    /// The BDF of the bridge it sits behind, if any.
    pub fn parent(&self) -> Option<&str> {
        let mut parts = self.path.rsplit('/');
        parts.next();
        parts
            .next()
            .filter(|p| p.contains(':') && !p.starts_with("pci"))
    }
}

/// What the guest printed: its PCI functions and the kernel's lines about unplaced BARs.
#[derive(Clone, Debug, Default)]
pub struct GuestPci {
    /// Every function, in sysfs order.
    pub functions: Vec<GuestFunction>,
    /// The kernel's "no space for" / "failed to assign" lines.
    pub log: Vec<String>,
}

fn hex<T: TryFrom<u64>>(text: &str) -> Result<T, String> {
    let n = u64::from_str_radix(text.trim_start_matches("0x"), 16)
        .map_err(|e| format!("{text:?}: {e}"))?;
    T::try_from(n).map_err(|_| format!("{text} is out of range"))
}

/// Parses the init's console output; `Err` when it did not finish (no `@@END`).
pub fn parse_console(text: &str) -> Result<GuestPci, String> {
    let mut pci = GuestPci::default();
    let mut ended = false;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        let Some(at) = line.find("@@") else { continue };
        let fields: Vec<&str> = line[at..].split_whitespace().collect();
        match fields.as_slice() {
            ["@@DEV", bdf, vendor, device, class, path] => pci.functions.push(GuestFunction {
                bdf: (*bdf).to_owned(),
                vendor: hex(vendor)?,
                device: hex(device)?,
                class: hex(class)?,
                path: (*path).to_owned(),
                resources: Vec::new(),
            }),
            ["@@RES", start, end, flags] => {
                let f = pci
                    .functions
                    .last_mut()
                    .ok_or_else(|| format!("a resource line before any device: {line}"))?;
                f.resources.push(Resource {
                    start: hex(start)?,
                    end: hex(end)?,
                    flags: hex(flags)?,
                });
            }
            ["@@LOG", ..] => pci
                .log
                .push(line[at..].trim_start_matches("@@LOG").trim().to_owned()),
            ["@@END"] => ended = true,
            _ => return Err(format!("a line the init does not print: {line:?}")),
        }
    }
    if !ended {
        return Err("the guest's init did not finish (no @@END)".to_owned());
    }
    Ok(pci)
}

/// Where one host BAR's stand-in ended up in the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BarOutcome {
    /// The host function.
    pub host_bdf: String,
    /// Its root port (`rpN`).
    pub port: String,
    /// The host BAR stood in for.
    pub host_bar: Bar,
    /// The stand-in function in the guest, if the guest lists it.
    pub guest_bdf: Option<String>,
    /// The guest address given to it, if any.
    pub start: Option<u64>,
}

impl BarOutcome {
    /// Whether the guest gave the BAR an address (of the full size).
    pub fn assigned(&self) -> bool {
        self.start.is_some()
    }
}

impl fmt::Display for BarOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (on {}) BAR{} {}: ",
            self.host_bdf,
            self.port,
            self.host_bar.index,
            qemu_size(self.host_bar.size)
        )?;
        match (&self.guest_bdf, self.start) {
            (None, _) => write!(f, "no stand-in in the guest"),
            (Some(g), None) => write!(f, "guest {g}: unassigned"),
            (Some(g), Some(s)) => write!(f, "guest {g}: {s:#x}"),
        }
    }
}

/// A finished boot.
#[derive(Clone, Debug)]
pub struct Boot {
    /// What was booted.
    pub shape: Shape,
    /// What the guest listed.
    pub pci: GuestPci,
    /// Each stood-in host BAR, in argv order.
    pub bars: Vec<BarOutcome>,
    /// The guest's `-cpu`.
    pub cpu: String,
    /// From QEMU's start to its exit.
    pub elapsed: Duration,
}

impl Boot {
    /// The stood-in BARs the guest left without an address.
    pub fn unassigned(&self) -> Vec<&BarOutcome> {
        self.bars.iter().filter(|b| !b.assigned()).collect()
    }

    /// How many BARs of `size` were stood in, and how many of them the guest assigned.
    pub fn assigned_of_size(&self, size: u64) -> (usize, usize) {
        let of: Vec<&BarOutcome> = self
            .bars
            .iter()
            .filter(|b| b.host_bar.size == size)
            .collect();
        (of.iter().filter(|b| b.assigned()).count(), of.len())
    }

    /// A report: what was rewritten, the CPU, every stood-in BAR, the kernel's complaints.
    pub fn report(&self) -> String {
        let mut s = String::from("rewritten to run here:\n");
        for r in &self.shape.rewrites {
            s.push_str(&format!("  {r}\n"));
        }
        s.push_str(&format!(
            "-cpu {}, booted in {:.1?}\n",
            self.cpu, self.elapsed
        ));
        for b in &self.bars {
            s.push_str(&format!("  {b}\n"));
        }
        for l in &self.pci.log {
            s.push_str(&format!("  guest: {l}\n"));
        }
        s
    }
}

/// Matches the guest's functions to the stand-ins. QEMU gives a device without `addr=` the
/// next free slot of its bus in argv order, so the k-th root port on the guest's bus 0 is the
/// k-th `pcie-root-port` of the argv; the counts must agree.
pub fn outcomes(shape: &Shape, pci: &GuestPci) -> Result<Vec<BarOutcome>, String> {
    let mut ports: Vec<&GuestFunction> = pci
        .functions
        .iter()
        .filter(|f| (f.vendor, f.device) == ROOT_PORT && f.parent().is_none())
        .collect();
    ports.sort_by(|a, b| a.bdf.cmp(&b.bdf));
    if ports.len() != shape.root_ports.len() {
        return Err(format!(
            "the guest lists {} root ports on bus 0, the argv has {}",
            ports.len(),
            shape.root_ports.len()
        ));
    }
    let mut out = Vec::new();
    for s in &shape.stand_ins {
        let k = shape
            .root_ports
            .iter()
            .position(|p| *p == s.port)
            .ok_or_else(|| {
                format!(
                    "{} is on {}, which is no root port of the argv",
                    s.host_bdf, s.port
                )
            })?;
        let port_bdf = &ports[k].bdf;
        for f in &s.functions {
            let guest = pci.functions.iter().find(|g| {
                g.parent() == Some(port_bdf.as_str())
                    && g.bdf.ends_with(&format!(".{}", f.function))
                    && (g.vendor, g.device) == (f.vendor, f.device)
            });
            let start = guest
                .and_then(|g| g.resources.get(f.guest_bar))
                .filter(|r| {
                    r.start != 0 && r.end.wrapping_sub(r.start).wrapping_add(1) == f.host_bar.size
                })
                .map(|r| r.start);
            out.push(BarOutcome {
                host_bdf: s.host_bdf.clone(),
                port: s.port.clone(),
                host_bar: f.host_bar,
                guest_bdf: guest.map(|g| g.bdf.clone()),
                start,
            });
        }
    }
    Ok(out)
}

/// One boot at a time: each is a single-threaded TCG guest, and its time limit means
/// something only if boots do not share the machine's cores among themselves.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Kills QEMU if the boot is abandoned (timeout, panic), so no process outlives the test.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Boots Kata's argv with stand-ins and reads back where the guest put each stood-in BAR.
/// `Err` says why there is no answer (the guest did not finish in time, QEMU refused the
/// arguments, …) with the console's tail.
pub fn boot(
    parts: &GuestParts,
    kata_argv: &[String],
    bars: &BarsByHostBdf,
    options: &Options,
) -> Result<Boot, String> {
    let dir = tempfile::Builder::new()
        .prefix("kata-gpu-guest.")
        .tempdir()
        .map_err(|e| format!("a temp dir: {e}"))?;
    let shape = stand_in_shape(kata_argv, bars, parts, dir.path(), options)?;
    let cpu = shape
        .args
        .windows(2)
        .find(|w| w[0] == "-cpu")
        .map(|w| w[1].clone())
        .unwrap_or_default();
    let console_path = dir.path().join("console.log");
    let stderr_path = dir.path().join("qemu.stderr");
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let stderr =
        fs::File::create(&stderr_path).map_err(|e| format!("{}: {e}", stderr_path.display()))?;
    let child = Command::new(&parts.qemu)
        .args(&shape.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("{}: {e}", parts.qemu.display()))?;
    let mut qemu = Reaper(child);
    let status = loop {
        match qemu.0.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= options.timeout => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for QEMU: {e}")),
        }
    };
    drop(qemu);
    let elapsed = started.elapsed();
    let console = fs::read_to_string(&console_path).unwrap_or_default();
    let qemu_err = fs::read_to_string(&stderr_path).unwrap_or_default();
    let context = || {
        format!(
            "\nQEMU {}\nQEMU's stderr:\n{}\nconsole's tail:\n{}",
            shape.args.join(" "),
            tail(&qemu_err, 20),
            tail(&console, 40)
        )
    };
    let Some(status) = status else {
        return Err(format!(
            "the guest did not power off within {:?}; QEMU killed{}",
            options.timeout,
            context()
        ));
    };
    if !status.success() {
        return Err(format!("QEMU exited with {status}{}", context()));
    }
    let pci = parse_console(&console).map_err(|e| format!("{e}{}", context()))?;
    let bars = outcomes(&shape, &pci).map_err(|e| format!("{e}{}", context()))?;
    Ok(Boot {
        shape,
        pci,
        bars,
        cpu,
        elapsed,
    })
}

/// Boots Kata's argv with stand-ins and panics, with a report, unless the guest lists every
/// stand-in with every BAR assigned. The parts must be there (see [`GuestParts::find`]).
pub fn assert_every_bar_assigned(
    parts: &GuestParts,
    kata_argv: &[String],
    bars: &BarsByHostBdf,
    options: &Options,
) -> Boot {
    let boot = boot(parts, kata_argv, bars, options).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !boot.bars.is_empty(),
        "the argv has no vfio-pci device to stand in for"
    );
    assert!(
        boot.unassigned().is_empty(),
        "the guest left {} of {} stood-in BARs unassigned:\n{}",
        boot.unassigned().len(),
        boot.bars.len(),
        boot.report()
    );
    boot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_qemu_notation() {
        assert_eq!(qemu_size(128 << 30), "128G");
        assert_eq!(qemu_size(32 << 20), "32M");
        assert_eq!(qemu_size(1 << 40), "1T");
        assert_eq!(qemu_size(100), "100");
    }

    #[test]
    fn console_lines_parse_and_a_missing_end_is_an_error() {
        let text = "noise\r\n@@DEV 0000:02:00.0 0x1b36 0x0005 0x00ff00 /sys/devices/pci0000:00/0000:00:03.0/0000:02:00.0\n\
                    @@RES 0x0 0x0 0x0\n@@RES 0x1000 0x10ff 0x40101\n\
                    [ 1.0] kernel says @@RES 0x2000000000 0x3fffffffff 0x14220c\n@@END\n";
        let pci = parse_console(text).expect("parses");
        assert_eq!(pci.functions.len(), 1);
        assert_eq!(pci.functions[0].parent(), Some("0000:00:03.0"));
        assert_eq!(pci.functions[0].resources[2].start, 0x20_0000_0000);
        assert!(parse_console(
            "@@DEV 0000:00:00.0 0x8086 0x29c0 0x060000 /sys/devices/pci0000:00/0000:00:00.0\n"
        )
        .is_err());
    }

    fn fake_parts(dir: &Path) -> GuestParts {
        let busybox = dir.join("busybox");
        fs::write(&busybox, b"not really").expect("write");
        GuestParts {
            qemu: "qemu-system-x86_64".into(),
            ovmf: ("/usr/share/ovmf/OVMF.fd".into(), "test".to_owned()),
            kernel: ("/guest/vmlinuz".into(), "test".to_owned()),
            busybox,
        }
    }

    fn argv(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn the_shape_keeps_cpu_memory_and_ports_and_stands_in_for_vfio() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bars: BarsByHostBdf = [(
            "0000:41:00.0".to_owned(),
            vec![
                Bar {
                    index: 0,
                    size: 16 << 20,
                    prefetchable_64: false,
                },
                Bar {
                    index: 1,
                    size: 128 << 30,
                    prefetchable_64: true,
                },
                Bar {
                    index: 3,
                    size: 32 << 20,
                    prefetchable_64: true,
                },
            ],
        )]
        .into();
        let mut kata = argv(
            "/opt/kata/bin/qemu -machine q35,accel=kvm,kernel_irqchip=split,confidential-guest-support=snp \
             -cpu EPYC-v4,pmu=off,phys-bits=43 -qmp unix:fd=3,server=on,wait=off -m 8192M \
             -object sev-snp-guest,id=snp,cbitpos=51 \
             -device pcie-root-port,id=rp0,bus=pcie.0,chassis=0,slot=0,multifunction=off \
             -object iommufd,id=iommufdvfio-0123456789abcdef0 \
             -device vfio-pci,host=0000:41:00.0,bus=rp0,iommufd=iommufdvfio-0123456789abcdef0 \
             -nodefaults --no-reboot -kernel /k",
        );
        kata.extend([
            "-append".to_owned(),
            "pci=realloc console=hvc0 quiet".to_owned(),
        ]);
        kata.extend(argv("-bios /opt/kata/share/ovmf/AMDSEV.fd -smp 1,cores=1"));
        let shape = stand_in_shape(
            &kata,
            &bars,
            &fake_parts(dir.path()),
            dir.path(),
            &Options::default(),
        )
        .expect("a shape");
        let a = shape.args.join(" ");
        for kept in [
            "-machine q35,accel=tcg ",
            "-cpu EPYC-v4,pmu=off,phys-bits=43 ",
            "-m 8192M ",
            "-device pcie-root-port,id=rp0,bus=pcie.0,chassis=0,slot=0,multifunction=off ",
            "-device pci-testdev,bus=rp0,addr=0.0,multifunction=on,membar=128G ",
            "-object memory-backend-ram,id=standin0-bar3,size=32M ",
            "-device ivshmem-plain,bus=rp0,addr=0.1,memdev=standin0-bar3 ",
            "-nodefaults --no-reboot ",
            "-bios /usr/share/ovmf/OVMF.fd ",
            "-smp 1,cores=1 ",
        ] {
            assert!(a.contains(kept), "{kept:?} not in {a}");
        }
        for gone in ["vfio-pci", "iommufd", "sev-snp", "-qmp", "hvc0", "kvm"] {
            assert!(!a.contains(gone), "{gone:?} still in {a}");
        }
        assert!(
            a.contains("pci=realloc quiet console=ttyS0 rdinit=/init"),
            "{a}"
        );
        assert_eq!(shape.root_ports, ["rp0"]);
        assert_eq!(shape.stand_ins.len(), 1);
        assert_eq!(shape.stand_ins[0].functions.len(), 2);
        assert!(!shape.rewrites.is_empty());
    }

    #[test]
    fn a_stand_in_goes_only_on_a_root_port_and_host_cpu_needs_a_width() {
        let dir = tempfile::tempdir().expect("tempdir");
        let parts = fake_parts(dir.path());
        let bars: BarsByHostBdf = [(
            "0000:41:00.0".to_owned(),
            vec![Bar {
                index: 1,
                size: 1 << 30,
                prefetchable_64: true,
            }],
        )]
        .into();
        let on_root_bus = argv("-device vfio-pci,host=0000:41:00.0,bus=pcie.0");
        let err = stand_in_shape(&on_root_bus, &bars, &parts, dir.path(), &Options::default())
            .expect_err("pcie.0 is no root port");
        assert!(err.contains("not a pcie-root-port"), "{err}");
        let host = argv("-cpu host,pmu=off");
        let err = stand_in_shape(&host, &bars, &parts, dir.path(), &Options::default())
            .expect_err("no width given");
        assert!(err.contains("host_phys_bits"), "{err}");
        let options = Options {
            host_phys_bits: Some(46),
            ..Options::default()
        };
        let shape = stand_in_shape(&host, &bars, &parts, dir.path(), &options).expect("a shape");
        assert_eq!(shape.args[..2], ["-cpu", "max,pmu=off,phys-bits=46"]);
    }

    #[test]
    fn host_json_bars() {
        let host = serde_json::json!({"functions": [{"bdf": "0000:41:00.0", "bars": [
            {"index": 0, "size": 16777216, "flags": 262656},
            {"index": 1, "size": 137438953472u64, "flags": 1319436}]}]});
        let bars = bars_from_host_json(&host).expect("parses");
        assert_eq!(
            bars["0000:41:00.0"],
            vec![
                Bar {
                    index: 0,
                    size: 16 << 20,
                    prefetchable_64: false
                },
                Bar {
                    index: 1,
                    size: 128 << 30,
                    prefetchable_64: true
                },
            ]
        );
    }
}
