//! Property tests of the `cdi` crate: nothing panics on arbitrary input (spec bytes in both
//! formats, names, annotations), and what the crate builds or accepts reads back equal
//! (qualified names, generated valid specs through YAML, JSON and files, CDI annotations).
//!
//! Case counts are kept moderate so that the whole file runs in seconds in a debug build;
//! `PROPTEST_CASES=10000 cargo test -p cdi --test properties` digs deeper.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cdi::annotations::{
    add_cdi_annotation, cdi_annotation_key, validate_annotation_key, AnnotationError,
};
use cdi::model::{ContainerEdits, Device, DeviceNode, Hook, Mount, Spec};
use cdi::name::{parse_kind, validate_class, validate_device_name, validate_vendor};
use cdi::validate::HOOK_NAMES;
use cdi::version::{required_version, SpecVersion};
use cdi::{load_spec, parse_cdi_annotations, validate_spec, Format, QualifiedName};
use proptest::prelude::*;

/// `cases` cases, unless `PROPTEST_CASES` asks for another number.
fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

/// A valid vendor: a letter, then letters, digits, `-_.`, ending alphanumeric.
fn vendor() -> impl Strategy<Value = String> {
    "[a-zA-Z]([a-zA-Z0-9._-]{0,24}[a-zA-Z0-9])?"
}

/// A valid class (same alphabet as the vendor; a `.` raises the spec version to 0.6.0).
fn class() -> impl Strategy<Value = String> {
    "[a-zA-Z]([a-zA-Z0-9._-]{0,16}[a-zA-Z0-9])?"
}

/// A valid device name: alphanumeric at both ends, `-_.:` inside.
fn device_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]([a-zA-Z0-9._:-]{0,16}[a-zA-Z0-9])?"
}

fn qualified_name() -> impl Strategy<Value = QualifiedName> {
    (vendor(), class(), device_name()).prop_map(|(v, c, n)| {
        QualifiedName::new(&v, &c, &n).expect("the strategy builds valid parts")
    })
}

/// Strings near the name grammar, so that a fair share of them parse.
fn name_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._:/=, -]{0,40}",
        "[a-z.]{0,12}/[a-z.]{0,8}=[a-z0-9:._-]{0,8}",
        any::<String>(),
    ]
}

/// One `/dev/...` path without `.` or `..` segments.
fn dev_path() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-zA-Z0-9_-][a-zA-Z0-9_.-]{0,10}", 1..4)
        .prop_map(|segments| format!("/dev/{}", segments.join("/")))
}

/// An absolute path without `.` or `..` segments.
fn abs_path() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-zA-Z0-9_-][a-zA-Z0-9_.@+-]{0,12}", 1..5)
        .prop_map(|segments| format!("/{}", segments.join("/")))
}

/// A `KEY=VALUE` entry; the value is any text without control characters.
fn env_entry() -> impl Strategy<Value = String> {
    ("[A-Za-z_][A-Za-z0-9_]{0,12}", "\\PC{0,24}").prop_map(|(k, v)| format!("{k}={v}"))
}

/// A device node with explicit type and numbers (so injection never stats the host).
fn device_node() -> impl Strategy<Value = DeviceNode> {
    (
        dev_path(),
        prop::option::of(dev_path()),
        prop::sample::select(vec!["c", "b", "u", "p"]),
        1i64..4096,
        0i64..(1 << 20),
        prop::option::of(prop::sample::select(vec![
            "", "r", "w", "m", "rw", "rm", "wm", "rwm",
        ])),
        prop::option::of(0u32..=0o7777),
        prop::option::of(any::<u32>()),
        prop::option::of(any::<u32>()),
    )
        .prop_map(
            |(path, host_path, t, major, minor, permissions, file_mode, uid, gid)| DeviceNode {
                path,
                host_path,
                device_type: Some(t.to_owned()),
                major: Some(major),
                minor: Some(minor),
                file_mode,
                permissions: permissions.map(str::to_owned),
                uid,
                gid,
            },
        )
}

