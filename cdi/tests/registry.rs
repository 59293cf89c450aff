//! The registry over real directories: priority, conflicts, broken and insecure files,
//! incremental refresh, all-or-nothing injection, and atomic writes.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cdi::registry::{FileProblem, Registry, RegistryConfig, Unresolved};
use cdi::{InjectError, QualifiedName};
use oci_spec::runtime::{LinuxDeviceType, Spec as OciSpec};

struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Self {
        let host = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for d in ["etc/cdi", "var/run/cdi", "dev"] {
            fs::create_dir_all(host.path(d)).expect("mkdir");
        }
        host
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        fs::write(&p, text).expect("write spec");
        p
    }

    fn config(&self) -> RegistryConfig {
        RegistryConfig {
            require_root_owned: false,
            ..RegistryConfig::under_root(self.dir.path())
        }
    }

    fn registry(&self) -> Registry {
        Registry::new(self.config())
    }
}

/// A spec of `kind` whose devices each set `WHO=<tag>` and one device node.
fn spec(kind: &str, names: &[&str], tag: &str) -> String {
    let mut text = format!(
        "cdiVersion: 0.5.0\nkind: {kind}\ncontainerEdits:\n  env: [SPEC={tag}]\ndevices:\n"
    );
    for (i, n) in names.iter().enumerate() {
        text.push_str(&format!(
            "- name: \"{n}\"\n  containerEdits:\n    env: [WHO={tag}-{n}]\n    deviceNodes:\n    - path: /dev/vfio/devices/vfio{i}\n      type: c\n      major: 237\n      minor: {i}\n"
        ));
    }
    text
}

fn names(list: &[&str]) -> Vec<QualifiedName> {
    list.iter()
        .map(|n| n.parse().expect("valid name"))
        .collect()
}

fn env(oci: &OciSpec) -> Vec<String> {
    oci.process()
        .as_ref()
        .and_then(|p| p.env().clone())
        .unwrap_or_default()
}

fn device_names(r: &Registry) -> Vec<String> {
    r.devices().map(|(n, _)| n.to_string()).collect()
}

#[test]
fn a_later_directory_overrides_an_earlier_one() {
    let host = Host::new();
    host.write(
        "etc/cdi/pgpu.yaml",
        &spec("nvidia.com/pgpu", &["0", "1"], "etc"),
    );
    host.write(
        "var/run/cdi/pgpu.yaml",
        &spec("nvidia.com/pgpu", &["1", "2"], "run"),
    );
    let r = host.registry();
    assert_eq!(
        device_names(&r),
        [
            "nvidia.com/pgpu=0",
            "nvidia.com/pgpu=1",
            "nvidia.com/pgpu=2"
        ]
    );
    let one = r.get(&names(&["nvidia.com/pgpu=1"])[0]).expect("resolves");
    assert_eq!(one.spec.path, host.path("var/run/cdi/pgpu.yaml"));
    assert_eq!(one.spec.priority, 1);
    assert!(r.conflicts().is_empty());
}

#[test]
fn equal_priority_definitions_cancel_out_and_name_both_files() {
    let host = Host::new();
    let a = host.write("etc/cdi/a.yaml", &spec("nvidia.com/pgpu", &["0", "1"], "a"));
    let b = host.write("etc/cdi/b.json", &{
        let yaml = spec("nvidia.com/pgpu", &["1", "2"], "b");
        let value: serde_json::Value = serde_yaml_ng::from_str(&yaml).expect("yaml");
        serde_json::to_string(&value).expect("json")
    });
    let r = host.registry();
    assert_eq!(device_names(&r), ["nvidia.com/pgpu=0", "nvidia.com/pgpu=2"]);
    let conflicts = r.conflicts();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].name.to_string(), "nvidia.com/pgpu=1");
    assert_eq!(conflicts[0].files, [a.clone(), b.clone()]);

    let mut oci = OciSpec::default();
    let err = r
        .inject(&mut oci, &names(&["nvidia.com/pgpu=1"]))
        .expect_err("conflicting name");
    let text = err.to_string();
    assert!(text.contains(&a.display().to_string()), "{text}");
    assert!(text.contains(&b.display().to_string()), "{text}");

    // A higher-priority directory settles it.
    host.write(
        "var/run/cdi/fix.yaml",
        &spec("nvidia.com/pgpu", &["1"], "fix"),
    );
    let r = host.registry();
    assert!(r.conflicts().is_empty());
    r.inject(&mut oci, &names(&["nvidia.com/pgpu=1"]))
        .expect("resolved by the later directory");
    assert!(env(&oci).contains(&"WHO=fix-1".to_owned()));
}

