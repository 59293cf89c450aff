//! The real containerd 1.6 (Debian's) against every patched version-2 config: it starts,
//! its CRI plugin loads, and `containerd config dump` shows our handler with its options.
//! Inputs: the installed containerd's own `containerd config default` (generated here) and
//! the version-2 shapes of tests/data. Each config is pointed at a temp dir (root, state,
//! sockets, /opt path) before containerd starts, so no system containerd is touched.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kata_gpu_containerd_config::daemon::{config_dump, wait_for_socket};
use kata_gpu_containerd_config::{find_handler, register, ConfigVersion, HandlerSpec, Target};
use kata_gpu_tests::{is_root, on_path, require};
use toml_edit::{value, DocumentMut, Item, Table};

fn spec() -> HandlerSpec {
    let mut s = HandlerSpec::new(
        "kata-qemu-nvidia-gpu-snp",
        "io.containerd.kata-qemu-nvidia-gpu-snp.v2",
        "/opt/nvidia-gpu-operator/artifacts/runtimeclasses/kata-qemu-nvidia-gpu-snp/current/configuration.toml",
    );
    s.runtime_path = Some("/usr/local/bin/containerd-shim-kata-qemu-nvidia-gpu-snp-v2".into());
    s
}

/// Points a config's daemon paths at `dir`, leaving the rest (and our handler) as it is.
fn sandboxed(text: &str, dir: &Path) -> String {
    let mut doc: DocumentMut = text.parse().expect("patched config parses");
    let p = |name: &str| dir.join(name).display().to_string();
    doc["root"] = value(p("root"));
    doc["state"] = value(p("state"));
    for (section, address) in [
        ("grpc", p("containerd.sock")),
        ("ttrpc", p("containerd.sock.ttrpc")),
        ("debug", String::new()),
        ("metrics", String::new()),
    ] {
        if !doc.contains_key(section) {
            doc.insert(section, Item::Table(Table::new()));
        }
        doc[section]["address"] = value(address);
    }
    doc["plugins"]["io.containerd.internal.v1.opt"]["path"] = value(p("opt"));
    // Literal imports would be read from the host: point them at empty files of our own.
    if let Some(imports) = doc.get_mut("imports").and_then(Item::as_array_mut) {
        for entry in imports.iter_mut() {
            let Some(path) = entry
                .as_str()
                .filter(|e| !e.contains('*'))
                .map(PathBuf::from)
            else {
                continue;
            };
            let local = dir.join(path.file_name().expect("import file name"));
            fs::write(&local, "version = 2\n").expect("write import");
            *entry = local.display().to_string().into();
        }
    }
    doc.to_string()
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        for _ in 0..200 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn inputs(dir: &Path) -> Vec<(String, String)> {
    let default = Command::new("containerd")
        .args(["config", "default"])
        .output()
        .expect("containerd config default");
    assert!(default.status.success());
    let mut v = vec![(
        "containerd config default".to_owned(),
        String::from_utf8(default.stdout).expect("utf-8"),
    )];
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut names: Vec<PathBuf> = fs::read_dir(&data)
        .expect("ls data")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("v2-"))
        })
        .collect();
    names.sort();
    for p in names {
        v.push((
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            fs::read_to_string(&p).expect("read fixture"),
        ));
    }
    v.push(("empty file".to_owned(), String::new()));
    let _ = dir;
    v
}

#[test]
fn containerd_1_6_loads_every_patched_version_2_config() {
    require(is_root(), "root is needed to start containerd");
    for program in ["containerd", "ctr"] {
        require(on_path(program), &format!("{program} is not on PATH"));
    }
    let work = tempfile::tempdir().expect("tempdir");
    for (i, (name, text)) in inputs(work.path()).into_iter().enumerate() {
        let dir = work.path().join(format!("c{i}"));
        fs::create_dir_all(&dir).expect("mkdir");
        let done = register(
            &text,
            &spec(),
            Target {
                file: &name,
                version: Some(ConfigVersion::V2),
            },
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let config = dir.join("config.toml");
        fs::write(&config, sandboxed(&done.text, &dir)).expect("write config");

        let dump =
            config_dump(Path::new("containerd"), &config).unwrap_or_else(|e| panic!("{name}: {e}"));
        let found = find_handler(&dump, "kata-qemu-nvidia-gpu-snp")
            .unwrap_or_else(|| panic!("{name}: config dump lacks the handler:\n{dump}"));
        assert!(found.satisfies(&spec()), "{name}: {found:?}");
        assert_eq!(found.runtime_path, spec().runtime_path, "{name}");

        let (cri, log) = cri_plugin(&name, &dir, &config);
        assert!(
            cri.trim_end().ends_with("ok"),
            "{name}: the CRI plugin did not load: {cri}\n{log}"
        );
    }
}

/// Starts containerd on `config`, waits for its socket, and returns the CRI plugin's line
/// of `ctr plugins ls` and containerd's log; containerd is stopped on return.
fn cri_plugin(name: &str, dir: &Path, config: &Path) -> (String, String) {
    let log = fs::File::create(dir.join("containerd.log")).expect("log");
    let child = Command::new("containerd")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .expect("start containerd");
    let _daemon = Daemon(child);
    let sock = dir.join("containerd.sock");
    let log = || fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
    wait_for_socket(&sock, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", log()));
    let plugins = Command::new("ctr")
        .arg("--address")
        .arg(&sock)
        .args(["plugins", "ls"])
        .output()
        .expect("ctr plugins ls");
    let plugins = String::from_utf8_lossy(&plugins.stdout).into_owned();
    let cri = plugins
        .lines()
        .find(|l| l.contains("io.containerd.grpc.v1") && l.contains(" cri "))
        .unwrap_or_else(|| panic!("{name}: no CRI plugin:\n{plugins}"))
        .to_owned();
    (cri, log())
}

/// Why register writes `runc` beside a first runtime: without it containerd 1.6 drops its
/// built-in runc and the CRI plugin refuses to load.
#[test]
fn without_the_default_runtime_containerd_1_6_loses_cri() {
    require(is_root(), "root is needed to start containerd");
    require(
        on_path("containerd") && on_path("ctr"),
        "containerd and ctr must be on PATH",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let done = register(
        "",
        &spec(),
        Target {
            file: "empty",
            version: Some(ConfigVersion::V2),
        },
    )
    .expect("register");
    assert!(done.record.added_default_runtime);
    let mut doc: DocumentMut = done.text.parse().expect("parse");
    doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
        .as_table_mut()
        .expect("runtimes")
        .remove("runc");
    let config = dir.path().join("config.toml");
    fs::write(&config, sandboxed(&doc.to_string(), dir.path())).expect("write");
    let (cri, log) = cri_plugin("without runc", dir.path(), &config);
    assert!(cri.trim_end().ends_with("error"), "{cri}");
    assert!(log.contains("no corresponding runtime configured"), "{log}");
}