fn mount() -> impl Strategy<Value = Mount> {
    (
        abs_path(),
        abs_path(),
        prop::collection::vec("[a-z][a-z0-9=_]{0,10}", 0..4),
        prop::option::of(prop::sample::select(vec!["bind", "tmpfs", "none"])),
    )
        .prop_map(|(host_path, container_path, options, t)| Mount {
            host_path,
            container_path,
            options,
            mount_type: t.map(str::to_owned),
        })
}

fn hook() -> impl Strategy<Value = Hook> {
    (
        prop::sample::select(HOOK_NAMES.to_vec()),
        abs_path(),
        prop::collection::vec("\\PC{0,12}", 0..3),
        prop::collection::vec(env_entry(), 0..2),
        prop::option::of(1i64..3600),
    )
        .prop_map(|(name, path, args, env, timeout)| Hook {
            hook_name: name.to_owned(),
            path,
            args,
            env,
            timeout,
        })
}

/// Annotations with keys valid by the Kubernetes rules and free-form values.
fn annotations() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop_oneof![
            "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z]{1,6}){0,2}/[a-zA-Z0-9]([a-zA-Z0-9._-]{0,12}[a-zA-Z0-9])?",
            "[a-zA-Z0-9]([a-zA-Z0-9._-]{0,12}[a-zA-Z0-9])?",
        ],
        "\\PC{0,24}",
        0..3,
    )
}

/// Edits of a spec or device; `need_one` forces at least one device node.
fn edits(need_one: bool) -> impl Strategy<Value = ContainerEdits> {
    let nodes = if need_one { 1..4 } else { 0..3 };
    (
        prop::collection::vec(env_entry(), 0..4),
        prop::collection::vec(device_node(), nodes),
        prop::collection::vec(mount(), 0..3),
        prop::collection::vec(hook(), 0..2),
        prop::collection::vec(any::<u32>(), 0..2),
    )
        .prop_map(
            |(env, device_nodes, mounts, hooks, additional_gids)| ContainerEdits {
                env,
                device_nodes,
                mounts,
                hooks,
                additional_gids,
                ..ContainerEdits::default()
            },
        )
}

fn device(name: String) -> impl Strategy<Value = Device> {
    (annotations(), edits(true)).prop_map(move |(annotations, container_edits)| Device {
        name: name.clone(),
        annotations,
        container_edits,
    })
}

/// A valid spec: valid kind, 1 to 4 uniquely named devices, and a declared version at least
/// what its features need (a random one of the versions at or above that minimum).
fn valid_spec() -> impl Strategy<Value = Spec> {
    (
        vendor(),
        class(),
        prop::collection::btree_set(device_name(), 1..5),
        annotations(),
        edits(false),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_flat_map(|(v, c, names, annotations, edits, version, v_prefix)| {
            let devices: Vec<_> = names.into_iter().map(device).collect();
            devices.prop_map(move |devices| {
                let mut spec = Spec {
                    cdi_version: String::new(),
                    kind: format!("{v}/{c}"),
                    annotations: annotations.clone(),
                    devices,
                    container_edits: edits.clone(),
                };
                let floor = required_version(&spec).version;
                let usable: Vec<SpecVersion> = SpecVersion::ALL
                    .into_iter()
                    .filter(|x| *x >= floor)
                    .collect();
                let chosen = *version.get(&usable);
                spec.cdi_version = if v_prefix {
                    format!("v{chosen}")
                } else {
                    chosen.to_string()
                };
                spec
            })
        })
}

/// One of the corpus files under `tests/data`, read once.
fn corpus() -> &'static [(String, Vec<u8>)] {
    use std::sync::OnceLock;
    static FILES: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let mut files = Vec::new();
        for sub in ["valid", "invalid"] {
            let dir = std::fs::read_dir(root.join(sub)).expect("corpus directory");
            for entry in dir {
                let path = entry.expect("corpus entry").path();
                if Format::from_path(&path).is_some() {
                    let bytes = std::fs::read(&path).expect("corpus file");
                    files.push((path.display().to_string(), bytes));
                }
            }
        }
        files.sort();
        assert!(
            !files.is_empty(),
            "no corpus files under {}",
            root.display()
        );
        files
    })
}

