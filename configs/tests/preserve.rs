//! Rendering keeps every byte it does not own: comments wherever they are, key order,
//! unknown keys and sections, other hypervisor sections; and it is deterministic.

mod common;

use std::path::Path;

use kata_gpu_configs::{render, Overrides};

fn render_ok(base: &str, o: &Overrides) -> String {
    render(base, Path::new("base.toml"), o)
        .unwrap_or_else(|e| panic!("{e}"))
        .text
}

#[test]
fn large_realistic_config_only_owned_keys_differ() {
    let base = common::read("data/kata-4x-full.toml");
    for (case, o) in common::cases() {
        let text = render_ok(&base, &o);
        assert_eq!(
            common::without_owned_keys(&text),
            common::without_owned_keys(&base),
            "{case}: something other than an owned key changed"
        );
        // Comments survive, in order, but for the one on the removed annotation entry.
        let removed = "# left over from an older default; it lets pods pass arguments to virtiofsd";
        let expected: Vec<String> = common::comments(&base)
            .into_iter()
            .filter(|c| c != removed)
            .collect();
        assert_eq!(common::comments(&text), expected, "{case}");
        // The file's last bytes (no final newline) are as they were.
        assert!(text.ends_with("\n# eof"), "{case}");
        // The other hypervisor's permissive list is not ours to fix.
        assert!(text.contains("[hypervisor.clh]\n"));
        assert!(text.contains("enable_annotations = [\".*\"]\n"));
    }
}

#[test]
fn rendering_twice_gives_identical_bytes() {
    let base = common::read("data/kata-4x-full.toml");
    for (case, o) in common::cases() {
        let a = render(&base, Path::new("base.toml"), &o).unwrap_or_else(|e| panic!("{e}"));
        let b = render(&base, Path::new("base.toml"), &o).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, b, "{case}");
        assert_eq!(a.text.as_bytes(), b.text.as_bytes());
    }
}

const COMMENTED: &str = "\
# 1 before everything

# 2 before the table
[hypervisor.qemu] # 3 after the header
# 4 above path
path = \"/opt/kata/bin/qemu\" # 5 after path

    # 6 indented, above kernel_params
kernel_params = \"a=1\"    # 7 after kernel_params
pcie_root_port = 0 # 8 after pcie_root_port
enable_annotations = [ # 9 inside, first line
  \"kernel_params\", # 10 after an entry
  # 11 above an entry that goes
  \"image\", # 12 after the removed entry
  \"default_memory\" # 13 last entry, no comma
] # 14 after the array
not_kata = 'kept' # 15 unknown key
# 16 before the sub-table
[hypervisor.qemu.sub] # 17 sub-table
x = 1
# 18 before the next table
[runtime]
static_sandbox_resource_mgmt = true # 19
# 20 at the end
";

#[test]
fn comments_in_every_position_are_kept() {
    let o = Overrides {
        pcie_root_port: Some(4),
        cold_plug_vfio: Some("root-port".into()),
        hot_plug_vfio: Some("no-port".into()),
        default_memory: Some(16384),
        kernel_params_append: vec!["b=2".into()],
        cpu_features: None,
    };
    let text = render_ok(COMMENTED, &o);
    let expected = "\
# 1 before everything

# 2 before the table
[hypervisor.qemu] # 3 after the header
# 4 above path
path = \"/opt/kata/bin/qemu\" # 5 after path

    # 6 indented, above kernel_params
kernel_params = \"a=1 b=2\"    # 7 after kernel_params
pcie_root_port = 4 # 8 after pcie_root_port
enable_annotations = [ # 9 inside, first line
  \"kernel_params\", # 10 after an entry
  \"default_memory\" # 13 last entry, no comma
] # 14 after the array
not_kata = 'kept' # 15 unknown key
# Set by kata-gpu for this sandbox.
cold_plug_vfio = \"root-port\"
# Set by kata-gpu for this sandbox.
hot_plug_vfio = \"no-port\"
# Set by kata-gpu for this sandbox.
default_memory = 16384
# 16 before the sub-table
[hypervisor.qemu.sub] # 17 sub-table
x = 1
# 18 before the next table
[runtime]
static_sandbox_resource_mgmt = true # 19
# 20 at the end
";
    assert_eq!(text, expected);
    // and once more, nothing moves
    assert_eq!(render_ok(&text, &o), text);
}

#[test]
fn no_overrides_and_a_safe_list_is_the_identity() {
    let base = COMMENTED.replace(
        "  # 11 above an entry that goes\n  \"image\", # 12 after the removed entry\n",
        "",
    );
    assert_eq!(render_ok(&base, &Overrides::default()), base);
    let full = common::read("data/kata-4x-full.toml").replace(
        "    # left over from an older default; it lets pods pass arguments to virtiofsd\n    \"virtio_fs_extra_args\",\n",
        "",
    );
    assert_eq!(render_ok(&full, &Overrides::default()), full);
}

#[test]
fn keys_added_to_inline_tables_carry_no_comment_and_the_file_still_parses() {
    for base in [
        "[hypervisor]\nqemu = { path = \"/usr/bin/qemu\", enable_annotations = [] }\n",
        "hypervisor = { qemu = { path = \"/usr/bin/qemu\" } }\nruntime = { internetworking_model = \"tcfilter\" }\n",
    ] {
        let out = render_ok(
            base,
            &Overrides {
                pcie_root_port: Some(2),
                default_memory: Some(4096),
                ..Overrides::default()
            },
        );
        let doc: toml_edit::DocumentMut = out.parse().unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert!(!out.contains('#'), "{out}");
        assert_eq!(doc["hypervisor"]["qemu"]["pcie_root_port"].as_integer(), Some(2), "{out}");
    }
    // A regular table still says who added the key.
    let out = render_ok(
        "[hypervisor.qemu]\npath = \"/usr/bin/qemu\"\n",
        &Overrides {
            pcie_root_port: Some(2),
            ..Overrides::default()
        },
    );
    assert!(
        out.contains("# Set by kata-gpu for this sandbox.\npcie_root_port = 2"),
        "{out}"
    );
}

#[test]
fn crlf_files_keep_their_line_ends() {
    let base = "[hypervisor.qemu]\r\n# c\r\npcie_root_port = 0\r\nkernel_params = \"a\"\r\n";
    let o = Overrides {
        pcie_root_port: Some(2),
        kernel_params_append: vec!["b".into()],
        ..Overrides::default()
    };
    assert_eq!(
        render_ok(base, &o),
        "[hypervisor.qemu]\r\n# c\r\npcie_root_port = 2\r\nkernel_params = \"a b\"\r\n"
    );
}
