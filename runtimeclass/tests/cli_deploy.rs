//! `kata-gpu deploy` as the README runs it: the objects of the library for the flags given
//! (checked and schema-validated in k8s-manifests' tests), JSON as a v1 List, and bad
//! input refused in one line with nothing written.

use std::process::{Command, Output};

use kata_gpu_manifests::deploy::{DeployOptions, Deployment};
use kata_gpu_manifests::deploy_check::problems;
use kata_gpu_plan::Profile;
use kata_gpu_tests::readme_command;

/// `kata-gpu ARGS…` (the first is `deploy`, as in the README's line).
fn kata_gpu(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_kata-gpu"))
        .args(args)
        .output();
    out.expect("run kata-gpu")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The README's `kata-gpu deploy` line: it deploys the image the README's `make image`
/// line builds, and its objects pass the deployment's check.
#[test]
fn the_readmes_deploy_line_deploys_the_readmes_image() {
    let line = readme_command("./target/release/kata-gpu deploy");
    let out = kata_gpu(&line[1..].iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{line:?}: {}", stderr(&out));
    let objects: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_slice(&out.stdout)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("a YAML document"))
        .collect();
    assert_eq!(problems(&objects), Vec::<String>::new());
    let built = readme_command("make image")
        .iter()
        .find_map(|w| w.strip_prefix("IMAGE=").map(str::to_owned))
        .expect("IMAGE= in the make image line");
    for ds in objects.iter().filter(|o| o["kind"] == "DaemonSet") {
        assert_eq!(
            ds["spec"]["template"]["spec"]["containers"][0]["image"],
            built.as_str()
        );
    }
}

#[test]
fn deploy_prints_the_checked_objects_for_its_flags() {
    let out = kata_gpu(&[
        "deploy",
        "--image",
        "registry.example/kata-gpu:v1",
        "--profile",
        "snp",
        "--profile",
        "tdx",
        "--namespace",
        "gpu-system",
        "--max-unavailable",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The first rollout is not paced by maxUnavailable: the advice to stage it, one line.
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("kata-gpu deploy: note: maxUnavailable paces only updates: ")
            && stderr(&out).contains(
                "label the nodes in batches (kubectl label node N nvidia.com/gpu.workload.config=vm-passthrough)"
            ),
        "{}",
        stderr(&out)
    );
    let want = Deployment::new(&DeployOptions {
        image: "registry.example/kata-gpu:v1".into(),
        profiles: vec![Profile::Snp, Profile::Tdx],
        namespace: "gpu-system".into(),
        max_unavailable: 2,
        ..DeployOptions::default()
    });
    assert_eq!(stdout(&out), want.to_yaml().expect("yaml"));

    let json = kata_gpu(&["deploy", "--json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let list: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(list["kind"], "List");
    let kinds: Vec<_> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "DaemonSet",
            "DaemonSet",
            "RuntimeClass"
        ]
    );
}

#[test]
fn bad_flags_are_one_line_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("deploy.yaml");
    let f = file.display().to_string();
    let out = kata_gpu(&["deploy", "--namespace", "GPU_System", "--output", &f]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "kata-gpu: --namespace \"GPU_System\": a namespace is 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit\n"
    );
    let out = kata_gpu(&["deploy", "--image", "a b", "--output", &f]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("--image \"a b\""), "{}", stderr(&out));
    let out = kata_gpu(&["deploy", "--overhead-memory", "2GB", "--output", &f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("\"2GB\" is not a Kubernetes quantity"),
        "{}",
        stderr(&out)
    );
    for bad in ["0", "-1", "x"] {
        let flag = format!("--max-unavailable={bad}");
        let out = kata_gpu(&["deploy", &flag, "--output", &f]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("--max-unavailable"),
            "{}",
            stderr(&out)
        );
    }
    assert!(!file.exists(), "a refused deploy wrote {f}");
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);

    let out = kata_gpu(&["deploy", "--output", &f]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&file).expect("written"),
        stdout(&kata_gpu(&["deploy"]))
    );
}

