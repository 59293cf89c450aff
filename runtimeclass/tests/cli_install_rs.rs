//! `kata-gpu install --kata-runtime rs` on a simulated GPU host: the class's shim settings
//! file names Kata's Rust shim (runtime-rs), status and doctor say so, uninstall gives the
//! node back byte for byte; a base config of the other runtime and a settings file someone
//! else wrote are refused before anything is written.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::{kata_gpu, text};
use kata_gpu_configs::KataRuntime;
use kata_gpu_tests::{SimHost, VfioMode};

const SETTINGS: &str =
    "opt/nvidia-gpu-operator/artifacts/runtimeclasses/kata-qemu-nvidia-gpu-snp/shim.toml";
const RS_SHIM: &str = "opt/kata/runtime-rs/bin/containerd-shim-kata-v2";

/// Every file's bytes, every link's target and every directory under `root` (not `sys`,
/// `dev`, `proc` nor the node lock, which a refused command may have taken).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).expect("under root").to_path_buf();
            if rel == Path::new("run")
                || ["sys", "dev", "proc", "run/lock"]
                    .iter()
                    .any(|s| rel.starts_with(s))
            {
                continue;
            }
            let meta = fs::symlink_metadata(&p).expect("stat");
            if meta.file_type().is_symlink() {
                let to = fs::read_link(&p).expect("link");
                out.insert(rel, format!("-> {}", to.display()));
            } else if meta.is_dir() {
                out.insert(rel, "dir".to_owned());
                walk(root, &p, out);
            } else {
                let bytes = fs::read(&p).expect("read");
                out.insert(rel, String::from_utf8_lossy(&bytes).into_owned());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The differences between two snapshots, for a readable failure.
fn first_change(a: &BTreeMap<PathBuf, String>, b: &BTreeMap<PathBuf, String>) -> String {
    let mut out = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => out.push(format!("{} gone", k.display())),
            Some(w) if w != v => out.push(format!("{} changed", k.display())),
            Some(_) => {}
        }
    }
    out.extend(
        b.keys()
            .filter(|k| !a.contains_key(*k))
            .map(|k| format!("{} added", k.display())),
    );
    out.join(", ")
}

/// A stand-in artifact set whose base config is our snp template for `runtime`.
fn set(dir: &Path, runtime: KataRuntime) -> String {
    fs::create_dir_all(dir).expect("mkdir");
    for (name, body) in [
        ("vmlinuz-nvidia-gpu.container", "kernel"),
        ("kata-containers-nvidia.img", "image"),
        ("AMDSEV.fd", "fw"),
    ] {
        fs::write(dir.join(name), body).expect("write");
    }
    let file = kata_gpu_configs::template_file_name_for("snp", runtime).expect("name");
    fs::write(
        dir.join(file),
        kata_gpu_configs::template_for("snp", runtime).expect("template"),
    )
    .expect("config");
    dir.display().to_string()
}

