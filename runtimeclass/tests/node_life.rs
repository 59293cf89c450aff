//! The README's "Run it on a node", every command of it, in order (read from the README:
//! the test fails when the README's commands change under it), on a simulated H100
//! host whose containerd is a private one (Debian's 1.6, CRI on) reading the host's
//! `/etc/containerd/config.toml`: install, reboot, upgrade, logs, remove. Where the README
//! says `--restart` (systemctl on a real node), the test restarts that containerd itself,
//! as `install` tells an admin to under `--host-root`.

mod common;

use std::fs;
use std::process::Output;

use common::{exec_starts, kata_gpu, make, text, tree};
use kata_gpu_tests::readme::{self, Walkthrough};
use kata_gpu_tests::{PrivateContainerd, SimHost, VfioMode};

const HANDLER: &str = "kata-qemu-nvidia-gpu-snp";
const GPU: &str = "0000:41:00.0";

#[track_caller]
fn ok(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
    text(out)
}

/// Every file and link under the root (directories left out), `sys`, `dev` and `proc`
/// excepted.
fn files(sim: &SimHost) -> Vec<String> {
    let root = sim.root().display().to_string();
    tree(sim.root())
        .into_iter()
        .filter(|l| !l.ends_with('/'))
        .map(|l| l.replacen(&root, "", 1))
        .filter(|l| {
            !["/sys/", "/dev/", "/proc/"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect()
}

/// A README line's `kata-gpu …` words run against the simulated host, `SRC`-like
/// placeholders replaced (`subst`) and `--restart` left out: the test restarts the private
/// containerd itself where the README says `--restart`.
fn run_line(sim: &SimHost, line: &str, subst: &[(&str, &str)]) -> Output {
    let words = readme::words(line);
    assert_eq!(words[0], "kata-gpu", "{line}");
    let args: Vec<&str> = words[1..]
        .iter()
        .filter(|w| *w != "--restart")
        .map(|w| {
            subst
                .iter()
                .find(|(from, _)| w == from)
                .map_or(w.as_str(), |(_, to)| to)
        })
        .collect();
    kata_gpu(sim, &args)
}

/// `make TARGET …` as a README line says it, onto the simulated host.
fn make_line(sim: &SimHost, line: &str, bin_dir: &std::path::Path) -> Output {
    let words = readme::words(line);
    assert_eq!(words[..2], ["make".to_owned(), words[1].clone()], "{line}");
    assert_eq!(words[2..], ["PREFIX=/usr/local".to_owned()], "{line}");
    make(&words[1], sim, bin_dir)
}

/// The README's manifest path under the simulated root: what `kubectl apply -f` and
/// `kubectl delete -f` read.
fn manifest(sim: &SimHost, line: &str) -> String {
    let path = line.rsplit(' ').next().expect("a path");
    fs::read_to_string(sim.path(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{line}: {e}"))
}

#[test]
fn a_node_from_make_install_to_removal_as_the_readme_says() {
    let mut readme = Walkthrough::of("## Run it on a node");
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let config = sim.path("etc/containerd/config.toml");
    let mut ctrd = PrivateContainerd::start_cri_reading(
        &config,
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_apparmor = true\n  restrict_oom_score_adj = true\n",
        &[],
    );
    let original = fs::read_to_string(&config).expect("config");
    // The socket as the host's config names it, inside the root.
    let sock = sim.path(ctrd.address().to_string_lossy().trim_start_matches('/'));
    fs::create_dir_all(sock.parent().expect("parent")).expect("mkdir");
    std::os::unix::fs::symlink(ctrd.address(), &sock).expect("link the socket");
    // Kata's shim, where the shim's settings name it by default (a stand-in: its presence
    // is what is checked; Kata itself is tested in tests/tests/shim_kata.rs).
    let kata = sim.path("opt/kata/bin/containerd-shim-kata-v2");
    fs::create_dir_all(kata.parent().expect("parent")).expect("mkdir");
    fs::write(&kata, "#!/bin/sh\n").expect("kata");
    let before = files(&sim);
    let src = tempfile::tempdir().expect("tempdir");
    let set = common::artifact_set(&src.path().join("v1"), "kernel 1");
    let bin_dir = common::built();

    // ## Install
    let line = readme.next("make install PREFIX=/usr/local");
    let said = ok(&make_line(&sim, &line, &bin_dir));
    assert!(said.contains("installed"), "{said}");
    let line = readme.next("kata-gpu vfio bind");
    let said = ok(&run_line(&sim, &line, &[]));
    assert!(
        said.contains("0 function(s) bound to vfio-pci, 2 unchanged") || said.contains("unchanged"),
        "{said}"
    );
    let line = readme.next("kata-gpu install --artifacts SRC --restart");
    let said = ok(&run_line(&sim, &line, &[("SRC", &set)]));
    assert!(said.contains("restart the containerd that reads"), "{said}");
    // Registered in the file, not yet served: the running containerd is asked, not the file.
    let out = kata_gpu(&sim, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (
            status["registered"].clone(),
            status["loaded"].clone(),
            status["restart_pending"].clone()
        ),
        (true.into(), false.into(), true.into()),
        "{status}"
    );
    ctrd.restart(); // what --restart does
    let line = readme.next("kata-gpu status && kata-gpu doctor");
    let (status, doctor) = line.split_once(" && ").expect("two commands");
    let said = ok(&run_line(&sim, status, &[]));
    assert!(said.contains("loaded:          yes"), "{said}");
    assert!(said.contains(&format!("serves {HANDLER}")), "{said}");
    let said = ok(&run_line(&sim, doctor, &[]));
    assert!(said.contains(&format!("{HANDLER}: 0 failed")), "{said}");
    // kubectl apply: the file holds the RuntimeClass alone (no sample pod, no NFD rule).
    let line = readme.next(&format!(
        "kubectl apply -f /var/lib/kata-gpu/manifests/{HANDLER}.yaml"
    ));
    let manifests = manifest(&sim, &line);
    assert_eq!(manifests.matches("kind: ").count(), 1, "{manifests}");
    assert!(manifests.contains("kind: RuntimeClass"), "{manifests}");
    // kubectl label: the labels doctor prints carry the one the RuntimeClass selects, and
    // nothing doctor did not check (no GPU CC mode).
    let line = readme.next("kubectl label node \"$NODE\" $(kata-gpu doctor --labels)");
    let inner = line
        .split_once("$(")
        .and_then(|(_, r)| r.strip_suffix(')'))
        .expect("$(…)");
    let labels = ok(&run_line(&sim, inner, &[]));
    let selector = "feature.node.kubernetes.io/kata-gpu.snp-ready";
    assert!(
        labels.lines().any(|l| l == format!("{selector}=true")),
        "{labels}"
    );
    assert!(
        manifests.contains(&format!("nodeSelector:\n    {selector}: 'true'")),
        "{manifests}"
    );
    assert!(!labels.contains("cc.ready.state"), "{labels}");

    // ## Reboot (nothing to run: the boot unit does it)
    let unit =
        fs::read_to_string(sim.path(&format!("etc/systemd/system/kata-gpu-{HANDLER}.service")))
            .expect("unit");
    common::reboot(&sim, GPU);
    common::run_unit(&sim, &exec_starts(&unit), GPU);
    ctrd.restart();
    let said = ok(&kata_gpu(&sim, &["doctor"]));
    assert!(said.contains(&format!("{HANDLER}: 0 failed")), "{said}");

    // ## Upgrade: the binaries, then a new artifact set; the old set stays for rollback.
    let line = readme.next("make install PREFIX=/usr/local");
    ok(&make_line(&sim, &line, &bin_dir));
    let set2 = common::artifact_set(&src.path().join("v2"), "kernel 2");
    let line = readme.next("kata-gpu install --artifacts NEW-SRC --restart");
    let said = ok(&run_line(&sim, &line, &[("NEW-SRC", &set2)]));
    assert!(said.contains("artifacts:    installed sha256-"), "{said}");
    let line = readme.next("kata-gpu artifacts list");
    let said = ok(&run_line(&sim, &line, &[]));
    assert_eq!(said.matches("sha256-").count(), 2, "{said}");
    let line = readme.next("kata-gpu status");
    ok(&run_line(&sim, &line, &[]));

    // ## Logs and bug reports: no pod runs here, so no sandbox, and the GPU is free.
    let line = readme.next("kata-gpu sandboxes");
    let said = ok(&run_line(&sim, &line, &[]));
    assert!(said.starts_with("no GPU sandbox on this node\n"), "{said}");
    assert!(
        said.contains(&format!(
            "gpu {GPU} 10de:2331 (nvidia.com/pgpu=0, NUMA 0): free"
        )),
        "{said}"
    );
    let line = readme.next("kata-gpu sandboxes <sandbox-id>");
    let out = run_line(&sim, &line, &[("<sandbox-id>", "no-such-sandbox")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no sandbox no-such-sandbox on this node; kata-gpu --host-root "),
        "{}",
        text(&out)
    );
    let report = src.path().join("report");
    let line = readme.next("kata-gpu report --output /tmp/kata-gpu-report");
    let said = ok(&run_line(
        &sim,
        &line,
        &[("/tmp/kata-gpu-report", &report.display().to_string())],
    ));
    for f in [
        format!("var/lib/kata-gpu/state/{HANDLER}.json"),
        "etc/containerd/config.toml".to_owned(),
        "var/run/cdi/nvidia.com-pgpu.yaml".to_owned(),
        format!("etc/systemd/system/kata-gpu-{HANDLER}.service"),
        "status-snp.json".to_owned(),
        "doctor-snp.json".to_owned(),
    ] {
        assert!(report.join(&f).is_file(), "{f} not in the report: {said}");
    }

    // ## Remove: drain (no cluster here: nothing of the node's to check), delete the
    // RuntimeClass (the file the install wrote, still there), unbind, uninstall, make
    // uninstall.
    readme.next("kubectl drain \"$NODE\" --ignore-daemonsets");
    let line = readme.next(&format!(
        "kubectl delete -f /var/lib/kata-gpu/manifests/{HANDLER}.yaml"
    ));
    assert_eq!(manifest(&sim, &line), manifests);
    let line = readme.next("kata-gpu vfio unbind");
    // In this process, where the simulated kernel moves devices (see common::vfio).
    common::vfio(
        &sim,
        &readme::words(&line)[1..]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &format!("{GPU} 10de:2331 group 40: vfio-pci → nvidia"),
    );
    let line = readme.next("kata-gpu uninstall --purge --restart");
    let said = ok(&run_line(&sim, &line, &[]));
    assert!(
        said.contains(&format!(
            "vfio:         no function bound by kata-gpu --host-root {} vfio bind",
            sim.root().display()
        )),
        "{said}"
    );
    ctrd.restart();
    let out = kata_gpu(&sim, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (
            status["registered"].clone(),
            status["loaded"].clone(),
            status["restart_pending"].clone()
        ),
        (false.into(), false.into(), false.into()),
        "{status}"
    );
    // "Without --restart, restart containerd yourself and run kata-gpu uninstall once
    // more: it then forgets the restart it owed."
    let said = ok(&kata_gpu(&sim, &["uninstall"]));
    assert!(
        said.contains(&format!("no longer serves {HANDLER}: no restart needed")),
        "{said}"
    );
    let line = readme.next("make uninstall PREFIX=/usr/local");
    ok(&make_line(&sim, &line, &bin_dir));
    readme.done();
    assert_eq!(fs::read_to_string(&config).expect("config"), original);
    // Nothing of kata-gpu's is left but the lock file in /run/lock (a tmpfs).
    let left: Vec<String> = files(&sim)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    assert_eq!(left, ["/run/lock/kata-gpu.lock 0"], "{said}");
}

#[test]
fn report_refuses_a_directory_that_exists_and_writes_nothing_into_it() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("mine"), "the admin's").expect("write");
    let out = kata_gpu(
        &sim,
        &["report", "--output", &dir.path().display().to_string()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "kata-gpu: {} exists: name a new directory for the report; nothing was written\n",
            dir.path().display()
        )
    );
    assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
}
