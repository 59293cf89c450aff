//! `kata-gpu vfio bind | unbind` on simulated hosts, where the sysfs writes land in the tree.

use std::fs;
use std::process::Output;

use kata_gpu_tests::{SimHost, VfioMode};

fn kata_gpu(root: &SimHost, args: &[&str]) -> Output {
    kata_gpu_tests::run_on_host(env!("CARGO_BIN_EXE_kata-gpu"), root, args)
}

fn text(o: &Output) -> String {
    kata_gpu_tests::output_text(o)
}

fn read(sim: &SimHost, rel: &str) -> String {
    fs::read_to_string(sim.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// What a failed command wrote to stderr: exit 1 and one line, whatever went wrong.
fn one_line_error(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{}", text(o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{}", text(o));
    err.trim_end().to_owned()
}

// A simulated host's kernel never moves a device, so every real bind or unbind here is
// one the kernel did not carry out: read back, refused and put back. Binds the kernel
// does carry out are the shim's unit tests (`vfio::apply`), with a simulated kernel.
#[test]
fn bind_then_unbind_a_gpu_the_kernel_does_not_move() {
    let sim = SimHost::gpu_bound_to_nvidia();

    let out = kata_gpu(&sim, &["vfio", "bind", "--dry-run"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains("0000:41:00.0 10de:2331 group 40: nvidia → vfio-pci"),
        "{shown}"
    );
    assert!(
        shown.contains("  echo \"vfio-pci\" > /sys/bus/pci/devices/0000:41:00.0/driver_override"),
        "{shown}"
    );
    assert!(
        !sim.path("sys/bus/pci/devices/0000:41:00.0/driver_override")
            .exists(),
        "dry run wrote"
    );

    let out = kata_gpu(&sim, &["vfio", "bind", "0000:41:00.0"]);
    assert_eq!(
        one_line_error(&out),
        "kata-gpu: bind failed: 0000:41:00.0 is on nvidia, expected vfio-pci: the vfio-pci \
         driver is not loaded (modprobe vfio-pci); group 40 was put back as it was"
    );
    // Every write was made, then the override and the record were put back.
    assert_eq!(
        read(&sim, "sys/bus/pci/drivers/nvidia/unbind"),
        "0000:41:00.0"
    );
    assert_eq!(read(&sim, "sys/bus/pci/drivers_probe"), "0000:41:00.0");
    assert_eq!(
        read(&sim, "sys/bus/pci/devices/0000:41:00.0/driver_override"),
        "\n"
    );
    assert!(!sim.path("var/lib/kata-gpu/vfio/0000:41:00.0").exists());

    // As a bind the kernel carried out leaves it; a second bind changes nothing.
    sim.set_driver("0000:41:00.0", Some("vfio-pci"));
    fs::write(
        sim.path("sys/bus/pci/devices/0000:41:00.0/driver_override"),
        "vfio-pci",
    )
    .expect("override");
    fs::create_dir_all(sim.path("var/lib/kata-gpu/vfio")).expect("state dir");
    fs::write(sim.path("var/lib/kata-gpu/vfio/0000:41:00.0"), "nvidia\n").expect("record");
    let out = kata_gpu(&sim, &["vfio", "bind", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["changed"], 0);
    assert_eq!(v["steps"][0]["driver"], "vfio-pci");

    let out = kata_gpu(&sim, &["vfio", "unbind", "--dry-run"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(shown.contains("vfio-pci → nvidia"), "{shown}");

    let out = kata_gpu(&sim, &["vfio", "unbind"]);
    assert_eq!(
        one_line_error(&out),
        "kata-gpu: unbind failed: 0000:41:00.0 is on vfio-pci, expected nvidia: nvidia did \
         not take it, see dmesg for why; group 40 was put back as it was"
    );
    assert_eq!(
        read(&sim, "sys/bus/pci/drivers/vfio-pci/unbind"),
        "0000:41:00.0"
    );
    assert_eq!(
        read(&sim, "sys/bus/pci/drivers/nvidia/bind"),
        "0000:41:00.0"
    );
    // Still on vfio-pci, so its override and record are as the bind left them.
    assert_eq!(
        read(&sim, "sys/bus/pci/devices/0000:41:00.0/driver_override"),
        "vfio-pci"
    );
    assert_eq!(read(&sim, "var/lib/kata-gpu/vfio/0000:41:00.0"), "nvidia\n");
}

#[test]
fn a_gpu_in_use_is_refused_naming_the_process() {
    let sim = SimHost::gpu_bound_to_nvidia();
    sim.hold_open(1234, "nvidia-persiste", "/dev/nvidia0");
    let out = kata_gpu(&sim, &["vfio", "bind"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains(
            "0000:41:00.0 is in use by pid 1234 (nvidia-persiste), which holds /dev/nvidia0 open"
        ),
        "{shown}"
    );
    assert!(!sim
        .path("sys/bus/pci/devices/0000:41:00.0/driver_override")
        .exists());
}

#[test]
fn whole_group_with_audio_but_not_the_bridge() {
    let sim = SimHost::gpu_with_audio_and_bridge();
    sim.set_driver("0000:41:00.0", Some("nvidia"));
    sim.set_driver("0000:41:00.1", Some("snd_hda_intel"));
    let out = kata_gpu(
        &sim,
        &["vfio", "bind", "--json", "--dry-run", "0000:41:00.0"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let bdfs: Vec<_> = v["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["bdf"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(bdfs, ["0000:41:00.0", "0000:41:00.1"]);

    // The GPU does not move, so its group stops there and is put back: the audio
    // function is never touched, the bridge never is.
    let out = kata_gpu(&sim, &["vfio", "bind", "0000:41:00.0"]);
    let err = one_line_error(&out);
    assert!(
        err.starts_with("kata-gpu: bind failed: 0000:41:00.0 is on nvidia"),
        "{err}"
    );
    assert_eq!(
        read(&sim, "sys/bus/pci/devices/0000:41:00.0/driver_override"),
        "\n"
    );
    for untouched in ["0000:41:00.1", "0000:40:01.1"] {
        assert!(
            !sim.path(&format!("sys/bus/pci/devices/{untouched}/driver_override"))
                .exists(),
            "{untouched}"
        );
    }
}

#[test]
fn refusals_and_nothing_to_do() {
    let sim = SimHost::gpu_with_audio_and_bridge();
    let out = kata_gpu(&sim, &["vfio", "bind", "0000:40:01.1"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("0000:40:01.1 (1022:14ab, class 060400) is not an NVIDIA GPU or NVSwitch"),
        "{shown}"
    );

    let out = kata_gpu(&sim, &["vfio", "bind", "not-a-bdf"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let sim = SimHost::no_iommu();
    let out = kata_gpu(&sim, &["vfio", "bind"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("has no IOMMU group"), "{shown}");

    let sim = SimHost::new();
    let out = kata_gpu(&sim, &["vfio", "unbind"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("no NVIDIA GPU or NVSwitch"), "{shown}");

    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let out = kata_gpu(&sim, &["vfio", "bind"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(shown.contains("already on vfio-pci"), "{shown}");
    assert!(
        shown.contains("0 function(s) bound to vfio-pci, 1 unchanged"),
        "{shown}"
    );
}

/// Every file under the simulated root with its content, to prove a refusal wrote nothing.
fn snapshot(sim: &SimHost) -> Vec<(String, Vec<u8>)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<(String, Vec<u8>)>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .map(|d| d.filter_map(Result::ok).collect())
            .unwrap_or_default();
        entries.sort_by_key(fs::DirEntry::path);
        for e in entries {
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                walk(&e.path(), out);
            } else if ft.is_file() {
                out.push((
                    e.path().display().to_string(),
                    fs::read(e.path()).expect("read"),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(sim.root(), &mut out);
    out
}

#[test]
fn an_nvme_in_the_gpus_group_is_refused_unless_forced_and_never_while_in_use() {
    let sim = SimHost::gpu_with_nvme_in_group();
    let before = snapshot(&sim);
    for args in [&["vfio", "bind", "--dry-run"][..], &["vfio", "bind"][..]] {
        let out = kata_gpu(&sim, args);
        assert_eq!(
            one_line_error(&out),
            "kata-gpu: nothing was changed: cannot bind: 0000:42:00.0 (144d:a80a, on nvme, \
             group 40) shares an IOMMU group with a GPU or NVSwitch and is not an NVIDIA \
             function: binding would take it from the host; give the GPU an IOMMU group of its \
             own (another slot, or ACS on in the firmware), or pass --force to bind it too",
            "{args:?}"
        );
    }
    assert_eq!(snapshot(&sim), before, "a refusal wrote");

    sim.hold_open(4242, "postgres", "/dev/nvme0n1p1");
    let before = snapshot(&sim);
    let out = kata_gpu(&sim, &["vfio", "bind", "--force"]);
    assert_eq!(
        one_line_error(&out),
        "kata-gpu: nothing was changed: cannot bind: 0000:42:00.0 is in use by pid 4242 \
         (postgres), which holds /dev/nvme0n1p1 open; stop it and retry"
    );
    assert_eq!(snapshot(&sim), before, "a refusal wrote");

    let sim = SimHost::gpu_with_nvme_in_group();
    let out = kata_gpu(&sim, &["vfio", "bind", "--force", "--dry-run"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains("0000:42:00.0 144d:a80a group 40: nvme → vfio-pci"),
        "{shown}"
    );
    let out = kata_gpu(&sim, &["vfio", "unbind", "--force"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--force is bind's: {}",
        text(&out)
    );
}

#[test]
fn under_umask_000_bind_makes_no_record_others_can_write() {
    let sim = SimHost::gpu_bound_to_nvidia();
    // A dry run records nothing; a real bind writes the record before it moves the GPU.
    let out = kata_gpu_tests::run_on_host_umask_000(
        env!("CARGO_BIN_EXE_kata-gpu"),
        sim.root(),
        &["vfio", "bind"],
    );
    // The simulated kernel does not move it, so the record is taken back; its directory stays.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(sim.path("var/lib/kata-gpu/vfio").is_dir());
    assert_eq!(
        kata_gpu_tests::writable_by_others(&sim.path("var/lib")),
        Vec::<String>::new()
    );
}