/// A host where containerd (with a config of its own) finds our shim and kata-deploy put
/// runtime-rs.
fn host() -> SimHost {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    kata_gpu_tests::place_built_shims(&sim);
    let config = sim.path("etc/containerd/config.toml");
    fs::create_dir_all(config.parent().expect("dir")).expect("mkdir");
    fs::write(&config, "version = 2\n\n[plugins]\n").expect("containerd's config");
    // A real host has systemd's unit directory: install's boot unit goes there.
    let wants = sim.path("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants).expect("mkdir");
    fs::write(sim.path("etc/systemd/system/other.service"), "[Unit]\n").expect("unit");
    std::os::unix::fs::symlink("../other.service", wants.join("other.service")).expect("link");
    let rs = sim.path(RS_SHIM);
    fs::create_dir_all(rs.parent().expect("dir")).expect("mkdir");
    fs::write(&rs, "#!runtime-rs").expect("runtime-rs stand-in");
    sim
}

/// The one line a refusal printed: on stderr, `kata-gpu: ` and the reason.
fn refusal(o: &std::process::Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{}", text(o));
    assert!(o.stdout.is_empty(), "{}", text(o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn install_rs_writes_the_class_settings_and_uninstall_gives_the_node_back() {
    let sim = host();
    let root = sim.root().display().to_string();
    let src = tempfile::tempdir().expect("tempdir");
    let rs_set = set(&src.path().join("rs"), KataRuntime::Rs);
    let before = snapshot(sim.root());

    let install = ["install", "--config-version", "2", "--kata-runtime", "rs"];
    let with_set = [&install[..], &["--artifacts", &rs_set]].concat();
    let out = kata_gpu(&sim, &[&with_set[..], &["--dry-run"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&format!(
            "settings:     would write {root}/{SETTINGS} (Kata's Rust runtime (runtime-rs))"
        )),
        "{said}"
    );
    assert!(said.contains("+downstream_kind = \"kata-rs\""), "{said}");
    assert!(!sim.path(SETTINGS).exists(), "a dry run wrote");

    let out = kata_gpu(&sim, &with_set);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&format!(
            "settings:     wrote {root}/{SETTINGS} (Kata's Rust runtime (runtime-rs))"
        )),
        "{said}"
    );
    // What the shim reads: runtime-rs where kata-deploy puts it.
    let written = fs::read_to_string(sim.path(SETTINGS)).expect("settings written");
    let s = kata_gpu_plan::settings::Settings::parse(&written, Path::new(SETTINGS))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.downstream_kind,
        kata_gpu_plan::settings::DownstreamKind::KataRs
    );
    assert_eq!(s.downstream, Path::new("/").join(RS_SHIM));
    // The installed base config is our runtime-rs template, pointed at the set.
    let current = sim.path(
        "opt/nvidia-gpu-operator/artifacts/runtimeclasses/kata-qemu-nvidia-gpu-snp/current/configuration.toml",
    );
    let base = fs::read_to_string(&current).expect("installed base config");
    assert_eq!(
        KataRuntime::of_config(&base).map(|(r, _)| r),
        Some(KataRuntime::Rs)
    );

    // Again: nothing changes.
    let out = kata_gpu(&sim, &with_set);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("settings:     up to date {root}/{SETTINGS}")),
        "{}",
        text(&out)
    );

    // status and doctor say which runtime, and doctor finds runtime-rs's shim.
    let out = kata_gpu(&sim, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(status["kata_runtime"], "rs", "{status}");
    assert_eq!(status["kata_shim"], true, "{status}");
    let out = kata_gpu(&sim, &["status"]);
    assert!(
        text(&out).contains("  kata runtime:    rs\n"),
        "{}",
        text(&out)
    );
    let out = kata_gpu(&sim, &["doctor"]);
    let said = text(&out);
    assert!(
        said.lines().any(|l| l
            == format!(
                "ok    kata shim: {root}/{RS_SHIM} present (downstream in {root}/{SETTINGS}): Kata's Rust runtime (runtime-rs)"
            )),
        "{said}"
    );

    assert!(
        said.lines().any(|l| l
            == "ok    kata runtime: Kata's Rust runtime (runtime-rs) (the base config and the shim settings agree)"),
        "{said}"
    );
    // The settings file gone behind kata-gpu's back: the class's sandboxes would go to the
    // Go runtime with runtime-rs's base config. doctor fails it, with the command that
    // makes them agree.
    fs::remove_file(sim.path(SETTINGS)).expect("rm settings");
    let out = kata_gpu(&sim, &["doctor"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.lines().any(|l| l.starts_with(&format!(
            "FAIL  kata runtime: {}: agent.kata.dial_timeout_ms is a key of Kata's Rust runtime (runtime-rs)'s configuration, but the shim settings hand the sandboxes to Kata's Go runtime: every sandbox's Create fails — fix: make them agree: kata-gpu --host-root {root} install --profile snp --kata-runtime rs",
            current.display()
        ))),
        "{said}"
    );
    fs::write(sim.path(SETTINGS), &written).expect("restore settings");

    // The Go runtime on this class's runtime-rs base config: refused, nothing changes.
    let middle = snapshot(sim.root());
    let out = kata_gpu(&sim, &["install", "--config-version", "2"]);
    let err = refusal(&out);
    assert!(
        err.starts_with(&format!(
            "kata-gpu: {}: agent.kata.dial_timeout_ms is a key of Kata's Rust runtime (runtime-rs)'s configuration",
            current.display()
        )),
        "{err}"
    );
    let after = snapshot(sim.root());
    assert!(middle == after, "{}", first_change(&middle, &after));

    // uninstall --purge: the node as it was, byte for byte.
    let out = kata_gpu(&sim, &["uninstall", "--purge"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("settings:     removed {root}/{SETTINGS}")),
        "{}",
        text(&out)
    );
    let mut after = snapshot(sim.root());
    // What remains is the record of the restart containerd still owes (`--restart`
    // clears it), as after any uninstall without a restart.
    let record = PathBuf::from("var/lib/kata-gpu/state/kata-qemu-nvidia-gpu-snp.json");
    let owed: serde_json::Value =
        serde_json::from_str(&after.remove(&record).expect("the record")).expect("json");
    assert!(
        owed["unregistered"].is_object() && owed.get("shim_settings").is_none(),
        "{owed}"
    );
    for dir in ["var/lib/kata-gpu/state", "var/lib/kata-gpu", "var/lib"] {
        after.remove(Path::new(dir));
    }
    assert!(before == after, "{}", first_change(&before, &after));
}

#[test]
fn install_refuses_a_base_config_of_the_other_runtime_before_writing_anything() {
    let sim = host();
    let src = tempfile::tempdir().expect("tempdir");
    let go_set = set(&src.path().join("go"), KataRuntime::Go);
    let rs_set = set(&src.path().join("rs"), KataRuntime::Rs);
    let before = snapshot(sim.root());
    for (runtime, set, file, key) in [
        (
            "rs",
            &go_set,
            "configuration-qemu-nvidia-gpu-snp.toml",
            "agent.kata.dial_timeout",
        ),
        (
            "go",
            &rs_set,
            "configuration-qemu-nvidia-gpu-snp-runtime-rs.toml",
            "agent.kata.dial_timeout_ms",
        ),
    ] {
        let out = kata_gpu(
            &sim,
            &[
                "install",
                "--config-version",
                "2",
                "--kata-runtime",
                runtime,
                "--artifacts",
                set,
            ],
        );
        let err = refusal(&out);
        assert!(
            err.starts_with(&format!("kata-gpu: {set}/{file}: {key} is a key of ")),
            "{err}"
        );
        assert!(
            err.contains(&format!("--kata-runtime {runtime} hands the sandboxes to")),
            "{err}"
        );
        let after = snapshot(sim.root());
        assert!(
            before == after,
            "--kata-runtime {runtime}: {}",
            first_change(&before, &after)
        );
    }
    // The default is the Go runtime: the Go set installs as it always did, with no
    // settings file.
    let out = kata_gpu(
        &sim,
        &["install", "--config-version", "2", "--artifacts", &go_set],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("settings:     Kata's Go runtime: no settings file of kata-gpu's"),
        "{}",
        text(&out)
    );
    assert!(!sim.path(SETTINGS).exists());
}

#[test]
fn install_rs_never_replaces_a_settings_file_it_did_not_write() {
    let sim = host();
    let root = sim.root().display().to_string();
    let src = tempfile::tempdir().expect("tempdir");
    let rs_set = set(&src.path().join("rs"), KataRuntime::Rs);
    let settings = sim.path(SETTINGS);
    fs::create_dir_all(settings.parent().expect("dir")).expect("mkdir");
    let install = [
        "install",
        "--config-version",
        "2",
        "--kata-runtime",
        "rs",
        "--artifacts",
        &rs_set,
    ];

    // The admin's file, pointing at the Go shim: refused, naming the file and the key.
    fs::write(
        &settings,
        "downstream = \"/opt/kata/bin/containerd-shim-kata-v2\"\n",
    )
    .expect("admin's settings");
    let before = snapshot(sim.root());
    let err = refusal(&kata_gpu(&sim, &install));
    assert!(
        err.starts_with(&format!(
            "kata-gpu: {root}/{SETTINGS}: downstream = \"/opt/kata/bin/containerd-shim-kata-v2\" differs from what --kata-runtime rs writes, and kata-gpu did not write it"
        )),
        "{err}"
    );
    let after = snapshot(sim.root());
    assert!(before == after, "{}", first_change(&before, &after));

    // With the admin's file gone, install writes its own, and uninstall removes it.
    fs::remove_file(&settings).expect("remove admin's settings");
    let out = kata_gpu(&sim, &install);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ours = fs::read_to_string(&settings).expect("settings");
    let out = kata_gpu(&sim, &["uninstall"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!settings.exists(), "uninstall left what install wrote");

    // The admin's file saying what install would: kept, not taken over, and uninstall
    // leaves it.
    fs::write(&settings, &ours).expect("admin's settings");
    let out = kata_gpu(&sim, &install);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("already says so; kata-gpu did not write it, and uninstall leaves it"),
        "{}",
        text(&out)
    );
    let out = kata_gpu(&sim, &["uninstall"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fs::read_to_string(&settings).expect("kept"), ours);

    // What install wrote and an admin changed since: install refuses to replace it, and
    // uninstall keeps it, saying so.
    fs::remove_file(&settings).expect("remove");
    let out = kata_gpu(&sim, &install);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let changed = format!("{ours}kbs_address = \"http://kbs.example:8080\"\n");
    fs::write(&settings, &changed).expect("admin's change");
    let err = refusal(&kata_gpu(&sim, &install));
    assert!(
        err.contains("kbs_address (a key kata-gpu does not write) differs from what --kata-runtime rs writes, and kata-gpu wrote it but someone changed it since"),
        "{err}"
    );
    let out = kata_gpu(&sim, &["uninstall"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "changed since kata-gpu --host-root {} install wrote it: left as it is",
            sim.root().display()
        )),
        "{}",
        text(&out)
    );
    assert_eq!(fs::read_to_string(&settings).expect("kept"), changed);
}
