//! The spec corpus under `tests/data`: every file in `valid/` loads, every file in
//! `invalid/` is refused with an error that starts with the file's path and names the one
//! rule the file breaks (see `tests/data/README.md`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each file of `invalid/` and a piece of the error we expect for it. The piece names the
/// broken rule (and the offending value where there is one), so that a file refused for
/// some other reason fails the test.
const INVALID: &[(&str, &str)] = &[
    // Syntax: the parser's words, with line and column after the path.
    ("syntax-truncated.json", "invalid JSON: EOF while parsing a list"),
    ("syntax-bad-indentation.yaml", "invalid YAML: did not find expected '-' indicator"),
    ("syntax-tab-indentation.yaml", "invalid YAML: found character that cannot start any token"),
    // Unknown fields.
    ("unknown-top-level-field.yaml", "unknown field `vendor`"),
    ("unknown-device-field.json", "unknown field `deviceNodes`, expected one of `name`, `annotations`, `containerEdits`"),
    ("unknown-device-node-field.yaml", "deviceNodes[0]: unknown field `hostpath`"),
    ("unknown-mount-field.json", "unknown field `readOnly`"),
    ("unknown-hook-field.yaml", "hooks[0]: unknown field `timeoutSeconds`"),
    ("unknown-container-edits-field.json", "unknown field `capabilities`"),
    // Missing or wrongly typed fields.
    ("missing-cdi-version.yaml", "missing field `cdiVersion`"),
    ("missing-kind.json", "missing field `kind`"),
    ("missing-devices.yaml", "missing field `devices`"),
    ("type-major-as-string.json", "invalid type: a string, expected i64"),
    ("type-devices-as-object.yaml", "devices: invalid type: map, expected a sequence"),
    ("type-additional-gids-negative.json", "invalid value: integer `-1`, expected u32"),
    ("empty-devices-list.json", "the spec defines no devices"),
    // Versions.
    ("unsupported-version-0.2.0.yaml", "unsupported cdiVersion \"0.2.0\""),
    ("unsupported-version-2.0.0.json", "unsupported cdiVersion \"2.0.0\""),
    ("unsupported-version-abc.yaml", "unsupported cdiVersion \"abc\""),
    // Kind and device names.
    ("kind-without-slash.json", "kind: \"nvidia.com-gpu\" is not of the form vendor/class"),
    ("kind-empty-vendor.yaml", "kind \"/gpu\": vendor is empty"),
    ("kind-empty-class.json", "kind \"nvidia.com/\": class is empty"),
    ("kind-vendor-starts-with-digit.yaml", "vendor \"3dfx.com\" must start with a letter"),
    ("kind-class-invalid-char.json", "class \"g@pu\" contains '@'"),
    ("device-name-with-slash.yaml", "device name \"gpu/0\" contains '/'"),
    ("device-name-with-space.json", "device name \"gpu 0\" contains ' '"),
    ("device-name-leading-dash.yaml", "device name \"-gpu\" must start with a letter or digit"),
    ("device-name-trailing-dash.json", "device name \"gpu-\" must end with a letter or digit"),
    ("duplicate-device-names.yaml", "device \"gpu0\": the name is defined more than once in this spec"),
    ("device-empty-container-edits.json", "device \"gpu0\": the device has no containerEdits"),
    // Env.
    ("env-missing-equals.yaml", "env entry \"NVIDIA_VISIBLE_DEVICES\" is not KEY=VALUE"),
    ("env-empty-key.json", "env entry \"=x\" is not KEY=VALUE with a non-empty KEY"),
    // Device nodes.
    ("device-node-relative-path.yaml", "device node path \"dev/nvidia0\": the path must be absolute"),
    ("device-node-empty-path.json", "device node path \"\": the path is empty"),
    ("device-node-outside-dev.yaml", "device node path \"/tmp/x\": device nodes must be under /dev"),
    ("device-node-etc-passwd.json", "device node path \"/etc/passwd\": device nodes must be under /dev"),
    ("device-node-path-traversal.yaml", "device node path \"/dev/../etc/shadow\": the path must not contain '.' or '..' components"),
    ("device-node-hostpath-outside-dev.json", "device node hostPath \"/tmp/nvidia0\": device nodes must be under /dev"),
    ("device-node-invalid-type.yaml", "type \"x\" is not one of c, b, u, p"),
    ("device-node-invalid-permissions.json", "permissions \"rwx\" must be a combination of r, w and m"),
    // Hooks.
    ("hook-invalid-name.yaml", "hook name \"preStart\" is not one of prestart, createRuntime"),
    ("hook-empty-path.json", "hook createContainer: path \"\": the path is empty"),
    ("hook-env-missing-equals.yaml", "hook poststop: env entry \"BROKEN\" is not KEY=VALUE"),
    ("device-node-negative-major.yaml", "device node \"/dev/nvidia0\": major -1 is negative"),
    ("hook-timeout-zero.yaml", "hook poststop: timeout 0 must be greater than zero"),
    // Mounts.
    ("mount-empty-host-path.json", "mount \"/usr/lib/x86_64-linux-gnu/libcuda.so.1\": hostPath is empty"),
    ("mount-empty-container-path.yaml", "mount containerPath \"\": the path is empty"),
    ("mount-relative-container-path.json", "mount containerPath \"usr/lib/libcuda.so.1\": the path must be absolute"),
    // Intel RDT, net devices, annotations.
    ("intelrdt-closid-dotdot.yaml", "intelRdt.closID \"..\" must not be"),
    ("netdevices-duplicate-host-interface.json", "netDevices: hostInterfaceName \"eth0\" is listed twice"),
    ("netdevices-empty-name.yaml", "netDevices: name \"\" is not an interface name"),
    ("annotation-key-invalid.json", "annotation key \"bad key!\""),
    // Features newer (or older) than the declared version.
    ("version-floor-mount-type-v0.3.0.yaml", "cdiVersion 0.3.0 is too low: mount \"/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15\" sets a type, which needs 0.4.0"),
    ("version-floor-device-name-digit-v0.4.0.json", "cdiVersion 0.4.0 is too low: device name \"0\" does not start with a letter, which needs 0.5.0"),
    ("version-floor-hostpath-v0.4.0.yaml", "cdiVersion 0.4.0 is too low: device node \"/dev/nvidia0\" sets hostPath, which needs 0.5.0"),
    ("version-floor-spec-annotations-v0.5.0.json", "cdiVersion 0.5.0 is too low: the spec has annotations, which needs 0.6.0"),
    ("version-floor-device-annotations-v0.5.0.yaml", "cdiVersion 0.5.0 is too low: device \"gpu0\" has annotations, which needs 0.6.0"),
    ("version-floor-class-with-dot-v0.5.0.json", "cdiVersion 0.5.0 is too low: class \"gpu.mig\" contains a '.', which needs 0.6.0"),
    ("version-floor-intelrdt-v0.6.0.yaml", "cdiVersion 0.6.0 is too low: intelRdt is used, which needs 0.7.0"),
    ("version-floor-additional-gids-v0.6.0.json", "cdiVersion 0.6.0 is too low: additionalGids is used, which needs 0.7.0"),
    ("version-floor-netdevices-v1.0.0.yaml", "cdiVersion 1.0.0 is too low: netDevices is used, which needs 1.1.0"),
    ("version-floor-intelrdt-schemata-v1.0.0.json", "cdiVersion 1.0.0 is too low: intelRdt.schemata is used, which needs 1.1.0"),
    ("version-ceiling-intelrdt-enable-cmt-v1.1.0.yaml", "intelRdt.enableCMT is not valid from cdiVersion 1.1.0 on (declared 1.1.0)"),
];

