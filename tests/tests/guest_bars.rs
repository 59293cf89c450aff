//! The VM Kata builds, booted: Kata 3.30's own QEMU command line (`kata-qemu-args` on Kata's
//! stock NVIDIA configs, cold-plugging every device on its own root port) for the simulated
//! H100 and HGX 8 GPU + 4 NVSwitch hosts (`SimHost::h100_pcie`, `SimHost::hgx_8x_h100`,
//! described to the tool by `kata_host::host_json`), booted under TCG with stand-ins carrying each
//! device's prefetchable BARs (see `kata_gpu_tests::guest`), and the guest's own view of which
//! BARs it could place.
//!
//! With Kata's stock `cpu_features` (`pmu=off`), the SNP profile's `-cpu EPYC-v4,pmu=off` has
//! QEMU's default 40 physical address bits: 1 TiB, too little for eight 128 GiB BARs, so the
//! HGX guest leaves some unassigned. `phys-bits=43` in `cpu_features` reaches `-cpu` and the
//! guest places them all. One H100 fits either way.

use std::io::Write;

use kata_gpu_plan::Profile;
use kata_gpu_tests::guest::{self, BarsByHostBdf, GuestParts, Options};
use kata_gpu_tests::kata_host::{as_the_plan_shows, kata_argv};
use kata_gpu_tests::parts::KataQemuArgs;
use kata_gpu_tests::sandbox_config::{like_this_machine, planned, pod_devices, write_config};
use kata_gpu_tests::{available, Kata, SimHost, VfioMode};

/// The simulated hosts, and the device nodes a pod taking all their devices carries.
#[derive(Clone, Copy, Debug)]
enum Host {
    /// One H100 PCIe, as `/dev/vfio/devices/vfio0`.
    H100,
    /// 8 H100 SXM (`vfio4`–`vfio11`) and then 4 NVSwitches (`vfio0`–`vfio3`), as the HGX host
    /// file `kata-qemu-args` ships lists them.
    Hgx,
}

impl Host {
    fn sim(self) -> SimHost {
        match self {
            Self::H100 => SimHost::h100_pcie(VfioMode::Iommufd),
            Self::Hgx => SimHost::hgx_8x_h100(),
        }
    }

    fn pod_devices(self) -> Vec<String> {
        let cdevs: Vec<u32> = match self {
            Self::H100 => vec![0],
            Self::Hgx => (4..12).chain(0..4).collect(),
        };
        cdevs
            .into_iter()
            .map(|n| format!("/dev/vfio/devices/vfio{n}"))
            .collect()
    }

    /// The host file `kata-qemu-args` ships for the same board.
    fn shipped(self) -> &'static str {
        match self {
            Self::H100 => "h100-snp.json",
            Self::Hgx => "hgx-8gpu-4nvswitch-snp.json",
        }
    }
}

