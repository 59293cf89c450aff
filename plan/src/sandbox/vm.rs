//! The VM Kata will build for the plan: its size, the guest address width every BAR needs
//! (written into `cpu_features` where QEMU would give less), and Kata's command line.

use std::collections::BTreeMap;

use kata_gpu_configs::Overrides;
use serde::Serialize;

use super::address::{self, human};
use super::kata::{self, VmHost, VmSize, Workload};
use super::sizing::DEFAULT_VCPUS_ANNOTATION;
use super::{PassthroughDevice, PlanError, PlanInput};
use crate::profile::Tee;

/// The guest's address space: what it must hold and what it gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AddressPlan {
    /// Bits needed for RAM and every device's 64-bit BARs.
    pub needed_bits: u8,
    /// Bits the guest gets with the rendered `cpu_features` (`None`: the host's, unknown).
    pub guest_bits: Option<u8>,
    /// The most bits this host gives a guest of the profile, and why (`None`: the host's
    /// `/proc/cpuinfo` does not say).
    pub host_limit: Option<(u8, String)>,
    /// Where RAM (and QEMU's memory-hotplug region) ends, bytes.
    pub ram_top: u64,
    /// The 64-bit bridge windows, (size, alignment) in bytes, largest alignment first.
    pub windows: Vec<(u64, u64)>,
    /// Whether the plan wrote `phys-bits` into `cpu_features`.
    pub wrote_phys_bits: bool,
}

/// The VM as Kata will start it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmPlan {
    /// The QEMU binary (`path`).
    pub qemu_path: String,
    /// Kata's QEMU arguments, in Kata's order, random parts as patterns.
    pub args: Vec<String>,
    /// vCPUs and memory as Kata sizes them.
    pub size: VmSize,
    /// The guest's address space.
    pub address: AddressPlan,
}

/// How much guest address space a sandbox of a profile needs for a set of devices, and
/// what the host gives: `kata-gpu doctor`'s figure for the node's whole device set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room {
    /// Bits needed.
    pub needed: u8,
    /// Bits the profile's CPU model gets from the base `cpu_features` (`None`: the host's).
    pub model_bits: Option<u8>,
    /// The most the host gives, and why (`None`: its width is unknown).
    pub limit: Option<(u8, String)>,
}

/// The room a sandbox of `profile` with the base config's size needs for devices with
/// these BARs on a host with these facts, as [`shape`] computes it at Create.
pub fn room(
    profile: crate::profile::Profile,
    base: &kata::KataValues,
    facts: &crate::host::CpuMemory,
    tee: &super::TeeSettings,
    bars: &[Vec<crate::host::Bar>],
) -> Room {
    let host = VmHost {
        cpus: facts.cpus,
        memory_mib: facts.memory_mib.unwrap_or(0),
        cbitpos: tee.cbitpos,
        reduced_phys_bits: tee.reduced_phys_bits,
    };
    let size = kata::vm_size(base, &host, &Workload::default(), None);
    let need = address::need_for_bars(&size, base.memory_slots, bars.iter().map(Vec::as_slice));
    let t = profile.tee();
    Room {
        needed: need.bits,
        model_bits: address::guest_bits(kata::cpu_model(t), &base.cpu_features, facts.phys_bits),
        limit: facts
            .phys_bits
            .map(|b| address::host_limit(t, b, tee.cbitpos, tee.reduced_phys_bits)),
    }
}

