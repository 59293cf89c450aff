//! `kata-gpu doctor` on simulated hosts, as a user runs it.

use std::fs;
use std::process::{Command, Output};

use kata_gpu_tests::{SimHost, VfioMode, WriteCdiSpecs};

/// Runs `kata-gpu doctor ARGS` against the simulated host, with a containerd binary that
/// does not exist, so that no real containerd on the test machine is asked.
fn doctor(sim: &SimHost, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kata-gpu"))
        .arg("doctor")
        .args(args)
        .arg("--containerd")
        .arg("/opt/containerd/bin/containerd")
        .arg("--host-root")
        .arg(sim.root())
        .output()
        .expect("run kata-gpu")
}

fn text(o: &Output) -> String {
    kata_gpu_tests::output_text(o)
}

/// What a run on `sim` printed, its root written `$ROOT`: every path and fix names it.
fn text_on(sim: &SimHost, o: &Output) -> String {
    text(o).replace(&sim.root().display().to_string(), "$ROOT")
}

fn has_line(shown: &str, start: &str) -> bool {
    shown.lines().any(|l| l.starts_with(start))
}

fn touch(sim: &SimHost, rel: &str) {
    let p = sim.path(rel);
    fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    fs::write(p, "").expect("write");
}

#[test]
fn a_healthy_h100_passes_the_host_checks_and_fails_what_is_not_installed() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    sim.write_cdi_specs();
    let out = doctor(&sim, &[]);
    let shown = text_on(&sim, &out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    for line in [
        "ok    kvm: /dev/kvm present",
        "ok    iommu: enabled",
        "ok    sev-snp: kvm_amd reports sev_snp enabled",
        "ok    gpu 0000:41:00.0: 10de:2331 driver vfio-pci, IOMMU group 40, CC-capable",
        "ok    iommufd: /dev/iommu present; cdevs vfio0",
        "ok    cdi: host spec present and consistent (4 names)",
        "FAIL  containerd: not registered in $ROOT/etc/containerd/config.toml",
        "FAIL  artifacts: none installed for kata-qemu-nvidia-gpu-snp",
        "FAIL  kata-gpu shim: containerd-shim-kata-qemu-nvidia-gpu-snp-v2 is not on containerd's PATH or next to containerd ($ROOT/usr/local/sbin:",
        "FAIL  kata shim: $ROOT/opt/kata/bin/containerd-shim-kata-v2 missing (the default)",
        "ok    device source: kubelet's allocation, asked on /var/lib/kubelet/pod-resources/kubelet.sock (the default)",
        "kata-qemu-nvidia-gpu-snp: 4 failed, 0 warning(s)",
    ] {
        assert!(has_line(&shown, line), "{line:?} in\n{shown}");
    }
    assert!(
        shown.contains("— fix: kata-gpu --host-root $ROOT install --profile snp --artifacts SRC"),
        "{shown}"
    );

    // The shims: ours next to containerd, Kata's where the settings say. A file under our
    // shim's name that does not run is no shim containerd can start.
    touch(
        &sim,
        "opt/containerd/bin/containerd-shim-kata-qemu-nvidia-gpu-snp-v2",
    );
    touch(&sim, "opt/kata/bin/containerd-shim-kata-v2");
    let shown = text_on(&sim, &doctor(&sim, &[]));
    assert!(
        has_line(
            &shown,
            "FAIL  kata-gpu shim: cannot run $ROOT/opt/containerd/bin/containerd-shim-kata-qemu-nvidia-gpu-snp-v2 -v: "
        ),
        "{shown}"
    );
    let shim = kata_gpu_tests::workspace_bin(
        "kata-gpu-shim",
        "containerd-shim-kata-qemu-nvidia-gpu-snp-v2",
    );
    fs::copy(
        &shim,
        sim.path("opt/containerd/bin/containerd-shim-kata-qemu-nvidia-gpu-snp-v2"),
    )
    .expect("copy the shim");
    let shown = text_on(&sim, &doctor(&sim, &[]));
    assert!(
        has_line(
            &shown,
            &format!(
                "ok    kata-gpu shim: $ROOT/opt/containerd/bin/containerd-shim-kata-qemu-nvidia-gpu-snp-v2 present (containerd-shim-kata-qemu-nvidia-gpu-snp-v2 {} (commit ",
                env!("CARGO_PKG_VERSION")
            )
        ),
        "{shown}"
    );
    assert!(
        has_line(
            &shown,
            "ok    kata shim: $ROOT/opt/kata/bin/containerd-shim-kata-v2 present"
        ),
        "{shown}"
    );

    // A downstream named by the shim settings.
    fs::create_dir_all(sim.path("etc/kata-gpu")).expect("mkdir");
    fs::write(
        sim.path("etc/kata-gpu/shim.toml"),
        "downstream = \"/usr/bin/containerd-shim-kata-v2\"\n",
    )
    .expect("write settings");
    let shown = text_on(&sim, &doctor(&sim, &[]));
    assert!(
        has_line(
            &shown,
            "FAIL  kata shim: $ROOT/usr/bin/containerd-shim-kata-v2 missing (downstream in $ROOT/etc/kata-gpu/shim.toml)"
        ),
        "{shown}"
    );

    // Issue 24 item 1: annotation mode is said, as a warning with its fix.
    fs::write(
        sim.path("etc/kata-gpu/shim.toml"),
        "device_source = \"annotations\"\n",
    )
    .expect("write settings");
    let shown = text_on(&sim, &doctor(&sim, &[]));
    assert!(
        has_line(
            &shown,
            "WARN  device source: pod annotations, unchecked by kubelet: whoever creates a sandbox names any GPU (device_source in $ROOT/etc/kata-gpu/shim.toml) — fix: on a Kubernetes node remove device_source from the kata-gpu shim settings"
        ),
        "{shown}"
    );
    let status = text(
        &Command::new(env!("CARGO_BIN_EXE_kata-gpu"))
            .args([
                "status",
                "--containerd",
                "/opt/containerd/bin/containerd",
                "--host-root",
            ])
            .arg(sim.root())
            .output()
            .expect("run kata-gpu"),
    );
    assert!(
        status.contains("  devices from:    annotations\n"),
        "{status}"
    );
}

