//! `kata-gpu cdi generate` and `kata-gpu plan` on simulated hosts, as a user runs them.

use std::process::Output;

use kata_gpu_tests::{SimHost, VfioMode, WriteCdiSpecs};

fn kata_gpu(root: &SimHost, args: &[&str]) -> Output {
    kata_gpu_tests::run_on_host(env!("CARGO_BIN_EXE_kata-gpu"), root, args)
}

fn text(o: &Output) -> String {
    kata_gpu_tests::output_text(o)
}

#[test]
fn generate_then_plan_an_h100() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let out = kata_gpu(&sim, &["cdi", "generate"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let spec = sim.path("var/run/cdi/nvidia.com-pgpu.yaml");
    assert!(
        text(&out).contains(&format!(
            "wrote {}: nvidia.com/pgpu names: 0, 40, vfio0",
            spec.display()
        )),
        "{}",
        text(&out)
    );
    let out = kata_gpu(&sim, &["cdi", "validate", &spec.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let out = kata_gpu(
        &sim,
        &[
            "plan",
            "--annotation",
            "cdi.k8s.io/gpu=nvidia.com/pgpu=0",
            "--cbitpos",
            "51",
        ],
    );
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(shown.contains("  rp0  0000:41:00.0  10de:2331"), "{shown}");
    assert!(shown.contains("-object sev-snp-guest,id=snp,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on,policy=0x30000"), "{shown}");
    assert!(
        shown.contains("-device vfio-pci,host=0000:41:00.0,id=vfio0,bus=rp0,iommufd=iommufd0"),
        "{shown}"
    );
    assert!(
        shown.contains("kata config diff (base: the snp template shipped with kata-gpu"),
        "{shown}"
    );
    assert!(
        shown.contains("  hypervisor.qemu.pcie_root_port: 0 → 1"),
        "{shown}"
    );

    let out = kata_gpu(
        &sim,
        &[
            "plan",
            "--json",
            "--profile",
            "gpu",
            "--annotation",
            "cdi.k8s.io/gpu=nvidia.com/pgpu=vfio0",
        ],
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(plan["handler"], "kata-qemu-nvidia-gpu");
    assert_eq!(plan["devices"][0]["bdf"], "0000:41:00.0");
    assert_eq!(plan["overrides"]["cold_plug_vfio"], "root-port");
}

#[test]
fn plan_refusals_are_one_line_with_the_fix_and_exit_1() {
    let sim = SimHost::h100_pcie(VfioMode::Legacy);
    assert_eq!(kata_gpu(&sim, &["cdi", "generate"]).status.code(), Some(0));
    let out = kata_gpu(
        &sim,
        &["plan", "--annotation", "cdi.k8s.io/gpu=nvidia.com/pgpu=0"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(
            "kata-gpu: the sandbox cannot be planned: /dev/vfio/40 is a legacy VFIO group node"
        ),
        "{err}"
    );

    let out = kata_gpu(
        &sim,
        &["plan", "--annotation", "cdi.k8s.io/gpu=nvidia.com/pgpu=9"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out)
            .contains("nvidia.com/pgpu=9 is not defined; nvidia.com/pgpu has: 0, 0000:41:00.0, 40"),
        "{}",
        text(&out)
    );

    assert_eq!(
        kata_gpu(&sim, &["plan", "--profile", "sev"]).status.code(),
        Some(2)
    );
    assert_eq!(
        kata_gpu(&sim, &["plan", "--annotation", "novalue"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn generate_on_a_host_without_vfio_gpus_writes_nothing_and_says_why() {
    let sim = SimHost::gpu_bound_to_nvidia();
    let out = kata_gpu(&sim, &["cdi", "generate"]);
    assert_eq!(out.status.code(), Some(1));
    let shown = text(&out);
    assert!(
        shown.contains("run `kata-gpu vfio bind 0000:41:00.0`"),
        "{shown}"
    );
    assert!(shown.contains("nothing written"), "{shown}");
    assert!(!sim.path("var/run/cdi/nvidia.com-pgpu.yaml").exists());

    let sim = SimHost::hgx_8x_h100();
    let out = kata_gpu(&sim, &["cdi", "generate", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out).contains("kind: nvidia.com/nvswitch"));
    assert!(
        !sim.path("var/run/cdi/nvidia.com-pgpu.yaml").exists(),
        "dry run wrote a file"
    );
}

#[test]
fn plan_reads_a_pod_manifest_or_a_bundle() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    sim.write_cdi_specs();
    let pod = sim.path("pod.yaml");
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: cuda\n  annotations:\n    cdi.k8s.io/gpu: nvidia.com/pgpu=0\n    io.katacontainers.config.hypervisor.default_memory: \"16384\"\nspec:\n  runtimeClassName: kata-qemu-nvidia-gpu\n  containers:\n  - name: a\n    resources:\n      limits:\n        nvidia.com/pgpu: 1\n        memory: 16Gi\n";
    std::fs::write(&pod, manifest).expect("pod");
    let out = kata_gpu(&sim, &["plan", "--pod", &pod.display().to_string()]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains("\nprofile: gpu (kata-qemu-nvidia-gpu)"),
        "the pod's runtime class: {shown}"
    );
    assert!(
        shown.contains("hypervisor.qemu.default_memory: 8192 → 16384"),
        "{shown}"
    );

    std::fs::write(&pod, manifest.replace("kata-qemu-nvidia-gpu", "runc")).expect("pod");
    let out = kata_gpu(&sim, &["plan", "--pod", &pod.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("runtimeClassName \"runc\" is not a kata-gpu runtime class"),
        "{}",
        text(&out)
    );
    std::fs::write(&pod, "kind: Deployment\n").expect("not a pod");
    let out = kata_gpu(&sim, &["plan", "--pod", &pod.display().to_string()]);
    assert!(
        text(&out).contains("kind is \"Deployment\", not Pod"),
        "{}",
        text(&out)
    );

    let bundle = sim.path("bundle");
    std::fs::create_dir_all(&bundle).expect("bundle");
    std::fs::write(
        bundle.join("config.json"),
        r#"{"ociVersion":"1.0.2","linux":{"devices":[{"path":"/dev/vfio/devices/vfio0","type":"c","major":237,"minor":0}]}}"#,
    )
    .expect("config.json");
    let out = kata_gpu(
        &sim,
        &["plan", "--bundle", &bundle.display().to_string(), "--json"],
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(plan["devices"][0]["bdf"], "0000:41:00.0", "{}", text(&out));
    assert_eq!(
        plan["devices"][0]["reason"]["spec_node"]["node"],
        "/dev/vfio/devices/vfio0"
    );
}

/// Issue 19 item 10: a hand-written bundle `config.json` without `process.user` said
/// "serde failed: missing field `user`". The key is now named with what to add, and the
/// same file with it added plans.
#[test]
fn a_bundle_missing_a_required_key_is_named_with_the_fix() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    sim.write_cdi_specs();
    let bundle = sim.path("bundle");
    std::fs::create_dir_all(&bundle).expect("bundle");
    let config = bundle.join("config.json");
    let dir = bundle.display().to_string();
    for (body, said) in [
        (
            r#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/"},"annotations":{"cdi.k8s.io/gpu":"nvidia.com/pgpu=0"}}"#,
            format!(
                "kata-gpu: {}: process.user is missing: an OCI runtime spec needs it (containerd always writes it); add \"user\": {{\"uid\": 0, \"gid\": 0}}\n",
                config.display()
            ),
        ),
        (
            "{\"ociVersion\": \n x}",
            format!(
                "kata-gpu: {}:2:2: not JSON: expected value\n",
                config.display()
            ),
        ),
    ] {
        std::fs::write(&config, body).expect("config.json");
        let out = kata_gpu(&sim, &["plan", "--bundle", &dir]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stderr), said);
    }
    std::fs::write(
        &config,
        r#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}},"annotations":{"cdi.k8s.io/gpu":"nvidia.com/pgpu=0"}}"#,
    )
    .expect("config.json");
    let out = kata_gpu(&sim, &["plan", "--bundle", &dir]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Issue 18 item 5: `/var/run` of the simulated host is a symlink to an absolute path, as
/// on most distributions (`/var/run -> /run`): `cdi generate` writes the spec where the host
/// would find it, inside the root, never outside.
#[test]
fn generate_resolves_a_symlinked_var_run_inside_the_host_root() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let outside = tempfile::tempdir().expect("outside");
    let var_run = sim.path("var/run");
    std::fs::remove_dir_all(&var_run).expect("rm the simulated /var/run");
    std::os::unix::fs::symlink(outside.path(), &var_run).expect("symlink");
    let out = kata_gpu(&sim, &["cdi", "generate"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        std::fs::read_dir(outside.path()).expect("ls").count(),
        0,
        "wrote outside the root: {}",
        text(&out)
    );
    let inside = sim
        .root()
        .join(outside.path().strip_prefix("/").expect("absolute"))
        .join("cdi/nvidia.com-pgpu.yaml");
    assert!(inside.is_file(), "{}", text(&out));
}

/// What `kata-gpu plan` says of one pod annotation beside a GPU request, under a profile.
fn plan_with(sim: &SimHost, profile: &str, annotation: &str) -> Output {
    kata_gpu(
        sim,
        &[
            "plan",
            "--profile",
            profile,
            "--annotation",
            "cdi.k8s.io/gpu=nvidia.com/pgpu=0",
            "--annotation",
            annotation,
        ],
    )
}

#[test]
fn kata_annotations_off_the_profiles_allow_list_are_refused() {
    let mut sim = SimHost::h100_pcie(VfioMode::Legacy);
    // The legacy group node serves the gpu profile; iommufd too for the confidential ones.
    sim.expose("0000:41:00.0", 40, VfioMode::Iommufd);
    sim.write_cdi_specs();
    // (annotation, profile, refused)
    let table = [
        (
            "io.katacontainers.config.runtime.disable_guest_seccomp=true",
            "snp",
            true,
        ),
        (
            "io.katacontainers.config.runtime.disable_guest_seccomp=true",
            "gpu",
            true,
        ),
        (
            "io.katacontainers.config.runtime.disable_new_netns=true",
            "tdx",
            true,
        ),
        (
            "io.katacontainers.config.runtime.vfio_mode=vfio",
            "snp",
            true,
        ),
        (
            "io.katacontainers.config.runtime.experimental=force_guest_pull",
            "snp",
            true,
        ),
        (
            "io.katacontainers.config.agent.kernel_modules=evil",
            "snp",
            true,
        ),
        (
            "io.katacontainers.config.agent.policy=cGFja2FnZQ==",
            "snp",
            true,
        ),
        (
            "io.katacontainers.config.hypervisor.enable_iommu=true",
            "snp",
            true,
        ),
        (
            "io.katacontainers.config.hypervisor.enable_iommu=true",
            "gpu",
            false,
        ),
        (
            "io.katacontainers.config.hypervisor.cc_init_data=H4sI",
            "snp",
            false,
        ),
        (
            "io.katacontainers.config.hypervisor.cc_init_data=H4sI",
            "gpu",
            true,
        ),
        (
            "io.katacontainers.config.hypervisor.default_vcpus=4",
            "snp",
            false,
        ),
    ];
    for (annotation, profile, refused) in table {
        let out = plan_with(&sim, profile, annotation);
        let shown = text(&out);
        let key = annotation.split_once('=').map_or(annotation, |(k, _)| k);
        if refused {
            assert_eq!(
                out.status.code(),
                Some(1),
                "{annotation} {profile}: {shown}"
            );
            assert!(
                shown.contains(&format!("pod annotation {key} is refused: ")),
                "{annotation} {profile}: {shown}"
            );
            assert_eq!(
                out.stderr.iter().filter(|&&b| b == b'\n').count(),
                1,
                "{shown}"
            );
        } else {
            assert_eq!(
                out.status.code(),
                Some(0),
                "{annotation} {profile}: {shown}"
            );
        }
    }
}

#[test]
fn kernel_params_with_quotes_or_unicode_whitespace_are_refused() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    sim.write_cdi_specs();
    let key = "io.katacontainers.config.hypervisor.kernel_params";
    for (value, found) in [
        ("\"init=/bin/sh\"", "a double quote"),
        ("quiet\u{a0}init=/bin/sh", "U+00A0"),
        ("quiet\u{85}console=ttyS0", "U+0085"),
    ] {
        let out = plan_with(&sim, "snp", &format!("{key}={value}"));
        let shown = text(&out);
        assert_eq!(out.status.code(), Some(1), "{value:?}: {shown}");
        assert!(
            shown.contains(&format!(
                "pod annotation {key} is refused: it holds {found}, "
            )),
            "{value:?}: {shown}"
        );
    }
    let out = plan_with(&sim, "snp", &format!("{key}=quiet init=/bin/sh"));
    assert!(
        text(&out).contains("\"init=/bin/sh\" replaces the guest's init"),
        "{}",
        text(&out)
    );
    let out = plan_with(
        &sim,
        "snp",
        &format!("{key}=agent.aa_kbc_params=cc_kbc::https://kbs.example:8080"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_gpu_without_a_readable_resource_file_is_refused_naming_the_file() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    sim.write_cdi_specs();
    sim.remove_resource("0000:41:00.0");
    let out = kata_gpu(
        &sim,
        &["plan", "--annotation", "cdi.k8s.io/gpu=nvidia.com/pgpu=0"],
    );
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("cannot read /sys/bus/pci/devices/0000:41:00.0/resource ("),
        "{shown}"
    );
    assert!(
        shown.contains("no mem-reserve or pref64-reserve"),
        "{shown}"
    );
    assert_eq!(
        out.stderr.iter().filter(|&&b| b == b'\n').count(),
        1,
        "{shown}"
    );
}
