//! `kata-gpu artifacts` as an admin runs it, against a store under a temporary host root.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CLASS: &str = "kata-qemu-nvidia-gpu-snp";
const STORE: &str = "opt/nvidia-gpu-operator/artifacts/runtimeclasses/kata-qemu-nvidia-gpu-snp";

const BASE_CONFIG: &str = r#"# shipped by Kata
[hypervisor.qemu]
path = "/opt/kata/bin/qemu-system-x86_64"
kernel = "/opt/kata/share/kata-containers/vmlinuz.container"
image = "/opt/kata/share/kata-containers/kata-containers.img"
valid_hypervisor_paths = ["/opt/kata/bin/qemu-system-x86_64"]
"#;

struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        Host {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn store(&self) -> PathBuf {
        self.root().join(STORE)
    }

    /// A fixture set in a source directory; `tag` makes its kernel differ.
    fn set(&self, tag: &str, image_len: usize) -> PathBuf {
        let dir = self.root().join("src").join(tag);
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(
            dir.join("vmlinuz-6.12.8-confidential"),
            format!("kernel {tag}"),
        )
        .expect("write");
        fs::write(
            dir.join("kata-containers-confidential.img"),
            vec![1u8; image_len],
        )
        .expect("write");
        fs::write(dir.join("AMDSEV.fd"), "fw").expect("write");
        fs::write(dir.join("qemu-system-x86_64"), "#!qemu").expect("write");
        fs::set_permissions(
            dir.join("qemu-system-x86_64"),
            fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        fs::write(
            dir.join("configuration-qemu-nvidia-gpu-snp.toml"),
            BASE_CONFIG,
        )
        .expect("write");
        dir
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kata-gpu"))
            .args(args)
            .arg("--host-root")
            .arg(self.root())
            .output()
            .expect("run kata-gpu")
    }

    /// Installs the fixture set `tag` into the default class; its version.
    fn installed(&self, tag: &str, image_len: usize) -> String {
        let src = self.set(tag, image_len);
        let out = self.run(&["artifacts", "install", &src.display().to_string()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        self.version_of("current")
    }

    fn version_of(&self, link: &str) -> String {
        fs::read_link(self.store().join(link))
            .expect("link")
            .to_string_lossy()
            .into_owned()
    }

    /// Names and link targets under the class directory.
    fn tree(&self) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(self.store())
            .expect("class dir")
            .map(|e| {
                let p = e.expect("entry").path();
                let name = p.file_name().expect("name").to_string_lossy().into_owned();
                match fs::read_link(&p) {
                    Ok(t) => format!("{name} -> {}", t.display()),
                    Err(_) => name,
                }
            })
            .collect();
        out.sort();
        out
    }
}

fn text(o: &Output) -> String {
    kata_gpu_tests::output_text(o)
}

#[test]
fn install_list_verify_rollback_and_prune() {
    let host = Host::new();
    let a = host.set("a", 1000);
    let a_arg = a.display().to_string();
    let out = host.run(&["artifacts", "install", &a_arg, "--class", CLASS]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    let va = host.version_of("current");
    assert!(
        shown.starts_with(&format!("installed {va} for {CLASS} (5 files, ")),
        "{shown}"
    );
    assert!(shown.contains(&format!(
        "  config hypervisor.qemu.path: \"/opt/kata/bin/qemu-system-x86_64\" -> \"/{STORE}/{va}/qemu-system-x86_64\""
    )), "{shown}");
    assert!(
        shown.ends_with(&format!("config: /{STORE}/current/configuration.toml\n")),
        "{shown}"
    );

    // Again: nothing new.
    let out = host.run(&["artifacts", "install", &a_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).starts_with(&format!("unchanged, current already: {va}")),
        "{}",
        text(&out)
    );

    let b = host.set("b", 1000);
    let out = host.run(&["artifacts", "install", &b.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let vb = host.version_of("current");
    // The hint is a command for this host: rooted.
    assert!(
        text(&out).contains(&format!(
            "previous: {va} (kata-gpu --host-root {} artifacts rollback switches back)",
            host.root().display()
        )),
        "{}",
        text(&out)
    );

    let out = host.run(&["artifacts", "list"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(
        shown.starts_with(&format!("{CLASS} (/{STORE})\n  current  {vb}  ")),
        "{shown}"
    );
    assert!(shown.contains(&format!("\n  previous {va}  ")), "{shown}");

    let out = host.run(&["artifacts", "verify", "--all"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("ok      {vb} (current): 5 files, ")),
        "{}",
        text(&out)
    );

    let out = host.run(&["artifacts", "rollback"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        text(&out),
        format!("rolled back {CLASS}: current is {va} (was {vb}, now previous)\n")
    );
    assert_eq!(host.version_of("current"), va);

    // A sandbox still runs from b: prune --keep 1 keeps it anyway.
    let b_config =
        fs::read_to_string(host.store().join(&vb).join("configuration.toml")).expect("config");
    let sandbox = host.root().join("run/kata-gpu/sandboxes/pod-1");
    fs::create_dir_all(&sandbox).expect("mkdir");
    fs::write(sandbox.join("configuration.toml"), b_config).expect("write");
    let out = host.run(&["artifacts", "prune", "--keep", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "kept    {vb}: in use by /run/kata-gpu/sandboxes/pod-1/configuration.toml"
        )),
        "{}",
        text(&out)
    );
    fs::remove_dir_all(&sandbox).expect("rm");
    let out = host.run(&["artifacts", "prune", "--keep", "1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["removed"], serde_json::json!([vb]));
    assert_eq!(
        host.tree(),
        vec![".lock".to_owned(), format!("current -> {va}"), va.clone()]
    );
}

#[test]
fn remove_takes_the_whole_store_but_not_while_a_sandbox_uses_it() {
    let host = Host::new();
    let va = host.installed("a", 100);
    let config =
        fs::read_to_string(host.store().join(&va).join("configuration.toml")).expect("config");
    let sandbox = host.root().join("run/kata-gpu/sandboxes/pod-1");
    fs::create_dir_all(&sandbox).expect("mkdir");
    fs::write(sandbox.join("configuration.toml"), config).expect("write");
    let before = host.tree();
    for dry in [&[][..], &["--dry-run"][..]] {
        let out = host.run(&[&["artifacts", "remove"][..], dry].concat());
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "kata-gpu: {root}/{STORE}: set {va} is in use by {root}/run/kata-gpu/sandboxes/pod-1/configuration.toml; nothing was removed: stop those pods (or delete the configuration a sandbox that is gone left behind) and retry\n",
                root = host.root().display()
            )
        );
        assert_eq!(host.tree(), before);
    }

    fs::remove_dir_all(&sandbox).expect("rm");
    let out = host.run(&["artifacts", "remove", "--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["removed"], serde_json::json!(["current", va, ".lock"]));
    assert_eq!(r["dir_removed"], true);
    assert_eq!(host.tree(), before, "a dry run removes nothing");
    let out = host.run(&["artifacts", "remove", "--class", CLASS]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Under --host-root the path named is the one inside the root.
    assert_eq!(
        text(&out),
        format!(
            "removed {} (current, {va}, .lock)\n",
            host.store().display()
        )
    );
    assert!(!host.store().exists());
    let out = host.run(&["artifacts", "remove"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        text(&out),
        format!(
            "nothing to remove: {} does not exist\n",
            host.store().display()
        )
    );
}

#[test]
fn verify_names_a_changed_file_and_exits_1() {
    let host = Host::new();
    let v = host.installed("a", 1000);
    let kernel = host.store().join(&v).join("vmlinuz-6.12.8-confidential");
    fs::set_permissions(&kernel, fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::write(&kernel, "kernel X").expect("tamper");
    let out = host.run(&["artifacts", "verify"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.starts_with(&format!("changed {v} (current): 1 finding(s)\n  /{STORE}/{v}/vmlinuz-6.12.8-confidential: content changed (sha256 ")), "{shown}");
    let out = host.run(&["artifacts", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r[0]["findings"][0]["problem"]["kind"], "digest");
}

#[test]
fn a_refused_install_exits_1_with_the_reason_and_changes_nothing() {
    let host = Host::new();
    host.installed("good", 1000);
    let before = host.tree();
    let bad = host.set("bad", 1000);
    fs::remove_file(bad.join("vmlinuz-6.12.8-confidential")).expect("rm");
    let out = host.run(&["artifacts", "install", &bad.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "kata-gpu: {}: no kernel (vmlinuz-*) among the files [AMDSEV.fd, configuration-qemu-nvidia-gpu-snp.toml, kata-containers-confidential.img, qemu-system-x86_64]; add one\n",
            bad.display()
        )
    );
    assert_eq!(host.tree(), before);
}

#[test]
fn a_full_disk_mid_copy_leaves_the_current_set_and_no_partial_set() {
    let host = Host::new();
    host.installed("good", 1000);
    let before = host.tree();
    // A 64 KiB file-size limit makes the image's copy fail with EFBIG, as a full disk would.
    let big = host.set("big", 300_000);
    let out = Command::new("bash")
        .arg("-c")
        .arg("ulimit -f 64; trap '' XFSZ; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_kata-gpu"))
        .args(["artifacts", "install"])
        .arg(&big)
        .arg("--host-root")
        .arg(host.root())
        .output()
        .expect("run kata-gpu");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/kata-containers-confidential.img: cannot write: File too large"),
        "{err}"
    );
    // The fix names the host it was run on.
    assert!(
        err.ends_with(&format!(
            "; free space under the store root (e.g. `kata-gpu --host-root {} artifacts prune --keep 1`) and retry\n",
            host.root().display()
        )),
        "{err}"
    );
    assert_eq!(
        host.tree(),
        before,
        "no staging directory, no new set, same current"
    );
}

#[test]
fn nothing_installed_and_bad_usage() {
    let host = Host::new();
    let out = host.run(&["artifacts", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "kata-gpu: {root}/{STORE}: no artifact set is installed (no `current` link); run `kata-gpu --host-root {root} artifacts install SRC --class NAME`\n",
            root = host.root().display()
        )
    );
    let out = host.run(&["artifacts", "list"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out),
        "no artifact sets under /opt/nvidia-gpu-operator/artifacts/runtimeclasses\n"
    );
    assert_eq!(
        host.run(&["artifacts", "prune"]).status.code(),
        Some(2),
        "--keep is required"
    );
    let out = host.run(&["artifacts", "install", "x", "--class", "../etc"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("runtime class \"../etc\" is not a plain name"));
}

#[test]
fn the_store_root_is_configurable() {
    let host = Host::new();
    let src = host.set("a", 10);
    let out = host.run(&[
        "artifacts",
        "install",
        &src.display().to_string(),
        "--root",
        "/var/lib/kata-gpu",
        "--class",
        "c1",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["outcome"], "installed");
    let version = r["version"].as_str().expect("version");
    let config = host
        .root()
        .join("var/lib/kata-gpu/c1/current/configuration.toml");
    let text = fs::read_to_string(config).expect("config");
    assert!(
        text.contains(&format!(
            "kernel = \"/var/lib/kata-gpu/c1/{version}/vmlinuz-6.12.8-confidential\""
        )),
        "{text}"
    );
}

#[test]
fn verify_and_reinstall_do_not_trust_a_manifest_changed_with_the_file() {
    let host = Host::new();
    let v = host.installed("a", 1000);
    let set = host.store().join(&v);
    let kernel = set.join("vmlinuz-6.12.8-confidential");
    let manifest = set.join("kata-gpu-manifest.json");
    let hex = |b: &[u8]| kata_gpu_artifacts::digest::Sha256Digest::of(b).hex();
    for f in [&kernel, &manifest] {
        fs::set_permissions(f, fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    fs::write(&kernel, "kernel X").expect("tamper");
    let text_before = fs::read_to_string(&manifest).expect("manifest");
    fs::write(
        &manifest,
        text_before.replace(&hex(b"kernel a"), &hex(b"kernel X")),
    )
    .expect("forge");

    let out = host.run(&["artifacts", "verify"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains(&format!(
            "/{STORE}/{v}/kata-gpu-manifest.json: the manifest does not match the set's name: \
             its files hash to sha256:"
        )),
        "{shown}"
    );

    let src = host.root().join("src").join("a");
    let out = host.run(&["artifacts", "install", &src.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fs::read_to_string(&kernel).expect("kernel"), "kernel a");
    let out = host.run(&["artifacts", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn under_umask_000_the_store_is_not_writable_by_others() {
    let host = Host::new();
    let src = host.set("a", 1000);
    fs::create_dir_all(src.join("docs")).expect("mkdir");
    fs::write(src.join("docs/sbom.spdx.json"), "{}").expect("nested file");
    let out = kata_gpu_tests::run_on_host_umask_000(
        env!("CARGO_BIN_EXE_kata-gpu"),
        host.root(),
        &["artifacts", "install", &src.display().to_string()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(host.store().join("current/docs/sbom.spdx.json").is_file());
    assert_eq!(
        kata_gpu_tests::writable_by_others(&host.root().join("opt")),
        Vec::<String>::new()
    );
}
