//! Our Kata configurations against Kata 3.30 itself:
//! - the templates in `configs/templates/` are Kata 3.30's generated NVIDIA configs with only
//!   the keys we own overlaid, and the `*-runtime-rs.toml` ones Kata 4.1 runtime-rs's the same
//!   way (regenerate: `UPDATE_TEMPLATES=1 cargo test -p kata-gpu-tests --test kata_config`);
//! - every key of every template and rendered golden config is one Kata's generated QEMU
//!   configs define;
//! - `kata-runtime env` reads every template and golden config as the plan intended: the
//!   values of the file, which equal the renderer's diff, are the ones Kata reads.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use kata_gpu_configs::toml_edit::{self, DocumentMut, Item, Table, Value};
use kata_gpu_configs::{render, template_file_name_for, KataRuntime, Overrides, PROFILES};
use kata_gpu_tests::katans::KataNs;
use kata_gpu_tests::{available, Kata, KataRs};

/// Where the artifact set of a runtime class is installed.
const STORE: &str = "/opt/nvidia-gpu-operator/artifacts/runtimeclasses";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn template_path(profile: &str) -> PathBuf {
    template_path_for(profile, KataRuntime::Go)
}

fn template_path_for(profile: &str, runtime: KataRuntime) -> PathBuf {
    let file = template_file_name_for(profile, runtime).expect("a profile");
    workspace().join("configs/templates").join(file)
}

fn runtime_class(profile: &str) -> &'static str {
    match profile {
        "snp" => "kata-qemu-nvidia-gpu-snp",
        "tdx" => "kata-qemu-nvidia-gpu-tdx",
        _ => "kata-qemu-nvidia-gpu",
    }
}

fn table_mut<'d>(doc: &'d mut DocumentMut, section: &[&str]) -> &'d mut Table {
    let mut t = doc.as_table_mut();
    for s in section {
        t = t
            .get_mut(s)
            .and_then(Item::as_table_mut)
            .unwrap_or_else(|| panic!("no [{}]", section.join(".")));
    }
    t
}

/// Sets an existing key, keeping the spacing and comment around its value.
fn set(doc: &mut DocumentMut, section: &[&str], key: &str, new: Value) {
    let table = table_mut(doc, section);
    let old = table
        .get_mut(key)
        .and_then(Item::as_value_mut)
        .unwrap_or_else(|| panic!("no {}.{key}", section.join(".")));
    let decor = old.decor().clone();
    *old = new;
    *old.decor_mut() = decor;
}

fn str_at(doc: &DocumentMut, section: &[&str], key: &str) -> Option<String> {
    let mut item = doc.as_item();
    for s in section {
        item = item.get(s)?;
    }
    item.get(key)?.as_str().map(str::to_owned)
}

