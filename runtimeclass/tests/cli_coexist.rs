//! kata-gpu beside the others that set up the same things: NVIDIA's sandbox device plugin
//! (its CDI spec `/var/run/cdi/nvidia.yaml` defines `nvidia.com/pgpu` too) and kata-deploy
//! (it registers the handler names `kata-qemu-nvidia-gpu-snp`/`-tdx`). kata-gpu detects
//! them and refuses with the fix, writing nothing, or adopts the spec when told
//! (`--skip-cdi`).

mod common;

use std::fs;

use common::{kata_gpu, text, tree_but_lock as tree};
use kata_gpu_tests::{SimHost, VfioMode, WriteCdiSpecs};

/// A spec as NVIDIA's sandbox device plugin writes one for the host's GPU.
const PLUGIN_SPEC: &str = "cdiVersion: 0.5.0\nkind: nvidia.com/pgpu\ndevices:\n- name: \"0\"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/vfio/devices/vfio0\n      type: c\n      major: 237\n      minor: 0\ncontainerEdits: {}\n";

fn one_line_error(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

/// Issue 19 item 3: with the sandbox device plugin's spec there, `cdi generate` wrote ours
/// beside it, `pgpu=0` was defined twice and usable by neither, and doctor's fix (`cdi
/// generate`) looped.
#[test]
fn beside_the_sandbox_device_plugins_spec_kata_gpu_writes_none_of_its_own() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    // containerd finds the shim, as after `make install`: install succeeds.
    kata_gpu_tests::place_built_shims(&sim);
    fs::write(sim.path("var/run/cdi/nvidia.yaml"), PLUGIN_SPEC).expect("plugin spec");
    let before = tree(sim.root());
    let theirs = format!("{}/var/run/cdi/nvidia.yaml", sim.root().display());
    let want = format!(
        "{theirs} (not kata-gpu's) defines nvidia.com/pgpu too: a device two specs define is \
         usable by neither, so kata-gpu writes no spec beside it; on a node kata-gpu sets up, \
         turn NVIDIA's sandbox device plugin off (node label \
         nvidia.com/gpu.deploy.sandbox-device-plugin=false) and remove {theirs}, or keep that \
         spec and install with --skip-cdi; nothing was written\n"
    );
    for args in [
        &["cdi", "generate"][..],
        &["install", "--config-version", "2"],
    ] {
        let err = one_line_error(&kata_gpu(&sim, args));
        assert_eq!(err, format!("kata-gpu: {want}"), "{args:?}");
        assert_eq!(tree(sim.root()), before, "{args:?} wrote");
    }

    // Both specs there (written before this check existed): doctor names the conflict and
    // a fix that is not `kata-gpu cdi generate`.
    sim.write_cdi_specs();
    let out = kata_gpu(&sim, &["doctor", "--containerd", "/nonexistent/containerd"]);
    let shown = text(&out);
    let line = shown
        .lines()
        .find(|l| l.starts_with("FAIL  cdi: "))
        .unwrap_or_else(|| panic!("no cdi failure: {shown}"));
    assert!(
        line.contains(&format!("{theirs} (not kata-gpu's) and ")) && line.contains("remove one: "),
        "{line}"
    );
    assert!(!line.contains("cdi generate"), "{line}");

    // Adopting theirs: install --skip-cdi sets up the rest and leaves the spec to them.
    fs::remove_file(sim.path("var/run/cdi/nvidia.com-pgpu.yaml")).expect("rm ours");
    let out = kata_gpu(&sim, &["install", "--config-version", "2", "--skip-cdi"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!sim.path("var/run/cdi/nvidia.com-pgpu.yaml").exists());
    assert_eq!(
        fs::read_to_string(sim.path("var/run/cdi/nvidia.yaml")).expect("theirs"),
        PLUGIN_SPEC
    );
}

/// Issue 19 item 3: kata-deploy's handler of the same name (Kata's shim through
/// runtime_path) was patched in place, so containerd kept running Kata's shim directly.
/// Register and install refuse, in the main config or in a file it imports.
#[test]
fn a_handler_of_our_name_that_kata_gpu_did_not_register_is_refused() {
    let kata_deploy = |name: &str| {
        format!(
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{name}]\n  runtime_type = \"io.containerd.{name}.v2\"\n  runtime_path = \"/opt/kata/bin/containerd-shim-kata-v2\"\n  privileged_without_host_devices = true\n  pod_annotations = [\"io.katacontainers.*\"]\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{name}.options]\n    ConfigPath = \"/opt/kata/share/defaults/kata-containers/configuration-qemu-nvidia-gpu-snp.toml\"\n"
        )
    };
    for (profile, handler, imported) in [
        ("snp", "kata-qemu-nvidia-gpu-snp", false),
        ("tdx", "kata-qemu-nvidia-gpu-tdx", true),
    ] {
        let sim = SimHost::h100_pcie(VfioMode::Iommufd);
        fs::create_dir_all(sim.path("etc/containerd/conf.d")).expect("mkdir");
        let (main, file) = if imported {
            fs::write(
                sim.path("etc/containerd/conf.d/kata-deploy.toml"),
                kata_deploy(handler),
            )
            .expect("drop-in");
            (
                "version = 2\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n".to_owned(),
                "etc/containerd/conf.d/kata-deploy.toml",
            )
        } else {
            (
                format!("version = 2\n{}", kata_deploy(handler)),
                "etc/containerd/config.toml",
            )
        };
        fs::write(sim.path("etc/containerd/config.toml"), &main).expect("config");
        let before = tree(sim.root());
        for args in [
            vec!["containerd", "register", "--profile", profile],
            vec!["install", "--profile", profile],
        ] {
            let err = one_line_error(&kata_gpu(&sim, &args));
            assert!(
                err.starts_with(&format!(
                    "kata-gpu: {}/{file} already has a {handler} handler that kata-gpu did not register and that runs something else (runtime_path /opt/kata/bin/containerd-shim-kata-v2; kata-deploy registers this name): containerd would run that and not the kata-gpu shim; ",
                    sim.root().display()
                )) && err.ends_with("; nothing was changed\n"),
                "{args:?}: {err}"
            );
            assert_eq!(tree(sim.root()), before, "{args:?} wrote");
        }
        // Another profile's name is free.
        let out = kata_gpu(&sim, &["containerd", "register", "--profile", "gpu"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
}