#[test]
fn missing_cdi_spec_fails_with_the_generate_fix() {
    let sim = SimHost::h100_pcie(VfioMode::Legacy);
    let shown = text_on(&sim, &doctor(&sim, &["--profile", "gpu"]));
    assert!(
        has_line(
            &shown,
            "FAIL  cdi: missing nvidia.com/pgpu=0, nvidia.com/pgpu=0000:41:00.0, nvidia.com/pgpu=40"
        ),
        "{shown}"
    );
    assert!(
        shown.contains("— fix: kata-gpu --host-root $ROOT cdi generate"),
        "{shown}"
    );
    // Legacy VFIO: fine for plain passthrough, not for confidential guests.
    assert!(has_line(&shown, "WARN  iommufd: "), "{shown}");
    let shown = text_on(&sim, &doctor(&sim, &[]));
    assert!(has_line(&shown, "FAIL  iommufd: "), "{shown}");
}

#[test]
fn no_iommu_fails_with_the_kernel_command_line_hint() {
    let sim = SimHost::no_iommu();
    let out = doctor(&sim, &[]);
    let shown = text_on(&sim, &out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        has_line(
            &shown,
            "FAIL  iommu: disabled: /sys/kernel/iommu_groups is empty — fix: enable the IOMMU (AMD-Vi) in the firmware setup and reboot; the kernel turns it on by itself, no parameter is needed (now: BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro)"
        ),
        "{shown}"
    );
    assert!(
        has_line(
            &shown,
            "FAIL  gpu 0000:41:00.0: 10de:2331 driver no driver, no IOMMU group"
        ),
        "{shown}"
    );
    assert!(
        has_line(&shown, "FAIL  iommufd: /dev/iommu missing"),
        "{shown}"
    );
}