/// A template: Kata's generated config for the profile (of the Go runtime or runtime-rs)
/// with our keys overlaid. Both runtimes name the overlaid keys alike (`[hypervisor.qemu]
/// kernel, image, firmware, pcie_root_port, enable_annotations`, `[runtime]
/// pod_resource_api_sock`); runtime-rs's `[[hypervisor.qemu.guest_extension_images]]` are
/// no file of an artifact set, and stay Kata's.
fn derive(profile: &str, runtime: KataRuntime, kata_text: &str) -> String {
    let file = template_file_name_for(profile, runtime).expect("a profile");
    // enable_annotations: exactly what our renderer keeps of Kata's list, so that the base
    // renders with no warning. Rendering with no override touches nothing else.
    let filtered = render(kata_text, Path::new(file), &Overrides::default())
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    // Kata's own snp and tdx configs name kubelet's socket; the renderer owns that key
    // and empties it (set below as well), saying so.
    let removed: Vec<&str> = filtered
        .warnings
        .iter()
        .filter_map(|w| match w {
            kata_gpu_configs::Warning::AnnotationRemoved { entry, .. } => Some(entry.as_str()),
            kata_gpu_configs::Warning::PodResourcesCleared { .. } => None,
            other => panic!("{file}: unexpected warning {other}"),
        })
        .collect();
    let mut doc: DocumentMut = filtered.text.parse().expect("Kata's config parses");
    let qemu = ["hypervisor", "qemu"];
    let class = runtime_class(profile);
    let mut moved = Vec::new();
    for key in ["kernel", "image", "initrd", "firmware"] {
        let Some(path) = str_at(&doc, &qemu, key).filter(|p| !p.is_empty()) else {
            continue;
        };
        let name = Path::new(&path)
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a file name")
            .to_owned();
        set(
            &mut doc,
            &qemu,
            key,
            Value::from(format!("{STORE}/{class}/current/{name}")),
        );
        moved.push(key);
    }
    set(&mut doc, &qemu, "pcie_root_port", Value::from(0));
    set(
        &mut doc,
        &["runtime"],
        "pod_resource_api_sock",
        Value::from(""),
    );
    let source = match runtime {
        KataRuntime::Go => format!(
            "# Kata Containers 3.30.0's generated {file}\n\
             # (tag 3.30.0, src/runtime, PREFIX=/opt/kata; Apache-2.0, notice below), unchanged\n"
        ),
        KataRuntime::Rs => format!(
            "# Kata Containers 4.1.0's generated {file},\n\
             # for Kata's Rust runtime (runtime-rs; tag 4.1.0, src/runtime-rs, PREFIX=/opt/kata;\n\
             # Apache-2.0, notice below), unchanged\n"
        ),
    };
    let extensions = match runtime {
        KataRuntime::Go => "",
        KataRuntime::Rs => {
            "# [[hypervisor.qemu.guest_extension_images]] stay Kata's (no artifact set ships them);\n\
             # runtime-rs checks that they exist when it loads the config.\n"
        }
    };
    let header = format!(
        "# kata-gpu's base configuration for the {class} runtime class:\n\
         {source}\
         # but for the keys kata-gpu owns:\n\
         #   [hypervisor.qemu] {moved}: the same files, in the artifact store\n\
         #     {STORE}/{class}/current/\n\
         #     (`kata-gpu artifacts install` points an installed copy at the set it installed);\n\
         #   [hypervisor.qemu] enable_annotations: {annotations};\n\
         #   [hypervisor.qemu] pcie_root_port = 0: the kata-gpu shim sets it per sandbox to the\n\
         #     number of functions the sandbox gets (Kata makes max(devices, this) ports);\n\
         #   [runtime] pod_resource_api_sock = \"\": Kata does not ask the kubelet which devices\n\
         #     to cold-plug; the shim resolves the pod's cdi.k8s.io/* annotations itself.\n\
         # For each sandbox the shim renders a copy in which only pcie_root_port, cold_plug_vfio,\n\
         # hot_plug_vfio, default_memory, kernel_params (appended) and enable_annotations\n\
         # (filtered) of [hypervisor.qemu] may change.\n\
         {extensions}\
         # Regenerated by `UPDATE_TEMPLATES=1 cargo test -p kata-gpu-tests --test kata_config`.\n\
         #\n",
        moved = moved.join(", "),
        annotations = if removed.is_empty() {
            "Kata's list".to_owned()
        } else {
            format!(
                "Kata's list without the entries that let a pod\n#     choose host files ({})",
                removed.join(", ")
            )
        },
    );
    format!("{header}{doc}")
}

#[test]
fn templates_are_katas_generated_configs_with_our_keys_overlaid() {
    let Some(kata) = available(
        "templates_are_katas_generated_configs_with_our_keys_overlaid",
        Kata::find(),
    ) else {
        return;
    };
    check_templates(KataRuntime::Go, &kata.config_dir(), "Kata 3.30");
}

