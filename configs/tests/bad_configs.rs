//! Bad base configurations: each is refused with the file, the line and column and the key,
//! and nothing is written (rendering is pure; the write happens only after it succeeds).

mod common;

use std::fs;
use std::path::Path;

use kata_gpu_configs::{render, write_rendered, ConfigError, Overrides};

/// What the shim does: render, then write atomically.
fn render_to(base: &str, origin: &Path, dest: &Path, o: &Overrides) -> Result<(), ConfigError> {
    let rendered = render(base, origin, o)?;
    write_rendered(dest, &rendered.text)
}

#[test]
fn refused_with_file_line_column_and_nothing_written() {
    let full = common::read("data/kata-4x-full.toml");
    // (case, base text, the error exactly)
    let table: Vec<(&str, String, &str)> = vec![
        (
            "not TOML",
            "[hypervisor.qemu]\npath = \"/x\"\nkernel = \n".to_owned(),
            "/etc/kata/base.toml:3:10: not valid TOML: string values must be quoted, expected literal string",
        ),
        (
            "unclosed header",
            "[hypervisor.qemu\npath = \"/x\"\n".to_owned(),
            "/etc/kata/base.toml:1:17: not valid TOML: unclosed table, expected `]`",
        ),
        (
            "duplicate key",
            "[hypervisor.qemu]\npath = \"/x\"\npath = \"/y\"\n".to_owned(),
            "/etc/kata/base.toml:3:1: not valid TOML: duplicate key",
        ),
        (
            "binary garbage",
            "\u{0}\u{1}\u{2}".to_owned(),
            "/etc/kata/base.toml:1:4: not valid TOML: key with no value, expected `=`",
        ),
        (
            "missing section",
            "[hypervisor.clh]\npath = \"/x\"\n".to_owned(),
            "/etc/kata/base.toml: hypervisor.qemu: missing: the section [hypervisor.qemu] is \
             required (Kata's QEMU settings for the GPU sandbox)",
        ),
        (
            "empty file",
            String::new(),
            "/etc/kata/base.toml: hypervisor.qemu: missing: the section [hypervisor.qemu] is \
             required (Kata's QEMU settings for the GPU sandbox)",
        ),
        (
            "wrong type deep in a large file",
            full.replace("dial_timeout = 1200", "dial_timeout = \"1200s\""),
            "/etc/kata/base.toml:358:1: agent.kata.dial_timeout: must be an integer from 0 to \
             4294967295, found a string",
        ),
        (
            "wrong type of an owned key",
            full.replace(
                "pcie_root_port = 2    # raised per sandbox",
                "pcie_root_port = \"2\"    # raised per sandbox",
            ),
            "/etc/kata/base.toml:264:1: hypervisor.qemu.pcie_root_port: must be an integer from 0 \
             to 4294967295, found a string",
        ),
        (
            "two wrong types",
            full.replace("sev_snp_guest = true", "sev_snp_guest = \"yes\"")
                .replace("kernel_params = \"cgroup", "kernel_params = [\"cgroup")
                .replace("kbs.example.internal:8080\"", "kbs.example.internal:8080\"]"),
            "/etc/kata/base.toml:37:1: hypervisor.qemu.sev_snp_guest: must be a boolean (true or \
             false), found a string; /etc/kata/base.toml:79:1: hypervisor.qemu.kernel_params: \
             must be a string, found an array",
        ),
        (
            "section of the wrong type",
            "hypervisor = [1]\n".to_owned(),
            "/etc/kata/base.toml:1:1: hypervisor: must be a table, found an array",
        ),
        (
            "hot and cold plug",
            full.replace("hot_plug_vfio = \"no-port\"", "hot_plug_vfio = \"root-port\""),
            "/etc/kata/base.toml:274:1: hypervisor.qemu.hot_plug_vfio: hot_plug_vfio = \
             \"root-port\" and cold_plug_vfio = \"root-port\" are both set; Kata allows one (GPUs \
             are cold-plugged: set hot_plug_vfio = \"no-port\")",
        ),
        (
            "confidential without static sizing",
            full.replace(
                "static_sandbox_resource_mgmt = true",
                "static_sandbox_resource_mgmt = false",
            ),
            "/etc/kata/base.toml:401:1: runtime.static_sandbox_resource_mgmt: must be true when \
             hypervisor.qemu.confidential_guest = true: a confidential guest cannot hot-plug CPUs \
             or memory, so the sandbox is sized before boot",
        ),
        (
            "SNP without firmware",
            full.replace(
                "firmware = \"/opt/nvidia-gpu-operator/artifacts/runtimeclasses/kata-qemu-nvidia-gpu-snp/current/AMDSEV.fd\"",
                "firmware = \"\"",
            ),
            "/etc/kata/base.toml:86:1: hypervisor.qemu.firmware: must name the SEV-SNP firmware \
             (e.g. AMDSEV.fd) when sev_snp_guest = true",
        ),
        (
            "hypervisor outside the allowed paths",
            full.replace(
                "path = \"/opt/kata/bin/qemu-system-x86_64-snp-experimental\"",
                "path = \"/usr/local/bin/qemu\"",
            ),
            "/etc/kata/base.toml:11:1: hypervisor.qemu.path: \"/usr/local/bin/qemu\" is not inside \
             valid_hypervisor_paths [\"/opt/kata/bin/qemu-system-x86_64-snp-experimental\", \
             \"/opt/kata/bin/qemu-system-x86_64*\"]",
        ),
    ];
    let origin = Path::new("/etc/kata/base.toml");
    let mut wrong = Vec::new();
    for (case, base, expected) in table {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let fresh = dir.path().join("fresh.toml");
        let existing = dir.path().join("existing.toml");
        fs::write(&existing, "# the previous sandbox config\n").unwrap_or_else(|e| panic!("{e}"));
        for dest in [&fresh, &existing] {
            // No overrides: an HGX plan would set hot_plug_vfio = "no-port" and so repair
            // the hot-and-cold-plug case.
            let e = match render_to(&base, origin, dest, &Overrides::default()) {
                Ok(()) => panic!("{case}: rendered"),
                Err(e) => e,
            };
            if e.to_string() != expected {
                wrong.push(format!("{case}:\n  expected {expected}\n  got      {e}"));
            }
        }
        assert!(!fresh.exists(), "{case}: a file was written");
        assert_eq!(
            fs::read_to_string(&existing).ok().as_deref(),
            Some("# the previous sandbox config\n"),
            "{case}: the existing file changed"
        );
        assert_eq!(
            fs::read_dir(dir.path()).map(Iterator::count).ok(),
            Some(1),
            "{case}: stray files"
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_good_render_is_written_whole() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dest = dir.path().join("sandbox.toml");
    let base = common::read("data/kata-4x-full.toml");
    let o = &common::cases()[2].1;
    render_to(&base, Path::new("base.toml"), &dest, o).unwrap_or_else(|e| panic!("{e}"));
    let expected = render(&base, Path::new("base.toml"), o).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fs::read_to_string(&dest).ok(), Some(expected.text));
}
