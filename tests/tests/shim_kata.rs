//! Kata 3.30's own shim behind the proxy, on every containerd release: containerd takes
//! the proxy's `start` reply, the proxy talks to Kata under the task v2 name Kata serves,
//! a GPU-less sandbox's Create reaches Kata with the per-sandbox config the proxy rendered
//! (Kata's error and Kata's log name it), the error reaches `ctr` as one line, Kata's
//! `Shutdown` (which exits without a reply) ends the proxy, and nothing of ours is left.
//!
//! The same battery runs with Kata 4.1's Rust shim (runtime-rs) downstream, on our
//! runtime-rs template (`configs/templates/configuration-qemu-nvidia-gpu-snp-runtime-rs.toml`)
//! as the base: it stops later, at the VM's vsock, past its config load.
//!
//! Kata cannot boot a VM here (no `/dev/vhost-vsock`): its Create stops while loading the
//! config, before QEMU starts. containerd and Kata run in a private mount namespace with a
//! syslog socket ([`kata_gpu_tests::katans`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kata_gpu_tests::parts::kata_parts;
use kata_gpu_tests::shimrig::{err, Downstream, Rig};
use kata_gpu_tests::{Containerd, Kata, KataRs};
use sha2::{Digest, Sha256};

/// Kata's socket for a task: `/run/containerd/s/sha256(<containerd address>/<ns>/<id>)`,
/// as containerd 1.7's shim library names it.
fn kata_socket(containerd: &Path, namespace: &str, id: &str) -> PathBuf {
    let key = containerd.join(namespace).join(id);
    let hash = Sha256::digest(key.display().to_string().as_bytes());
    Path::new("/run/containerd/s").join(kata_gpu_fsutil::hex(&hash))
}

/// What a failed Kata Create can leave on the host that Kata's own `delete` does not
/// remove, and that exists now (its socket is the proxy's to remove, and asserted gone).
fn kata_leftovers(id: &str) -> Vec<PathBuf> {
    let mut candidates = vec![
        PathBuf::from(format!("/run/vc/sbs/{id}")),
        PathBuf::from(format!("/run/kata-containers/shared/sandboxes/{id}")),
    ];
    // cgroup v1 `kata_overhead/<id>` and `<ns>/kata_<id>` in every controller; v2 alike.
    if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
        for c in controllers.flatten() {
            candidates.push(c.path().join("kata_overhead").join(id));
            candidates.push(c.path().join("default").join(format!("kata_{id}")));
        }
    }
    candidates.push(Path::new("/sys/fs/cgroup/kata_overhead").join(id));
    candidates.into_iter().filter(|p| p.exists()).collect()
}

/// The one line `ctr` printed for a refused run (besides what ctr itself logs: 2.3 warns
/// about cgroup v1), which starts `ctr: `.
#[track_caller]
fn one_ctr_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !(l.starts_with("time=") && l.contains("level=warning")))
        .collect();
    assert_eq!(lines.len(), 1, "one line: {stderr:?}");
    assert!(lines[0].starts_with("ctr: "), "{stderr:?}");
    lines[0].to_owned()
}

/// A `ctr run` that reached runtime-rs, which loaded the config and stopped where the VM
/// would start (no vhost-vsock here): ctr's one line.
#[track_caller]
fn runtime_rs_stopped_at_the_vm(rig: &Rig, o: &std::process::Output) -> String {
    let stderr = err(o);
    assert!(!o.status.success(), "ctr run through runtime-rs succeeded");
    assert!(
        stderr.contains("generate vhost vsock cid failed"),
        "{stderr}\n{}",
        rig.ctrd.log()
    );
    one_ctr_line(&stderr)
}

fn remove(path: &Path) {
    let removed = if path.is_dir() {
        // cgroup directories go with rmdir; the others are plain trees.
        std::fs::remove_dir(path).or_else(|_| std::fs::remove_dir_all(path))
    } else {
        std::fs::remove_file(path)
    };
    removed.unwrap_or_else(|e| panic!("remove Kata's leftover {}: {e}", path.display()));
}