#[test]
fn no_snp_fails_the_snp_profile_but_not_the_gpu_profile() {
    let sim = SimHost::no_snp();
    let shown = text_on(&sim, &doctor(&sim, &["--profile", "snp"]));
    assert!(
        has_line(&shown, "FAIL  sev-snp: kvm_amd does not report sev_snp"),
        "{shown}"
    );
    let shown = text_on(&sim, &doctor(&sim, &["--profile", "gpu"]));
    assert!(
        has_line(&shown, "ok    tee: the gpu profile needs no SEV-SNP or TDX"),
        "{shown}"
    );
    assert!(!shown.contains("sev-snp"), "{shown}");
    let shown = text_on(&sim, &doctor(&sim, &["--profile", "tdx"]));
    assert!(
        has_line(&shown, "FAIL  tdx: kvm_intel does not report tdx"),
        "{shown}"
    );
}

#[test]
fn a_gpu_bound_to_nvidia_fails_with_the_bind_fix() {
    let sim = SimHost::gpu_bound_to_nvidia();
    let shown = text_on(&sim, &doctor(&sim, &[]));
    assert!(
        has_line(
            &shown,
            "FAIL  gpu 0000:41:00.0: 10de:2331 driver nvidia, IOMMU group 40, CC-capable — fix: kata-gpu --host-root $ROOT vfio bind 0000:41:00.0"
        ),
        "{shown}"
    );
    // Nothing to pass through, so nothing in the host spec: consistent.
    assert!(
        has_line(&shown, "ok    cdi: no passthrough devices"),
        "{shown}"
    );
}

#[test]
fn an_a100_warns_that_it_is_not_cc_capable() {
    let sim = SimHost::a100();
    sim.write_cdi_specs();
    let shown = text_on(&sim, &doctor(&sim, &[]));
    assert!(
        has_line(
            &shown,
            "WARN  gpu 0000:41:00.0: 10de:20b5 driver vfio-pci, IOMMU group 40, NOT CC-capable — fix: use a CC-capable GPU (10de:2330"
        ),
        "{shown}"
    );
    let shown = text_on(&sim, &doctor(&sim, &["--profile", "gpu"]));
    assert!(
        has_line(&shown, "ok    gpu 0000:41:00.0: 10de:20b5"),
        "{shown}"
    );
}

#[test]
fn a_stale_cdi_spec_fails() {
    let old = SimHost::h100_pcie(VfioMode::Iommufd);
    old.write_cdi_specs();
    let sim = SimHost::new();
    fs::copy(
        old.path("var/run/cdi/nvidia.com-pgpu.yaml"),
        sim.path("var/run/cdi/nvidia.com-pgpu.yaml"),
    )
    .expect("copy spec");
    let out = doctor(&sim, &["--profile", "gpu"]);
    let shown = text_on(&sim, &out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        has_line(
            &shown,
            "FAIL  cdi: names devices the host no longer has: nvidia.com/pgpu=0, nvidia.com/pgpu=0000:41:00.0, nvidia.com/pgpu=40, nvidia.com/pgpu=vfio0 — fix: kata-gpu --host-root $ROOT cdi generate"
        ),
        "{shown}"
    );
    assert!(
        has_line(&shown, "WARN  gpus: no NVIDIA GPU or NVSwitch found"),
        "{shown}"
    );
}