/// Edits to apply to a corpus file: (position, replacement byte, truncate?).
fn mutations() -> impl Strategy<Value = Vec<(prop::sample::Index, u8, bool)>> {
    prop::collection::vec(
        (
            any::<prop::sample::Index>(),
            any::<u8>(),
            prop::bool::weighted(0.05),
        ),
        1..8,
    )
}

fn load_both(bytes: &[u8]) {
    for (format, origin) in [(Format::Json, "fuzz.json"), (Format::Yaml, "fuzz.yaml")] {
        if let Ok(spec) = load_spec(bytes, format, Path::new(origin)) {
            // Whatever loads must also pass validation on its own, and read back equal.
            validate_spec(&spec, None).expect("a loaded spec validates");
            let json = serde_json::to_vec(&spec).expect("serializes to JSON");
            let again = load_spec(&json, Format::Json, Path::new("again.json"))
                .expect("a loaded spec reloads from JSON");
            assert_eq!(again, spec);
            let yaml = serde_yaml_ng::to_string(&spec).expect("serializes to YAML");
            let again = load_spec(yaml.as_bytes(), Format::Yaml, Path::new("again.yaml"))
                .expect("a loaded spec reloads from YAML");
            assert_eq!(again, spec);
        }
    }
}

fn ann_map(pairs: &[(String, String)]) -> BTreeMap<String, String> {
    pairs.iter().cloned().collect()
}

// ---------------------------------------------------------------------------------------
// No panics on arbitrary input
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn load_spec_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        load_both(&bytes);
    }

    #[test]
    fn load_spec_never_panics_on_text(text in "\\PC{0,300}") {
        load_both(text.as_bytes());
    }

    #[test]
    fn load_spec_never_panics_on_mutated_corpus(
        file in any::<prop::sample::Index>(),
        edits in mutations(),
    ) {
        let files = corpus();
        let mut bytes = files[file.index(files.len())].1.clone();
        for (at, byte, truncate) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            if truncate {
                bytes.truncate(i);
            } else {
                bytes[i] = byte;
            }
        }
        load_both(&bytes);
    }

    #[test]
    fn name_functions_never_panic(s in name_like()) {
        let _ = s.parse::<QualifiedName>();
        let _ = parse_kind(&s);
        let _ = validate_vendor(&s);
        let _ = validate_class(&s);
        let _ = validate_device_name(&s);
        let _ = validate_annotation_key(&s);
        let _ = cdi_annotation_key(&s, &s);
        let _ = s.parse::<SpecVersion>();
    }

    #[test]
    fn annotation_parsing_never_panics(
        pairs in prop::collection::vec(
            (
                prop_oneof!["cdi\\.k8s\\.io/\\PC{0,12}", any::<String>()],
                prop_oneof![name_like(), "([a-z]{1,3}/[a-z]{1,3}=[0-9]{1,2}, ?){0,4}"],
            ),
            0..6,
        )
    ) {
        let map = ann_map(&pairs);
        let _ = parse_cdi_annotations(&map);
        let _ = cdi::annotations::validate_annotations(&map);
    }
}

