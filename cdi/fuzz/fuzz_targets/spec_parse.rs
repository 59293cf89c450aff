//! Fuzz target: arbitrary bytes read as a JSON and as a YAML spec.
//!
//! Checks that nothing panics, that `load_spec` is exactly `parse_spec` then
//! `validate_spec`, that every error renders, and that a spec which loads serializes to
//! YAML and to JSON and loads back equal.

#![no_main]

use std::path::Path;

use cdi::{load_spec, one_line, parse_spec, validate_spec, Format, Spec};
use libfuzzer_sys::fuzz_target;

fn reload(spec: &Spec) {
    let yaml = serde_yaml_ng::to_string(spec).expect("a loaded spec serializes to YAML");
    let from_yaml = load_spec(yaml.as_bytes(), Format::Yaml, Path::new("again.yaml"))
        .unwrap_or_else(|e| panic!("YAML of a loaded spec does not load: {e}\n{yaml}"));
    assert_eq!(
        &from_yaml, spec,
        "YAML round trip changed the spec:\n{yaml}"
    );

    let json = serde_json::to_vec(spec).expect("a loaded spec serializes to JSON");
    let from_json = load_spec(&json, Format::Json, Path::new("again.json"))
        .unwrap_or_else(|e| panic!("JSON of a loaded spec does not load: {e}"));
    assert_eq!(&from_json, spec, "JSON round trip changed the spec");
}

fuzz_target!(|data: &[u8]| {
    for (format, origin) in [(Format::Json, "fuzz.json"), (Format::Yaml, "fuzz.yaml")] {
        let origin = Path::new(origin);
        let loaded = load_spec(data, format, origin);
        match parse_spec(data, format, origin) {
            Err(e) => {
                assert!(loaded.is_err(), "load succeeded where parse failed");
                let _ = one_line(&e);
            }
            Ok(parsed) => {
                let validated = validate_spec(&parsed, Some(origin));
                assert_eq!(
                    validated.is_ok(),
                    loaded.is_ok(),
                    "load != parse + validate"
                );
                if let Err(e) = validated {
                    let _ = e.to_string();
                }
            }
        }
        if let Ok(spec) = loaded {
            reload(&spec);
        }
    }
});
