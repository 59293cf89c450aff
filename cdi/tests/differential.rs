//! Differential test against the `container-device-interface` 1.1.1 crate (the "peer").
//!
//! For every file of the corpus (`tests/data/{valid,invalid}`) both implementations must
//! agree on valid/invalid; for every valid spec, injecting all of its devices (in file
//! order) into the same base OCI spec must give the same OCI spec. Where they disagree on
//! purpose the difference is listed below with a reason id; the test fails both when a
//! difference is not listed and when a listed one no longer shows, so the lists (and the
//! crate README's "Differences" section, which mirrors them) stay honest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// Which implementation refuses a file the other accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refuser {
    /// We refuse it, the peer accepts it.
    Ours,
    /// The peer refuses it, we accept it.
    Peer,
}

/// A corpus file the two implementations judge differently.
struct VerdictDifference {
    file: &'static str,
    /// Short id of the reason, as in the README.
    reason: &'static str,
    refused_by: Refuser,
    /// A piece of the refusing side's error that names the reason.
    error: &'static str,
}

/// Every verdict difference, by file name (unique across `valid/` and `invalid/`). All are
/// rules of ours that neither the CDI specification nor the peer has; see the README.
const VERDICT_DIFFERENCES: &[VerdictDifference] = &[
    VerdictDifference {
        file: "device-node-relative-path.yaml",
        reason: "device-node-path-absolute",
        refused_by: Refuser::Ours,
        error: "device node path \"dev/nvidia0\": the path must be absolute",
    },
    VerdictDifference {
        file: "device-node-outside-dev.yaml",
        reason: "device-node-under-dev",
        refused_by: Refuser::Ours,
        error: "device node path \"/tmp/x\": device nodes must be under /dev",
    },
    VerdictDifference {
        file: "device-node-etc-passwd.json",
        reason: "device-node-under-dev",
        refused_by: Refuser::Ours,
        error: "device node path \"/etc/passwd\": device nodes must be under /dev",
    },
    VerdictDifference {
        file: "device-node-hostpath-outside-dev.json",
        reason: "device-node-under-dev",
        refused_by: Refuser::Ours,
        error: "device node hostPath \"/tmp/nvidia0\": device nodes must be under /dev",
    },
    VerdictDifference {
        file: "device-node-path-traversal.yaml",
        reason: "device-node-no-dot-components",
        refused_by: Refuser::Ours,
        error: "the path must not contain '.' or '..' components",
    },
    VerdictDifference {
        file: "mount-relative-container-path.json",
        reason: "mount-container-path-absolute",
        refused_by: Refuser::Ours,
        error: "mount containerPath \"usr/lib/libcuda.so.1\": the path must be absolute",
    },
    VerdictDifference {
        file: "hook-timeout-zero.yaml",
        reason: "hook-timeout-positive",
        refused_by: Refuser::Ours,
        error: "hook poststop: timeout 0 must be greater than zero",
    },
    VerdictDifference {
        file: "device-node-negative-major.yaml",
        reason: "device-number-non-negative",
        refused_by: Refuser::Ours,
        error: "major -1 is negative",
    },
];

/// Why an injection result differs. Each reason knows how to turn the peer's output into
/// what the behaviour we chose would give, so that the test can check that the listed
/// reasons explain the whole difference and that each of them is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Reason {
    /// The peer appends `KEY=new` after an existing `KEY=old` of the OCI spec instead of
    /// replacing it (Go's `specgen.AddProcessEnv` replaces; we follow Go).
    EnvKeyReplaced,
    /// The peer leaves mounts in insertion order; Go sorts all mounts stably by the depth
    /// of their destination after adding any, and so do we.
    MountsSortedByDepth,
}

