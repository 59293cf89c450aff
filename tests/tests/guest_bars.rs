//! The VM Kata builds, booted: Kata 3.30's own QEMU command line (`kata-qemu-args` on Kata's
//! stock NVIDIA configs, cold-plugging every device on its own root port) for the H100 and
//! HGX 8 GPU + 4 NVSwitch hosts it ships, booted under TCG with stand-ins carrying each
//! device's prefetchable BARs (see `kata_gpu_tests::guest`), and the guest's own view of which
//! BARs it could place.
//!
//! With Kata's stock `cpu_features` (`pmu=off`), the SNP profile's `-cpu EPYC-v4,pmu=off` has
//! QEMU's default 40 physical address bits: 1 TiB, too little for eight 128 GiB BARs, so the
//! HGX guest leaves some unassigned. `phys-bits=43` in `cpu_features` reaches `-cpu` and the
//! guest places them all. One H100 fits either way.

use kata_gpu_tests::guest::{self, BarsByHostBdf, GuestParts, Options};
use kata_gpu_tests::parts::KataQemuArgs;
use kata_gpu_tests::{available, Kata};
use std::io::Write;

const H100: &str = "h100-snp.json";
const HGX: &str = "hgx-8gpu-4nvswitch-snp.json";
const SNP: &str = "configuration-qemu-nvidia-gpu-snp.toml";
const GPU: &str = "configuration-qemu-nvidia-gpu.toml";
const BAR1: u64 = 128 << 30;

/// Everything a boot test needs, or `None` after saying the test is skipped (a failure in CI).
struct Rig {
    kata: Kata,
    tool: KataQemuArgs,
    parts: GuestParts,
}

fn rig(test: &str) -> Option<Rig> {
    Some(Rig {
        kata: available(test, Kata::find())?,
        tool: available(test, KataQemuArgs::find())?,
        parts: available(test, GuestParts::find())?,
    })
}

impl Rig {
    /// Kata's argv for `config` on the shipped `host`, every device cold-plugged on a root
    /// port of its own, with `sets` on top; and the host functions' BARs.
    fn kata_argv(&self, config: &str, host: &str, sets: &[&str]) -> (Vec<String>, BarsByHostBdf) {
        let host_json = self.tool.host(host);
        let text = std::fs::read_to_string(&host_json).expect("read the host file");
        let value: serde_json::Value = serde_json::from_str(&text).expect("host file is JSON");
        let devices = value["pod_devices"].as_array().map_or(0, Vec::len);
        let ports = format!("pcie_root_port={devices}");
        let mut all = vec![
            r#"cold_plug_vfio="root-port""#,
            r#"hot_plug_vfio="no-port""#,
            ports.as_str(),
        ];
        all.extend_from_slice(sets);
        let argv = self
            .tool
            .argv(&self.kata.config(config), &host_json, &all)
            .expect("kata-qemu-args prints Kata's argv");
        let bars = guest::bars_from_host_json(&value).expect("the host file's BARs");
        (argv, bars)
    }
}

