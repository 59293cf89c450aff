//! Properties of rendering over generated overrides and bases: it succeeds on a valid base,
//! is deterministic and idempotent, changes only owned keys, writes what was asked, and
//! never appends a parameter twice.

mod common;

use std::path::Path;

use kata_gpu_configs::{keys, pattern, render, validate_config, Overrides};
use proptest::prelude::*;

fn port() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop::sample::select(keys::PORT_VALUES.to_vec()).prop_map(str::to_owned))
}

fn overrides() -> impl Strategy<Value = Overrides> {
    (
        prop::option::of(0u32..=16),
        port(),
        port(),
        prop::option::of(1u32..=4_194_304),
        prop::collection::vec("[a-z][a-z0-9_.]{0,8}(=[a-z0-9:/._-]{1,10})?", 0..5),
    )
        .prop_map(|(pcie, cold, hot, memory, params)| {
            // Never both: a hot-plug port comes with cold_plug_vfio = "no-port" (the base
            // cold-plugs, and its hot_plug_vfio is "no-port").
            let (cold, hot) = match (cold, hot) {
                (_, Some(h)) if h != "no-port" => (Some("no-port".to_owned()), Some(h)),
                other => other,
            };
            Overrides {
                pcie_root_port: pcie,
                cold_plug_vfio: cold,
                hot_plug_vfio: hot,
                default_memory: memory,
                kernel_params_append: params,
                cpu_features: None,
            }
        })
}

/// The large fixture with some owned keys taken out (bit i of `mask` drops key i), so that
/// rendering has to add them.
fn base(mask: u8) -> String {
    let mut doc: toml_edit::DocumentMut = common::read("data/kata-4x-full.toml")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(q) = doc["hypervisor"]["qemu"].as_table_like_mut() {
        for (i, key) in keys::OWNED_KEYS.iter().enumerate() {
            if mask & (1 << i) != 0 {
                q.remove(key);
            }
        }
    }
    doc.to_string()
}

fn qemu_value(text: &str, key: &str) -> Option<toml_edit::Value> {
    let doc: toml_edit::DocumentMut = text.parse().ok()?;
    doc.get("hypervisor")?
        .get("qemu")?
        .get(key)?
        .as_value()
        .cloned()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn render_properties(o in overrides(), mask in 0u8..64) {
        let base = base(mask);
        let origin = Path::new("base.toml");
        let r = render(&base, origin, &o).unwrap_or_else(|e| panic!("{e}"));
        let again = render(&base, origin, &o).unwrap_or_else(|e| panic!("{e}"));
        prop_assert_eq!(&r, &again);
        let twice = render(&r.text, origin, &o).unwrap_or_else(|e| panic!("{e}"));
        prop_assert_eq!(&twice.text, &r.text);
        prop_assert!(validate_config(&r.text, origin).is_ok());
        prop_assert_eq!(common::without_owned_keys(&r.text), common::without_owned_keys(&base));

        if let Some(n) = o.pcie_root_port {
            prop_assert_eq!(qemu_value(&r.text, "pcie_root_port").and_then(|v| v.as_integer()), Some(i64::from(n)));
        }
        if let Some(m) = o.default_memory {
            prop_assert_eq!(qemu_value(&r.text, "default_memory").and_then(|v| v.as_integer()), Some(i64::from(m)));
        }
        for (key, want) in [("cold_plug_vfio", &o.cold_plug_vfio), ("hot_plug_vfio", &o.hot_plug_vfio)] {
            if let Some(want) = want {
                let got = qemu_value(&r.text, key);
                prop_assert_eq!(got.as_ref().and_then(|v| v.as_str()), Some(want.as_str()));
            }
        }
        let before = qemu_value(&base, "kernel_params")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let after = qemu_value(&r.text, "kernel_params")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        prop_assert!(after.starts_with(before.trim_end()));
        let tokens: Vec<&str> = after.split_ascii_whitespace().collect();
        for p in &o.kernel_params_append {
            let count = tokens.iter().filter(|t| *t == p).count();
            let in_base = before.split_ascii_whitespace().filter(|t| t == p).count();
            prop_assert_eq!(count, in_base.max(1), "{} in {}", p, after);
        }
        // The diff says exactly what changed.
        for d in &r.diff {
            let key = d.key.trim_start_matches("hypervisor.qemu.");
            prop_assert_eq!(qemu_value(&r.text, key).is_some(), d.rendered.is_some());
        }
    }

    /// For plain names the matcher is substring search, as Go's unanchored MatchString.
    #[test]
    fn literal_patterns_are_substring_search(lit in "[a-z_]{1,12}") {
        let names = ["path", "jailer_path", "virtio_fs_daemon", "kernel", "kernel_params"];
        let expected: Vec<&str> = names.iter().copied().filter(|n| n.contains(lit.as_str())).collect();
        prop_assert_eq!(pattern::matching(&lit, &names), expected);
    }
}
