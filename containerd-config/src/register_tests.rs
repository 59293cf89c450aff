//! Table-driven tests of register/unregister on small shapes: exact output where the shape
//! is interesting, exact refusals for bad input.

use crate::{register, unregister, ConfigVersion, HandlerSpec, Target};

fn spec() -> HandlerSpec {
    HandlerSpec::new("kata", "io.containerd.kata.v2", "/opt/k/configuration.toml")
}

fn target(version: Option<ConfigVersion>) -> Target<'static> {
    Target {
        file: "config.toml",
        version,
    }
}

/// Registers, checks the exact output, that a second run changes nothing and that
/// unregister gives the input back.
fn check(before: &str, version: Option<ConfigVersion>, after: &str) {
    let t = target(version);
    let done = register(before, &spec(), t).unwrap_or_else(|e| panic!("{before:?}: {e}"));
    assert_eq!(done.text, after, "register {before:?}");
    let again = register(&done.text, &spec(), t).expect("again");
    assert!(!again.changed, "second run changed {before:?}");
    let undone = unregister(&done.text, "kata", Some(&done.record), t).expect("unregister");
    assert_eq!(undone.text, before, "unregister {before:?}");
}

#[test]
fn new_handlers_take_the_layout_and_style_of_the_file() {
    let table: [(&str, Option<ConfigVersion>, &str); 5] = [
        (
            "",
            Some(ConfigVersion::V3),
            "version = 3\n\n\
             [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.runc]\n\
             runtime_type = \"io.containerd.runc.v2\"\n\
             sandboxer = \"podsandbox\"\n\n\
             [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.kata]\n\
             runtime_type = \"io.containerd.kata.v2\"\n\
             privileged_without_host_devices = true\n\
             pod_annotations = [\"io.katacontainers.*\", \"cdi.k8s.io/*\"]\n\n\
             [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.kata.options]\n\
             ConfigPath = \"/opt/k/configuration.toml\"\n",
        ),
        (
            "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n  runtime_type = 'io.containerd.runc.v2'\n",
            None,
            "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n  runtime_type = 'io.containerd.runc.v2'\n\n\
             [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.kata]\n\
             \x20 runtime_type = 'io.containerd.kata.v2'\n\
             \x20 privileged_without_host_devices = true\n\
             \x20 pod_annotations = ['io.katacontainers.*', 'cdi.k8s.io/*']\n\n\
             \x20 [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.kata.options]\n\
             \x20   ConfigPath = '/opt/k/configuration.toml'\n",
        ),
        (
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes = {}\n",
            None,
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes = { runc = { runtime_type = \"io.containerd.runc.v2\" }, kata = { runtime_type = \"io.containerd.kata.v2\", privileged_without_host_devices = true, pod_annotations = [\"io.katacontainers.*\", \"cdi.k8s.io/*\"], options = { ConfigPath = \"/opt/k/configuration.toml\" } } }\n",
        ),
        (
            "version = 2\nplugins = { x = 1 }\n",
            None,
            "version = 2\nplugins = { x = 1 , \"io.containerd.grpc.v1.cri\" = { containerd = { runtimes = { runc = { runtime_type = \"io.containerd.runc.v2\" }, kata = { runtime_type = \"io.containerd.kata.v2\", privileged_without_host_devices = true, pod_annotations = [\"io.katacontainers.*\", \"cdi.k8s.io/*\"], options = { ConfigPath = \"/opt/k/configuration.toml\" } } } } } }\n",
        ),
        (
            "{{ template \"base\" . }}\r\n",
            Some(ConfigVersion::V2),
            "{{ template \"base\" . }}\r\n\r\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata]\r\n\
             runtime_type = \"io.containerd.kata.v2\"\r\n\
             privileged_without_host_devices = true\r\n\
             pod_annotations = [\"io.katacontainers.*\", \"cdi.k8s.io/*\"]\r\n\r\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata.options]\r\n\
             ConfigPath = \"/opt/k/configuration.toml\"\r\n",
        ),
    ];
    for (before, version, after) in table {
        check(before, version, after);
    }
}

#[test]
fn existing_handlers_of_every_form_are_updated_in_place() {
    let table: [(&str, &str); 4] = [
        (
            // dotted keys
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes.kata.runtime_type = \"old\"\n",
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes.kata.runtime_type = \"io.containerd.kata.v2\"\nruntimes.kata.privileged_without_host_devices = true\nruntimes.kata.pod_annotations = [\"io.katacontainers.*\", \"cdi.k8s.io/*\"]\nruntimes.kata.options.ConfigPath = \"/opt/k/configuration.toml\"\n",
        ),
        (
            // an inline table
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes]\nkata = { runtime_type = \"old\", privileged_without_host_devices = false }\n",
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes]\nkata = { runtime_type = \"io.containerd.kata.v2\", privileged_without_host_devices = true , pod_annotations = [\"io.katacontainers.*\", \"cdi.k8s.io/*\"], options = { ConfigPath = \"/opt/k/configuration.toml\" } }\n",
        ),
        (
            // only the options table was written: the handler is implicit
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata.options]\n  ConfigPath = \"/opt/k/configuration.toml\"\n",
            "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata]\nruntime_type = \"io.containerd.kata.v2\"\nprivileged_without_host_devices = true\npod_annotations = [\"io.katacontainers.*\", \"cdi.k8s.io/*\"]\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata.options]\n  ConfigPath = \"/opt/k/configuration.toml\"\n",
        ),
        (
            // extra annotations and keys of its own are kept
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata]\n  runtime_type = \"io.containerd.kata.v2\"\n  privileged_without_host_devices = true\n  pod_annotations = [\n    \"cdi.k8s.io/*\",\n    \"example.com/*\",\n  ]\n  container_annotations = [\"x\"]\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata.options]\n    ConfigPath = \"/opt/k/configuration.toml\"\n",
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata]\n  runtime_type = \"io.containerd.kata.v2\"\n  privileged_without_host_devices = true\n  pod_annotations = [\n    \"cdi.k8s.io/*\",\n    \"example.com/*\",\n    \"io.katacontainers.*\",\n  ]\n  container_annotations = [\"x\"]\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata.options]\n    ConfigPath = \"/opt/k/configuration.toml\"\n",
        ),
    ];
    for (before, after) in table {
        check(before, None, after);
    }
}