/// Issue 19: `--labels` printed labels with exit 0 on a host whose checks fail, so a node
/// not ready got the label the RuntimeClass selects. Labels now follow the checks (the
/// labels of a ready node: `node_life`); the values per host are doctor_checks' unit tests.
#[test]
fn labels_are_refused_while_a_check_fails() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    sim.write_cdi_specs();
    let out = doctor(&sim, &["--labels"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "kata-gpu: no labels: 4 of kata-qemu-nvidia-gpu-snp's checks fail (containerd, artifacts, \
             kata-gpu shim, kata shim); kata-gpu --host-root {} doctor --profile snp says why and how to fix them\n",
            sim.root().display()
        )
    );

    let sim = SimHost::no_snp();
    let out = doctor(&sim, &["--labels", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        err["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("no labels: ") && e.contains("sev-snp")),
        "{err}"
    );
}

#[test]
fn json_report_shape() {
    let sim = SimHost::a100();
    sim.write_cdi_specs();
    let out = doctor(&sim, &["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["profile"], "snp");
    assert_eq!(v["handler"], "kata-qemu-nvidia-gpu-snp");
    assert_eq!(v["ok"], false);
    assert_eq!(v["warnings"], 1);
    let checks = v["checks"].as_array().expect("checks");
    assert_eq!(
        v["failures"],
        checks.iter().filter(|c| c["verdict"] == "fail").count()
    );
    assert_eq!(checks[0]["name"], "kvm");
    assert_eq!(checks[0]["verdict"], "ok");
    assert_eq!(checks[0]["fix"], serde_json::Value::Null);
    let gpu = checks
        .iter()
        .find(|c| c["name"] == "gpu 0000:41:00.0")
        .expect("gpu check");
    assert_eq!(gpu["verdict"], "warn");
    assert!(gpu["fix"].as_str().expect("fix").contains("CC-capable"));
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    for name in [
        "iommu",
        "sev-snp",
        "iommufd",
        "containerd",
        "artifacts",
        "kata-gpu shim",
        "kata shim",
        "cdi",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
}

#[test]
fn the_iommu_fix_follows_the_cpu_vendor_and_never_says_amd_iommu_on() {
    // (host, the doctor's iommu line, the refusal of vfio bind)
    let amd_off = SimHost::no_iommu();
    amd_off.set_cmdline("BOOT_IMAGE=/vmlinuz ro iommu=off");
    let cases = [
        (
            SimHost::no_iommu(),
            "FAIL  iommu: disabled: /sys/kernel/iommu_groups is empty — fix: enable the IOMMU \
             (AMD-Vi) in the firmware setup and reboot; the kernel turns it on by itself, no \
             parameter is needed (now: BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro)",
            "enable the IOMMU (AMD-Vi) in the firmware setup",
        ),
        (
            SimHost::intel_no_iommu(),
            "FAIL  iommu: disabled: /sys/kernel/iommu_groups is empty — fix: add intel_iommu=on \
             to the kernel command line and reboot (and enable VT-d in the firmware setup) (now: \
             BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro)",
            "add intel_iommu=on to the kernel command line",
        ),
        (
            amd_off,
            "FAIL  iommu: disabled: /sys/kernel/iommu_groups is empty — fix: remove iommu=off \
             from the kernel command line and reboot (now: BOOT_IMAGE=/vmlinuz ro iommu=off)",
            "the IOMMU is off; remove iommu=off from the kernel command line and reboot",
        ),
    ];
    for (sim, line, bind) in cases {
        let shown = text_on(&sim, &doctor(&sim, &[]));
        assert!(has_line(&shown, line), "{shown}");
        assert!(!shown.contains("amd_iommu=on"), "{shown}");
        let out = kata_gpu_tests::run_on_host(
            env!("CARGO_BIN_EXE_kata-gpu"),
            &sim,
            &["vfio", "bind", "--dry-run"],
        );
        let shown = text_on(&sim, &out);
        assert_eq!(out.status.code(), Some(1), "{shown}");
        assert!(shown.contains(bind), "{shown}");
        assert!(!shown.contains("amd_iommu=on"), "{shown}");
    }
}

#[test]
fn a_gpu_sharing_its_group_with_an_nvme_is_not_told_to_run_a_bind_that_refuses() {
    let sim = SimHost::gpu_with_nvme_in_group();
    let shown = text_on(&sim, &doctor(&sim, &[]));
    assert!(
        has_line(
            &shown,
            "FAIL  gpu 0000:41:00.0: 10de:2331 driver nvidia, IOMMU group 40, CC-capable — fix: \
             `kata-gpu --host-root $ROOT vfio bind 0000:41:00.0` refuses: 0000:42:00.0 (144d:a80a, on nvme, group 40) shares an IOMMU group with a GPU or \
             NVSwitch and is not an NVIDIA function: binding would take it from the host; give \
             the GPU an IOMMU group of its own (another slot, or ACS on in the firmware), or pass \
             --force to bind it too"
        ),
        "{shown}"
    );
}

#[test]
fn a_gpu_without_a_readable_resource_file_is_warned_about_naming_the_file() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    sim.remove_resource("0000:41:00.0");
    let shown = text_on(&sim, &doctor(&sim, &[]));
    assert!(
        has_line(
            &shown,
            "WARN  gpu 0000:41:00.0: 10de:2331 driver vfio-pci, IOMMU group 40, CC-capable, \
             /sys/bus/pci/devices/0000:41:00.0/resource unreadable (No such file or directory \
             (os error 2)) — fix: a sandbox asking for it is refused: its root port cannot be \
             sized for its BARs; check that /sys is the host's sysfs"
        ),
        "{shown}"
    );
}

#[test]
fn the_address_bits_a_whole_board_needs_are_shown_and_a_narrow_host_warned() {
    let sim = SimHost::hgx_8x_h100();
    sim.write_cdi_specs();
    let shown = text_on(&sim, &doctor(&sim, &[]));
    assert!(
        has_line(
            &shown,
            "ok    address bits: a sandbox of all 8 GPUs on vfio-pci needs 41 physical address \
             bits (the plan writes phys-bits=41 into each such sandbox's cpu_features; the CPU \
             model alone gives 40); SEV-SNP guests here can have 51 (52 host bits less 1 \
             reduced by SEV, below the C-bit at 51)"
        ),
        "{shown}"
    );
    // A host whose CPU has 40 physical address bits: two GPUs per sandbox at most.
    sim.set_cpuinfo("processor\t: 0\naddress sizes\t: 40 bits physical, 48 bits virtual\n");
    let shown = text_on(&sim, &doctor(&sim, &[]));
    assert!(
        has_line(
            &shown,
            "WARN  address bits: a sandbox of all 8 GPUs on vfio-pci needs 41 physical address \
             bits, but SEV-SNP guests here can have 39 (40 host bits less 1 reduced by SEV, \
             below the C-bit at 51): at most 2 GPUs fit in one sandbox — fix: ask for at most \
             2 GPUs (or less memory) per pod; larger sandboxes are refused at Create"
        ),
        "{shown}"
    );
}

/// Issue 24 item 7: after a rebind renumbered the cdevs, the spec on disk names each GPU's
/// node for the other one; doctor fails naming every name that points elsewhere than sysfs
/// says, with the regenerate fix.
#[test]
fn a_spec_whose_names_point_at_other_devices_fails() {
    let mut sim = SimHost::new();
    for (bdf, group) in [("0000:41:00.0", 40), ("0000:42:00.0", 41)] {
        sim.add_exposed(
            &kata_gpu_tests::simhost::Function::hopper(bdf, 0x2331, group, 0),
            VfioMode::Iommufd,
        );
    }
    sim.write_cdi_specs();
    let spec = sim.path("var/run/cdi/nvidia.com-pgpu.yaml");
    let text = fs::read_to_string(&spec).expect("spec");
    let swapped = text
        .replace("/dev/vfio/devices/vfio0", "@")
        .replace("/dev/vfio/devices/vfio1", "/dev/vfio/devices/vfio0")
        .replace('@', "/dev/vfio/devices/vfio1");
    assert_ne!(swapped, text);
    fs::write(&spec, swapped).expect("write");
    let out = doctor(&sim, &["--profile", "gpu"]);
    let shown = text_on(&sim, &out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        has_line(
            &shown,
            "FAIL  cdi: different device nodes for nvidia.com/pgpu=0, nvidia.com/pgpu=0000:41:00.0, nvidia.com/pgpu=0000:42:00.0, nvidia.com/pgpu=1, nvidia.com/pgpu=40, nvidia.com/pgpu=41"
        ),
        "{shown}"
    );
}

/// In kubelet device mode (the default) every pod's Create asks kubelet's PodResources:
/// on a kubelet node, doctor fails a missing or silent socket (within a bound) with the fix,
/// and passes one that answers.
#[test]
fn doctor_checks_that_kubelets_pod_resources_socket_answers() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    sim.write_cdi_specs();
    fs::create_dir_all(sim.path("var/lib/kubelet")).expect("a kubelet node");
    let pod_resources = |o: &Output| {
        text_on(&sim, o)
            .lines()
            .find(|l| l.contains("kubelet PodResources"))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no PodResources check: {}", text(o)))
    };
    let line = pod_resources(&doctor(&sim, &[]));
    assert!(line.starts_with("FAIL"), "{line}");
    assert!(
        line.contains("/var/lib/kubelet/pod-resources/kubelet.sock") && line.contains("fix:"),
        "{line}"
    );

    // A socket that accepts and never answers: failed within the bound, not hung.
    let socket = sim.path("var/lib/kubelet/pod-resources/kubelet.sock");
    fs::create_dir_all(socket.parent().expect("parent")).expect("mkdir");
    let silent = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let started = std::time::Instant::now();
    let line = pod_resources(&doctor(&sim, &[]));
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert!(
        line.starts_with("FAIL") && line.contains("no answer within"),
        "{line}"
    );
    drop(silent);
    fs::remove_file(&socket).expect("rm socket");

    let _kubelet = kata_gpu_tests::kubelet::PodResourcesStandIn::start(&socket, Vec::new());
    let line = pod_resources(&doctor(&sim, &[]));
    assert!(line.starts_with("ok"), "{line}");
}

/// A handler registered with `--runtime-path` runs the shim from there, off containerd's
/// PATH: doctor judges the shim status found there (one `-v`), not a PATH lookup that
/// misses it (issue 28: doctor probed again without the runtime path).
#[test]
fn the_shim_a_handler_names_by_runtime_path_is_the_one_doctor_checks() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    sim.write_cdi_specs();
    let shim = kata_gpu_tests::workspace_bin(
        "kata-gpu-shim",
        "containerd-shim-kata-qemu-nvidia-gpu-snp-v2",
    );
    let placed = sim.path("opt/kata-gpu/bin/containerd-shim-kata-qemu-nvidia-gpu-snp-v2");
    fs::create_dir_all(placed.parent().expect("parent")).expect("mkdir");
    fs::copy(&shim, &placed).expect("the shim off PATH");
    let config = sim.path("etc/containerd/config.toml");
    fs::create_dir_all(config.parent().expect("parent")).expect("mkdir");
    fs::write(&config, "version = 2\n").expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_kata-gpu"))
        .args([
            "containerd",
            "register",
            "--config-version",
            "2",
            "--runtime-path",
            "/opt/kata-gpu/bin/containerd-shim-kata-qemu-nvidia-gpu-snp-v2",
            "--host-root",
        ])
        .arg(sim.root())
        .output()
        .expect("register");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = text_on(&sim, &doctor(&sim, &[]));
    assert!(
        has_line(
            &shown,
            "ok    kata-gpu shim: $ROOT/opt/kata-gpu/bin/containerd-shim-kata-qemu-nvidia-gpu-snp-v2 present (containerd-shim-kata-qemu-nvidia-gpu-snp-v2 "
        ),
        "{shown}"
    );
}