#[test]
fn an_artifact_set_reaches_its_profiles_agent_only() {
    let out = kata_gpu(&[
        "deploy",
        "--json",
        "--profile",
        "snp",
        "--profile",
        "tdx",
        "--artifacts",
        "snp=/opt/kata-gpu/sets/snp.tar",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let agents = &list["items"][2]["spec"]["template"]["spec"]["containers"];
    let args = |i: usize| -> Vec<String> {
        serde_json::from_value(agents[i]["args"].clone()).expect("args")
    };
    assert_eq!(agents[0]["name"], "agent-snp");
    assert_eq!(
        args(0)[args(0).len() - 2..],
        ["--artifacts", "/host/opt/kata-gpu/sets/snp.tar"]
    );
    assert!(
        !args(1).contains(&"--artifacts".to_owned()),
        "{:?}",
        args(1)
    );
}

#[test]
fn a_bad_artifact_set_is_one_line_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("deploy.yaml").display().to_string();
    for (given, said) in [
        (
            "tdx=/x.tar",
            "--artifacts \"tdx=/x.tar\": tdx is not deployed (add --profile tdx)",
        ),
        (
            "sets/snp.tar",
            "--artifacts \"sets/snp.tar\": write PROFILE=PATH, e.g. snp=/opt/kata-gpu/sets/snp.tar",
        ),
        (
            "sev=/x.tar",
            "--artifacts \"sev=/x.tar\": \"sev\" is not a profile (snp, tdx, gpu)",
        ),
        (
            "snp=x.tar",
            "--artifacts \"snp=x.tar\": the path is the node's, absolute and without spaces",
        ),
    ] {
        let out = kata_gpu(&["deploy", "--artifacts", given, "--output", &f]);
        assert_eq!(out.status.code(), Some(1), "{given}");
        assert_eq!(stderr(&out), format!("kata-gpu: {said}\n"));
    }
    let out = kata_gpu(&[
        "deploy",
        "--artifacts",
        "snp=/a.tar",
        "--artifacts",
        "snp=/b.tar",
        "--output",
        &f,
    ]);
    assert_eq!(
        stderr(&out),
        "kata-gpu: --artifacts \"snp=/b.tar\": snp has a set already\n"
    );
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}

/// The host as the device plugin's container sees it under `/host`: only what the
/// DaemonSet mounts there (kubelet's directory aside), copied from `sim` with its links.
fn plugin_view(sim: &kata_gpu_tests::SimHost) -> tempfile::TempDir {
    use kata_gpu_manifests::deploy::{device_plugin_daemonset, DEVICE_PLUGINS, HOST_MOUNT};
    let ds =
        serde_json::to_value(device_plugin_daemonset(&DeployOptions::default())).expect("json");
    let pod = &ds["spec"]["template"]["spec"];
    let view = tempfile::tempdir().expect("tempdir");
    for m in pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("mounts")
    {
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == m["name"])
            .expect("volume");
        let host = volume["hostPath"]["path"].as_str().expect("hostPath");
        // A path the simulated host does not have (it lays out no /usr/share, so the plugin
        // names by its built-in table) is an empty mount on the node too.
        if host == DEVICE_PLUGINS || !sim.root().join(host.trim_start_matches('/')).exists() {
            continue;
        }
        let at = m["mountPath"].as_str().expect("mountPath");
        let at = at.strip_prefix(HOST_MOUNT).expect("under /host");
        let dst = view.path().join(at.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
        let out = Command::new("cp")
            .arg("-a")
            .arg(sim.root().join(host.trim_start_matches('/')))
            .arg(&dst)
            .output()
            .expect("cp");
        assert!(out.status.success(), "{host}: {}", stderr(&out));
    }
    view
}

/// What the plugin reads (its inventory and every device's health) is all inside the
/// DaemonSet's few read-only mounts: through them alone it sees what it sees on the
/// whole host, on a host with iommufd nodes and on one with only legacy groups.
#[test]
fn the_device_plugin_sees_its_devices_through_only_the_daemonsets_mounts() {
    use kata_gpu_device_plugin::{health, inventory, Naming};
    use kata_gpu_plan::host::Host;
    use kata_gpu_tests::{SimHost, VfioMode};
    for sim in [
        SimHost::hgx_8x_h100(),
        SimHost::h100_pcie(VfioMode::Iommufd),
        SimHost::h100_pcie(VfioMode::Legacy),
    ] {
        // The default naming reads pci.ids under the root, which the view must carry too.
        let whole = inventory(&Host::new(sim.root()), Naming::default()).expect("inventory");
        assert!(whole.iter().any(|r| !r.devices.is_empty()), "{whole:?}");
        let view = plugin_view(&sim);
        let host = Host::new(view.path());
        assert_eq!(
            inventory(&host, Naming::default()).expect("inventory in the view"),
            whole
        );
        for r in &whole {
            for d in &r.devices {
                assert_eq!(health::problem(&host, d), None, "{}", d.id);
            }
        }
    }
}

/// `--kata-runtime rs`: every profile's agent installs with runtime-rs behind the proxy;
/// the default (Go) leaves the agents' arguments as they were.
#[test]
fn deploy_passes_the_kata_runtime_to_every_agent() {
    let agents = |extra: &[&str]| -> Vec<Vec<String>> {
        let out = kata_gpu(&[&["deploy", "--profile", "snp", "--profile", "tdx"], extra].concat());
        assert!(out.status.success(), "{}", stderr(&out));
        let objects: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_slice(&out.stdout)
            .map(|doc| serde::Deserialize::deserialize(doc).expect("a YAML document"))
            .collect();
        assert_eq!(problems(&objects), Vec::<String>::new());
        let node = objects
            .iter()
            .find(|o| o["kind"] == "DaemonSet" && o["metadata"]["name"] == "kata-gpu-node")
            .expect("the node DaemonSet");
        node["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .map(|c| {
                c["args"]
                    .as_array()
                    .expect("args")
                    .iter()
                    .map(|a| a.as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .collect()
    };
    let rs = agents(&["--kata-runtime", "rs"]);
    assert_eq!(rs.len(), 2);
    for args in &rs {
        assert!(
            args.windows(2).any(|w| w == ["--kata-runtime", "rs"]),
            "{args:?}"
        );
    }
    for args in agents(&[]) {
        assert!(!args.contains(&"--kata-runtime".to_owned()), "{args:?}");
    }
    let out = kata_gpu(&["deploy", "--kata-runtime", "java"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