fn data_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(sub)
}

/// The file names in one corpus directory, sorted.
fn files_in(sub: &str) -> BTreeSet<String> {
    let dir = data_dir(sub);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| {
            let entry = entry.expect("directory entry");
            entry
                .file_name()
                .into_string()
                .expect("corpus file names are UTF-8")
        })
        .collect()
}

#[test]
fn every_valid_file_loads() {
    let names = files_in("valid");
    assert!(!names.is_empty(), "tests/data/valid is empty");
    let failures: Vec<String> = names
        .iter()
        .filter_map(|name| {
            let path = data_dir("valid").join(name);
            match cdi::read_spec_file(&path) {
                Ok(spec) => {
                    assert!(!spec.devices.is_empty(), "{name}: no devices");
                    assert!(
                        name.starts_with(&format!("v{}-", spec.cdi_version)),
                        "{name}: the file name must start with its cdiVersion {}",
                        spec.cdi_version
                    );
                    None
                }
                Err(e) => Some(cdi::one_line(&e)),
            }
        })
        .collect();
    assert!(
        failures.is_empty(),
        "valid files refused:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_table_lists_exactly_the_invalid_files() {
    let on_disk = files_in("invalid");
    let mut in_table = BTreeSet::new();
    for (name, _) in INVALID {
        assert!(
            in_table.insert(name.to_string()),
            "{name} is in the table twice"
        );
    }
    let untested: Vec<_> = on_disk.difference(&in_table).collect();
    let missing: Vec<_> = in_table.difference(&on_disk).collect();
    assert!(
        untested.is_empty() && missing.is_empty(),
        "files without a table entry: {untested:?}; table entries without a file: {missing:?}"
    );
}

#[test]
fn every_invalid_file_is_refused_for_its_rule() {
    let mut failures = Vec::new();
    for (name, want) in INVALID {
        let path = data_dir("invalid").join(name);
        if !path.exists() {
            continue; // reported by the_table_lists_exactly_the_invalid_files
        }
        match cdi::read_spec_file(&path) {
            Ok(_) => failures.push(format!("{name}: accepted, expected {want:?}")),
            Err(e) => {
                let text = cdi::one_line(&e);
                let prefix = format!("{}", path.display());
                if !text.starts_with(&prefix) {
                    failures.push(format!(
                        "{name}: error does not start with the path: {text}"
                    ));
                }
                if !text.contains(want) {
                    failures.push(format!("{name}: want {want:?} in: {text}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn syntax_errors_carry_a_position() {
    for (name, _) in INVALID.iter().filter(|(n, _)| {
        n.starts_with("syntax-") || n.starts_with("unknown-") || n.starts_with("type-")
    }) {
        let path = data_dir("invalid").join(name);
        let err = cdi::read_spec_file(&path).expect_err("invalid file");
        let text = cdi::one_line(&err);
        let rest = text
            .strip_prefix(&format!("{}:", path.display()))
            .unwrap_or_else(|| panic!("{name}: no position after the path: {text}"));
        assert!(
            rest.starts_with(|c: char| c.is_ascii_digit()),
            "{name}: no line number after the path: {text}"
        );
    }
}

#[test]
fn loading_from_memory_gives_the_same_verdict() {
    for sub in ["valid", "invalid"] {
        for name in files_in(sub) {
            let path = data_dir(sub).join(&name);
            let bytes = std::fs::read(&path).expect("readable corpus file");
            let format = cdi::Format::from_path(&path).expect("corpus files are .json or .yaml");
            let from_memory = cdi::load_spec(&bytes, format, &path).map_err(|e| cdi::one_line(&e));
            let from_file = cdi::read_spec_file(&path).map_err(|e| cdi::one_line(&e));
            assert_eq!(from_memory, from_file, "{sub}/{name}");
        }
    }
}