/// Shapes the VM for `devices`: sizes it as Kata will, makes room for every BAR (adding
/// `phys-bits` to `overrides.cpu_features` where needed) or refuses, and predicts Kata's
/// command line from the configuration the overrides render.
pub(super) fn shape(
    input: &PlanInput<'_>,
    annotations: &BTreeMap<String, String>,
    devices: &[PassthroughDevice],
    overrides: &mut Overrides,
    warnings: &mut Vec<String>,
) -> Result<VmPlan, PlanError> {
    let tee = input.profile.tee();
    let facts = input.host.cpu_memory();
    let host = VmHost {
        cpus: facts.cpus,
        memory_mib: facts.memory_mib.unwrap_or(0),
        cbitpos: input.policy.tee.cbitpos,
        reduced_phys_bits: input.policy.tee.reduced_phys_bits,
    };
    let mut values = input.base.with_overrides(overrides);
    let workload = Workload::from_annotations(|k| annotations.get(k).map(String::as_str));
    let vcpus = annotations
        .get(DEFAULT_VCPUS_ANNOTATION)
        .and_then(|v| v.trim().parse::<f64>().ok());
    let size = kata::vm_size(&values, &host, &workload, vcpus);
    if facts.memory_mib.is_none() && size.max_memory_mib.is_some() {
        warnings.push(
            "the host's /proc/meminfo has no MemTotal: Kata sets maxmem to the host's memory, shown here as 0".to_owned(),
        );
    }

    let need = address::need(&size, values.memory_slots, devices);
    let model = kata::cpu_model(tee);
    let limit = facts.phys_bits.map(|b| {
        address::host_limit(
            tee,
            b,
            input.policy.tee.cbitpos,
            input.policy.tee.reduced_phys_bits,
        )
    });
    let limit_bits = limit.as_ref().map(|(b, _)| *b);
    let gets = |features: &str| {
        let bits = address::guest_bits(model, features, facts.phys_bits);
        match (bits, limit_bits) {
            (Some(b), Some(l)) => Some(b.min(l)),
            (b, _) => b,
        }
    };
    let mut guest_bits = gets(&values.cpu_features);
    let mut wrote = false;
    if guest_bits.is_some_and(|b| b < need.bits) {
        let can_raise = model != "host" && limit_bits.is_none_or(|l| l >= need.bits);
        if !can_raise {
            return Err(refusal(devices, &need, tee, limit.as_ref(), guest_bits));
        }
        let features = address::with_phys_bits(&values.cpu_features, need.bits);
        overrides.cpu_features = Some(features.clone());
        values.cpu_features = features;
        guest_bits = gets(&values.cpu_features);
        wrote = true;
    }
    if !devices.is_empty() && facts.phys_bits.is_none() {
        warnings.push(format!(
            "the host's /proc/cpuinfo has no \"address sizes\": the guest needs {} physical address bits, which this host was not checked to give",
            need.bits
        ));
    }
    let gpus = devices
        .iter()
        .filter(|d| d.vendor == crate::host::NVIDIA && d.class >> 16 == 0x03)
        .count();
    if gpus > 1 && size.vcpus == 1 {
        warnings.push(format!(
            "{gpus} GPUs and 1 vCPU: Kata sizes the VM from default_vcpus plus the pod's CPU limit, and this pod sets none; give the pod a CPU limit (or the io.katacontainers.config.hypervisor.default_vcpus annotation)"
        ));
    }
    for setting in &values.unmodeled {
        warnings.push(format!(
            "{setting}: the QEMU command line shown does not follow this setting, so Kata's may differ"
        ));
    }
    let sandbox = input.sandbox_id.unwrap_or("<sandbox id>");
    let args = kata::command_line(&values, tee, &host, &size, devices, sandbox);
    Ok(VmPlan {
        qemu_path: values.qemu_path.clone(),
        args,
        size,
        address: AddressPlan {
            needed_bits: need.bits,
            guest_bits,
            host_limit: limit,
            ram_top: need.ram_top,
            windows: need.windows,
            wrote_phys_bits: wrote,
        },
    })
}

fn refusal(
    devices: &[PassthroughDevice],
    need: &address::AddressNeed,
    tee: Tee,
    limit: Option<&(u8, String)>,
    guest_bits: Option<u8>,
) -> PlanError {
    let big: Vec<String> = devices
        .iter()
        .filter(|d| d.bars.iter().any(|b| b.is_prefetchable_64() && b.size > 0))
        .map(|d| d.bdf.to_string())
        .collect();
    let (have, why) = match limit {
        Some((bits, why)) => (*bits, why.clone()),
        None => (guest_bits.unwrap_or(0), "the CPU model's width".to_owned()),
    };
    PlanError::AddressSpace {
        devices: big.join(", "),
        needed: need.bits,
        have,
        why,
        tee: match tee {
            Tee::SevSnp => "an SEV-SNP",
            Tee::Tdx => "a TDX",
            Tee::None => "a",
        },
        layout: format!(
            "RAM to {} and {} bridge windows up to {}",
            human(need.ram_top),
            need.windows.len(),
            human(need.end)
        ),
    }
}