const H100: Host = Host::H100;
const HGX: Host = Host::Hgx;
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
    /// Kata's argv for `config` on the simulated `host`, every device cold-plugged on a root
    /// port of its own, with `sets` on top; and the host functions' BARs.
    fn kata_argv(&self, config: &str, host: Host, sets: &[&str]) -> (Vec<String>, BarsByHostBdf) {
        let pod = host.pod_devices();
        let pod: Vec<&str> = pod.iter().map(String::as_str).collect();
        let ports = format!("pcie_root_port={}", pod.len());
        let mut all = vec![
            r#"cold_plug_vfio="root-port""#,
            r#"hot_plug_vfio="no-port""#,
            ports.as_str(),
        ];
        all.extend_from_slice(sets);
        kata_argv(
            &self.tool,
            &self.kata.config(config),
            &host.sim(),
            &pod,
            &all,
        )
        .expect("kata-qemu-args prints Kata's argv for the simulated host")
    }

    /// Kata's argv for `config` on the host `host_json` describes (`value`).
    fn kata_argv_on(
        &self,
        config: &str,
        host_json: &std::path::Path,
        value: &serde_json::Value,
        sets: &[&str],
    ) -> (Vec<String>, BarsByHostBdf) {
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
            .argv(&self.kata.config(config), host_json, &all)
            .expect("kata-qemu-args prints Kata's argv");
        let bars = guest::bars_from_host_json(value).expect("the host file's BARs");
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

/// The per-sandbox config the shim writes for a pod taking every device of `host`, handed
/// to Kata's own code: its argv, the BARs, and the plan's `-cpu`.
fn shim_config_argv(rig: &Rig, host: Host, profile: Profile) -> (Vec<String>, BarsByHostBdf) {
    let sim = host.sim();
    like_this_machine(&sim);
    let names: Vec<String> = match host {
        Host::H100 => vec!["nvidia.com/pgpu=0".to_owned()],
        Host::Hgx => (0..8)
            .map(|i| format!("nvidia.com/pgpu={i}"))
            .chain((0..4).map(|i| format!("nvidia.com/nvswitch={i}")))
            .collect(),
    };
    let all = names.join(",");
    let p = planned(&sim, profile, &[("cdi.k8s.io/all", &all)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&p, dir.path());
    let nodes = pod_devices(&p);
    let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let (argv, bars) = kata_argv(&rig.tool, &config, &sim, &nodes, &[])
        .unwrap_or_else(|e| panic!("Kata refused the shim's config: {e}"));
    let planned_cpu =
        p.vm.args
            .windows(2)
            .find(|w| w[0] == "-cpu")
            .map(|w| w[1].clone());
    assert_eq!(
        Some(cpu_of(&argv).to_owned()),
        planned_cpu,
        "the plan's -cpu is Kata's"
    );
    say(&format!(
        "{host:?} {profile}: guest physical address bits {}",
        p.vm.address
    ));
    (argv, bars)
}

#[test]
fn hgx_snp_with_the_shims_config_assigns_every_bar() {
    let Some(rig) = rig("hgx_snp_with_the_shims_config_assigns_every_bar") else {
        return;
    };
    let (argv, bars) = shim_config_argv(&rig, HGX, Profile::Snp);
    assert!(cpu_of(&argv).contains(",phys-bits="), "{}", cpu_of(&argv));
    let boot = guest::assert_every_bar_assigned(&rig.parts, &argv, &bars, &Options::default());
    assert_eq!(boot.assigned_of_size(BAR1), (8, 8), "{}", boot.report());
    say(&format!(
        "HGX snp, the shim's config ({}): every stood-in BAR assigned",
        cpu_of(&argv)
    ));
}

#[test]
fn h100_snp_with_the_shims_config_assigns_every_bar() {
    let Some(rig) = rig("h100_snp_with_the_shims_config_assigns_every_bar") else {
        return;
    };
    let (argv, bars) = shim_config_argv(&rig, H100, Profile::Snp);
    let boot = guest::assert_every_bar_assigned(&rig.parts, &argv, &bars, &Options::default());
    assert_eq!(boot.assigned_of_size(BAR1), (1, 1), "{}", boot.report());
}

/// The `gpu` profile's `-cpu host` takes the host's width under KVM; the simulated host
/// says 52 bits, and TCG is given the same.
#[test]
fn h100_gpu_with_the_shims_config_assigns_every_bar() {
    let Some(rig) = rig("h100_gpu_with_the_shims_config_assigns_every_bar") else {
        return;
    };
    let (argv, bars) = shim_config_argv(&rig, H100, Profile::Gpu);
    let options = Options {
        host_phys_bits: Some(52),
        ..Options::default()
    };
    let boot = guest::assert_every_bar_assigned(&rig.parts, &argv, &bars, &options);
    assert_eq!(boot.assigned_of_size(BAR1), (1, 1), "{}", boot.report());
}

/// As above, for the whole board.
#[test]
fn hgx_gpu_with_the_shims_config_assigns_every_bar() {
    let Some(rig) = rig("hgx_gpu_with_the_shims_config_assigns_every_bar") else {
        return;
    };
    let (argv, bars) = shim_config_argv(&rig, HGX, Profile::Gpu);
    let options = Options {
        host_phys_bits: Some(52),
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

#[test]
fn the_simulated_hosts_give_the_argv_of_the_host_files_kata_qemu_args_ships() {
    // The check on `host_json`: for the same boards, Kata prints the same command line from
    // the simulated host's description as from the tool's own host file.
    let Some(rig) = rig("the_simulated_hosts_give_the_argv_of_the_host_files_kata_qemu_args_ships")
    else {
        return;
    };
    for host in [H100, HGX] {
        let shipped = rig.tool.host(host.shipped());
        let text = std::fs::read_to_string(&shipped).expect("read the shipped host file");
        let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let (want, want_bars) = rig.kata_argv_on(SNP, &shipped, &value, &[]);
        let (got, got_bars) = rig.kata_argv(SNP, host, &[]);
        assert_eq!(
            as_the_plan_shows(&got),
            as_the_plan_shows(&want),
            "{host:?}"
        );
        assert_eq!(got_bars, want_bars, "{host:?}");
    }
}

#[test]
fn a_guest_that_does_not_power_off_in_time_is_killed_and_the_console_shown() {
    let Some(rig) = rig("a_guest_that_does_not_power_off_in_time_is_killed_and_the_console_shown")
    else {
        return;
    };
    let (argv, bars) = rig.kata_argv(SNP, H100, &[]);
    let options = Options {
        timeout: std::time::Duration::from_secs(2),
        ..Options::default()
    };
    let started = std::time::Instant::now();
    let err = guest::boot(&rig.parts, &argv, &bars, &options).expect_err("2 s is too short");
    assert!(
        err.contains("did not power off within 2s; QEMU killed") && err.contains("console's tail"),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{err}"
    );
}
