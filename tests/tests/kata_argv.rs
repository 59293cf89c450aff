//! The plan's QEMU command line is Kata's: for each simulated host (one H100, an HGX board
//! of 8 H100 and 4 NVSwitches, a GPU sharing its IOMMU group with its audio function, an
//! H100 in a legacy VFIO group) and each profile, the per-sandbox configuration the shim
//! writes (the plan's overrides rendered into the profile's base config, as `PlanHook`
//! does) is handed to Kata 3.30's own code (`kata-qemu-args`), and what Kata would launch
//! must equal the plan's prediction argument for argument. The only differences allowed
//! are what Kata draws at random each run and the tool's placeholders, both of which the
//! plan shows as patterns.

use kata_gpu_plan::Profile;
use kata_gpu_tests::kata_host::{as_the_plan_shows, kata_argv};
use kata_gpu_tests::parts::KataQemuArgs;
use kata_gpu_tests::sandbox_config::{like_this_machine, planned, pod_devices, write_config};
use kata_gpu_tests::{available, SimHost, VfioMode};

/// Plans, renders the per-sandbox config, runs Kata's code on it and compares.
fn same_as_kata(test: &str, sim: &SimHost, profile: Profile, annotations: &[(&str, &str)]) {
    let Some(tool) = available(test, KataQemuArgs::find()) else {
        return;
    };
    like_this_machine(sim);
    let p = planned(sim, profile, annotations);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&p, dir.path());
    let nodes = pod_devices(&p);
    let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let (argv, _) = kata_argv(&tool, &config, sim, &nodes, &[])
        .unwrap_or_else(|e| panic!("{test}: Kata refused the shim's config: {e}"));
    let kata = as_the_plan_shows(&argv);
    if kata != p.vm.args {
        let first = kata
            .iter()
            .zip(&p.vm.args)
            .position(|(k, o)| k != o)
            .unwrap_or(kata.len().min(p.vm.args.len()));
        panic!(
            "{test}: the plan's command line differs from Kata's at argument {first}:\n  kata: {:?}\n  plan: {:?}\nkata: {kata:#?}\nplan: {:#?}",
            kata.get(first),
            p.vm.args.get(first),
            p.vm.args
        );
    }
}

const GPU0: &[(&str, &str)] = &[("cdi.k8s.io/gpu", "nvidia.com/pgpu=0")];

fn hgx_all() -> String {
    (0..8)
        .map(|i| format!("nvidia.com/pgpu={i}"))
        .chain((0..4).map(|i| format!("nvidia.com/nvswitch={i}")))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn h100_in_every_profile_is_kata_s_command_line() {
    for profile in Profile::ALL {
        let sim = SimHost::h100_pcie(VfioMode::Iommufd);
        sim.set_tdx(profile == Profile::Tdx);
        sim.set_sev_snp(profile == Profile::Snp);
        same_as_kata(&format!("h100 {profile}"), &sim, profile, GPU0);
    }
}

#[test]
fn hgx_board_in_every_profile_is_kata_s_command_line() {
    let all = hgx_all();
    for profile in Profile::ALL {
        let sim = SimHost::hgx_8x_h100();
        sim.set_tdx(profile == Profile::Tdx);
        sim.set_sev_snp(profile == Profile::Snp);
        same_as_kata(
            &format!("hgx {profile}"),
            &sim,
            profile,
            &[("cdi.k8s.io/all", &all)],
        );
    }
}

#[test]
fn hgx_with_more_memory_and_phys_bits_is_kata_s_command_line() {
    // 256 GiB of RAM by annotation moves every window up; the plan's phys-bits follow.
    let all = hgx_all();
    let sim = SimHost::hgx_8x_h100();
    same_as_kata(
        "hgx snp 256 GiB",
        &sim,
        Profile::Snp,
        &[
            ("cdi.k8s.io/all", &all),
            (
                "io.katacontainers.config.hypervisor.default_memory",
                "262144",
            ),
        ],
    );
}

#[test]
fn shared_group_in_every_profile_is_kata_s_command_line() {
    for profile in Profile::ALL {
        let sim = SimHost::gpu_with_audio_and_bridge();
        sim.set_tdx(profile == Profile::Tdx);
        sim.set_sev_snp(profile == Profile::Snp);
        same_as_kata(&format!("shared group {profile}"), &sim, profile, GPU0);
    }
}

#[test]
fn legacy_group_without_tee_is_kata_s_command_line() {
    let sim = SimHost::h100_pcie(VfioMode::Legacy);
    same_as_kata("h100 legacy gpu", &sim, Profile::Gpu, GPU0);
}

#[test]
fn no_device_is_kata_s_command_line() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    same_as_kata("no device snp", &sim, Profile::Snp, &[]);
}

#[test]
fn legacy_group_with_gpu_and_nvswitch_is_kata_s_command_line() {
    // Kata attaches the GPU and skips the NVSwitch of the same legacy group; so does the plan.
    let sim = SimHost::legacy_gpu_and_nvswitch(true);
    same_as_kata("legacy gpu+nvswitch gpu", &sim, Profile::Gpu, GPU0);
}

#[test]
fn kata_fails_an_nvswitch_alone_in_a_legacy_group_which_the_plan_refuses() {
    let test = "kata_fails_an_nvswitch_alone_in_a_legacy_group_which_the_plan_refuses";
    let Some(tool) = available(test, KataQemuArgs::find()) else {
        return;
    };
    let sim = SimHost::legacy_gpu_and_nvswitch(false);
    like_this_machine(&sim);
    // The config the shim would write for one device; Kata given the switch's group node.
    let p = planned(&sim, Profile::Gpu, GPU0);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&p, dir.path());
    let err = kata_argv(&tool, &config, &sim, &["/dev/vfio/41"], &[])
        .expect_err("Kata fails the sandbox");
    assert!(err.contains("unsupported device type"), "{err}");
}