#[test]
fn runtime_rs_templates_are_its_generated_configs_with_our_keys_overlaid() {
    let Some(kata) = available(
        "runtime_rs_templates_are_its_generated_configs_with_our_keys_overlaid",
        KataRs::find(),
    ) else {
        return;
    };
    check_templates(KataRuntime::Rs, &kata.config_dir(), "Kata 4.1 runtime-rs");
}

/// Each template of `runtime` equals what [`derive`] makes of Kata's config in `kata_dir`
/// (or is written so under `UPDATE_TEMPLATES`), and is the one the configs crate embeds.
fn check_templates(runtime: KataRuntime, kata_dir: &Path, kata: &str) {
    for profile in PROFILES {
        let file = template_file_name_for(profile, runtime).expect("a profile");
        let kata_text = fs::read_to_string(kata_dir.join(file)).expect("Kata's config");
        // toml_edit gives Kata's file back byte for byte: only the overlay changes it.
        let doc: DocumentMut = kata_text.parse().expect("parses");
        assert_eq!(doc.to_string(), kata_text, "{file} does not round-trip");
        let derived = derive(profile, runtime, &kata_text);
        let path = template_path_for(profile, runtime);
        if std::env::var_os("UPDATE_TEMPLATES").is_some() {
            fs::write(&path, &derived).expect("write template");
            continue;
        }
        let ours = fs::read_to_string(&path).expect("template");
        assert!(
            ours == derived,
            "{} is not {kata}'s {file} with our keys overlaid; run with UPDATE_TEMPLATES=1 \
             and review the diff (first difference at line {})",
            path.display(),
            ours.lines()
                .zip(derived.lines())
                .position(|(a, b)| a != b)
                .map_or(0, |i| i + 1)
        );
        assert_eq!(
            kata_gpu_configs::template_for(profile, runtime).expect("embedded"),
            ours,
            "the embedded {runtime} {profile} template is stale"
        );
    }
}