kata_gpu_tests::tests_per_release!(kata_behind_the_proxy:
    kata_behind_the_proxy_on_1_6 = Debian,
    kata_behind_the_proxy_on_1_7 = V1_7,
    kata_behind_the_proxy_on_2_1 = V2_1,
    kata_behind_the_proxy_on_2_3 = V2_3,
);

fn kata_behind_the_proxy(release: Containerd, test: &str) {
    let Some(_) = kata_parts(test, release, Kata::find()) else {
        return;
    };
    let rig = Rig::on(release, Downstream::Kata, "");
    let id = Rig::id(&format!("kata{}", release.version().replace('.', "")));
    let socket = kata_socket(&rig.ctrd.address(), "default", &id);
    assert!(!socket.exists(), "{} before the test", socket.display());

    let o = rig.run(&[], &id, &["/bin/busybox", "true"]);
    let config = rig.state_dir(&id).join("configuration.toml");
    let stderr = err(&o);
    // Kata loaded the per-sandbox file the proxy rendered, and stopped at the vsock check.
    assert!(!o.status.success(), "ctr run through Kata succeeded");
    let want = format!(
        "{}: host system doesn't support vsock: stat /dev/vhost-vsock",
        config.display()
    );
    assert!(stderr.contains(&want), "{stderr}\n{}", rig.ctrd.log());
    one_ctr_line(&stderr);

    // The proxy answered start in this containerd's form and serves on its own socket,
    // talking task v2 to Kata's.
    let log = rig.ctrd.log();
    let ours = rig.work.path().join("st/s").display().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("serving on {ours}"))
                && l.contains(&format!("for downstream unix://{}", socket.display()))
                && l.contains("(task API v2)")),
        "{log}"
    );
    if release.is_v2() {
        // 2.x says which reply it took: the proxy's socket, over ttrpc.
        assert!(
            log.lines().any(|l| l.contains("connecting to shim")
                && l.contains(&format!("address=\"unix://{ours}"))
                && l.contains("protocol=ttrpc")),
            "{log}"
        );
    }

    // Kata's own log (syslog, at debug level) names the file it loaded.
    let ns = rig.kata_ns.as_ref().expect("Kata's namespace");
    let named = format!("file={}", config.display());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ns.syslog().contains(&named) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let syslog = ns.syslog();
    assert!(
        syslog
            .lines()
            .any(|l| l.contains("loaded configuration") && l.contains(&named)),
        "Kata's syslog:\n{syslog}"
    );

    // Kata's Shutdown exits without a reply; the proxy still ended, and left nothing.
    let _ = rig.ctr(&["containers", "delete", &id]);
    rig.assert_clean();
    assert!(
        !config.exists() && !rig.state_dir(&id).exists(),
        "{}",
        config.display()
    );

    // Kata removes the socket the bundle's address names (ours); the proxy removes Kata's.
    assert!(!socket.exists(), "Kata's socket left: {}", socket.display());
    // Kata's own leftovers, listed and removed.
    let left = kata_leftovers(&id);
    let listed: Vec<String> = left.iter().map(|p| p.display().to_string()).collect();
    // To the terminal, past cargo's capture, like a skip: what Kata leaves is news.
    let _ = writeln!(
        std::io::stderr().lock(),
        "{test}: Kata 3.30 left {}",
        if listed.is_empty() {
            "nothing".to_owned()
        } else {
            listed.join(", ")
        }
    );
    for p in &left {
        remove(p);
    }
}

kata_gpu_tests::tests_per_release!(kata_rs_behind_the_proxy:
    kata_rs_behind_the_proxy_on_1_6 = Debian,
    kata_rs_behind_the_proxy_on_1_7 = V1_7,
    kata_rs_behind_the_proxy_on_2_1 = V2_1,
    kata_rs_behind_the_proxy_on_2_3 = V2_3,
);

