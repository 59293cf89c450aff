//! Kata config text → render with an HGX plan's overrides: no panic on any input, and a
//! rendered config renders again to the same bytes.
#![no_main]

use std::path::Path;

use kata_gpu_configs::{render, Overrides};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let overrides = Overrides {
        pcie_root_port: Some(12),
        cold_plug_vfio: Some("root-port".to_owned()),
        hot_plug_vfio: Some("no-port".to_owned()),
        default_memory: Some(65536),
        kernel_params_append: vec!["agent.aa_kbc_params=cc_kbc::http://kbs:8080".to_owned()],
        cpu_features: Some("pmu=off,phys-bits=43".to_owned()),
    };
    let Ok(once) = render(text, Path::new("fuzz.toml"), &overrides) else {
        return;
    };
    let twice =
        render(&once.text, Path::new("fuzz.toml"), &overrides).expect("a rendered config renders");
    assert_eq!(twice.text, once.text, "rendering is idempotent");
});
