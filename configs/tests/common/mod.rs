//! Shared by the integration tests: representative overrides and helpers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kata_gpu_configs::Overrides;

/// The KBS parameter a confidential sandbox gets from the node's policy.
pub const KBS: &str = "agent.aa_kbc_params=cc_kbc::https://kbs.example.internal:8080";

/// The overrides the plan produces for the shapes we test: no device, one H100, and an
/// HGX board (8 H100 + 4 NVSwitch functions → 12 root ports, 41 physical address bits for
/// eight 192 GiB bridge windows above 256 GiB of RAM).
pub fn cases() -> Vec<(&'static str, Overrides)> {
    vec![
        ("none", Overrides::default()),
        (
            "h100",
            Overrides {
                pcie_root_port: Some(1),
                cold_plug_vfio: Some("root-port".into()),
                hot_plug_vfio: Some("no-port".into()),
                default_memory: None,
                kernel_params_append: vec![KBS.into()],
                cpu_features: None,
            },
        ),
        (
            "hgx",
            Overrides {
                pcie_root_port: Some(12),
                cold_plug_vfio: Some("root-port".into()),
                hot_plug_vfio: Some("no-port".into()),
                default_memory: Some(262_144),
                kernel_params_append: vec!["nvrc.smi.srs=1".into(), KBS.into()],
                cpu_features: Some("pmu=off,phys-bits=41".into()),
            },
        ),
    ]
}

/// `configs/tests/<rel>`.
pub fn test_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(rel)
}

/// The text of `configs/tests/<rel>`.
pub fn read(rel: &str) -> String {
    std::fs::read_to_string(test_path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Compares `actual` with the golden file `configs/tests/golden/<name>`; with
/// `UPDATE_GOLDEN=1` in the environment, writes it instead.
pub fn golden(name: &str, actual: &str) {
    let path = test_path("golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(e, a)| e != a)
            .map_or(expected.lines().count().min(actual.lines().count()), |i| i);
        panic!(
            "{name} differs from its golden file at line {}:\n  golden: {:?}\n  actual: {:?}\n\
             (run with UPDATE_GOLDEN=1 to accept)",
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first)
        );
    }
}

/// The text of a document with the owned keys of `[hypervisor.qemu]` removed (with the
/// comments above them), so that two renderings can be compared byte for byte elsewhere.
pub fn without_owned_keys(text: &str) -> String {
    let mut doc: toml_edit::DocumentMut = text.parse().unwrap_or_else(|e| panic!("{e}"));
    if let Some(qemu) = doc
        .get_mut("hypervisor")
        .and_then(|h| h.get_mut("qemu"))
        .and_then(|q| q.as_table_like_mut())
    {
        for key in kata_gpu_configs::keys::OWNED_KEYS {
            qemu.remove(key);
        }
    }
    doc.to_string()
}

/// The comment lines of a text (trimmed, from `#`), in order.
pub fn comments(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.find('#').map(|i| l[i..].trim_end().to_owned()))
        .collect()
}
