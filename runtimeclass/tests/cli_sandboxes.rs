//! `kata-gpu sandboxes`, as an admin runs it when a pod misbehaves: on a simulated HGX
//! host with sandbox state as the shim writes it and the host's processes as `/proc`
//! shows them (a running pod, one gone with its state left); and on this machine, with a
//! sandbox the real shim started through a private containerd.

mod common;

use std::fs;
use std::process::{Command, Output};

use common::{kata_gpu, text};
use kata_gpu_tests::shimrig::{err, Downstream, Rig};
use kata_gpu_tests::SimHost;

fn put(sim: &SimHost, rel: &str, bytes: &[u8]) {
    let p = sim.path(rel);
    fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    fs::write(p, bytes).expect("write");
}

/// A sandbox's state as the shim writes it (claim, plan, per-sandbox config).
fn sandbox(sim: &SimHost, id: &str, pod: &str, bdf: &str, console: bool) {
    let dir = format!("run/kata-gpu/k8s.io/{id}");
    let claim =
        serde_json::json!({"namespace": "k8s.io", "sandbox": id, "pod": pod, "devices": [bdf]});
    put(
        sim,
        &format!("{dir}/claims.json"),
        claim.to_string().as_bytes(),
    );
    let plan = serde_json::json!({
        "profile": "snp", "handler": "kata-qemu-nvidia-gpu-snp", "requested": ["nvidia.com/pgpu=0"],
        "devices": [{"bdf": bdf, "id": "10de:2330", "iommu_group": 30, "numa_node": 0}],
    });
    put(
        sim,
        &format!("{dir}/plan.json"),
        plan.to_string().as_bytes(),
    );
    let config = format!("[agent.kata]\ndial_timeout = 30\ndebug_console_enabled = {console}\n");
    put(sim, &format!("{dir}/configuration.toml"), config.as_bytes());
}

/// An HGX node running pod `default/train` (proxy, Kata's shim, QEMU) on 0000:18:00.0,
/// with the state of pod `default/old`, which nothing runs any more, on 0000:2a:00.0.
fn node() -> SimHost {
    let sim = SimHost::hgx_8x_h100();
    sandbox(&sim, "aaa111", "default/train", "0000:18:00.0", false);
    sandbox(&sim, "bbb222", "default/old", "0000:2a:00.0", true);
    let proc = |pid: u32, argv: &[&str]| {
        put(
            &sim,
            &format!("proc/{pid}/cmdline"),
            argv.join("\0").as_bytes(),
        );
    };
    proc(
        100,
        &[
            "/usr/local/bin/containerd-shim-kata-qemu-nvidia-gpu-snp-v2",
            "-namespace",
            "k8s.io",
            "-id",
            "aaa111",
            "-address",
            "/run/containerd/containerd.sock",
            "serve",
        ],
    );
    proc(
        101,
        &[
            "/opt/kata/bin/containerd-shim-kata-v2",
            "-namespace",
            "k8s.io",
            "-address",
            "/run/containerd/containerd.sock",
            "-id",
            "aaa111",
        ],
    );
    proc(
        102,
        &[
            "/opt/kata/bin/qemu-system-x86_64",
            "-name",
            "sandbox-aaa111",
        ],
    );
    sim
}

