//! The README's "Deploy on a cluster" and "Remove it from a cluster", every command of it,
//! in order (read from the README: the test fails when its commands change under it). There
//! is no cluster here: each line runs in bash as written, with `./target/release/kata-gpu`
//! the test build, `make image` on debug binaries, and on the PATH a `kubectl` that records
//! what it was asked and what it was given to read; the test then checks each request
//! against the objects the README applied (the label a DaemonSet selects, the namespace and
//! names it deletes, the image and the path `kubectl debug` runs). `vfio unbind` runs on a
//! simulated H100 host, in this process, where the simulated kernel moves devices.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use kata_gpu_manifests::deploy_check::problems;
use kata_gpu_tests::readme::{self, Walkthrough};
use kata_gpu_tests::{SimHost, VfioMode};
use serde_json::Value;

const GPU: &str = "0000:41:00.0";

/// A `kubectl` that answers nothing and records each call: `N.args` (one word a line) and
/// `N.in`, what `-f` gave it to read (stdin for `-`).
const KUBECTL: &str = r#"#!/bin/sh
n=$(ls "$KUBECTL_LOG" | grep -c '\.args$')
printf '%s\n' "$@" > "$KUBECTL_LOG/$n.args"
prev=
for a in "$@"; do
  if [ "$prev" = -f ]; then
    if [ "$a" = - ]; then cat > "$KUBECTL_LOG/$n.in"; else cat "$a" > "$KUBECTL_LOG/$n.in"; fi
  fi
  prev=$a
done
"#;

/// Where each README line runs: `./target/release/kata-gpu` is the test build there, and
/// `kubectl` the recorder.
struct Shell {
    dir: tempfile::TempDir,
    calls: usize,
}

/// One recorded `kubectl` call.
struct Call {
    args: Vec<String>,
    input: Option<String>,
}

impl Shell {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["bin", "log", "target/release"] {
            fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        let kubectl = dir.path().join("bin/kubectl");
        fs::write(&kubectl, KUBECTL).expect("kubectl");
        fs::set_permissions(&kubectl, fs::Permissions::from_mode(0o755)).expect("chmod");
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_kata-gpu"),
            dir.path().join("target/release/kata-gpu"),
        )
        .expect("link kata-gpu");
        Shell { dir, calls: 0 }
    }

    /// Runs `line` in bash (pipefail), and returns the `kubectl` calls it made.
    #[track_caller]
    fn run(&mut self, line: &str) -> Vec<Call> {
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("bash")
            .args(["-o", "pipefail", "-c", line])
            .current_dir(self.dir.path())
            .env("PATH", path)
            .env("KUBECTL_LOG", self.dir.path().join("log"))
            .output()
            .expect("run bash");
        assert!(out.status.success(), "{line}: {}", common::text(&out));
        let log = self.dir.path().join("log");
        let mut calls = Vec::new();
        while log.join(format!("{}.args", self.calls)).exists() {
            let read = |ext: &str| fs::read_to_string(log.join(format!("{}.{ext}", self.calls)));
            calls.push(Call {
                args: read("args")
                    .expect("args")
                    .lines()
                    .map(str::to_owned)
                    .collect(),
                input: read("in").ok(),
            });
            self.calls += 1;
        }
        calls
    }
}

/// The one `kubectl` call a line made.
#[track_caller]
fn one(mut calls: Vec<Call>) -> Call {
    assert_eq!(
        calls.len(),
        1,
        "{:?}",
        calls.iter().map(|c| &c.args).collect::<Vec<_>>()
    );
    calls.remove(0)
}

fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("a YAML document"))
        .collect()
}