/// Issue 29 items 3 and 4: the same battery with Kata 4.1's Rust shim (runtime-rs) downstream,
/// the base being our runtime-rs snp template. It stops at Create where a VM would start
/// ("generate vhost vsock cid failed": no vhost-vsock here), after loading the config the
/// proxy rendered from it; our Go runtime's template as the base it refuses.
fn kata_rs_behind_the_proxy(release: Containerd, test: &str) {
    let Some(kata) = kata_parts(test, release, KataRs::find()) else {
        return;
    };
    let rig = Rig::on(release, Downstream::KataRs, "");
    let id = Rig::id(&format!("katars{}", release.version().replace('.', "")));
    // runtime-rs names its socket in upper-case hex.
    let socket = kata_socket(&rig.ctrd.address(), "default", &id);
    let socket = socket.with_file_name(
        socket
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_uppercase(),
    );
    assert!(!socket.exists(), "{} before the test", socket.display());

    // The config runtime-rs loads is the one the proxy rendered: none of runtime-rs's own
    // default paths exists, and with our Go runtime's template as the base, runtime-rs
    // refuses a key only that template has, `agent.kata.dial_timeout` (runtime-rs reads
    // `dial_timeout_ms`).
    for default in [
        "/etc/kata-containers/runtime-rs/configuration.toml",
        "/usr/share/defaults/kata-containers/runtime-rs/configuration.toml",
        "/opt/kata/share/defaults/kata-containers/runtime-rs/configuration.toml",
    ] {
        assert!(!Path::new(default).exists(), "{default} exists");
    }
    let base = rig.work.path().join("base.toml");
    let rs_base = std::fs::read_to_string(&base).expect("base config");
    std::fs::write(
        &base,
        kata_gpu_configs::template("snp").expect("our template"),
    )
    .expect("our template as the base");
    let go_id = format!("{id}-go");
    let o = rig.run(&[], &go_id, &["/bin/busybox", "true"]);
    let stderr = err(&o);
    assert!(!o.status.success(), "runtime-rs took our Go template");
    assert!(
        stderr.contains("unknown field `dial_timeout`") && stderr.contains("in `agent.kata`"),
        "{stderr}"
    );
    // A refused Create leaves no state, whatever containerd does next (2.x may not run
    // the shim's `delete` after runtime-rs's clean Shutdown).
    assert!(
        !rig.state_dir(&go_id).exists(),
        "{}",
        rig.state_dir(&go_id).display()
    );
    let _ = rig.ctr(&["containers", "delete", &go_id]);
    std::fs::write(&base, &rs_base).expect("our runtime-rs template as the base");
    // The rig's base is our runtime-rs template (debug on): its files are the artifact
    // store's, which the rig stubs, and none of runtime-rs's own.
    let ours = kata_gpu_configs::template_for("snp", kata_gpu_configs::KataRuntime::Rs)
        .expect("our runtime-rs template");
    let strip_debug = |t: &str| {
        t.lines()
            .filter(|l| !l.starts_with("enable_debug"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip_debug(&rs_base), strip_debug(ours), "the rig's base");
    assert!(rs_base.contains(
        "kernel = \"/opt/nvidia-gpu-operator/artifacts/runtimeclasses/kata-qemu-nvidia-gpu-snp/current/"
    ));

    let o = rig.run(&[], &id, &["/bin/busybox", "true"]);
    let config = rig.state_dir(&id).join("configuration.toml");
    let line = runtime_rs_stopped_at_the_vm(&rig, &o);
    let log = rig.ctrd.log();
    // runtime-rs's Debug dump (escaped line breaks, a backtrace) comes out as its words.
    assert!(
        line.contains("start vm: generate vhost vsock cid failed: ")
            && !line.contains("Stack backtrace")
            && !line.contains("\\n"),
        "{stderr:?}"
    );
    assert!(
        log.lines().any(|l| l.contains("serving on")
            && l.contains(&format!("for downstream unix://{}", socket.display()))
            && l.contains("(task API v2)")),
        "{log}"
    );

    assert!(
        !config.exists(),
        "a refused Create's config left: {}",
        config.display()
    );
    let _ = rig.ctr(&["containers", "delete", &id]);
    rig.assert_clean();
    assert!(
        !config.exists() && !rig.state_dir(&id).exists(),
        "{}",
        config.display()
    );
    let daemons: Vec<String> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .filter(|c| c.starts_with(&kata.shim().display().to_string()) && c.contains(&id))
                .collect()
        })
        .unwrap_or_default();
    assert!(daemons.is_empty(), "runtime-rs left running: {daemons:?}");
    assert!(
        !socket.exists(),
        "runtime-rs's socket left: {}",
        socket.display()
    );
}