#[test]
fn the_nodes_sandboxes_and_who_holds_each_gpu() {
    let sim = node();
    let out = kata_gpu(&sim, &["sandboxes"]);
    let said = text(&out).replace(&sim.root().display().to_string(), "$ROOT");
    assert_eq!(out.status.code(), Some(0), "{said}");
    let lines: Vec<&str> = said.lines().collect();
    assert!(
        lines[0].starts_with(
            "aaa111 default/train snp [nvidia.com/pgpu=0] running (kata 101, qemu 102), "
        ),
        "{said}"
    );
    assert!(
        lines[1]
            .starts_with("bbb222 default/old snp [nvidia.com/pgpu=1] GONE: nothing runs for it"),
        "{said}"
    );
    for want in [
        "gpu 0000:18:00.0 10de:2330 (nvidia.com/pgpu=0, NUMA 0): held by pod default/train (sandbox aaa111)",
        "gpu 0000:2a:00.0 10de:2330 (nvidia.com/pgpu=1, NUMA 0): LEAKED: claimed by pod default/old (sandbox bbb222), which no longer runs; no new pod gets it until its state goes: rm -r $ROOT/run/kata-gpu/k8s.io/bbb222",
        "gpu 0000:3a:00.0 10de:2330 (nvidia.com/pgpu=2, NUMA 0): free",
        "nvswitch 0000:05:00.0 10de:22a3 (nvidia.com/nvswitch=0, NUMA 0): free",
    ] {
        assert!(lines.contains(&want), "{want:?} not in\n{said}");
    }

    // JSON: the same facts.
    let out = kata_gpu(&sim, &["sandboxes", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["sandboxes"][0]["kata_pid"], 101);
    assert_eq!(json["sandboxes"][1]["qemu_pid"], serde_json::Value::Null);
    let leaked = json["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["bdf"] == "0000:2a:00.0")
        .expect("the leaked GPU");
    assert_eq!(leaked["holder"]["state"], "leaked");
    assert_eq!(leaked["holder"]["dir"], "/run/kata-gpu/k8s.io/bbb222");
}

#[test]
fn one_sandbox_how_to_reach_its_vm_and_where_its_logs_are() {
    let sim = node();
    let out = kata_gpu(&sim, &["sandboxes", "aaa"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    for want in [
        "sandbox:      aaa111 (containerd namespace k8s.io)",
        "pod:          default/train",
        "class:        kata-qemu-nvidia-gpu-snp (snp profile, Kata's go runtime)",
        "device:       nvidia.com/pgpu=0 0000:18:00.0 10de:2330, IOMMU group 30, NUMA 0",
        "proxy:        pid 100",
        "kata shim:    pid 101",
        "qemu:         pid 102",
        "config:       /run/kata-gpu/k8s.io/aaa111/configuration.toml",
        "plan:         /run/kata-gpu/k8s.io/aaa111/plan.json",
        "shell:        none: the debug console is off in /run/kata-gpu/k8s.io/aaa111/configuration.toml (confidential profiles keep it off, and a pod cannot turn it on); use the logs",
        "logs:         the proxy's: journalctl -u containerd | grep 'sandbox=aaa111'",
        "              Kata's shim (and what QEMU prints, which it logs): journalctl -t kata | grep aaa111",
    ] {
        assert!(said.lines().any(|l| l == want), "{want:?} not in\n{said}");
    }
    // Where the console is on, the GPU Operator's way in, with the config Kata must read.
    let said = text(&kata_gpu(&sim, &["sandboxes", "bbb222"]));
    assert!(
        said.contains("shell:        kata-runtime --config /run/kata-gpu/k8s.io/bbb222/configuration.toml exec bbb222\n"),
        "{said}"
    );
    assert!(said.contains("GONE:         nothing runs for it"), "{said}");
    // A prefix must name one sandbox.
    let out = kata_gpu(&sim, &["sandboxes", "zzz"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "kata-gpu: no sandbox zzz on this node; kata-gpu --host-root {} sandboxes lists them\n",
            sim.root().display()
        )
    );
    sandbox(&sim, "aaa222", "default/other", "0000:3a:00.0", false);
    let out = kata_gpu(&sim, &["sandboxes", "aaa"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "kata-gpu: aaa names 2 sandboxes (aaa111, aaa222); give more of the id\n"
    );
}

#[test]
fn doctor_reports_a_leaked_gpu_with_its_fix() {
    let sim = node();
    let out = Command::new(env!("CARGO_BIN_EXE_kata-gpu"))
        .args([
            "doctor",
            "--containerd",
            "/opt/containerd/bin/containerd",
            "--host-root",
        ])
        .arg(sim.root())
        .output()
        .expect("doctor");
    let said = text(&out).replace(&sim.root().display().to_string(), "$ROOT");
    let line = said
        .lines()
        .find(|l| l.contains("sandbox bbb222"))
        .unwrap_or_else(|| panic!("no leak finding in\n{said}"));
    assert!(line.starts_with("WARN"), "{line}");
    assert!(
        line.contains("pod default/old (sandbox bbb222) no longer runs (no proxy, Kata shim or QEMU of its own): it still claims nvidia.com/pgpu=1 (0000:2a:00.0), which no new pod gets until its state goes"),
        "{line}"
    );
    assert!(
        said.contains("check that nothing of it runs (kata-gpu --host-root $ROOT sandboxes bbb222), then remove its state: rm -r $ROOT/run/kata-gpu/k8s.io/bbb222"),
        "{said}"
    );
    assert!(!said.contains("sandbox aaa111"), "{said}");
}

/// On this machine: a sandbox the real shim started (runc's shim downstream) is running,
/// found by its proxy's command line in `/proc`; once deleted, it is gone from the list.
#[test]
fn a_sandbox_the_shim_started_is_listed_running_until_deleted() {
    let rig = Rig::new(Downstream::Runc, "device_source = \"annotations\"\n");
    let id = Rig::id("listed");
    let o = rig.run(
        &["-d", "--annotation", "cdi.k8s.io/gpu=nvidia.com/pgpu=0"],
        &id,
        &["/bin/busybox", "sleep", "300"],
    );
    assert!(o.status.success(), "{}\n{}", err(&o), rig.ctrd.log());
    let list = || -> Output {
        Command::new(env!("CARGO_BIN_EXE_kata-gpu"))
            .args(["sandboxes", "--json"])
            .env("KATA_GPU_SHIM_CONFIG", rig.work.path().join("shim.toml"))
            .output()
            .expect("kata-gpu sandboxes")
    };
    let out = list();
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let mine: Vec<&serde_json::Value> = json["sandboxes"]
        .as_array()
        .expect("sandboxes")
        .iter()
        .filter(|s| s["id"] == id.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{json}");
    assert!(mine[0]["proxy_pid"].as_u64().is_some(), "{json}");
    assert_eq!(mine[0]["namespace"], "default");
    assert_eq!(mine[0]["devices"][0]["bdf"], "0000:41:00.0");
    rig.kill_and_remove(&id, "SIGKILL");
    let json: serde_json::Value = serde_json::from_slice(&list().stdout).expect("json");
    assert!(
        !json["sandboxes"]
            .as_array()
            .expect("sandboxes")
            .iter()
            .any(|s| s["id"] == id.as_str()),
        "{json}"
    );
    rig.assert_clean();
}