#[test]
fn bad_input_is_refused_with_the_reason() {
    let table: [(&str, Option<ConfigVersion>, &str); 9] = [
        (
            "version = 2\n[plugins\nx = 1\n",
            None,
            "config.toml:2:9: invalid TOML:",
        ),
        ("root = \"/var/lib/containerd\"\n", Some(ConfigVersion::V2), "version-1 containerd config"),
        ("version = 1\n", None, "version-1 containerd config"),
        ("version = 5\n", None, "unsupported containerd config version 5"),
        ("", None, "cannot tell the containerd config version (the file is empty)"),
        (
            "{{ template \"base\" . }}\n",
            None,
            "Go template whose base sets the version",
        ),
        (
            "version = 2\nplugins = 3\n",
            None,
            "plugins is an integer where a table belongs",
        ),
        (
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes = [1]\n",
            None,
            "plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes is an array where a table belongs",
        ),
        (
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata]\noptions = \"x\"\n",
            None,
            "runtimes.kata.options is a string where a table belongs",
        ),
    ];
    for (text, version, want) in table {
        let err = register(text, &spec(), target(version))
            .expect_err(text)
            .to_string();
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn unregister_leaves_other_handlers_and_explicit_parents() {
    let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes]\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata]\nruntime_type = \"x\"\n";
    let out = unregister(text, "kata", None, target(None)).expect("unregister");
    assert_eq!(
        out.text,
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes]\n"
    );
    let absent = unregister("version = 3\n", "kata", None, target(None)).expect("absent");
    assert!(!absent.changed && !absent.found);
    let err = unregister("version = 2\n[x\n", "kata", None, target(None)).expect_err("bad");
    assert!(err.to_string().starts_with("config.toml:2:"), "{err}");
}

#[test]
fn records_of_two_runs_undo_both() {
    let t = target(None);
    let before = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata]\n  runtime_type = \"old\"\n";
    let first = register(before, &spec(), t).expect("first");
    let mut moved = spec();
    moved.config_path = "/elsewhere/configuration.toml".to_owned();
    moved.snapshotter = Some("nydus".to_owned());
    let second = register(&first.text, &moved, t).expect("second");
    let record = first.record.clone().then(second.record);
    let undone = unregister(&second.text, "kata", Some(&record), t).expect("undo");
    assert_eq!(undone.text, before);

    let created = register("version = 2\n", &spec(), t).expect("created");
    let again = register(&created.text, &moved, t).expect("moved");
    let record = created.record.clone().then(again.record);
    let undone = unregister(&again.text, "kata", Some(&record), t).expect("undo");
    assert_eq!(undone.text, "version = 2\n");
}

#[test]
fn the_default_runtime_is_written_only_beside_a_first_runtime() {
    let t = target(Some(ConfigVersion::V2));
    let table = [
        ("", true),
        ("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nsnapshotter = \"x\"\n", true),
        ("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\ndefault_runtime_name = \"crun\"\n", false),
        ("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.crun]\nruntime_type = \"x\"\n", false),
        ("{{ template \"base\" . }}\n", false),
    ];
    for (text, want) in table {
        let done = register(text, &spec(), t).expect(text);
        assert_eq!(done.record.added_default_runtime, want, "{text:?}");
        let found = crate::find_handler(&done.text, "runc");
        assert_eq!(
            found.is_some() && !text.contains("runtimes.runc"),
            want,
            "{}",
            done.text
        );
        let undone = unregister(&done.text, "kata", Some(&done.record), t).expect("undo");
        assert_eq!(undone.text, text);
    }
}