/// Each object as `kind namespace/name`.
fn names(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| {
            let m = &o["metadata"];
            format!(
                "{} {}/{}",
                o["kind"].as_str().unwrap_or_default(),
                m["namespace"].as_str().unwrap_or_default(),
                m["name"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// The paths in the image's layers.
fn image_paths(tar: &Path) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let mut outer = tar::Archive::new(fs::File::open(tar).expect("image tar"));
    for blob in outer.entries().expect("entries") {
        let mut blob = blob.expect("entry");
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut blob, &mut bytes).expect("read");
        let mut layer = Vec::new();
        let mut gz = flate2::read::GzDecoder::new(&bytes[..]);
        if std::io::Read::read_to_end(&mut gz, &mut layer).is_err() {
            continue;
        }
        for f in tar::Archive::new(&layer[..]).entries().expect("layer") {
            let f = f.expect("layer entry");
            paths.insert(format!("/{}", f.path().expect("path").display()));
        }
    }
    paths
}

/// The image config's revision label.
fn revision_label(tar: &Path) -> String {
    let mut outer = tar::Archive::new(fs::File::open(tar).expect("image tar"));
    for blob in outer.entries().expect("entries") {
        let mut blob = blob.expect("entry");
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut blob, &mut bytes).expect("read");
        if let Ok(json) = serde_json::from_slice::<Value>(&bytes) {
            if let Some(label) =
                json["config"]["Labels"]["org.opencontainers.image.revision"].as_str()
            {
                return label.to_owned();
            }
        }
    }
    panic!("no image config with a revision label");
}

/// What `git` says in the workspace.
fn git(args: &[&str]) -> std::process::Output {
    Command::new("git")
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("run git")
}

/// The revision `make image` should label the image with now: the commit, `-dirty` when
/// tracked files differ from it.
fn expected_revision() -> String {
    let head = String::from_utf8_lossy(&git(&["rev-parse", "HEAD"]).stdout)
        .trim()
        .to_owned();
    if git(&["diff", "--quiet", "HEAD", "--"]).status.success() {
        head
    } else {
        format!("{head}-dirty")
    }
}

/// `vfio …`, the words after `kata-gpu` as the README gives them, `--host-root /host` (the
/// node's `/` in a debug pod) being the simulated root.
fn vfio(sim: &SimHost, words: &[String]) {
    let args: Vec<&str> = words
        .iter()
        .map(String::as_str)
        .filter(|w| !["--host-root", "/host"].contains(w))
        .collect();
    assert_eq!(args[..2], ["vfio", "unbind"], "{words:?}");
    common::vfio(
        sim,
        &args,
        &format!("{GPU} 10de:2331 group 40: vfio-pci → nvidia"),
    );
    assert_eq!(sim.driver(GPU).as_deref(), Some("nvidia"));
}

/// What the node's init container does: the GPU and its group to vfio-pci.
fn bind(sim: &SimHost) {
    common::vfio(
        sim,
        &["vfio", "bind"],
        &format!("{GPU} 10de:2331 group 40: nvidia → vfio-pci"),
    );
    assert_eq!(sim.driver(GPU).as_deref(), Some("vfio-pci"));
}

#[test]
fn a_cluster_from_make_image_to_removal_as_the_readme_says() {
    let mut shell = Shell::new();
    let tar = shell.dir.path().join("kata-gpu-image.tar");

    let mut readme = Walkthrough::of("## Deploy on a cluster");
    // make image, on debug binaries, into a file of the test's.
    let line = readme.next("make image IMAGE=registry.example/kata-gpu:v1");
    let before = expected_revision();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{line} --no-print-directory IMAGE_PROFILE=dev IMAGE_TAR={}",
            tar.display()
        ))
        .current_dir(workspace())
        .env(
            "CARGO",
            std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
        )
        .output()
        .expect("make image");
    assert!(out.status.success(), "{}", common::text(&out));
    let image = readme::words(&line)[2]
        .strip_prefix("IMAGE=")
        .expect("IMAGE=")
        .to_owned();
    // Labelled with the commit, and `-dirty` when the tree differs from it (as it was
    // before or after the build: someone may edit the tree meanwhile).
    let label = revision_label(&tar);
    assert!([before, expected_revision()].contains(&label), "{label}");
    let in_image = image_paths(&tar);
    assert!(in_image.contains("/usr/local/bin/kata-gpu"), "{in_image:?}");

    // deploy | kubectl apply -f -: the checked objects, running the image just built.
    let line = readme.next(&format!(
        "./target/release/kata-gpu deploy --image {image} --profile snp --max-unavailable 1 | kubectl apply -f -"
    ));
    let apply = one(shell.run(&line));
    assert_eq!(apply.args, ["apply", "-f", "-"]);
    let applied = objects(&apply.input.expect("the objects"));
    assert_eq!(problems(&applied), Vec::<String>::new());
    let daemonsets: Vec<&Value> = applied
        .iter()
        .filter(|o| o["kind"] == "DaemonSet")
        .collect();
    assert_eq!(daemonsets.len(), 2, "{:?}", names(&applied));
    for ds in &daemonsets {
        assert_eq!(
            ds["spec"]["template"]["spec"]["containers"][0]["image"],
            image.as_str()
        );
    }

    // Staged: the label each batch of nodes gets is the one both DaemonSets select.
    let line = readme.next(
        "kubectl label node gpu-node-1 gpu-node-2 nvidia.com/gpu.workload.config=vm-passthrough",
    );
    let label = one(shell.run(&line));
    let (key, value) = label
        .args
        .last()
        .and_then(|l| l.split_once('='))
        .expect("K=V");
    for ds in &daemonsets {
        assert_eq!(
            ds["spec"]["template"]["spec"]["nodeSelector"][key], value,
            "{ds}"
        );
    }
    // Watching the agents: the namespace and label select the node DaemonSet's pods.
    let line = readme
        .next("kubectl -n kata-gpu get pods -l app.kubernetes.io/name=kata-gpu-node -o wide -w");
    let get = one(shell.run(&line));
    let selector = get
        .args
        .iter()
        .skip_while(|a| *a != "-l")
        .nth(1)
        .expect("-l");
    let (key, value) = selector.split_once('=').expect("K=V");
    assert!(
        daemonsets
            .iter()
            .any(|ds| ds["metadata"]["namespace"] == get.args[1]
                && ds["spec"]["template"]["metadata"]["labels"][key] == value
                && ds["metadata"]["name"] == value),
        "{:?}",
        get.args
    );
    readme.done();

    let mut readme = Walkthrough::of("### Remove it from a cluster");
    let line = readme
        .next("kubectl -n kata-gpu delete daemonset kata-gpu-node kata-gpu-device-plugin --wait");
    let delete = one(shell.run(&line));
    for name in &delete.args[4..6] {
        assert!(
            names(&applied).contains(&format!("DaemonSet {}/{name}", delete.args[1])),
            "{name} is not a DaemonSet the README applied: {:?}",
            names(&applied)
        );
    }
    // "its grace period is 300 s": the agent's uninstall has time to finish.
    let node = daemonsets
        .iter()
        .find(|ds| ds["metadata"]["name"] == "kata-gpu-node")
        .expect("the node DaemonSet");
    assert_eq!(
        node["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        300
    );
    // The rest: what deploy printed for the same image, so all that apply created.
    let line = readme.next(&format!(
        "kubectl delete -f <(./target/release/kata-gpu deploy --image {image} --profile snp)"
    ));
    let delete = one(shell.run(&line));
    assert_eq!(delete.args[..2], ["delete", "-f"]);
    assert_eq!(
        names(&objects(&delete.input.expect("objects"))),
        names(&applied)
    );

    // The GPUs back to their driver: on the node, then through a debug pod of the image.
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    common::reboot(&sim, GPU);
    bind(&sim);
    let line = readme.next("kata-gpu vfio unbind");
    vfio(&sim, &readme::words(&line)[1..]);
    bind(&sim);
    let line = readme.next(&format!(
        "kubectl debug node/gpu-node-1 -it --profile=sysadmin --image={image} -- /usr/local/bin/kata-gpu vfio unbind --host-root /host"
    ));
    let debug = one(shell.run(&line));
    assert!(
        debug.args.contains(&format!("--image={image}")),
        "{:?}",
        debug.args
    );
    let command: Vec<String> = debug
        .args
        .iter()
        .skip_while(|a| *a != "--")
        .skip(1)
        .cloned()
        .collect();
    assert!(
        in_image.contains(&command[0]),
        "{} is not in the image",
        command[0]
    );
    vfio(&sim, &command[1..]);
    readme.done();
}