/// Says a figure on the terminal, past cargo's capture, so that a passing run shows it.
fn say(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

fn cpu_of(argv: &[String]) -> &str {
    argv.windows(2)
        .find(|w| w[0] == "-cpu")
        .map_or("", |w| w[1].as_str())
}

#[test]
fn hgx_snp_with_stock_cpu_features_leaves_128g_bars_unassigned() {
    let Some(rig) = rig("hgx_snp_with_stock_cpu_features_leaves_128g_bars_unassigned") else {
        return;
    };
    let (argv, bars) = rig.kata_argv(SNP, HGX, &[]);
    assert_eq!(
        cpu_of(&argv),
        "EPYC-v4,pmu=off",
        "Kata's stock -cpu for snp"
    );
    let boot = guest::boot(&rig.parts, &argv, &bars, &Options::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let (assigned, of) = boot.assigned_of_size(BAR1);
    say(&format!(
        "HGX snp, stock cpu_features: the guest assigned {assigned} of {of} 128 GiB BARs \
         (OVMF {}, {})\n{}",
        rig.parts.ovmf.1,
        rig.parts.kernel.1,
        boot.report()
    ));
    assert_eq!(of, 8, "eight GPUs stood in:\n{}", boot.report());
    // The guest booted and placed some: the failure is address space, not the stand-ins.
    assert!(assigned >= 1, "{}", boot.report());
    assert!(
        assigned < of,
        "with 40 physical address bits every 128 GiB BAR was placed, which 1 TiB cannot \
         hold:\n{}",
        boot.report()
    );
}

#[test]
fn hgx_snp_with_phys_bits_43_assigns_every_bar() {
    let Some(rig) = rig("hgx_snp_with_phys_bits_43_assigns_every_bar") else {
        return;
    };
    let (argv, bars) = rig.kata_argv(SNP, HGX, &[r#"cpu_features="pmu=off,phys-bits=43""#]);
    assert_eq!(
        cpu_of(&argv),
        "EPYC-v4,pmu=off,phys-bits=43",
        "cpu_features reach -cpu"
    );
    let boot = guest::assert_every_bar_assigned(&rig.parts, &argv, &bars, &Options::default());
    assert_eq!(boot.bars.len(), 8 * 2 + 4, "{}", boot.report());
    assert_eq!(boot.assigned_of_size(BAR1), (8, 8));
    say(&format!(
        "HGX snp, phys-bits=43: every stood-in BAR assigned\n{}",
        boot.report()
    ));
}

#[test]
fn one_h100_snp_gets_every_bar_with_stock_cpu_features() {
    let Some(rig) = rig("one_h100_snp_gets_every_bar_with_stock_cpu_features") else {
        return;
    };
    let (argv, bars) = rig.kata_argv(SNP, H100, &[]);
    assert_eq!(cpu_of(&argv), "EPYC-v4,pmu=off");
    let boot = guest::assert_every_bar_assigned(&rig.parts, &argv, &bars, &Options::default());
    assert_eq!(boot.assigned_of_size(BAR1), (1, 1), "{}", boot.report());
}

#[test]
fn one_h100_snp_gets_every_bar_with_phys_bits_43() {
    let Some(rig) = rig("one_h100_snp_gets_every_bar_with_phys_bits_43") else {
        return;
    };
    let (argv, bars) = rig.kata_argv(SNP, H100, &[r#"cpu_features="pmu=off,phys-bits=43""#]);
    let boot = guest::assert_every_bar_assigned(&rig.parts, &argv, &bars, &Options::default());
    assert_eq!(boot.assigned_of_size(BAR1), (1, 1), "{}", boot.report());
}

/// The `gpu` profile (no TEE) runs `-cpu host,pmu=off`: under KVM the guest gets the host's
/// own physical address width. Stated here as 46 bits (what e.g. Intel Xeon 4th generation
/// reports), the HGX guest places every BAR with Kata's stock config.
#[test]
fn hgx_gpu_profile_with_a_46_bit_host_assigns_every_bar() {
    let Some(rig) = rig("hgx_gpu_profile_with_a_46_bit_host_assigns_every_bar") else {
        return;
    };
    let (argv, bars) = rig.kata_argv(GPU, HGX, &[]);
    assert_eq!(cpu_of(&argv), "host,pmu=off", "Kata's stock -cpu for gpu");
    let options = Options {
        host_phys_bits: Some(46),
        ..Options::default()
    };
    let boot = guest::assert_every_bar_assigned(&rig.parts, &argv, &bars, &options);
    assert_eq!(boot.assigned_of_size(BAR1), (8, 8), "{}", boot.report());
}

#[test]
fn a_missing_bar_list_is_an_error_not_a_boot() {
    let Some(rig) = rig("a_missing_bar_list_is_an_error_not_a_boot") else {
        return;
    };
    let (argv, _) = rig.kata_argv(SNP, H100, &[]);
    let err = guest::boot(
        &rig.parts,
        &argv,
        &BarsByHostBdf::new(),
        &Options::default(),
    )
    .expect_err("no BARs for the vfio-pci device");
    assert!(err.contains("no BARs given for 0000:41:00.0"), "{err}");
}