impl Reason {
    fn id(self) -> &'static str {
        match self {
            Reason::EnvKeyReplaced => "env-key-replaced",
            Reason::MountsSortedByDepth => "mounts-sorted-by-depth",
        }
    }

    /// Rewrites the peer's OCI spec the way the behaviour we chose would have produced it.
    fn normalize_peer(self, oci: &mut Value) {
        match self {
            Reason::EnvKeyReplaced => {
                if let Some(Value::Array(env)) = oci.pointer_mut("/process/env") {
                    *env = replace_env_keys(env);
                }
            }
            Reason::MountsSortedByDepth => {
                if let Some(Value::Array(mounts)) = oci.pointer_mut("/mounts") {
                    mounts.sort_by_key(|m| go_mount_depth(m["destination"].as_str().unwrap_or("")));
                }
            }
        }
    }
}

/// Every injection difference: a valid file and one reason its OCI specs differ. The base
/// OCI spec sets `NVIDIA_VISIBLE_DEVICES` and `NVIDIA_DRIVER_CAPABILITIES` (as CUDA images
/// do) and has runc's default mounts, which are not ordered by depth; so every spec that
/// sets one of those variables, or adds a mount, shows up here.
const INJECTION_DIFFERENCES: &[(&str, Reason)] = &[
    ("v0.3.0-gpu-driver-libs.yaml", Reason::EnvKeyReplaced),
    ("v0.3.0-gpu-driver-libs.yaml", Reason::MountsSortedByDepth),
    ("v0.4.0-block-devices.yaml", Reason::MountsSortedByDepth),
    ("v0.4.0-mount-types.yaml", Reason::MountsSortedByDepth),
    ("v0.4.0-spec-and-device-edits.json", Reason::EnvKeyReplaced),
    (
        "v0.4.0-spec-and-device-edits.json",
        Reason::MountsSortedByDepth,
    ),
    ("v0.5.0-numeric-gpu-names.json", Reason::MountsSortedByDepth),
    ("v0.7.0-gpu-full.yaml", Reason::EnvKeyReplaced),
    ("v0.7.0-gpu-full.yaml", Reason::MountsSortedByDepth),
    ("v0.8.0-flow-style.yaml", Reason::MountsSortedByDepth),
    ("v0.8.0-gpu-all.json", Reason::EnvKeyReplaced),
    ("v0.8.0-gpu-all.json", Reason::MountsSortedByDepth),
    ("v1.0.0-infiniband.yaml", Reason::MountsSortedByDepth),
    ("v1.1.0-kitchen-sink.json", Reason::EnvKeyReplaced),
    ("v1.1.0-kitchen-sink.json", Reason::MountsSortedByDepth),
    ("v1.1.0-kitchen-sink.yaml", Reason::EnvKeyReplaced),
    ("v1.1.0-kitchen-sink.yaml", Reason::MountsSortedByDepth),
];

/// `KEY=VALUE` entries with later duplicates folded into the first one's place, last
/// value winning: what replacing an existing key gives.
fn replace_env_keys(env: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let key = |v: &Value| {
        let s = v.as_str().unwrap_or("");
        s.split_once('=').map_or(s, |(k, _)| k).to_owned()
    };
    for entry in env {
        match out.iter_mut().find(|e| key(e) == key(entry)) {
            Some(existing) => *existing = entry.clone(),
            None => out.push(entry.clone()),
        }
    }
    out
}

/// The depth Go's `orderedMounts` sorts by: the number of separators in the cleaned path.
fn go_mount_depth(destination: &str) -> usize {
    let trimmed = destination.trim_end_matches('/');
    let cleaned = if trimmed.is_empty() { "/" } else { trimmed };
    cleaned.matches('/').count()
}

fn data_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(sub)
}

/// Every corpus file, `(sub-directory, file name)`, sorted.
fn corpus() -> Vec<(&'static str, String)> {
    let mut files = Vec::new();
    for sub in ["valid", "invalid"] {
        let dir = data_dir(sub);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .map(|e| {
                e.expect("directory entry")
                    .file_name()
                    .into_string()
                    .expect("UTF-8 file name")
            })
            .collect();
        names.sort();
        files.extend(names.into_iter().map(|n| (sub, n)));
    }
    files
}