/// Every `section.key` of a document (sub-tables flattened), e.g. `hypervisor.qemu.kernel`.
fn dotted_keys(doc: &DocumentMut) -> BTreeSet<String> {
    fn walk(prefix: &str, table: &dyn toml_edit::TableLike, out: &mut BTreeSet<String>) {
        for (key, item) in table.iter() {
            let name = if prefix.is_empty() {
                key.to_owned()
            } else {
                format!("{prefix}.{key}")
            };
            match item.as_table_like() {
                Some(t) if !item.is_inline_table() => walk(&name, t, out),
                _ => {
                    out.insert(name);
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk("", doc.as_table(), &mut out);
    out
}

fn parse(path: &Path) -> DocumentMut {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rendered golden configs of our templates (`<profile>-<case>.toml`) and of the
/// Kata 4.x fixture (`kata-4x-full-<case>.toml`).
fn goldens() -> Vec<PathBuf> {
    let dir = workspace().join("configs/tests/golden");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("golden dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 12, "goldens in {}: {files:?}", dir.display());
    files
}

fn is_fixture(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("kata-4x-full"))
}

#[test]
fn every_key_we_write_is_one_kata_knows() {
    let Some(kata) = available("every_key_we_write_is_one_kata_knows", Kata::find()) else {
        return;
    };
    // What Kata knows: every key of every QEMU config its build generates.
    let mut known = BTreeSet::new();
    for entry in fs::read_dir(kata.config_dir())
        .expect("Kata's configs")
        .flatten()
    {
        known.extend(dotted_keys(&parse(&entry.path())));
    }
    assert!(
        known.contains("hypervisor.qemu.cold_plug_vfio"),
        "{known:?}"
    );
    let ours = PROFILES
        .iter()
        .map(|p| template_path(p))
        .chain(goldens().into_iter().filter(|p| !is_fixture(p)));
    for path in ours {
        let unknown: Vec<String> = dotted_keys(&parse(&path))
            .into_iter()
            .filter(|k| !known.contains(k))
            .collect();
        assert!(
            unknown.is_empty(),
            "{}: keys no Kata 3.30 config has: {unknown:?}",
            path.display()
        );
    }
}

/// What the renderer meant each owned key to be, from its diff golden
/// (`hypervisor.qemu.KEY: OLD → NEW` or `hypervisor.qemu.KEY: VALUE (unchanged)`), as TOML
/// text; `None` for `(absent)`.
fn intended(diff: &str) -> Vec<(String, Option<String>)> {
    diff.lines()
        .filter(|l| !l.starts_with("warning:"))
        .map(|line| {
            let (key, rest) = line
                .strip_prefix("hypervisor.qemu.")
                .and_then(|l| l.split_once(": "))
                .unwrap_or_else(|| panic!("diff line {line:?}"));
            let value = match rest.strip_suffix(" (unchanged)") {
                Some(v) => v,
                None => rest.rsplit_once(" → ").map_or(rest, |(_, new)| new),
            };
            let value = (value != "(absent)").then(|| canonical(value));
            (key.to_owned(), value)
        })
        .collect()
}

/// A TOML value as one canonical text, so that spellings compare.
fn canonical(value: &str) -> String {
    let doc: DocumentMut = format!("v = {value}")
        .parse()
        .unwrap_or_else(|e| panic!("{value}: {e}"));
    let mut v = doc["v"].as_value().expect("a value").clone();
    v.decor_mut().clear();
    if let Some(a) = v.as_array_mut() {
        a.fmt();
    }
    v.to_string()
}

#[test]
fn kata_reads_every_template_and_golden_as_planned() {
    let test = "kata_reads_every_template_and_golden_as_planned";
    let Some(kata) = available(test, Kata::find()) else {
        return;
    };
    let Some(qemu) = available(test, kata_gpu_tests::parts::qemu()) else {
        return;
    };
    let qemu_real = fs::canonicalize(&qemu).expect("qemu path");
    let templates: Vec<PathBuf> = PROFILES.iter().map(|p| template_path(p)).collect();
    for path in templates.iter().cloned().chain(goldens()) {
        let name = path
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        let doc = parse(&path);
        let q = doc["hypervisor"]["qemu"].clone();
        let text = |key: &str| q.get(key).and_then(|i| i.as_str()).map(str::to_owned);
        let toml = |key: &str| {
            q.get(key)
                .and_then(Item::as_value)
                .map(|v| canonical(&v.to_string()))
        };
        // The file holds what the renderer meant.
        let diff = path.with_extension("diff");
        if diff.exists() {
            let diff = fs::read_to_string(&diff).expect("diff golden");
            for (key, want) in intended(&diff) {
                assert_eq!(toml(&key), want, "{name}: {key}");
            }
        }
        // Kata reads the file as written.
        let mut ns = KataNs::new();
        ns.link(text("path").expect("a QEMU path"), &qemu);
        let mut files = vec![];
        for key in ["kernel", "image", "initrd", "firmware", "virtio_fs_daemon"] {
            if let Some(p) = text(key).filter(|p| p.starts_with("/opt/")) {
                files.push((key, p));
            }
        }
        for (key, p) in &files {
            if *key != "firmware" {
                ns.stub(p);
            }
        }
        let config = ns.dir().join(&name);
        fs::copy(&path, &config).expect("copy config");
        // Kata checks the firmware file: without it, it names the path we set.
        if let Some((_, firmware)) = files.iter().find(|(k, _)| *k == "firmware") {
            if templates.contains(&path) {
                let e = ns
                    .kata_env(&kata, &config)
                    .expect_err("Kata loads a config whose firmware is missing");
                assert!(
                    e.contains(&format!("file {firmware} does not exist")),
                    "{name}: {e}"
                );
            }
            ns.stub(firmware);
        }
        let env = ns.kata_env(&kata, &config);
        if is_fixture(&path) {
            // The Kata 4.x fixture is no 3.30 config: 3.30 refuses it, for whichever of its
            // reasons (runtime-rs's block driver name `virtio-blk-pci`, a `[hypervisor.clh]`
            // whose files are absent) Go's map order reaches first, naming the file.
            let e = env.expect_err("Kata 3.30 loads the 4.x fixture");
            assert!(
                e.contains(&format!("{}: ", config.display())),
                "{name}: {e}"
            );
            continue;
        }
        let env = env.unwrap_or_else(|e| panic!("{name}: kata-runtime env: {e}"));
        let h = &env["Hypervisor"];
        let or = |v: Option<String>, default: &str| v.unwrap_or_else(|| default.to_owned());
        let checks: Vec<(&str, serde_json::Value, serde_json::Value)> = vec![
            (
                "kernel",
                env["Kernel"]["Path"].clone(),
                or(text("kernel"), "").into(),
            ),
            (
                "image",
                env["Image"]["Path"].clone(),
                or(text("image"), "").into(),
            ),
            (
                "initrd",
                env["Initrd"]["Path"].clone(),
                or(text("initrd"), "").into(),
            ),
            (
                "machine_type",
                h["MachineType"].clone(),
                or(text("machine_type"), "").into(),
            ),
            (
                "pcie_root_port",
                h["PCIeRootPort"].clone(),
                q.get("pcie_root_port")
                    .and_then(Item::as_integer)
                    .unwrap_or(0)
                    .into(),
            ),
            (
                "cold_plug_vfio",
                h["ColdPlugVFIO"].clone(),
                or(text("cold_plug_vfio"), "no-port").into(),
            ),
            (
                "hot_plug_vfio",
                h["HotPlugVFIO"].clone(),
                or(text("hot_plug_vfio"), "no-port").into(),
            ),
            (
                "confidential_guest",
                h["SecurityInfo"]["ConfidentialGuest"].clone(),
                q.get("confidential_guest")
                    .and_then(Item::as_bool)
                    .unwrap_or(false)
                    .into(),
            ),
            (
                "shared_fs",
                h["SharedFS"].clone(),
                or(text("shared_fs"), "").into(),
            ),
            (
                "enable_annotations",
                h["SecurityInfo"]["EnableAnnotations"].clone(),
                q.get("enable_annotations")
                    .and_then(Item::as_array)
                    .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>())
                    .unwrap_or_default()
                    .into(),
            ),
            (
                "path",
                h["Path"].clone(),
                qemu_real.display().to_string().into(),
            ),
        ];
        for (key, kata_read, ours) in checks {
            assert_eq!(kata_read, ours, "{name}: Kata read {key} otherwise");
        }
        // Kata puts its own parameters first; ours follow, all of them.
        let params = env["Kernel"]["Parameters"].as_str().unwrap_or_default();
        let ours = text("kernel_params").unwrap_or_default();
        assert!(
            params.ends_with(&ours),
            "{name}: Kata's kernel parameters {params:?}"
        );
    }
}

/// The fixture leaves no syslogd behind, even after a command that dropped privileges (as
/// `kata-runtime env` does: it runs as `nobody`, which may not signal root's syslogd).
#[test]
fn a_kata_namespace_leaves_no_syslogd_after_an_unprivileged_command() {
    let ns = KataNs::new();
    let out = ns
        .command(kata_gpu_tests::katans::Vsock::Dir, Path::new("setpriv"))
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "true"])
        .output()
        .expect("run in the namespace");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pids = fs::read_to_string(ns.syslog_pids()).expect("the syslogd pid list");
    let pids: Vec<String> = pids.lines().map(str::to_owned).collect();
    assert_eq!(pids.len(), 1, "{pids:?}");
    drop(ns);
    kata_gpu_tests::shimrig::wait_until("the namespace's syslogd is gone", || {
        pids.iter().all(|pid| {
            !Path::new("/proc").join(pid).join("cmdline").exists()
                || fs::read_to_string(Path::new("/proc").join(pid).join("stat"))
                    .is_ok_and(|s| s.contains(") Z "))
        })
    });
}