/// Issue 29 item 4: which keys of our templates, that no runtime-rs 4.1 config sets or
/// mentions, runtime-rs refuses when they reach it in a per-sandbox config the proxy
/// rendered (each added alone to our runtime-rs snp template as the base); the others it
/// loads past (ignored: none of them is in its schema's documentation). ARCHITECTURE.md
/// ("Handing Kata a per-sandbox configuration") lists the same.
#[test]
fn keys_of_our_templates_runtime_rs_refuses() {
    let test = "keys_of_our_templates_runtime_rs_refuses";
    let Some(_) = kata_parts(test, Containerd::Debian, KataRs::find()) else {
        return;
    };
    let ours: kata_gpu_configs::toml_edit::DocumentMut = kata_gpu_configs::template("snp")
        .expect("our template")
        .parse()
        .expect("parses");
    let rig = Rig::on(Containerd::Debian, Downstream::KataRs, "");
    let base = rig.work.path().join("base.toml");
    let rs_base = std::fs::read_to_string(&base).expect("base config");
    let keys = [
        "agent.kata.dial_timeout",
        "factory.enable_template",
        "factory.template_path",
        "factory.vm_cache_endpoint",
        "factory.vm_cache_number",
        "hypervisor.qemu.enable_numa",
        "hypervisor.qemu.file_mem_backend",
        "hypervisor.qemu.msize_9p",
        "hypervisor.qemu.numa_mapping",
        "hypervisor.qemu.seccompsandbox",
        "hypervisor.qemu.valid_file_mem_backends",
        "runtime.create_container_timeout",
        "runtime.disable_guest_empty_dir",
        "runtime.experimental_force_guest_pull",
        "runtime.guest_selinux_label",
    ];
    let mut refused = Vec::new();
    for (n, key) in keys.iter().enumerate() {
        let path: Vec<&str> = key.split('.').collect();
        let (leaf, tables) = path.split_last().expect("a dotted key");
        let mut value = ours.as_item();
        for part in &path {
            value = &value[*part];
        }
        let value = value.clone();
        assert!(!value.is_none(), "{key} is not in our template");
        let mut doc: kata_gpu_configs::toml_edit::DocumentMut =
            rs_base.parse().expect("our runtime-rs template");
        let mut table = doc.as_item_mut();
        for part in tables {
            if table.get(part).is_none() {
                table[*part] = kata_gpu_configs::toml_edit::table();
            }
            table = &mut table[*part];
        }
        table[*leaf] = value;
        std::fs::write(&base, doc.to_string()).expect("base with the key");
        let id = Rig::id(&format!("key{n}"));
        let o = rig.run(&[], &id, &["/bin/busybox", "true"]);
        let stderr = err(&o);
        let _ = rig.ctr(&["containers", "delete", &id]);
        if stderr.contains(&format!("unknown field `{leaf}`")) {
            refused.push(*key);
        } else {
            assert!(
                stderr.contains("generate vhost vsock cid failed"),
                "{key}: {stderr}"
            );
        }
    }
    let _ = writeln!(std::io::stderr().lock(), "{test}: refused {refused:?}");
    assert_eq!(refused, ["agent.kata.dial_timeout"]);
    std::fs::write(&base, rs_base).expect("our runtime-rs template as the base");
    rig.assert_clean();
}