#[test]
fn a_broken_file_is_reported_and_never_takes_the_others_down() {
    let host = Host::new();
    host.write(
        "etc/cdi/good.yaml",
        &spec("nvidia.com/pgpu", &["0"], "good"),
    );
    let bad = host.write("etc/cdi/bad.yaml", "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: x\n  containerEdits:\n    deviceNodes:\n    - path: /etc/shadow\n");
    host.write("etc/cdi/broken.json", "{\"cdiVersion\": ");
    let r = host.registry();
    assert_eq!(device_names(&r), ["nvidia.com/pgpu=0"]);
    let skipped: Vec<String> = r.skipped().iter().map(ToString::to_string).collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        skipped[0].starts_with(&format!("{}: device \"x\"", bad.display())),
        "{skipped:?}"
    );
    assert!(skipped[0].contains("device nodes must be under /dev"));
    assert!(skipped[1].contains("broken.json:1:"), "{skipped:?}");
    assert!(matches!(r.skipped()[1].problem, FileProblem::Invalid(_)));
}

#[test]
fn only_json_and_yaml_files_directly_in_a_spec_dir_count() {
    let host = Host::new();
    host.write("etc/cdi/a.yml", &spec("a.com/x", &["yml"], "yml"));
    host.write("etc/cdi/a.yaml.bak", &spec("a.com/x", &["bak"], "bak"));
    fs::create_dir_all(host.path("etc/cdi/sub")).expect("mkdir");
    host.write("etc/cdi/sub/a.yaml", &spec("a.com/x", &["sub"], "sub"));
    fs::create_dir_all(host.path("etc/cdi/dir.yaml")).expect("mkdir");
    host.write("etc/cdi/ok.json", &{
        let value: serde_json::Value =
            serde_yaml_ng::from_str(&spec("a.com/x", &["ok"], "ok")).expect("yaml");
        value.to_string()
    });
    let r = host.registry();
    assert_eq!(device_names(&r), ["a.com/x=ok"]);
    assert!(r.skipped().is_empty());
    assert_eq!(r.last_refresh().files, 1);
}

#[test]
fn refresh_reparses_only_what_changed() {
    let host = Host::new();
    for i in 0..3 {
        host.write(
            &format!("etc/cdi/s{i}.yaml"),
            &spec(&format!("v{i}.com/gpu"), &["0"], "x"),
        );
    }
    let mut r = host.registry();
    assert_eq!(r.last_refresh().parsed, 3);
    let stats = r.refresh();
    assert_eq!((stats.files, stats.parsed), (3, 0));

    host.write("etc/cdi/s1.yaml", &spec("v1.com/gpu", &["0", "1"], "x"));
    let stats = r.refresh();
    assert_eq!((stats.files, stats.parsed), (3, 1));
    assert!(device_names(&r).contains(&"v1.com/gpu=1".to_owned()));

    fs::remove_file(host.path("etc/cdi/s2.yaml")).expect("rm");
    host.write("var/run/cdi/new.yaml", &spec("new.com/gpu", &["0"], "x"));
    let stats = r.refresh();
    assert_eq!((stats.files, stats.parsed), (3, 1));
    assert_eq!(
        device_names(&r),
        [
            "new.com/gpu=0",
            "v0.com/gpu=0",
            "v1.com/gpu=0",
            "v1.com/gpu=1"
        ]
    );

    // A file that turns invalid is reported, and its devices disappear.
    host.write("etc/cdi/s0.yaml", "not: [a spec");
    r.refresh();
    assert!(!device_names(&r).contains(&"v0.com/gpu=0".to_owned()));
    assert_eq!(r.skipped().len(), 1);
}