#[test]
fn two_handlers_share_the_default_runtime_until_the_last_one_goes() {
    let t = target(Some(ConfigVersion::V2));
    let mut other = spec();
    other.name = "kata-tdx".to_owned();
    let first = register("", &spec(), t).expect("first");
    assert!(first.record.added_default_runtime);
    let second = register(&first.text, &other, t).expect("second");
    assert!(!second.record.added_default_runtime);
    let out = unregister(&second.text, "kata", Some(&first.record), t).expect("undo first");
    assert!(
        crate::find_handler(&out.text, "runc").is_some(),
        "runc still needed: {}",
        out.text
    );
    let out = unregister(&out.text, "kata-tdx", Some(&second.record), t).expect("undo second");
    assert!(crate::find_handler(&out.text, "runc").is_some());
    // The other order gives the file back whole.
    let out = unregister(&second.text, "kata-tdx", Some(&second.record), t).expect("second");
    let out = unregister(&out.text, "kata", Some(&first.record), t).expect("first");
    assert_eq!(out.text, "");
}

/// Issue 18 item 3: a key register set and the admin changed since is the admin's now:
/// unregister keeps it as it is (and names it), restoring only the keys still holding what
/// register wrote.
#[test]
fn unregister_keeps_a_key_the_admin_edited_since_register() {
    let before = "version = 2\n\
        [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata]\n\
        \x20 runtime_type = \"io.containerd.kata.v2\"\n\
        \x20 pod_annotations = [\"io.katacontainers.*\"]\n\
        \x20 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata.options]\n\
        \x20   ConfigPath = \"/opt/k/configuration.toml\"\n";
    let t = target(None);
    let done = register(before, &spec(), t).expect("register");
    let table: [(&str, &str, &[&str], &str); 3] = [
        ("", "", &[], before),
        (
            "\"cdi.k8s.io/*\"]",
            "\"cdi.k8s.io/*\", \"admin.example/*\"]",
            &["pod_annotations"],
            "pod_annotations = [\"io.katacontainers.*\", \"cdi.k8s.io/*\", \"admin.example/*\"]\n",
        ),
        (
            "privileged_without_host_devices = true",
            "privileged_without_host_devices = false",
            &["privileged_without_host_devices"],
            "privileged_without_host_devices = false\n",
        ),
    ];
    for (from, to, kept, want) in table {
        let edited = done.text.replacen(from, to, 1);
        let undone = unregister(&edited, "kata", Some(&done.record), t).expect("unregister");
        assert_eq!(undone.kept, kept, "{from:?}");
        assert!(undone.text.contains(want), "{from:?}: {}", undone.text);
        if kept.is_empty() {
            assert_eq!(undone.text, before);
        }
    }
}

/// Issue 18 item 3: the newline register added to a file without one is taken off again
/// only while the file still ends with the line that lacked it; a line the admin appended
/// since keeps its newline.
#[test]
fn the_added_final_newline_is_removed_only_from_the_original_last_line() {
    let before = "version = 2\n[x]\n  a = 1";
    let t = target(None);
    let done = register(before, &spec(), t).expect("register");
    assert!(done.record.added_final_newline);
    let appended = format!("{}[y]\n  b = 2\n", done.text);
    let undone = unregister(&appended, "kata", Some(&done.record), t).expect("unregister");
    assert!(undone.text.ends_with("[y]\n  b = 2\n"), "{:?}", undone.text);
    let undone = unregister(&done.text, "kata", Some(&done.record), t).expect("unregister");
    assert_eq!(undone.text, before);
}

/// The same for the `imports` entry of drop-in mode.
#[test]
fn an_import_takes_off_only_the_newline_it_added() {
    let before = "version = 3\n[x]\n  a = 1";
    let t = target(None);
    let added = crate::add_import(before, "/etc/containerd/conf.d/k.toml", t).expect("add");
    assert!(added.change.added_final_newline);
    let appended = format!("{}[y]\n  b = 2\n", added.text);
    let removed = crate::remove_import(&appended, &added.change, t).expect("remove");
    assert!(
        removed.text.ends_with("[y]\n  b = 2\n"),
        "{:?}",
        removed.text
    );
    let removed = crate::remove_import(&added.text, &added.change, t).expect("remove");
    assert_eq!(removed.text, before);
}
