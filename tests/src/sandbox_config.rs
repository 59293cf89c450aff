//! A sandbox's plan and per-sandbox Kata configuration for a simulated host, made as the
//! shim's `PlanHook` makes them at Create (the plan's overrides rendered into the profile's
//! base config), for the tests that hand that configuration to Kata's own code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kata_gpu_plan::host::Host;
use kata_gpu_plan::host_spec::host_specs;
use kata_gpu_plan::sandbox::{plan, KataValues, PlanInput, Policy, SandboxPlan, TeeSettings};
use kata_gpu_plan::Profile;

use crate::kata_host::EPYC_CBITPOS;
use crate::SimHost;

/// Gives the simulated host this machine's CPU count and memory, with 52 physical address
/// bits: Kata (through `kata-qemu-args`) reads the CPUs and memory of the machine it runs on,
/// the plan those under its root.
pub fn like_this_machine(sim: &SimHost) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpuinfo: String = (0..cpus)
        .map(|i| {
            format!("processor\t: {i}\nvendor_id\t: AuthenticAMD\naddress sizes\t: 52 bits physical, 57 bits virtual\n\n")
        })
        .collect();
    sim.set_cpuinfo(&cpuinfo);
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("MemTotal in /proc/meminfo");
    // The exact kB, as Kata reads them (SimHost::set_memory_mib rounds to MiB).
    std::fs::write(
        sim.path("proc/meminfo"),
        format!("MemTotal:       {kib} kB\n"),
    )
    .expect("write meminfo");
}

/// The policy of a node whose CPU has EPYC's C-bit, as `kata_host::host_json` says, and
/// that lets a pod without limits ask for up to 256 GiB of guest memory.
pub fn policy() -> Policy {
    Policy {
        tee: TeeSettings {
            cbitpos: EPYC_CBITPOS as u8,
            ..TeeSettings::default()
        },
        memory_without_limit_max_mib: 256 * 1024,
        ..Policy::default()
    }
}

/// The sandbox's plan on `sim` for a pod with `annotations`, after writing the host's CDI
/// specs as `kata-gpu cdi generate` does.
pub fn planned(sim: &SimHost, profile: Profile, annotations: &[(&str, &str)]) -> SandboxPlan {
    let host = Host::new(sim.root());
    sim.write_specs(&host_specs(&host).expect("host specs").specs);
    let registry = sim.registry();
    let mut oci = oci_spec::runtime::Spec::default();
    let map: HashMap<String, String> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    oci.set_annotations(Some(map));
    let base = kata_gpu_configs::template(profile.name()).expect("template");
    plan(&PlanInput {
        profile,
        oci: &oci,
        registry: &registry,
        host: &host,
        base: &KataValues::from_config(base),
        policy: &policy(),
        sandbox_id: None,
    })
    .unwrap_or_else(|e| panic!("{profile}: {e}"))
}

/// Renders the plan's overrides into the profile's base config and writes the result to
/// `dir/configuration.toml`, as the shim writes the per-sandbox config.
pub fn write_config(p: &SandboxPlan, dir: &Path) -> PathBuf {
    let base = kata_gpu_configs::template(p.profile.name()).expect("template");
    let config = dir.join("configuration.toml");
    let rendered = kata_gpu_configs::render(base, &config, &p.overrides).expect("renders");
    std::fs::write(&config, &rendered.text).expect("write config");
    config
}

/// The device nodes the sandbox's spec carries for the plan's devices, in order: what
/// Kata's CDI injection hands it.
pub fn pod_devices(p: &SandboxPlan) -> Vec<String> {
    let mut nodes: Vec<String> = Vec::new();
    for d in &p.devices {
        let node = match &d.cdev {
            Some(cdev) => format!("/dev/vfio/devices/{cdev}"),
            None => format!("/dev/vfio/{}", d.group),
        };
        if !nodes.contains(&node) {
            nodes.push(node);
        }
    }
    nodes
}
