//! Fuzz target: arbitrary text as qualified device names, annotation keys and a set of
//! pod annotations.
//!
//! The input's first line is tried as a name, kind, vendor, class, device name and
//! annotation key; every line `key<TAB>value` becomes an annotation (keys without a `/` get
//! the `cdi.k8s.io/` prefix, so most requests reach the CDI parser). Properties: nothing
//! panics; a parsed name formats back to its input and parses back equal; the devices read
//! from annotations are distinct, and written back with `add_cdi_annotation` they read
//! back the same.

#![no_main]

use std::collections::BTreeMap;

use cdi::annotations::{
    add_cdi_annotation, cdi_annotation_key, validate_annotation_key, validate_annotations,
};
use cdi::name::{parse_kind, validate_class, validate_device_name, validate_vendor};
use cdi::{parse_cdi_annotations, QualifiedName, CDI_ANNOTATION_PREFIX};
use libfuzzer_sys::fuzz_target;

fn check_name(s: &str) {
    if let Ok(name) = s.parse::<QualifiedName>() {
        let text = name.to_string();
        assert_eq!(text, s, "Display differs from the parsed input");
        assert_eq!(text.parse::<QualifiedName>().as_ref(), Ok(&name));
        assert!(validate_vendor(name.vendor()).is_ok());
        assert!(validate_class(name.class()).is_ok());
        assert!(validate_device_name(name.name()).is_ok());
        let kind = name.kind();
        assert_eq!(parse_kind(&kind), Ok((name.vendor(), name.class())));
    }
    let _ = parse_kind(s);
    let _ = validate_vendor(s);
    let _ = validate_class(s);
    let _ = validate_device_name(s);
    if let Err(e) = validate_annotation_key(s) {
        let _ = e.to_string();
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let second = lines.next().unwrap_or_default();
    check_name(first);
    check_name(text);

    if let Ok(key) = cdi_annotation_key(first, second) {
        assert!(key.starts_with(CDI_ANNOTATION_PREFIX));
        assert!(
            validate_annotation_key(&key).is_ok(),
            "cdi_annotation_key built an invalid key {key:?}"
        );
    }

    let mut annotations = BTreeMap::new();
    for line in text.lines() {
        let (key, value) = line.split_once('\t').unwrap_or((line, ""));
        let key = if key.contains('/') {
            key.to_owned()
        } else {
            format!("{CDI_ANNOTATION_PREFIX}{key}")
        };
        annotations.insert(key, value.to_owned());
    }
    let _ = validate_annotations(&annotations);
    match parse_cdi_annotations(&annotations) {
        Err(e) => {
            let _ = e.to_string();
        }
        Ok(devices) => {
            for (i, d) in devices.iter().enumerate() {
                assert!(!devices[..i].contains(d), "{d} listed twice");
                assert_eq!(d.to_string().parse::<QualifiedName>().as_ref(), Ok(d));
            }
            if !devices.is_empty() {
                let mut rebuilt = BTreeMap::new();
                add_cdi_annotation(&mut rebuilt, "fuzz", "0", &devices)
                    .expect("a fresh map takes the request");
                assert_eq!(
                    parse_cdi_annotations(&rebuilt).expect("rebuilt annotations parse"),
                    devices
                );
            }
        }
    }
});
