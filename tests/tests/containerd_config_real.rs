//! The real containerd against every config we register into: 1.6 (Debian's) on the
//! version-2 shapes, 2.1.9 and 2.3.4 on the version-3/4 ones (in place and as a drop-in).
//! For each, `containerd config dump` shows our handler with its options, and containerd
//! starts with its CRI plugin loaded and our handler in it. Inputs: the release's own
//! `containerd config default` (generated here) and the shapes of containerd-config/tests/data. Each config is
//! pointed at a temp dir (root, state, sockets, /opt path, NRI socket) before containerd
//! starts, so no system containerd is touched.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kata_gpu_containerd_config::daemon::{config_dump, wait_for_socket};
use kata_gpu_containerd_config::dropin::{drop_in_file_name, drop_in_text};
use kata_gpu_containerd_config::{
    add_import, find_handler, register, ConfigVersion, HandlerSpec, Target,
};
use kata_gpu_tests::{available, is_root, on_path, require, Containerd};
use toml_edit::{value, DocumentMut, Item, Table};

const HANDLER: &str = "kata-qemu-nvidia-gpu-snp";

fn spec() -> HandlerSpec {
    let mut s = HandlerSpec::new(
        HANDLER,
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
    let servers = [
        ("grpc", p("containerd.sock")),
        ("ttrpc", p("containerd.sock.ttrpc")),
        ("debug", String::new()),
        ("metrics", String::new()),
    ];
    if doc.get("version").and_then(Item::as_integer) == Some(4) {
        // Version 4 (containerd 2.3) moved the servers into plugins; a root `[grpc]` is
        // ignored there, and containerd would serve on the host's socket.
        for (server, address) in servers {
            doc["plugins"][&format!("io.containerd.server.v1.{server}")]["address"] =
                value(address);
        }
    } else {
        for (section, address) in servers {
            if !doc.contains_key(section) {
                doc.insert(section, Item::Table(Table::new()));
            }
            doc[section]["address"] = value(address);
        }
    }
    doc["plugins"]["io.containerd.internal.v1.opt"]["path"] = value(p("opt"));
    // containerd 2.x serves NRI on a fixed host socket unless told otherwise.
    if doc["plugins"].get("io.containerd.nri.v1.nri").is_some() {
        doc["plugins"]["io.containerd.nri.v1.nri"]["socket_path"] = value(p("nri.sock"));
    }
    // Imports would be read from the host: point them into `<dir>/conf.d`, literal ones at
    // empty files of our own (a drop-in test then writes its drop-in there).
    let conf_d = dir.join("conf.d");
    fs::create_dir_all(&conf_d).expect("mkdir conf.d");
    if let Some(imports) = doc.get_mut("imports").and_then(Item::as_array_mut) {
        for entry in imports.iter_mut() {
            let Some(path) = entry.as_str().map(PathBuf::from) else {
                continue;
            };
            let local = conf_d.join(path.file_name().expect("import file name"));
            if !path.display().to_string().contains('*') {
                fs::write(&local, "version = 2\n").expect("write import");
            }
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

/// One config to register into: its name, its text, the version an empty file gets, and
/// whether the handler goes into a drop-in that the file imports.
struct Input {
    name: String,
    text: String,
    version: ConfigVersion,
    drop_in: bool,
}

fn data(prefix: &str) -> Vec<(String, String)> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../containerd-config/tests/data");
    let mut names: Vec<PathBuf> = fs::read_dir(&data)
        .expect("ls data")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|p| {
            (
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                fs::read_to_string(&p).expect("read fixture"),
            )
        })
        .collect()
}

/// The configs `release` is checked on: its own default, the fixtures of its config
/// versions, an empty file; on 2.x also its default with the handler in a drop-in.
fn inputs(release: Containerd, bin: &Path) -> Vec<Input> {
    let default = Command::new(bin.join("containerd"))
        .args(["config", "default"])
        .output()
        .expect("containerd config default");
    assert!(default.status.success());
    let default = String::from_utf8(default.stdout).expect("utf-8");
    let (version, prefixes): (_, &[&str]) = match release {
        Containerd::Debian | Containerd::V1_7 => (ConfigVersion::V2, &["v2-"]),
        Containerd::V2_1 => (ConfigVersion::V3, &["v3-"]),
        Containerd::V2_3 => (ConfigVersion::V4, &["v3-", "v4-"]),
    };
    let input = |name: &str, text: &str, drop_in| Input {
        name: name.to_owned(),
        text: text.to_owned(),
        version,
        drop_in,
    };
    let mut v = vec![input("containerd config default", &default, false)];
    for prefix in prefixes {
        for (name, text) in data(prefix) {
            v.push(input(&name, &text, false));
        }
    }
    v.push(input("empty file", "", false));
    if release.is_v2() {
        v.push(input("containerd config default, drop-in", &default, true));
    }
    v
}

/// Registers into each input the way `kata-gpu containerd register` does, then checks
/// what `release` reads from it.
fn loads_every_patched_config(release: Containerd, test: &str) {
    let Some(bin) = available(test, release.bin_dir()) else {
        return;
    };
    require(is_root(), "root is needed to start containerd");
    let work = tempfile::tempdir().expect("tempdir");
    for (i, input) in inputs(release, &bin).into_iter().enumerate() {
        let name = format!("{} on {}", input.name, release.version());
        let dir = work.path().join(format!("c{i}"));
        fs::create_dir_all(&dir).expect("mkdir");
        let target = Target {
            file: &name,
            version: Some(input.version),
        };
        let drop_in = Path::new("/etc/containerd/conf.d").join(drop_in_file_name(HANDLER));
        let text = if input.drop_in {
            add_import(&input.text, &drop_in.display().to_string(), target)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .text
        } else {
            register(&input.text, &spec(), target)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .text
        };
        let config = dir.join("config.toml");
        fs::write(&config, sandboxed(&text, &dir)).expect("write config");
        if input.drop_in {
            // `sandboxed` pointed the import (or the glob covering it) into `dir/conf.d`.
            let version = kata_gpu_containerd_config::config_version(&input.text, &name)
                .ok()
                .flatten()
                .unwrap_or(input.version);
            let body = drop_in_text(&spec(), version).unwrap_or_else(|e| panic!("{name}: {e}"));
            fs::write(dir.join("conf.d").join(drop_in_file_name(HANDLER)), body)
                .expect("write drop-in");
        }

        let dump =
            config_dump(&bin.join("containerd"), &config).unwrap_or_else(|e| panic!("{name}: {e}"));
        let found = find_handler(&dump, HANDLER)
            .unwrap_or_else(|| panic!("{name}: config dump lacks the handler:\n{dump}"));
        assert!(found.satisfies(&spec()), "{name}: {found:?}");
        assert_eq!(found.runtime_path, spec().runtime_path, "{name}");

        let (cri, log) = cri_plugin(&name, &bin, &dir, &config);
        assert!(
            cri.trim_end().ends_with("ok"),
            "{name}: the CRI plugin did not load: {cri}\n{log}"
        );
        // The CRI plugin logs its whole config as it starts: our handler must be in it.
        let started = log
            .lines()
            .find(|l| l.contains("starting cri plugin") || l.contains("Start cri plugin"))
            .unwrap_or_else(|| panic!("{name}: the CRI plugin did not start:\n{log}"));
        assert!(
            started.contains(&format!("io.containerd.{HANDLER}.v2")),
            "{name}: the CRI plugin started without our handler: {started}"
        );
    }
}

#[test]
fn containerd_1_6_loads_every_patched_version_2_config() {
    loads_every_patched_config(
        Containerd::Debian,
        "containerd_1_6_loads_every_patched_version_2_config",
    );
}

#[test]
fn containerd_2_1_loads_every_patched_version_3_config() {
    loads_every_patched_config(
        Containerd::V2_1,
        "containerd_2_1_loads_every_patched_version_3_config",
    );
}

#[test]
fn containerd_2_3_loads_every_patched_version_3_and_4_config() {
    loads_every_patched_config(
        Containerd::V2_3,
        "containerd_2_3_loads_every_patched_version_3_and_4_config",
    );
}

/// Starts containerd on `config`, waits for its socket, and returns the CRI plugin's line
/// of `ctr plugins ls` and containerd's log; containerd is stopped on return.
fn cri_plugin(name: &str, bin: &Path, dir: &Path, config: &Path) -> (String, String) {
    let log = fs::File::create(dir.join("containerd.log")).expect("log");
    let child = Command::new(bin.join("containerd"))
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
    let plugins = Command::new(bin.join("ctr"))
        .arg("--address")
        .arg(&sock)
        .args(["plugins", "ls"])
        .output()
        .expect("ctr plugins ls");
    let plugins = String::from_utf8_lossy(&plugins.stdout).into_owned();
    let cri = plugins
        .lines()
        .find(|l| {
            (l.contains("io.containerd.grpc.v1") && l.contains(" cri "))
                || (l.contains("io.containerd.cri.v1") && l.contains(" runtime "))
        })
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
    let (cri, log) = cri_plugin("without runc", Path::new("/usr/bin"), dir.path(), &config);
    assert!(cri.trim_end().ends_with("error"), "{cri}");
    assert!(log.contains("no corresponding runtime configured"), "{log}");
}
