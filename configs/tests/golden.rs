//! Golden rendered files: each profile's template × representative overrides (no device,
//! one H100, an HGX board with 8 GPUs and 4 NVSwitches). Regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p kata-gpu-configs --test golden` and review the diff.

mod common;

use std::fmt::Write;
use std::path::Path;

use kata_gpu_configs::{
    render, template, template_file_name, validate_config, Overrides, PROFILES,
};

#[test]
fn profile_by_overrides() {
    for profile in PROFILES {
        let base = template(profile).unwrap_or_else(|e| panic!("{e}"));
        let file = template_file_name(profile).unwrap_or_else(|e| panic!("{e}"));
        for (case, overrides) in common::cases() {
            check(base, file, &format!("{profile}-{case}"), &overrides);
        }
    }
}

/// The large realistic input, whose enable_annotations loses an entry.
#[test]
fn full_kata_config() {
    let base = common::read("data/kata-4x-full.toml");
    for (case, overrides) in common::cases() {
        check(
            &base,
            "kata-4x-full.toml",
            &format!("kata-4x-full-{case}"),
            &overrides,
        );
    }
}

fn check(base: &str, file: &str, name: &str, overrides: &Overrides) {
    let r = render(base, Path::new(file), overrides).unwrap_or_else(|e| panic!("{e}"));
    common::golden(&format!("{name}.toml"), &r.text);
    let mut report = String::new();
    for d in &r.diff {
        let _ = writeln!(report, "{d}");
    }
    for w in &r.warnings {
        let _ = writeln!(report, "warning: {w}");
    }
    common::golden(&format!("{name}.diff"), &report);
    // What we hand Kata passes our own checks, and renders to itself.
    validate_config(&r.text, Path::new(name)).unwrap_or_else(|e| panic!("{e}"));
    let again = render(&r.text, Path::new(name), overrides).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.text, r.text, "{name} is not a fixed point");
}
