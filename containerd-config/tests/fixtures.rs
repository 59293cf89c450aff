//! Every config shape found in the field (tests/data): register adds only our tables,
//! registering again changes nothing, unregister gives back the original bytes.

use std::fs;
use std::path::{Path, PathBuf};

use kata_gpu_containerd_config::{
    add_import, find_handler, register, remove_import, unregister, ConfigVersion, HandlerChange,
    HandlerSpec, Target,
};
use similar::{ChangeTag, TextDiff};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn spec() -> HandlerSpec {
    HandlerSpec::new(
        "kata-qemu-nvidia-gpu-snp",
        "io.containerd.kata-qemu-nvidia-gpu-snp.v2",
        "/opt/nvidia-gpu-operator/artifacts/runtimeclasses/kata-qemu-nvidia-gpu-snp/current/configuration.toml",
    )
}

/// (file, version hint, whether register only inserts lines)
const FIXTURES: [(&str, Option<ConfigVersion>, bool); 13] = [
    ("v3-containerd2-default.toml", None, true),
    ("v4-containerd23.toml", None, true),
    ("v2-heavy-comments.toml", None, true),
    ("v2-inline-dotted.toml", None, true),
    ("v2-inline-runtimes.toml", None, false),
    ("v2-runc-options.toml", None, true),
    ("v2-existing-handler.toml", None, false),
    ("v2-imports-present.toml", None, true),
    ("k3s-config-v3.toml.tmpl", Some(ConfigVersion::V3), true),
    ("k3s-config.toml.tmpl", Some(ConfigVersion::V2), true),
    ("empty.toml", Some(ConfigVersion::V2), true),
    ("v2-crlf.toml", None, true),
    ("v2-no-final-newline.toml", None, false),
];

/// Lines the patch removed or changed must all be lines of our handler.
fn assert_only_ours(name: &str, before: &str, after: &str, inserts_only: bool) {
    let diff = TextDiff::from_lines(before, after);
    for change in diff.iter_all_changes() {
        if change.tag() == ChangeTag::Delete {
            let line = change.value();
            let ours = [
                "kata-qemu-nvidia-gpu-snp",
                "runtime_path",
                "pod_annotations",
                "ConfigPath",
                "snapshotter",
            ]
            .iter()
            .any(|k| line.contains(k))
                || !line.ends_with('\n')
                || after.lines().any(|l| {
                    l.contains("kata-qemu-nvidia-gpu-snp")
                        && l.starts_with(line.trim_end().trim_end_matches('}').trim_end())
                });
            assert!(
                !inserts_only && ours,
                "{name}: register removed or changed the line {line:?}\n{}",
                diff.unified_diff()
            );
        }
    }
}

#[test]
fn every_shape_round_trips_to_the_same_bytes() {
    for (name, version, inserts_only) in FIXTURES {
        let before = fs::read_to_string(data(name)).expect(name);
        let target = Target {
            file: name,
            version,
        };
        let done = register(&before, &spec(), target).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(done.changed, "{name}: nothing changed");
        assert_only_ours(name, &before, &done.text, inserts_only);
        let found = find_handler(&done.text, "kata-qemu-nvidia-gpu-snp")
            .unwrap_or_else(|| panic!("{name}: handler missing:\n{}", done.text));
        assert!(found.satisfies(&spec()), "{name}: {found:?}");
        if name.ends_with(".tmpl") {
            assert!(
                done.text.starts_with("{{ template \"base\" . }}\n"),
                "{name}"
            );
        }

        let again = register(&done.text, &spec(), target).expect("second run");
        assert!(!again.changed, "{name}: second run changed the text");
        assert_eq!(again.text, done.text);

        let undone = unregister(&done.text, &spec().name, Some(&done.record), target)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            undone.text, before,
            "{name}: unregister did not restore the bytes"
        );
        let twice = unregister(&undone.text, &spec().name, Some(&done.record), target)
            .expect("unregister twice");
        assert!(!twice.changed, "{name}");

        if done.record.handler_change == HandlerChange::Created
            && !done.record.created_version_key
            && !done.record.added_final_newline
            && !done.record.added_default_runtime
        {
            let blind = unregister(&done.text, &spec().name, None, target).expect("no record");
            assert_eq!(blind.text, before, "{name}: unregister without a record");
        }
    }
}

#[test]
fn the_patched_shapes_read_as_expected() {
    let before = fs::read_to_string(data("v2-heavy-comments.toml")).expect("read");
    let done = register(
        &before,
        &spec(),
        Target {
            file: "c",
            version: None,
        },
    )
    .expect("register");
    let expected_block = r#"        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = true   # cgroup v2 + systemd

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-qemu-nvidia-gpu-snp]
        runtime_type = "io.containerd.kata-qemu-nvidia-gpu-snp.v2"
        privileged_without_host_devices = true
        pod_annotations = ["io.katacontainers.*", "cdi.k8s.io/*"]

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-qemu-nvidia-gpu-snp.options]
          ConfigPath = "/opt/nvidia-gpu-operator/artifacts/runtimeclasses/kata-qemu-nvidia-gpu-snp/current/configuration.toml"

    # CNI
"#;
    assert!(done.text.contains(expected_block), "{}", done.text);

    let before = fs::read_to_string(data("v2-existing-handler.toml")).expect("read");
    let done = register(
        &before,
        &spec(),
        Target {
            file: "c",
            version: None,
        },
    )
    .expect("register");
    assert!(
        done.text.contains(
            "  runtime_type = \"io.containerd.kata-qemu-nvidia-gpu-snp.v2\"   # keep this comment\n"
        ),
        "{}",
        done.text
    );
    assert!(done
        .text
        .contains("pod_annotations = [\"io.katacontainers.*\", \"cdi.k8s.io/*\"]\n"));
    assert!(
        done.text
            .contains("/current/configuration.toml\"   # stale\n"),
        "{}",
        done.text
    );
    assert!(done.text.contains("snapshotter = \"nydus\""), "kept");
    let HandlerChange::Updated { changes, .. } = &done.record.handler_change else {
        panic!("expected an update: {:?}", done.record)
    };
    let keys: Vec<String> = changes.iter().map(|c| c.key.join(".")).collect();
    assert_eq!(keys, ["pod_annotations", "options.ConfigPath"]);
}

#[test]
fn drop_in_imports_round_trip_on_every_plain_shape() {
    let entry = "/etc/containerd/conf.d/kata-qemu-nvidia-gpu-snp.toml";
    for (name, version, _) in FIXTURES {
        if name.ends_with(".tmpl") {
            continue;
        }
        let before = fs::read_to_string(data(name)).expect(name);
        let target = Target {
            file: name,
            version,
        };
        let edit = add_import(&before, entry, target).unwrap_or_else(|e| panic!("{name}: {e}"));
        let again = add_import(&edit.text, entry, target).expect("again");
        assert!(!again.changed, "{name}");
        let undone = remove_import(&edit.text, &edit.change, target).expect("remove");
        assert_eq!(undone.text, before, "{name}");
    }
}