/// Our verdict: `Err(message)` when refused.
fn our_verdict(path: &Path) -> Result<cdi::Spec, String> {
    cdi::read_spec_file(path).map_err(|e| cdi::one_line(&e))
}

/// The peer's verdict, read and validated as its cache reads a spec directory.
fn peer_verdict(path: &Path) -> Result<(), String> {
    container_device_interface::spec::read_spec(&path.to_path_buf(), 0)
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
}

#[test]
fn verdicts_agree_except_where_listed() {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (sub, name) in corpus() {
        let path = data_dir(sub).join(&name);
        let ours = our_verdict(&path);
        let peer = peer_verdict(&path);
        let listed = VERDICT_DIFFERENCES.iter().find(|d| d.file == name);
        let observed = match (&ours, &peer) {
            (Ok(_), Ok(())) | (Err(_), Err(_)) => None,
            (Err(e), Ok(())) => Some((Refuser::Ours, e.clone())),
            (Ok(_), Err(e)) => Some((Refuser::Peer, e.clone())),
        };
        match (observed, listed) {
            (None, None) => {}
            (None, Some(d)) => problems.push(format!(
                "{sub}/{name}: listed as {} but both implementations now agree ({})",
                d.reason,
                if ours.is_ok() { "valid" } else { "invalid" }
            )),
            (Some((refuser, error)), None) => problems.push(format!(
                "{sub}/{name}: unlisted verdict difference: refused only by {refuser:?}: {error}"
            )),
            (Some((refuser, error)), Some(d)) => {
                seen.insert(name.clone());
                if refuser != d.refused_by {
                    problems.push(format!(
                        "{sub}/{name}: listed as refused by {:?}, but refused by {refuser:?}: {error}",
                        d.refused_by
                    ));
                } else if !error.contains(d.error) {
                    problems.push(format!(
                        "{sub}/{name}: listed reason {} ({:?}) not in the error: {error}",
                        d.reason, d.error
                    ));
                }
            }
        }
    }
    for d in VERDICT_DIFFERENCES {
        if !seen.contains(d.file) && !problems.iter().any(|p| p.contains(d.file)) {
            problems.push(format!(
                "{}: listed ({}) but no such corpus file",
                d.file, d.reason
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// A realistic container before any device is injected: what containerd/runc generate for
/// a CUDA image run as root.
fn base_oci_spec() -> oci_spec::runtime::Spec {
    let mount = |dest: &str, typ: &str, source: &str, options: &[&str]| json!({"destination": dest, "type": typ, "source": source, "options": options});
    serde_json::from_value(json!({
        "ociVersion": "1.2.0",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", "nvidia-smi"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOSTNAME=gpu-pod",
                "NVIDIA_VISIBLE_DEVICES=all",
                "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
            ],
            "cwd": "/",
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "gpu-pod",
        "mounts": [
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
            mount("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
            mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
            mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
            mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
            mount("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", "ro"]),
            mount("/etc/hostname", "bind", "/var/lib/containerd/pod/hostname", &["rbind", "rprivate", "rw"]),
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/sys"],
        },
    }))
    .expect("the base OCI spec deserializes")
}

/// Where two JSON values differ, one line per differing leaf (or array of unequal length).
fn json_diff(path: &str, ours: &Value, peer: &Value, out: &mut Vec<String>) {
    match (ours, peer) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let null = Value::Null;
                json_diff(
                    &format!("{path}/{k}"),
                    a.get(k).unwrap_or(&null),
                    b.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) if a != b && is_permutation(a, b) => out.push(format!(
            "  {path}: same entries, another order\n    ours: {}\n    peer: {}",
            summary(a),
            summary(b)
        )),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                json_diff(&format!("{path}/{i}"), x, y, out);
            }
        }
        _ if ours != peer => out.push(format!("  {path}:\n    ours: {ours}\n    peer: {peer}")),
        _ => {}
    }
}

fn is_permutation(a: &[Value], b: &[Value]) -> bool {
    let mut rest: Vec<&Value> = b.iter().collect();
    a.len() == b.len()
        && a.iter().all(|x| match rest.iter().position(|y| *y == x) {
            Some(i) => {
                rest.swap_remove(i);
                true
            }
            None => false,
        })
}

/// An array in short: each entry by its `destination` or `path`, or in full.
fn summary(items: &[Value]) -> String {
    let shown: Vec<String> = items
        .iter()
        .map(|v| match v.get("destination").or_else(|| v.get("path")) {
            Some(Value::String(s)) => s.clone(),
            _ => v.to_string(),
        })
        .collect();
    format!("[{}]", shown.join(", "))
}

/// Both OCI specs, as JSON, after injecting every device of one valid spec file.
fn inject_both(path: &Path, spec: &cdi::Spec) -> Result<(Value, Value), String> {
    let names: Vec<String> = spec
        .devices
        .iter()
        .map(|d| format!("{}={}", spec.kind, d.name))
        .collect();
    // One spec directory per file: device names repeat across the corpus.
    let dir = tempfile::tempdir().expect("temp dir");
    let file_name = path.file_name().expect("file name");
    std::fs::copy(path, dir.path().join(file_name)).expect("copy the spec");

    let registry = cdi::Registry::new(cdi::RegistryConfig {
        spec_dirs: vec![dir.path().to_path_buf()],
        dev_root: PathBuf::from("/"),
        require_root_owned: false,
    });
    if let Some(s) = registry.skipped().first() {
        return Err(format!("ours skipped the file: {s}"));
    }
    let qualified: Vec<cdi::QualifiedName> = names
        .iter()
        .map(|n| n.parse().expect("valid qualified name"))
        .collect();
    let mut ours = base_oci_spec();
    registry
        .inject(&mut ours, &qualified)
        .map_err(|e| format!("ours: {}", cdi::one_line(&e)))?;

    let dir_str = dir.path().to_str().expect("UTF-8 temp dir");
    let cache = container_device_interface::cache::new_cache(vec![
        container_device_interface::spec_dirs::with_spec_dirs(&[dir_str]),
        container_device_interface::cache::with_auto_refresh(false),
    ]);
    let mut cache = cache.lock().expect("peer cache lock");
    if !cache.errors.is_empty() {
        return Err(format!("peer cache errors: {:?}", cache.errors));
    }
    let mut peer = base_oci_spec();
    cache
        .inject_devices(Some(&mut peer), names)
        .map_err(|e| format!("peer: {e}"))?;

    Ok((
        serde_json::to_value(&ours).expect("our OCI spec serializes"),
        serde_json::to_value(&peer).expect("peer OCI spec serializes"),
    ))
}

fn diff_lines(ours: &Value, peer: &Value) -> Vec<String> {
    let mut out = Vec::new();
    json_diff("", ours, peer, &mut out);
    out
}

#[test]
fn injections_agree_except_where_listed() {
    let mut listed: BTreeMap<&str, Vec<Reason>> = BTreeMap::new();
    for (file, reason) in INJECTION_DIFFERENCES {
        listed.entry(file).or_default().push(*reason);
    }
    let mut problems = Vec::new();
    let mut compared = BTreeSet::new();
    for (sub, name) in corpus().into_iter().filter(|(sub, _)| *sub == "valid") {
        let path = data_dir(sub).join(&name);
        let Ok(spec) = our_verdict(&path) else {
            continue; // the corpus test reports it
        };
        if peer_verdict(&path).is_err() {
            continue; // a verdict difference, listed (or reported) by the other test
        }
        compared.insert(name.clone());
        let (ours, peer) = match inject_both(&path, &spec) {
            Ok(both) => both,
            Err(e) => {
                problems.push(format!("{name}: injection failed: {e}"));
                continue;
            }
        };
        let reasons = listed.get(name.as_str()).cloned().unwrap_or_default();
        let raw = diff_lines(&ours, &peer);
        if reasons.is_empty() {
            if !raw.is_empty() {
                problems.push(format!("{name}: unlisted difference:\n{}", raw.join("\n")));
            }
            continue;
        }
        if raw.is_empty() {
            let ids: Vec<_> = reasons.iter().map(|r| r.id()).collect();
            problems.push(format!(
                "{name}: listed as {ids:?} but the OCI specs are now equal"
            ));
            continue;
        }
        let normalized = |skip: Option<Reason>| {
            let mut p = peer.clone();
            for r in reasons.iter().filter(|r| Some(**r) != skip) {
                r.normalize_peer(&mut p);
            }
            p
        };
        let rest = diff_lines(&ours, &normalized(None));
        if !rest.is_empty() {
            let ids: Vec<_> = reasons.iter().map(|r| r.id()).collect();
            problems.push(format!(
                "{name}: differences beyond the listed {ids:?}:\n{}",
                rest.join("\n")
            ));
        }
        for r in &reasons {
            if diff_lines(&ours, &normalized(Some(*r))).is_empty() {
                problems.push(format!(
                    "{name}: listed reason {} no longer makes a difference",
                    r.id()
                ));
            }
        }
    }
    for file in listed.keys() {
        if !compared.contains(*file) {
            problems.push(format!(
                "{file}: listed but not a compared valid corpus file"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n\n"));
}

/// A spec with one device `example.com/x=dev` whose only edit is `FROM=<from>`.
fn env_spec(from: &str) -> String {
    format!(
        "cdiVersion: 0.5.0\nkind: example.com/x\ndevices:\n- name: dev\n  containerEdits:\n    env: [FROM={from}]\n"
    )
}

fn our_registry(dirs: &[&Path]) -> cdi::Registry {
    cdi::Registry::new(cdi::RegistryConfig {
        spec_dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
        dev_root: PathBuf::from("/"),
        require_root_owned: false,
    })
}

/// Injects `names` with the peer's cache over `dirs`; the resulting env or the error.
fn peer_inject_env(dirs: &[&Path], names: &[&str]) -> Result<Vec<String>, String> {
    let dirs: Vec<&str> = dirs
        .iter()
        .map(|d| d.to_str().expect("UTF-8 temp dir"))
        .collect();
    let cache = container_device_interface::cache::new_cache(vec![
        container_device_interface::spec_dirs::with_spec_dirs(&dirs),
        container_device_interface::cache::with_auto_refresh(false),
    ]);
    let mut cache = cache.lock().expect("peer cache lock");
    let mut oci = base_oci_spec();
    cache
        .inject_devices(
            Some(&mut oci),
            names.iter().map(|n| n.to_string()).collect(),
        )
        .map_err(|e| e.to_string())?;
    Ok(injected_env(&oci))
}

/// The env entries that the base spec does not have.
fn injected_env(oci: &oci_spec::runtime::Spec) -> Vec<String> {
    let base = base_oci_spec();
    let before = base
        .process()
        .as_ref()
        .and_then(|p| p.env().clone())
        .unwrap_or_default();
    oci.process()
        .as_ref()
        .and_then(|p| p.env().clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !before.contains(e))
        .collect()
}

fn our_inject_env(registry: &cdi::Registry, names: &[&str]) -> Result<Vec<String>, String> {
    let names: Vec<cdi::QualifiedName> = names
        .iter()
        .map(|n| n.parse().expect("valid qualified name"))
        .collect();
    let mut oci = base_oci_spec();
    registry
        .inject(&mut oci, &names)
        .map_err(|e| cdi::one_line(&e))?;
    Ok(injected_env(&oci))
}

/// Difference `broken-file-isolated`: a spec file that fails to load is skipped and the
/// others of its directory stay usable (Go does the same); the peer's directory scan stops
/// at the first broken file and its cache then has no devices at all.
#[test]
fn a_broken_file_hides_only_itself() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("a.yaml"), env_spec("a")).expect("write a.yaml");
    std::fs::write(dir.path().join("broken.yaml"), "cdiVersion: [\n").expect("write broken");

    let registry = our_registry(&[dir.path()]);
    assert_eq!(registry.skipped().len(), 1, "the broken file is reported");
    assert_eq!(
        our_inject_env(&registry, &["example.com/x=dev"]),
        Ok(vec!["FROM=a".to_owned()])
    );

    let peer = peer_inject_env(&[dir.path()], &["example.com/x=dev"]);
    assert!(
        matches!(&peer, Err(e) if e.contains("unresolvable CDI devices")),
        "the peer now serves devices next to a broken file ({peer:?}): \
         remove broken-file-isolated from the README's differences"
    );
}

/// Difference `same-priority-conflict`: two files of one directory that define the same
/// name cancel each other out for that name (Go does the same); the peer records the
/// conflict but keeps the device of whichever file its directory listing gave first.
#[test]
fn same_directory_conflicts_make_the_name_unusable() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("a.yaml"), env_spec("a")).expect("write a.yaml");
    std::fs::write(dir.path().join("b.yaml"), env_spec("b")).expect("write b.yaml");

    let registry = our_registry(&[dir.path()]);
    assert_eq!(registry.conflicts().len(), 1);
    let ours = our_inject_env(&registry, &["example.com/x=dev"]);
    assert!(
        matches!(&ours, Err(e) if e.contains("example.com/x=dev is defined by")),
        "{ours:?}"
    );

    let peer = peer_inject_env(&[dir.path()], &["example.com/x=dev"]);
    assert!(
        matches!(&peer, Ok(env) if env.len() == 1 && env[0].starts_with("FROM=")),
        "the peer now refuses a conflicting name ({peer:?}): \
         remove same-priority-conflict from the README's differences"
    );
}

/// A conflict in a lower-priority directory does not hide the name a higher-priority
/// directory defines. Both implementations agree; Go drops the name altogether.
#[test]
fn a_higher_priority_directory_overrides_a_lower_conflict() {
    let low = tempfile::tempdir().expect("temp dir");
    let high = tempfile::tempdir().expect("temp dir");
    std::fs::write(low.path().join("a.yaml"), env_spec("low-a")).expect("write");
    std::fs::write(low.path().join("b.yaml"), env_spec("low-b")).expect("write");
    std::fs::write(high.path().join("c.yaml"), env_spec("high")).expect("write");

    let registry = our_registry(&[low.path(), high.path()]);
    assert!(
        registry.conflicts().is_empty(),
        "{:?}",
        registry.conflicts()
    );
    let want = Ok(vec!["FROM=high".to_owned()]);
    assert_eq!(our_inject_env(&registry, &["example.com/x=dev"]), want);
    assert_eq!(
        peer_inject_env(&[low.path(), high.path()], &["example.com/x=dev"]),
        want
    );
}

/// The crate README's "Differences" section names every reason id recorded here.
#[test]
fn the_readme_names_every_recorded_difference() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("cdi/README.md");
    let section = readme
        .split_once("## Differences from container-device-interface 1.1.1")
        .map(|(_, rest)| rest)
        .expect("the README has a Differences section");
    let ids = VERDICT_DIFFERENCES
        .iter()
        .map(|d| d.reason)
        .chain(INJECTION_DIFFERENCES.iter().map(|(_, r)| r.id()))
        .chain(["broken-file-isolated", "same-priority-conflict"]);
    for id in ids {
        assert!(
            section.contains(&format!("`{id}`")),
            "the README's Differences section does not name `{id}`"
        );
    }
    for d in VERDICT_DIFFERENCES {
        assert!(
            section.contains(&format!("`{}`", d.file)),
            "the README's Differences section does not name `{}`",
            d.file
        );
    }
}