/// Issue 29 item 4, end to end: what `kata-gpu install --kata-runtime rs` leaves on a node
/// (the class's shim settings file and the installed artifact set, whose base config is
/// our runtime-rs snp template) is what the real proxy reads: it starts runtime-rs from
/// the settings' `downstream` (kata-deploy's path, linked to the runtime-rs part inside
/// Kata's namespace), and runtime-rs loads the config rendered from the installed base,
/// stopping at the VM's vsock.
#[test]
fn an_installed_runtime_rs_class_reaches_runtime_rs_through_the_proxy() {
    let test = "an_installed_runtime_rs_class_reaches_runtime_rs_through_the_proxy";
    let Some(_) = kata_parts(test, Containerd::Debian, KataRs::find()) else {
        return;
    };
    let rs = kata_gpu_configs::KataRuntime::Rs;
    // The node: our shim where containerd finds it, and an artifact set whose base config
    // is our runtime-rs template.
    let sim = kata_gpu_tests::SimHost::h100_pcie(kata_gpu_tests::VfioMode::Iommufd);
    kata_gpu_tests::place_built_shims(&sim);
    let set = tempfile::tempdir().expect("tempdir");
    for (name, body) in [
        ("vmlinuz-nvidia-gpu.container", "kernel"),
        ("kata-containers-nvidia.img", "image"),
        ("AMDSEV.fd", "fw"),
    ] {
        std::fs::write(set.path().join(name), body).expect("write");
    }
    std::fs::write(
        set.path()
            .join(kata_gpu_configs::template_file_name_for("snp", rs).expect("name")),
        kata_gpu_configs::template_for("snp", rs).expect("template"),
    )
    .expect("config");
    let kata_gpu = kata_gpu_tests::workspace_bin("kata-gpu", "kata-gpu");
    let o = kata_gpu_tests::run_on_host(
        &kata_gpu.display().to_string(),
        &sim,
        &[
            "install",
            "--config-version",
            "2",
            "--kata-runtime",
            "rs",
            "--artifacts",
            &set.path().display().to_string(),
        ],
    );
    assert!(o.status.success(), "{}", kata_gpu_tests::output_text(&o));
    let class =
        sim.path("opt/nvidia-gpu-operator/artifacts/runtimeclasses/kata-qemu-nvidia-gpu-snp");
    let settings = std::fs::read_to_string(class.join("shim.toml")).expect("installed settings");
    let base = std::fs::read_to_string(class.join("current/configuration.toml"))
        .expect("installed base config");
    assert!(
        settings.contains("downstream = \"/opt/kata/runtime-rs/bin/containerd-shim-kata-v2\""),
        "{settings}"
    );

    let rig = Rig::on_installed_rs(Containerd::Debian, &base, &settings);
    let id = Rig::id("installedrs");
    let o = rig.run(&[], &id, &["/bin/busybox", "true"]);
    runtime_rs_stopped_at_the_vm(&rig, &o);
    let _ = rig.ctr(&["containers", "delete", &id]);
    rig.assert_clean();
    assert!(
        !rig.state_dir(&id).exists(),
        "{}",
        rig.state_dir(&id).display()
    );
    let daemons: Vec<String> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .filter(|c| c.contains("containerd-shim-kata-v2") && c.contains(&id))
                .collect()
        })
        .unwrap_or_default();
    assert!(daemons.is_empty(), "runtime-rs left running: {daemons:?}");
}

/// Each of our runtime-rs templates (snp, tdx, gpu) as the base: runtime-rs 4.1 loads the
/// config the proxy renders from it, up to the VM's vsock.
#[test]
fn runtime_rs_loads_the_config_rendered_from_each_of_our_runtime_rs_templates() {
    let test = "runtime_rs_loads_the_config_rendered_from_each_of_our_runtime_rs_templates";
    let Some(_) = kata_parts(test, Containerd::Debian, KataRs::find()) else {
        return;
    };
    let settings = "downstream = \"/opt/kata/runtime-rs/bin/containerd-shim-kata-v2\"\ndownstream_kind = \"kata-rs\"\n";
    for profile in kata_gpu_configs::PROFILES {
        let base = kata_gpu_configs::template_for(profile, kata_gpu_configs::KataRuntime::Rs)
            .expect("template");
        let rig = Rig::on_installed_rs(Containerd::Debian, base, settings);
        let id = Rig::id(&format!("rs{profile}"));
        let o = rig.run(&[], &id, &["/bin/busybox", "true"]);
        let stderr = err(&o);
        let _ = rig.ctr(&["containers", "delete", &id]);
        assert!(
            stderr.contains("generate vhost vsock cid failed"),
            "{profile}: {stderr}\n{}",
            rig.ctrd.log()
        );
        rig.assert_clean();
    }
}