// ---------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn valid_parts_format_and_parse_back(v in vendor(), c in class(), n in device_name()) {
        let name = QualifiedName::new(&v, &c, &n).expect("valid parts");
        let text = name.to_string();
        prop_assert_eq!(&text, &format!("{v}/{c}={n}"));
        let back: QualifiedName = text.parse().expect("a formatted name parses");
        prop_assert_eq!(&back, &name);
        prop_assert_eq!((back.vendor(), back.class(), back.name()), (&*v, &*c, &*n));
        let kind = name.kind();
        prop_assert_eq!(parse_kind(&kind), Ok((&*v, &*c)));
    }

    #[test]
    fn whatever_parses_formats_back_to_its_input(s in name_like()) {
        if let Ok(name) = s.parse::<QualifiedName>() {
            prop_assert_eq!(name.to_string(), s.clone());
            prop_assert_eq!(name.to_string().parse::<QualifiedName>(), Ok(name.clone()));
            // Parsing agrees with the part rules.
            prop_assert!(validate_vendor(name.vendor()).is_ok());
            prop_assert!(validate_class(name.class()).is_ok());
            prop_assert!(validate_device_name(name.name()).is_ok());
        }
    }

    #[test]
    fn parsing_agrees_with_the_part_rules(s in "[a-zA-Z0-9._:-]{0,10}/[a-zA-Z0-9._:-]{0,10}=[a-zA-Z0-9._:/-]{0,10}") {
        let (kind, n) = s.split_once('=').expect("the strategy writes '='");
        let (v, c) = kind.split_once('/').expect("the strategy writes '/'");
        let by_parts = validate_vendor(v).is_ok()
            && validate_class(c).is_ok()
            && validate_device_name(n).is_ok();
        prop_assert_eq!(s.parse::<QualifiedName>().is_ok(), by_parts);
    }
}

// ---------------------------------------------------------------------------------------
// Specs
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn generated_specs_validate_and_round_trip(spec in valid_spec()) {
        validate_spec(&spec, None).expect("a generated spec is valid");

        let yaml = serde_yaml_ng::to_string(&spec).expect("serializes to YAML");
        let from_yaml = load_spec(yaml.as_bytes(), Format::Yaml, Path::new("p.yaml"))
            .unwrap_or_else(|e| panic!("YAML reloads: {e}\n{yaml}"));
        prop_assert_eq!(&from_yaml, &spec);

        let json = serde_json::to_vec(&spec).expect("serializes to JSON");
        let from_json = load_spec(&json, Format::Json, Path::new("p.json"))
            .unwrap_or_else(|e| panic!("JSON reloads: {e}"));
        prop_assert_eq!(&from_json, &spec);

        let pretty = serde_json::to_vec_pretty(&spec).expect("serializes to JSON");
        let from_pretty = load_spec(&pretty, Format::Json, Path::new("p.json"))
            .unwrap_or_else(|e| panic!("pretty JSON reloads: {e}"));
        prop_assert_eq!(&from_pretty, &spec);

        // JSON is a subset of YAML: the YAML reader takes the JSON text too.
        let json_as_yaml = load_spec(&json, Format::Yaml, Path::new("p.yaml"))
            .unwrap_or_else(|e| panic!("JSON text reloads as YAML: {e}"));
        prop_assert_eq!(&json_as_yaml, &spec);
    }

    #[test]
    fn lowering_the_version_below_the_floor_is_refused(spec in valid_spec()) {
        let floor = required_version(&spec).version;
        for lower in SpecVersion::ALL.into_iter().filter(|v| *v < floor) {
            let mut old = spec.clone();
            old.cdi_version = lower.to_string();
            let err = validate_spec(&old, None).expect_err("below the floor");
            prop_assert!(
                matches!(err.problem, cdi::Problem::VersionTooLow { .. }),
                "{}", err
            );
        }
    }
}

