//! `kata-gpu containerd register|unregister` as an admin runs them, on configs under a
//! temp host root: exact bytes back, no write on a second run, backups, modes, drop-ins,
//! k3s templates, refusals that touch nothing, the lock, and `--restart` through the
//! admin's `--restart-command` with the wait on a real containerd's socket.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kata_gpu_tests::PrivateContainerd;

const HANDLER: &str = "kata-qemu-nvidia-gpu-snp";

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../containerd-config/tests/data")
        .join(name);
    fs::read_to_string(p).expect("fixture")
}

struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        Node {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, host: &str) -> PathBuf {
        self.dir.path().join(host.trim_start_matches('/'))
    }

    fn put(&self, host: &str, text: &str) -> PathBuf {
        let p = self.path(host);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, text).expect("write");
        p
    }

    /// Unregisters and asserts that the config is `original` again, byte for byte, and
    /// that no backup is left.
    #[track_caller]
    fn unregister_restores(&self, original: &str) -> Output {
        let out = self.run(&["containerd", "unregister"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(
            self.read(CONFIG).as_deref(),
            Some(original),
            "{}",
            text(&out)
        );
        assert_eq!(self.read(BACKUP), None, "{}", text(&out));
        out
    }

    fn read(&self, host: &str) -> Option<String> {
        fs::read_to_string(self.path(host)).ok()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    fn run_env(&self, args: &[&str], env: &[(&str, String)]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kata-gpu"));
        c.arg("--host-root").arg(self.dir.path()).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run kata-gpu")
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts that the command exited with `code` and said `want`, showing all it said if not.
#[track_caller]
fn assert_exit_saying(out: &Output, code: i32, want: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    assert!(text(out).contains(want), "{}", text(out));
}

/// When the file was last written.
fn mtime(path: &Path) -> std::time::SystemTime {
    fs::metadata(path).expect("meta").modified().expect("mtime")
}

const CONFIG: &str = "/etc/containerd/config.toml";
/// Where register keeps the main config as it was before it.
const BACKUP: &str = "/etc/containerd/config.toml.kata-gpu.bak";
/// kata-gpu's record of the registration.
const STATE: &str = "/var/lib/kata-gpu/state/kata-qemu-nvidia-gpu-snp.json";

#[test]
fn in_place_register_and_unregister_give_back_the_same_bytes() {
    let node = Node::new();
    let original = fixture("v2-heavy-comments.toml");
    let path = node.put(CONFIG, &original);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");

    let out = node.run(&["containerd", "register", "--dry-run"]);
    assert_exit_saying(
        &out,
        0,
        &format!("+      [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{HANDLER}]"),
    );
    assert_eq!(
        node.read(CONFIG).as_deref(),
        Some(original.as_str()),
        "dry-run wrote"
    );

    let out = node.run(&["containerd", "register"]);
    // Under --host-root it names the simulated config and no command of the real host.
    assert_exit_saying(
        &out,
        0,
        &format!(
            "containerd must restart to load it: restart the containerd that reads {}",
            node.path(CONFIG).display()
        ),
    );
    assert!(!text(&out).contains("systemctl"), "{}", text(&out));
    let patched = node.read(CONFIG).expect("config");
    assert!(
        patched.contains(&format!("runtimes.{HANDLER}.options]")),
        "{patched}"
    );
    assert_eq!(node.read(BACKUP).as_deref(), Some(original.as_str()));
    assert_eq!(
        fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
        0o640
    );
    let state = node
        .read(&format!("/var/lib/kata-gpu/state/{HANDLER}.json"))
        .expect("state");
    assert!(state.contains("\"mode\": \"in_place\""), "{state}");

    let written = mtime(&path);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = node.run(&["containerd", "register", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["changed"], false);
    assert_eq!(mtime(&path), written);

    node.unregister_restores(&original);
    // All that is left of the registration: the restart containerd still owes.
    let state: serde_json::Value = serde_json::from_str(
        &node
            .read(&format!("/var/lib/kata-gpu/state/{HANDLER}.json"))
            .expect("state"),
    )
    .expect("state json");
    assert_eq!(state["containerd"], serde_json::Value::Null, "{state}");
    assert_eq!(state["unregistered"]["unit"], "containerd", "{state}");
    let out = node.run(&["containerd", "unregister"]);
    assert_exit_saying(&out, 0, "not registered; nothing to do");
}

#[test]
fn drop_in_mode_writes_our_file_and_one_imports_entry() {
    let node = Node::new();
    let original = fixture("v3-containerd2-default.toml");
    node.put(CONFIG, &original);
    let register_drop_in = || {
        node.run(&[
            "containerd",
            "register",
            "--profile",
            "tdx",
            "--drop-in",
            "/etc/containerd/conf.d",
        ])
    };
    let out = register_drop_in();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let drop_in = node
        .read("/etc/containerd/conf.d/kata-qemu-nvidia-gpu-tdx.toml")
        .expect("drop-in");
    assert!(drop_in.contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.kata-qemu-nvidia-gpu-tdx]"), "{drop_in}");
    let main = node.read(CONFIG).expect("main");
    assert!(
        main.contains("imports = ['/etc/containerd/conf.d/kata-qemu-nvidia-gpu-tdx.toml']\n"),
        "{main}"
    );
    assert_eq!(
        main.replace(
            "imports = ['/etc/containerd/conf.d/kata-qemu-nvidia-gpu-tdx.toml']",
            "imports = []"
        ),
        original
    );

    let out = register_drop_in();
    assert!(text(&out).contains("nothing to change"), "{}", text(&out));
    let out = node.run(&["containerd", "register", "--profile", "tdx"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "switching modes silently: {}",
        text(&out)
    );

    let out = node.run(&["containerd", "unregister", "--profile", "tdx"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(node.read(CONFIG).as_deref(), Some(original.as_str()));
    assert_eq!(
        node.read("/etc/containerd/conf.d/kata-qemu-nvidia-gpu-tdx.toml"),
        None
    );
}

#[test]
fn refusals_name_the_reason_and_touch_nothing() {
    let table: [(&str, &[&str], &str); 4] = [
        (
            "version = 2\n[plugins\n  x = 1\n",
            &[],
            "config.toml:2:9: invalid TOML",
        ),
        ("root = \"/var/lib/containerd\"\n", &[], "version-1 containerd config"),
        (
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"p\"\n",
            &["--drop-in", "/etc/containerd/conf.d"],
            "containerd issue 5837",
        ),
        (
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  runtimes = \"none\"\n",
            &[],
            "runtimes is a string where a table belongs",
        ),
    ];
    for (config, extra, want) in table {
        let node = Node::new();
        let path = node.put(CONFIG, config);
        let written = mtime(&path);
        let mut args = vec!["containerd", "register"];
        args.extend_from_slice(extra);
        let out = node.run(&args);
        assert_eq!(out.status.code(), Some(1), "{config}: {}", text(&out));
        assert!(text(&out).contains(want), "{config}: {}", text(&out));
        assert_eq!(node.read(CONFIG).as_deref(), Some(config));
        assert_eq!(mtime(&path), written);
        assert_eq!(node.read(BACKUP), None);
        assert_eq!(
            node.read("/etc/containerd/conf.d/kata-qemu-nvidia-gpu-snp.toml"),
            None
        );
        assert_eq!(
            node.read(&format!("/var/lib/kata-gpu/state/{HANDLER}.json")),
            None
        );
    }
    let out = Node::new().run(&["containerd", "register", "--config-version", "7"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn a_missing_config_is_created_and_removed_again() {
    let node = Node::new();
    let out = node.run(&["containerd", "register", "--config-version", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let created = node.read(CONFIG).expect("created");
    assert!(created.starts_with("version = 2\n"), "{created}");
    assert!(
        created.contains("runtimes.runc]"),
        "the built-in runtime kept: {created}"
    );
    let out = node.run(&["containerd", "unregister"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(node.read(CONFIG), None);
}

#[test]
fn k3s_templates_keep_their_header_and_drop_ins_go_where_k3s_imports() {
    let dir = "/var/lib/rancher/k3s/agent/etc/containerd";
    let node = Node::new();
    let tmpl = format!("{dir}/config-v3.toml.tmpl");
    let original = fixture("k3s-config-v3.toml.tmpl");
    node.put(&tmpl, &original);
    let out = node.run(&["containerd", "register", "--config", &tmpl]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let patched = node.read(&tmpl).expect("template");
    assert!(
        patched.starts_with("{{ template \"base\" . }}\n"),
        "{patched}"
    );
    assert!(
        patched.contains(
            "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.kata-qemu-nvidia-gpu-snp]"
        ),
        "{patched}"
    );
    assert!(
        !patched.contains("runtimes.runc]"),
        "the base template names runc: {patched}"
    );
    let out = node.run(&["containerd", "unregister"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(node.read(&tmpl).as_deref(), Some(original.as_str()));

    // Drop-in: only where the rendered config imports from.
    let drop_in_dir = format!("{dir}/config-v3.toml.d");
    let register_drop_in = || {
        node.run(&[
            "containerd",
            "register",
            "--config",
            &tmpl,
            "--drop-in",
            &drop_in_dir,
        ])
    };
    let out = register_drop_in();
    assert_exit_saying(&out, 1, "config-v3.toml.d");
    node.put(
        &format!("{dir}/config.toml"),
        &format!("version = 3\nimports = [\"{drop_in_dir}/*.toml\"]\n"),
    );
    let out = register_drop_in();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(node
        .read(&format!("{drop_in_dir}/kata-qemu-nvidia-gpu-snp.toml"))
        .is_some());
    assert_eq!(
        node.read(&tmpl).as_deref(),
        Some(original.as_str()),
        "template untouched"
    );
    let out = node.run(&["containerd", "unregister"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        node.read(&format!("{drop_in_dir}/kata-qemu-nvidia-gpu-snp.toml")),
        None
    );
}

#[test]
fn a_held_lock_keeps_a_second_installer_out() {
    use nix::fcntl::{Flock, FlockArg};
    let node = Node::new();
    let original = fixture("v2-runc-options.toml");
    node.put(CONFIG, &original);
    let lock = node.put("/run/lock/kata-gpu.lock", "");
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&lock)
        .expect("open lock");
    let held = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock");
    let out = node.run(&["containerd", "register", "--lock-timeout", "1"]);
    assert_exit_saying(&out, 1, "another installer holds this lock");
    assert_eq!(node.read(CONFIG).as_deref(), Some(original.as_str()));
    drop(held);
    let out = node.run(&["containerd", "register", "--lock-timeout", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// A `systemctl` that records its arguments and succeeds: the real host's restart, which
/// must never run for a simulated host.
fn fake_systemctl(dir: &Path) -> (PathBuf, PathBuf) {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).expect("mkdir bin");
    let record = dir.join("systemctl.args");
    let script = bin.join("systemctl");
    fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" >> {}\nexit 0\n", record.display()),
    )
    .expect("write systemctl");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    (bin, record)
}

/// Issue 19 item 5: under --host-root, `--restart` ran the real host's `systemctl restart
/// containerd`. Now it is refused before anything changes unless `--restart-command` names
/// the command (here one that stands in for restarting the private containerd); that
/// command runs, the wait is on the root's socket, and systemctl never runs.
#[test]
fn restart_under_a_host_root_runs_only_the_command_given_and_waits_for_the_socket() {
    let ctrd = PrivateContainerd::start("");
    let node = Node::new();
    let original = fixture("v2-runc-options.toml");
    node.put(CONFIG, &original);
    // containerd's socket, as the simulated host names it.
    let sock = node.path("/run/containerd/containerd.sock");
    fs::create_dir_all(sock.parent().expect("parent")).expect("mkdir");
    std::os::unix::fs::symlink(ctrd.address(), &sock).expect("symlink socket");
    let (bin, systemctl) = fake_systemctl(node.dir.path());
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = [("PATH", path)];
    let ran = node.dir.path().join("restart.ran");
    let restart = format!("echo restarted >> {}", ran.display());

    let out = node.run_env(
        &["containerd", "register", "--restart", "--unit", "k3s-agent"],
        &env,
    );
    assert_exit_saying(&out, 1, "add --restart-command CMD");
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    assert_eq!(node.read(CONFIG).as_deref(), Some(original.as_str()));
    assert!(!node.path(STATE).exists(), "a refusal recorded");
    // With --json the refusal is JSON on stdout.
    let out = node.run_env(&["containerd", "register", "--restart", "--json"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        err["error"]
            .as_str()
            .is_some_and(|e| e.contains("add --restart-command CMD")),
        "{err}"
    );

    let register_restarting = || {
        node.run_env(
            &[
                "containerd",
                "register",
                "--restart",
                "--restart-command",
                &restart,
            ],
            &env,
        )
    };
    let out = register_restarting();
    assert_exit_saying(&out, 0, &format!("restarted containerd ({restart})"));
    assert_eq!(fs::read_to_string(&ran).expect("ran"), "restarted\n");

    // Nothing changed: no restart.
    let out = register_restarting();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fs::read_to_string(&ran).expect("ran"), "restarted\n");

    // A socket that never answers fails the restart step, loudly.
    fs::remove_file(&sock).expect("rm socket");
    let out = node.run_env(
        &[
            "containerd",
            "unregister",
            "--restart",
            "--restart-command",
            &restart,
            "--restart-timeout",
            "1",
        ],
        &env,
    );
    assert_exit_saying(&out, 1, "did not answer within");
    assert_eq!(
        fs::read_to_string(&ran).expect("ran"),
        "restarted\nrestarted\n"
    );
    assert!(!systemctl.exists(), "the real host's systemctl ran");
}

/// A config that is a symlink: writing through it would change a file the link merely names
/// (under a host root an absolute target even leaves the root), and replacing it would break
/// whoever made the link. Register and unregister refuse, name both, and touch nothing;
/// naming the file itself works.
#[test]
fn a_config_that_is_a_symlink_is_refused_and_nothing_is_written() {
    let node = Node::new();
    let real = node.put("/etc/containerd/real.toml", "version = 2\n");
    let link = node.path(CONFIG);
    let outside = tempfile::NamedTempFile::new().expect("outside file");
    fs::write(outside.path(), "version = 2\n").expect("write outside");
    for (target, modes) in [
        (
            real.clone(),
            [&[][..], &["--drop-in", "/etc/containerd/conf.d"][..]],
        ),
        (
            outside.path().to_path_buf(),
            [&[][..], &["--drop-in", "/etc/containerd/conf.d"][..]],
        ),
    ] {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        for extra in modes {
            for action in ["register", "unregister"] {
                let mut args = vec!["containerd", action];
                args.extend_from_slice(extra);
                let out = node.run(&args);
                let said = text(&out);
                if action == "unregister" {
                    // Nothing registered: nothing to change, so nothing to refuse.
                    assert_eq!(out.status.code(), Some(0), "{said}");
                    continue;
                }
                assert_eq!(out.status.code(), Some(1), "{extra:?}: {said}");
                assert!(
                    said.contains(&format!(
                        "{}: is a symlink to {}",
                        link.display(),
                        target.display()
                    )) && said.contains("nothing was written"),
                    "{extra:?}: {said}"
                );
                assert_eq!(said.trim().lines().count(), 1, "one line: {said}");
                assert!(fs::symlink_metadata(&link)
                    .expect("link")
                    .file_type()
                    .is_symlink());
                assert_eq!(
                    fs::read_to_string(&target).expect("target"),
                    "version = 2\n"
                );
                assert_eq!(node.read(BACKUP), None);
                assert!(!node.path("/etc/containerd/conf.d").exists());
                assert_eq!(
                    node.read(&format!("/var/lib/kata-gpu/state/{HANDLER}.json")),
                    None
                );
            }
        }
    }
    assert_eq!(
        fs::read_to_string(outside.path()).expect("outside"),
        "version = 2\n"
    );

    // The fix the message gives: name the file itself.
    let out = node.run(&[
        "containerd",
        "register",
        "--config",
        "/etc/containerd/real.toml",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(fs::read_to_string(&real)
        .expect("real")
        .contains(&format!("runtimes.{HANDLER}]")));
    // A backup that is a symlink is refused too (it would be written through).
    let node2 = Node::new();
    node2.put(CONFIG, "version = 2\n");
    std::os::unix::fs::symlink(outside.path(), node2.path(BACKUP)).expect("backup link");
    let out = node2.run(&["containerd", "register"]);
    assert_exit_saying(&out, 1, "config.toml.kata-gpu.bak: is a symlink to");
    assert_eq!(node2.read(CONFIG).as_deref(), Some("version = 2\n"));
}

/// Issue 18 item 2: an admin made our handler containerd's default after `register`;
/// removing it would leave `default_runtime_name` naming nothing and containerd 1.6 would
/// refuse to load CRI. Unregister (in place and drop-in) refuses, names the key and its
/// line, and changes nothing; once the admin points the default elsewhere it goes through.
#[test]
fn unregister_refuses_while_default_runtime_name_names_the_handler() {
    for drop_in in [false, true] {
        let node = Node::new();
        let original = fixture("v2-runc-options.toml");
        node.put(CONFIG, &original);
        let mut register = vec!["containerd", "register"];
        if drop_in {
            // A version-3 main file, so that a drop-in is allowed.
            node.put(
                CONFIG,
                "version = 3\n[plugins.\"io.containerd.cri.v1.runtime\".containerd]\n  default_runtime_name = \"runc\"\n",
            );
            register.extend(["--drop-in", "/etc/containerd/conf.d"]);
        }
        let out = node.run(&register);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let registered = node.read(CONFIG).expect("config");
        let edited = registered.replace(
            "default_runtime_name = \"runc\"",
            &format!("default_runtime_name = \"{HANDLER}\""),
        );
        assert_ne!(edited, registered);
        node.put(CONFIG, &edited);
        let state = node.read(&format!("/var/lib/kata-gpu/state/{HANDLER}.json"));
        let drop_in_file = node.read("/etc/containerd/conf.d/kata-qemu-nvidia-gpu-snp.toml");

        let out = node.run(&["containerd", "unregister"]);
        let cri = if drop_in {
            "io.containerd.cri.v1.runtime"
        } else {
            "io.containerd.grpc.v1.cri"
        };
        assert_exit_saying(
            &out,
            1,
            &format!(
                "config.toml:{}: plugins.\"{cri}\".containerd.default_runtime_name = \"{HANDLER}\" names the runtime handler being removed",
                if drop_in { 4 } else { 7 }
            ),
        );
        assert_eq!(text(&out).trim().lines().count(), 1, "{}", text(&out));
        assert_eq!(node.read(CONFIG).as_deref(), Some(edited.as_str()));
        assert_eq!(
            node.read(&format!("/var/lib/kata-gpu/state/{HANDLER}.json")),
            state
        );
        assert_eq!(
            node.read("/etc/containerd/conf.d/kata-qemu-nvidia-gpu-snp.toml"),
            drop_in_file
        );

        node.put(CONFIG, &registered);
        let out = node.run(&["containerd", "unregister"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(!node.read(CONFIG).unwrap_or_default().contains(HANDLER));
    }
}

/// Everything in a directory, recursively, with contents: to show a tree was not touched.
fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).expect("ls") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                todo.push(p.clone());
                out.push((p, String::new()));
            } else {
                let text = fs::read_to_string(&p).expect("read");
                out.push((p, text));
            }
        }
    }
    out.sort();
    out
}

/// Issue 18 item 5: a directory on the way (containerd's config dir, the drop-in dir, the
/// state dir, the lock dir) that is a symlink to an absolute path is resolved inside
/// `--host-root`, as the host would see it: nothing is written outside the root.
#[test]
fn a_symlinked_parent_directory_never_leads_a_write_out_of_the_host_root() {
    let table = [
        ("/etc/containerd", &[][..]),
        (
            "/etc/containerd/conf.d",
            &["--drop-in", "/etc/containerd/conf.d"][..],
        ),
        ("/var/lib/kata-gpu", &[][..]),
        ("/run/lock", &[][..]),
    ];
    for (linked, extra) in table {
        let node = Node::new();
        let outside = tempfile::tempdir().expect("outside");
        fs::write(outside.path().join("config.toml"), "version = 3\n").expect("outside config");
        if linked != "/etc/containerd" {
            node.put(CONFIG, "version = 3\n");
        }
        let link = node.path(linked);
        fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(outside.path(), &link).expect("symlink");
        let before = snapshot(outside.path());
        let mut args = vec!["containerd", "register", "--config-version", "3"];
        args.extend_from_slice(extra);
        // Inside the root, where the host would find it, is where the files go.
        let inside = node
            .dir
            .path()
            .join(outside.path().strip_prefix("/").expect("absolute temp dir"));
        for action in ["register", "unregister"] {
            args[1] = action;
            let out = node.run(&args);
            assert_eq!(out.status.code(), Some(0), "{linked}: {}", text(&out));
            assert_eq!(snapshot(outside.path()), before, "{linked}: wrote outside");
            if action == "register" {
                assert!(
                    inside.is_dir(),
                    "{linked}: {} not created",
                    inside.display()
                );
            }
        }
    }
}

/// Issue 18 item 4: the record is the intent, written before the config changes. When it
/// cannot be written, register fails and the config is untouched, so that no handler is ever
/// left behind without the record unregister needs; and a later register (with no change to
/// make) keeps the record that says the handler was created, so unregister still removes it.
#[test]
fn the_record_is_written_before_the_config_and_a_no_op_register_keeps_it() {
    let node = Node::new();
    let original = fixture("v2-runc-options.toml");
    let path = node.put(CONFIG, &original);
    let written = mtime(&path);
    // The state file reads (empty) but cannot be written: it is a symlink.
    let empty = node.put("/elsewhere/empty.json", "{}\n");
    let state_file = node.path(&format!("/var/lib/kata-gpu/state/{HANDLER}.json"));
    fs::create_dir_all(state_file.parent().expect("parent")).expect("mkdir");
    std::os::unix::fs::symlink(&empty, &state_file).expect("symlink");
    let out = node.run(&["containerd", "register"]);
    assert_exit_saying(&out, 1, "cannot record the registration");
    assert_eq!(node.read(CONFIG).as_deref(), Some(original.as_str()));
    assert_eq!(mtime(&path), written);
    assert_eq!(node.read(BACKUP), None);

    fs::remove_file(&state_file).expect("rm");
    let out = node.run(&["containerd", "register"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let state = node
        .read(&format!("/var/lib/kata-gpu/state/{HANDLER}.json"))
        .expect("state");
    let out = node.run(&["containerd", "register"]);
    assert_exit_saying(&out, 0, "nothing to change");
    assert_eq!(
        node.read(&format!("/var/lib/kata-gpu/state/{HANDLER}.json"))
            .map(|s| s.contains("\"kind\": \"created\"")),
        Some(true),
        "{state}"
    );
    let out = node.run(&["containerd", "unregister"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(node.read(CONFIG).as_deref(), Some(original.as_str()));
}

/// Issue 18 item 3, as the admin sees it: an entry added to `pod_annotations` after
/// register survives unregister, which says that it kept the key and why.
#[test]
fn unregister_keeps_an_annotation_the_admin_added_after_register() {
    let node = Node::new();
    let original = format!(
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{HANDLER}]\n  runtime_type = \"io.containerd.{HANDLER}.v2\"\n  privileged_without_host_devices = true\n  pod_annotations = [\"io.katacontainers.*\"]\n"
    );
    node.put(CONFIG, &original);
    let out = node.run(&["containerd", "register"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let registered = node.read(CONFIG).expect("config");
    let edited = registered.replace(
        "\"cdi.k8s.io/*\"]",
        "\"cdi.k8s.io/*\", \"admin.example/*\"]",
    );
    assert_ne!(edited, registered);
    node.put(CONFIG, &edited);
    let out = node.run(&["containerd", "unregister"]);
    assert_exit_saying(
        &out,
        0,
        &format!("note: kept pod_annotations of {HANDLER} as it is: it was edited after register"),
    );
    let after = node.read(CONFIG).expect("config");
    assert!(
        after.contains(
            "pod_annotations = [\"io.katacontainers.*\", \"cdi.k8s.io/*\", \"admin.example/*\"]"
        ),
        "{after}"
    );
    assert!(!after.contains("ConfigPath"), "the rest undone: {after}");
}

/// Issue 18 item 13: a damaged state file names itself and how to recover, in one line,
/// for every command that reads it; with `--json` the error is JSON on stdout.
#[test]
fn a_damaged_state_file_says_how_to_recover_and_json_errors_are_json() {
    let node = Node::new();
    node.put(CONFIG, "version = 2\n");
    let state = node.put(
        &format!("/var/lib/kata-gpu/state/{HANDLER}.json"),
        "{\"containerd\": {",
    );
    for args in [
        &["containerd", "register"][..],
        &["containerd", "unregister"][..],
        &["status", "--containerd", "/nonexistent/containerd"][..],
    ] {
        let out = node.run(args);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {said}");
        assert!(
            said.contains(&format!("{}: damaged state file", state.display()))
                && said.contains(&format!(
                    "move it aside (mv {0} {0}.damaged)",
                    state.display()
                )),
            "{args:?}: {said}"
        );
        assert_eq!(said.trim().lines().count(), 1, "{args:?}: {said}");
        // What serde said, once.
        assert_eq!(
            said.matches("EOF while parsing").count(),
            1,
            "{args:?}: {said}"
        );
        assert_eq!(node.read(CONFIG).as_deref(), Some("version = 2\n"));

        let mut json_args = vec!["--json"];
        json_args.extend_from_slice(args);
        let out = node.run(&json_args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        let err: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", text(&out)));
        let msg = err["error"].as_str().unwrap_or_default();
        assert!(msg.contains("damaged state file"), "{err}");
        assert!(out.stderr.is_empty(), "{}", text(&out));
    }
}

/// A config that cannot be read is said in one line with its cause once (the library's
/// error writes its cause in; the line does not repeat it).
#[test]
fn an_unreadable_config_is_said_once_with_its_cause() {
    let node = Node::new();
    fs::create_dir_all(node.path(CONFIG)).expect("a directory where the config goes");
    let out = node.run(&["containerd", "register", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "kata-gpu: cannot read {}: Is a directory (os error 21)\n",
            node.path(CONFIG).display()
        )
    );
}

/// Issue 18 item 13: a drop-in round trip leaves nothing behind — no backup of the main
/// config, no drop-in directory it created — while a directory the admin made stays.
#[test]
fn a_drop_in_round_trip_leaves_no_backup_and_no_directory_it_created() {
    for dir_existed in [false, true] {
        let node = Node::new();
        let original = fixture("v3-containerd2-default.toml");
        node.put(CONFIG, &original);
        let dir = node.path("/etc/containerd/conf.d");
        if dir_existed {
            fs::create_dir_all(&dir).expect("mkdir");
        }
        let args = [
            "containerd",
            "register",
            "--drop-in",
            "/etc/containerd/conf.d",
        ];
        let out = node.run(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(node.read(BACKUP).as_deref(), Some(original.as_str()));
        let out = node.unregister_restores(&original);
        assert_eq!(dir.is_dir(), dir_existed, "{}", text(&out));
    }
}

/// Issue 18 item 13: a backup left by an earlier registration (kept because the config
/// was edited since) is replaced when a new registration starts, so that it holds the
/// config as it was just before this one; within one registration the first backup stays.
#[test]
fn a_stale_backup_from_an_earlier_registration_is_refreshed() {
    let node = Node::new();
    let original = fixture("v2-runc-options.toml");
    node.put(CONFIG, &original);
    node.put(BACKUP, "version = 2\n# stale\n");
    let out = node.run(&["containerd", "register"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(node.read(BACKUP).as_deref(), Some(original.as_str()));
    // A second register in the same registration (another ConfigPath) keeps it.
    let out = node.run(&["containerd", "register", "--snapshotter", "nydus"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(node.read(BACKUP).as_deref(), Some(original.as_str()));
    node.unregister_restores(&original);
}

/// Issue 18 item 13: after unregister (without --restart) containerd still runs with the
/// handler loaded; status keeps saying that a restart is pending until one happens, and a
/// new register carries it over.
#[test]
fn status_remembers_the_restart_an_unregister_needs() {
    let node = Node::new();
    node.put(CONFIG, &fixture("v2-runc-options.toml"));
    let status = || {
        let out = node.run(&[
            "status",
            "--json",
            "--containerd",
            "/nonexistent/containerd",
        ]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("status json")
    };
    let out = node.run(&["containerd", "register"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = node.run(&["containerd", "unregister"]);
    assert_exit_saying(&out, 0, "containerd must restart");
    let s = status();
    assert_eq!(s["restart_pending"], true, "{s}");
    assert!(
        s["details"].as_array().is_some_and(|d| d.iter().any(|l| l
            .as_str()
            .is_some_and(|l| l.contains("must restart to unload")))),
        "{s}"
    );
    let out = node.run(&["containerd", "register"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(status()["restart_pending"], true);
}

/// Under `umask 000`, the directories registration creates (the drop-in directory, the
/// node's state and lock directories) are not writable by others: a drop-in directory others
/// can write lets them add runtimes to containerd, a state directory lets them forge records.
#[test]
fn under_umask_000_registration_makes_no_directory_others_can_write() {
    let node = Node::new();
    node.put(CONFIG, &fixture("v3-containerd2-default.toml"));
    let out = kata_gpu_tests::run_on_host_umask_000(
        env!("CARGO_BIN_EXE_kata-gpu"),
        node.dir.path(),
        &[
            "containerd",
            "register",
            "--drop-in",
            "/etc/containerd/conf.d",
        ],
    );
    assert_exit_saying(&out, 0, "conf.d");
    assert_eq!(
        kata_gpu_tests::writable_by_others(node.dir.path()),
        Vec::<String>::new(),
        "{}",
        text(&out)
    );
}

/// Issue 19 item 5: for a config that does not say its version, register asked
/// `containerd --version` of the real host's containerd even under --host-root. It now asks
/// the one on containerd's PATH inside the root, and with none there says it cannot tell.
#[test]
fn under_a_host_root_the_version_comes_from_the_roots_containerd_not_the_real_hosts() {
    let node = Node::new();
    node.put(CONFIG, "# no version here\n");
    let recorder = |dir: &Path, says: &str| -> (PathBuf, PathBuf) {
        fs::create_dir_all(dir).expect("mkdir");
        let record = dir.join("containerd.ran");
        let script = dir.join("containerd");
        fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$@\" >> {}\necho '{says}'\n",
                record.display()
            ),
        )
        .expect("write containerd");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
        (dir.to_path_buf(), record)
    };
    let (real_bin, real_ran) = recorder(
        &node.dir.path().join("real-host-bin"),
        "containerd github.com/containerd/containerd/v2 v2.3.4 abc",
    );
    let env = [(
        "PATH",
        format!(
            "{}:{}",
            real_bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    )];
    let out = node.run_env(&["containerd", "register"], &env);
    assert_exit_saying(&out, 1, "config.toml");
    assert!(!real_ran.exists(), "the real host's containerd ran");
    assert_eq!(node.read(CONFIG).as_deref(), Some("# no version here\n"));

    // The root's own containerd (1.6) tells: version 2.
    let (_, root_ran) = recorder(
        &node.path("/usr/bin"),
        "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1",
    );
    let out = node.run_env(&["containerd", "register"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fs::read_to_string(&root_ran).expect("ran"), "--version\n");
    assert!(!real_ran.exists(), "the real host's containerd ran");
    assert!(
        node.read(CONFIG).is_some_and(
            |c| c.contains("plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes")
        ),
        "{:?}",
        node.read(CONFIG)
    );
}
