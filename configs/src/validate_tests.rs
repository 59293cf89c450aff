use super::*;

const GOOD: &str = r#"[hypervisor.qemu]
path = "/opt/kata/bin/qemu"
valid_hypervisor_paths = ["/opt/kata/bin/*"]
confidential_guest = true
sev_snp_guest = true
firmware = "/fw/AMDSEV.fd"
cold_plug_vfio = "root-port"
hot_plug_vfio = "no-port"

[runtime]
static_sandbox_resource_mgmt = true
"#;

fn check(text: &str) -> Result<(), ConfigError> {
    validate_config(text, Path::new("/etc/kata/c.toml"))
}

/// Replaces the first occurrence of `from` (which must be there) by `to`.
fn edit(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from:?}");
    GOOD.replacen(from, to, 1)
}

#[test]
fn good_passes() {
    assert!(check(GOOD).is_ok());
    let doc: DocumentMut = GOOD.parse().unwrap_or_else(|e| panic!("{e}"));
    assert!(validate(&doc, Path::new("x")).is_ok());
}

#[test]
fn rules_table() {
    // (edited text, the key named, words in the message, line:column)
    type Case = (String, &'static str, &'static str, Option<(usize, usize)>);
    let table: Vec<Case> = vec![
        (
            edit(
                "hot_plug_vfio = \"no-port\"",
                "hot_plug_vfio = \"root-port\"",
            ),
            "hypervisor.qemu.hot_plug_vfio",
            "both set",
            Some((8, 1)),
        ),
        (
            edit(
                "hot_plug_vfio = \"no-port\"",
                "hot_plug_vfio = \"any-port\"",
            ),
            "hypervisor.qemu.hot_plug_vfio",
            "\"any-port\" is not one of no-port, bridge-port, root-port, switch-port",
            Some((8, 1)),
        ),
        (
            edit(
                "static_sandbox_resource_mgmt = true",
                "static_sandbox_resource_mgmt = false",
            ),
            "runtime.static_sandbox_resource_mgmt",
            "must be true when hypervisor.qemu.confidential_guest = true",
            Some((11, 1)),
        ),
        (
            // absent: the problem points at confidential_guest
            edit("static_sandbox_resource_mgmt = true", ""),
            "runtime.static_sandbox_resource_mgmt",
            "confidential guest cannot hot-plug",
            Some((4, 1)),
        ),
        (
            edit("firmware = \"/fw/AMDSEV.fd\"", "firmware = \"\""),
            "hypervisor.qemu.firmware",
            "sev_snp_guest = true",
            Some((6, 1)),
        ),
        (
            edit("firmware = \"/fw/AMDSEV.fd\"\n", ""),
            "hypervisor.qemu.firmware",
            "SEV-SNP firmware",
            Some((5, 1)),
        ),
        (
            edit("path = \"/opt/kata/bin/qemu\"", "path = \"/tmp/qemu\""),
            "hypervisor.qemu.path",
            "\"/tmp/qemu\" is not inside valid_hypervisor_paths [\"/opt/kata/bin/*\"]",
            Some((2, 1)),
        ),
        (
            edit(
                "path = \"/opt/kata/bin/qemu\"",
                "path = \"/opt/kata/bin/sub/qemu\"",
            ),
            "hypervisor.qemu.path",
            "not inside valid_hypervisor_paths",
            Some((2, 1)),
        ),
        (
            edit("[hypervisor.qemu]", "[hypervisor.clh]"),
            "hypervisor.qemu",
            "missing",
            None,
        ),
    ];
    for (text, key, words, at) in table {
        let e = check(&text).expect_err("should be refused");
        let problems = e.problems();
        assert_eq!(problems.len(), 1, "{text}\n{e}");
        assert_eq!(problems[0].key, key, "{e}");
        assert!(problems[0].message.contains(words), "{e}");
        assert_eq!(problems[0].location.map(|l| (l.line, l.column)), at, "{e}");
        assert!(e.to_string().starts_with("/etc/kata/c.toml:"), "{e}");
        assert!(e.to_string().contains(key), "{e}");
    }
}

#[test]
fn a_malformed_glob_is_named_with_its_line() {
    // `[a-]` is Go's ErrBadPattern: Kata would match no path with it. The path still
    // matches the other glob, so the malformed one is the only problem.
    for bad in [
        "/opt/kata/bin/qemu-[a-]",
        "/opt/kata/bin/[]q]",
        "/opt/kata/bin/[",
    ] {
        let text = edit(
            "[\"/opt/kata/bin/*\"]",
            &format!("[\"/opt/kata/bin/*\", {bad:?}]"),
        );
        let e = check(&text).expect_err("should be refused");
        assert_eq!(e.problems().len(), 1, "{e}");
        let line = e.to_string();
        assert!(
            line.starts_with(&format!(
                "/etc/kata/c.toml:3:1: hypervisor.qemu.valid_hypervisor_paths: glob {bad:?} is \
                 malformed: "
            )),
            "{line}"
        );
        assert!(
            line.ends_with("Kata would match no path with it, fix or remove it"),
            "{line}"
        );
        assert_eq!(line.lines().count(), 1, "{line}");
    }
}