#[test]
fn insecure_files_are_skipped_when_root_ownership_is_required() {
    let host = Host::new();
    let open = host.write("etc/cdi/open.yaml", &spec("a.com/open", &["0"], "o"));
    fs::set_permissions(&open, fs::Permissions::from_mode(0o666)).expect("chmod");
    let safe = host.write("etc/cdi/safe.yaml", &spec("a.com/safe", &["0"], "s"));
    let foreign = host.write("etc/cdi/foreign.yaml", &spec("a.com/foreign", &["0"], "f"));
    let am_root = nix::unistd::geteuid().is_root();
    if am_root {
        std::os::unix::fs::chown(&foreign, Some(65534), None).expect("chown as root");
    }
    let r = Registry::new(RegistryConfig {
        require_root_owned: true,
        ..host.config()
    });
    let skipped: Vec<&Path> = r.skipped().iter().map(|s| s.path.as_path()).collect();
    assert!(skipped.contains(&open.as_path()), "{skipped:?}");
    assert!(skipped.contains(&foreign.as_path()), "{skipped:?}");
    let open_msg = r
        .skipped()
        .iter()
        .find(|s| s.path == open)
        .map(ToString::to_string)
        .expect("reported");
    assert!(open_msg.contains("mode 666"), "{open_msg}");
    assert!(open_msg.contains("chmod o-w"), "{open_msg}");
    if am_root {
        assert_eq!(device_names(&r), ["a.com/safe=0"]);
    } else {
        // Not root: even the safe file is owned by us, not root, so it is skipped too.
        assert!(skipped.contains(&safe.as_path()));
        assert_eq!(
            fs::metadata(&safe).expect("stat").uid(),
            nix::unistd::geteuid().as_raw()
        );
    }
    // Without the requirement, all three load.
    assert_eq!(host.registry().devices().count(), 3);
}

#[test]
fn injection_is_all_or_nothing_and_says_what_exists() {
    let host = Host::new();
    host.write(
        "etc/cdi/pgpu.yaml",
        &spec("nvidia.com/pgpu", &["0", "1"], "p"),
    );
    let r = host.registry();
    let mut oci = OciSpec::default();
    let before = oci.clone();
    let err = r
        .inject(
            &mut oci,
            &names(&["nvidia.com/pgpu=0", "nvidia.com/pgpu=7", "amd.com/gpu=0"]),
        )
        .expect_err("two unresolvable");
    assert_eq!(oci, before, "nothing applied");
    let InjectError::Unresolved(missing) = &err else {
        panic!("unexpected {err}");
    };
    assert_eq!(missing.len(), 2);
    assert!(
        matches!(&missing[0], Unresolved::UnknownDevice { available, .. } if available == &["0", "1"])
    );
    assert!(
        matches!(&missing[1], Unresolved::UnknownKind { known_kinds, .. } if known_kinds == &["nvidia.com/pgpu"])
    );
    assert_eq!(
        err.to_string(),
        "unresolvable CDI devices: nvidia.com/pgpu=7 is not defined on this node; ask for \
         nvidia.com/pgpu in resources.limits and let the device plugin choose, or name a \
         device its admin lists with `kata-gpu cdi list`; amd.com/gpu=0: no CDI spec on this \
         node defines kind amd.com/gpu; ask for a kind its admin lists with `kata-gpu cdi \
         list`"
    );
}

#[test]
fn spec_edits_apply_once_then_each_device_in_request_order() {
    let host = Host::new();
    host.write(
        "etc/cdi/pgpu.yaml",
        &spec("nvidia.com/pgpu", &["0", "1"], "p"),
    );
    let r = host.registry();
    let mut oci = OciSpec::default();
    r.inject(
        &mut oci,
        &names(&["nvidia.com/pgpu=1", "nvidia.com/pgpu=0"]),
    )
    .expect("injects");
    let env = env(&oci);
    assert_eq!(env.iter().filter(|e| e.starts_with("SPEC=")).count(), 1);
    // WHO is set by both devices; the later request wins, as with any env edit.
    assert!(env.contains(&"WHO=p-0".to_owned()), "{env:?}");
    let linux = oci.linux().as_ref().expect("linux");
    let paths: Vec<String> = linux
        .devices()
        .as_ref()
        .expect("devices")
        .iter()
        .map(|d| d.path().display().to_string())
        .collect();
    assert_eq!(
        paths,
        ["/dev/vfio/devices/vfio1", "/dev/vfio/devices/vfio0"]
    );
    let rules = linux
        .resources()
        .as_ref()
        .and_then(|r| r.devices().clone())
        .expect("cgroup rules");
    let ours: Vec<(Option<i64>, Option<i64>, Option<String>)> = rules
        .iter()
        .filter(|r| r.major() == Some(237))
        .map(|r| (r.major(), r.minor(), r.access().clone()))
        .collect();
    assert_eq!(
        ours,
        [
            (Some(237), Some(1), Some("rwm".into())),
            (Some(237), Some(0), Some("rwm".into()))
        ]
    );
}