proptest! {
    #![proptest_config(config(24))]

    #[test]
    fn written_specs_read_back_and_resolve(
        specs in prop::collection::vec(valid_spec(), 1..4),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut expected = BTreeMap::new();
        for (i, spec) in specs.iter().enumerate() {
            // One kind per file keeps the names of different files apart.
            let mut spec = spec.clone();
            spec.kind = format!("{}{i}", spec.kind);
            let path = dir.path().join(format!("spec{i}.yaml"));
            cdi::write_spec_file(&path, &spec).expect("writes");
            let back = cdi::read_spec_file(&path).expect("reads back");
            prop_assert_eq!(&back, &spec);
            for device in &spec.devices {
                let (v, c) = parse_kind(&spec.kind).expect("valid kind");
                let name = QualifiedName::new(v, c, &device.name).expect("valid name");
                expected.insert(name, device.clone());
            }
        }
        let registry = cdi::Registry::new(cdi::RegistryConfig {
            spec_dirs: vec![dir.path().to_path_buf()],
            dev_root: dir.path().to_path_buf(),
            require_root_owned: false,
        });
        prop_assert!(registry.skipped().is_empty(), "{:?}", registry.skipped());
        prop_assert_eq!(registry.devices().count(), expected.len());
        let names: Vec<QualifiedName> = expected.keys().cloned().collect();
        let resolved = registry.resolve(&names).expect("every written device resolves");
        for (name, got) in names.iter().zip(&resolved) {
            prop_assert_eq!(got.device, &expected[name]);
        }
        // Explicit node types and numbers: injection needs no host node.
        let mut oci = oci_spec::runtime::Spec::default();
        registry.inject(&mut oci, &names).expect("injects");
        let linux = oci.linux().as_ref().expect("linux section");
        let injected: BTreeSet<String> = linux
            .devices()
            .iter()
            .flatten()
            .map(|d| d.path().display().to_string())
            .collect();
        let wanted: BTreeSet<String> = expected
            .values()
            .flat_map(|d| d.container_edits.device_nodes.iter().map(|n| n.path.clone()))
            .collect();
        prop_assert!(wanted.is_subset(&injected), "{:?} not in {:?}", wanted, injected);
    }
}

// ---------------------------------------------------------------------------------------
// Annotations
// ---------------------------------------------------------------------------------------

/// A request as a device plugin makes it: plugin, device id, devices.
fn request() -> impl Strategy<Value = (String, String, Vec<QualifiedName>)> {
    (
        "[a-z0-9]([a-z0-9_.-]{0,10}[a-z0-9])?",
        "[a-zA-Z0-9]([a-zA-Z0-9/_.-]{0,12}[a-zA-Z0-9])?",
        prop::collection::vec(qualified_name(), 1..4),
    )
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn built_annotations_parse_back_to_the_same_devices(
        requests in prop::collection::vec(request(), 1..5),
        others in prop::collection::btree_map("[a-z]{1,8}\\.io/[a-z]{1,8}", "\\PC{0,16}", 0..3),
        spaced in any::<bool>(),
    ) {
        let mut annotations = others.clone();
        let mut added: BTreeMap<String, Vec<QualifiedName>> = BTreeMap::new();
        for (plugin, device_id, devices) in &requests {
            match add_cdi_annotation(&mut annotations, plugin, device_id, devices) {
                Ok(key) => {
                    prop_assert!(validate_annotation_key(&key).is_ok(), "{}", key);
                    prop_assert_eq!(Ok(key.clone()), cdi_annotation_key(plugin, device_id));
                    prop_assert!(added.insert(key, devices.clone()).is_none());
                }
                Err(AnnotationError::Collision { key }) => {
                    prop_assert!(added.contains_key(&key), "collision on a new key {}", key);
                }
                Err(e) => {
                    // Only a name part over 63 characters may be refused.
                    prop_assert!(plugin.len() + device_id.len() + 1 > 63, "{}", e);
                }
            }
        }
        if spaced {
            for (key, devices) in &added {
                let text = devices.iter().map(ToString::to_string).collect::<Vec<_>>();
                annotations.insert(key.clone(), format!(" {} ", text.join(" , ")));
            }
        }
        // Expected: keys in sorted order, each device once, first occurrence wins.
        let mut want: Vec<QualifiedName> = Vec::new();
        for devices in added.values() {
            for d in devices {
                if !want.contains(d) {
                    want.push(d.clone());
                }
            }
        }
        let got = parse_cdi_annotations(&annotations).expect("built annotations parse");
        prop_assert_eq!(got, want);
    }
}