#[test]
fn types_table() {
    // (edited text, the key named, words in the message, line:column)
    type Case = (String, &'static str, &'static str, (usize, usize));
    let table: Vec<Case> = vec![
        (
            edit("confidential_guest = true", "confidential_guest = \"true\""),
            "hypervisor.qemu.confidential_guest",
            "must be a boolean (true or false), found a string",
            (4, 1),
        ),
        (
            edit("cold_plug_vfio = \"root-port\"", "cold_plug_vfio = 1"),
            "hypervisor.qemu.cold_plug_vfio",
            "must be a string, found an integer",
            (7, 1),
        ),
        (
            edit(
                "hot_plug_vfio = \"no-port\"",
                "hot_plug_vfio = \"no-port\"\npcie_root_port = -1",
            ),
            "hypervisor.qemu.pcie_root_port",
            "must be an integer from 0 to 4294967295, found -1",
            (9, 1),
        ),
        (
            edit(
                "hot_plug_vfio = \"no-port\"",
                "hot_plug_vfio = \"no-port\"\ndefault_memory = 8192.0",
            ),
            "hypervisor.qemu.default_memory",
            "found a float",
            (9, 1),
        ),
        (
            edit("[\"/opt/kata/bin/*\"]", "[\"/opt/kata/bin/*\", 3]"),
            "hypervisor.qemu.valid_hypervisor_paths",
            "must be an array of strings, found an array holding an integer",
            (3, 1),
        ),
        (
            edit("[\"/opt/kata/bin/*\"]", "\"/opt/kata/bin/*\""),
            "hypervisor.qemu.valid_hypervisor_paths",
            "found a string",
            (3, 1),
        ),
        (
            edit(
                "static_sandbox_resource_mgmt = true",
                "static_sandbox_resource_mgmt = 1",
            ),
            "runtime.static_sandbox_resource_mgmt",
            "must be a boolean",
            (11, 1),
        ),
        (
            format!("{GOOD}\n[agent.kata]\ndial_timeout = \"90\"\n"),
            "agent.kata.dial_timeout",
            "must be an integer from 0 to 4294967295, found a string",
            (14, 1),
        ),
        (
            format!("{GOOD}enable_annotations = 3\n"),
            "runtime.enable_annotations",
            "",
            (0, 0),
        ),
        (
            format!("runtime = 5\n{}", GOOD.replacen("[runtime]", "[other]", 1)),
            "runtime",
            "must be a table, found an integer",
            (1, 1),
        ),
        (
            format!(
                "hypervisor = 1\n{}",
                GOOD.replacen("[hypervisor.qemu]", "[x]", 1)
            ),
            "hypervisor",
            "must be a table, found an integer",
            (1, 1),
        ),
    ];
    for (text, key, words, (line, column)) in table {
        let result = check(&text);
        if line == 0 {
            // A key Kata does not read in that section is not ours to judge.
            assert!(result.is_ok(), "{key}: {result:?}");
            continue;
        }
        let e = result.expect_err("should be refused");
        let p = e
            .problems()
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("{key} not named in {e}"));
        assert!(p.message.contains(words), "{e}");
        assert_eq!(p.location, Some(Location { line, column }), "{e}");
    }
}

#[test]
fn every_problem_is_reported_in_file_order() {
    let text = GOOD
        .replacen("confidential_guest = true", "confidential_guest = 1", 1)
        .replacen("cold_plug_vfio = \"root-port\"", "cold_plug_vfio = true", 1);
    let e = check(&text).expect_err("should be refused");
    let keys: Vec<&str> = e.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "hypervisor.qemu.confidential_guest",
            "hypervisor.qemu.cold_plug_vfio"
        ]
    );
}

#[test]
fn parse_errors_name_file_line_and_column() {
    let table = [
        ("[hypervisor.qemu]\npath = \n", 2, 8),
        ("[hypervisor.qemu\n", 1, 17),
        ("[hypervisor.qemu]\na = 1\na = 2\n", 3, 1),
        ("a = \"unterminated\n", 1, 18),
    ];
    for (text, line, column) in table {
        let e = check(text).expect_err("should be refused");
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        assert_eq!(
            e.location(),
            Some(Location { line, column }),
            "{text:?}: {e}"
        );
        assert!(
            e.to_string().starts_with(&format!(
                "/etc/kata/c.toml:{line}:{column}: not valid TOML: "
            )),
            "{e}"
        );
    }
}

#[test]
fn empty_or_absent_lists_do_not_constrain() {
    let table = [
        GOOD.replacen(
            "valid_hypervisor_paths = [\"/opt/kata/bin/*\"]",
            "valid_hypervisor_paths = []",
            1,
        ),
        GOOD.replacen("valid_hypervisor_paths = [\"/opt/kata/bin/*\"]\n", "", 1),
        GOOD.replacen("path = \"/opt/kata/bin/qemu\"\n", "", 1),
        GOOD.replacen("hot_plug_vfio = \"no-port\"", "hot_plug_vfio = \"\"", 1),
        GOOD.replacen("sev_snp_guest = true", "sev_snp_guest = false", 1)
            .replacen("firmware = \"/fw/AMDSEV.fd\"\n", "", 1),
    ];
    for text in table {
        assert!(check(&text).is_ok(), "{text}");
    }
}

#[test]
fn edited_documents_are_checked_without_positions() {
    let mut doc: DocumentMut = GOOD.parse().unwrap_or_else(|e| panic!("{e}"));
    doc["hypervisor"]["qemu"]["hot_plug_vfio"] = toml_edit::value("root-port");
    let e = validate(&doc, Path::new("rendered.toml")).expect_err("should be refused");
    assert_eq!(e.problems()[0].key, "hypervisor.qemu.hot_plug_vfio");
    assert_eq!(e.problems()[0].location, None);
    assert!(e
        .to_string()
        .starts_with("rendered.toml: hypervisor.qemu.hot_plug_vfio: "));
}