#[test]
fn nodes_without_numbers_are_completed_from_the_simulated_dev() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates device nodes with mknod and must run as root (CI does)"
    );
    let host = Host::new();
    fs::create_dir_all(host.path("dev/vfio/devices")).expect("mkdir");
    let node = host.path("dev/vfio/devices/vfio3");
    let status = std::process::Command::new("mknod")
        .arg(&node)
        .args(["c", "237", "3"])
        .status()
        .expect("run mknod");
    assert!(status.success(), "mknod failed");
    host.write(
        "var/run/cdi/pgpu.yaml",
        "cdiVersion: 0.5.0\nkind: nvidia.com/pgpu\ndevices:\n- name: \"3\"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/vfio/devices/vfio3\n",
    );
    let r = host.registry();
    let mut oci = OciSpec::default();
    oci.set_annotations(Some(
        [("cdi.k8s.io/gpu".to_owned(), "nvidia.com/pgpu=3".to_owned())]
            .into_iter()
            .collect(),
    ));
    let asked = r
        .inject_annotated(&mut oci)
        .expect("resolves from the annotation");
    assert_eq!(asked, names(&["nvidia.com/pgpu=3"]));
    let dev = oci
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .and_then(|d| {
            d.into_iter()
                .find(|d| d.path() == Path::new("/dev/vfio/devices/vfio3"))
        })
        .expect("node injected");
    assert_eq!(
        (dev.typ(), dev.major(), dev.minor()),
        (LinuxDeviceType::C, 237, 3)
    );

    // The same spec on a host without the node fails and names the host path.
    fs::remove_file(&node).expect("rm node");
    let mut fresh = OciSpec::default();
    let err = r.inject(&mut fresh, &asked).expect_err("node missing");
    assert!(
        err.to_string().contains(&node.display().to_string()),
        "{err}"
    );
    assert_eq!(fresh, OciSpec::default());
}

#[test]
fn specs_are_written_atomically_and_load_back() {
    let host = Host::new();
    let dir = host.path("var/run/cdi");
    let text = spec("nvidia.com/pgpu", &["0", "1"], "w");
    let parsed =
        cdi::load_spec(text.as_bytes(), cdi::Format::Yaml, Path::new("mem")).expect("valid");
    let path = cdi::write_spec(&dir, &parsed).expect("written");
    assert_eq!(path, dir.join("nvidia.com-pgpu.yaml"));
    assert_eq!(cdi::read_spec_file(&path).expect("reloads"), parsed);
    assert_eq!(
        fs::metadata(&path).expect("stat").permissions().mode() & 0o777,
        0o644
    );

    // An invalid spec writes nothing and leaves the old file as it was.
    let before = fs::read(&path).expect("read");
    let mut bad = parsed.clone();
    bad.devices[0].container_edits.device_nodes[0].path = "/etc/passwd".into();
    let err = cdi::write_spec(&dir, &bad).expect_err("invalid");
    assert!(
        err.to_string().contains("device nodes must be under /dev"),
        "{err}"
    );
    assert_eq!(fs::read(&path).expect("read"), before);
    let entries: Vec<_> = fs::read_dir(&dir).expect("ls").collect();
    assert_eq!(entries.len(), 1, "no temp file left behind");

    // A directory that cannot be written: an error naming the file, nothing created.
    let err = cdi::write_spec(&host.path("no/such/dir"), &parsed).expect_err("no dir");
    assert!(err.to_string().starts_with("cannot write "), "{err}");
}

#[test]
fn a_spec_dir_that_is_a_symlink_is_skipped_and_named() {
    let host = Host::new();
    let elsewhere = tempfile::tempdir().expect("tempdir");
    fs::write(
        elsewhere.path().join("evil.yaml"),
        spec("evil.com/gpu", &["0"], "e"),
    )
    .expect("spec");
    fs::remove_dir(host.path("var/run/cdi")).expect("rmdir");
    std::os::unix::fs::symlink(elsewhere.path(), host.path("var/run/cdi")).expect("symlink");
    host.write("etc/cdi/good.yaml", &spec("nvidia.com/pgpu", &["0"], "g"));
    let r = host.registry();
    assert_eq!(device_names(&r), ["nvidia.com/pgpu=0"]);
    let skipped: Vec<String> = r.skipped().iter().map(ToString::to_string).collect();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0].contains("the spec directory is a symbolic link to"),
        "{skipped:?}"
    );
    assert!(matches!(
        r.skipped()[0].problem,
        FileProblem::SymlinkedDir { .. }
    ));
}
