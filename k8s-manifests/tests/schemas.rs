//! The emitted objects against the Kubernetes schemas: RuntimeClass and Pod with
//! `kubernetes-validate --strict` (PyPI, installed by `make deps`); the NodeFeatureRule,
//! a CRD that tool has no schema for, with Python's `jsonschema` against the schema in
//! tests/data, transcribed from NFD's CRD. A missing tool fails the test: it never skips.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kata_gpu_manifests::{Manifests, Options};
use kata_gpu_plan::Profile;

fn validator() -> Command {
    let probe = Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "kubernetes-validate is not installed (python3 -m pip install kubernetes-validate; \
         `make deps` does it): {probe:?}"
    );
    let mut c = Command::new("python3");
    c.args(["-m", "kubernetes_validate", "--strict"]);
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, body).expect("write yaml");
    p
}

#[test]
fn runtime_class_and_pod_pass_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().expect("tempdir");
    for profile in Profile::ALL {
        let m = Manifests::new(profile, &Options::default());
        for (kind, yaml) in [
            ("runtimeclass", serde_yaml_ng::to_string(&m.runtime_class)),
            ("pod", serde_yaml_ng::to_string(&m.sample_pod)),
        ] {
            let file = write(
                dir.path(),
                &format!("{profile}-{kind}.yaml"),
                &yaml.expect("yaml"),
            );
            let out = validator()
                .arg(&file)
                .output()
                .expect("run kubernetes-validate");
            let said = text(&out);
            assert!(out.status.success(), "{profile} {kind}: {said}");
            assert!(said.contains("passed"), "{profile} {kind}: {said}");
            assert!(!said.contains("WARN"), "{profile} {kind}: {said}");
        }
    }
}

#[test]
fn the_validator_rejects_a_broken_runtime_class() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = Manifests::new(Profile::Snp, &Options::default());
    let mut v = serde_json::to_value(&m.runtime_class).expect("json");
    v["overhead"]["podFixedd"] = v["overhead"]["podFixed"].clone();
    let file = write(
        dir.path(),
        "bad.yaml",
        &serde_yaml_ng::to_string(&v).expect("yaml"),
    );
    let out = validator().arg(&file).output().expect("run");
    assert!(!out.status.success(), "accepted: {}", text(&out));
}

const NFR_CHECK: &str = r#"
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
for doc in yaml.safe_load_all(open(sys.argv[2])):
    if doc.get("kind") == "NodeFeatureRule":
        jsonschema.Draft202012Validator(schema).validate(doc)
        print("NodeFeatureRule passed")
"#;

fn check_nfr(yaml: &Path) -> Output {
    let schema =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nodefeaturerule.schema.json");
    Command::new("python3")
        .args(["-c", NFR_CHECK])
        .arg(schema)
        .arg(yaml)
        .output()
        .expect("run python3")
}

#[test]
fn the_node_feature_rule_passes_the_nfd_crd_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = Manifests::new(Profile::Snp, &Options::default());
    let file = write(dir.path(), "all.yaml", &m.to_yaml().expect("yaml"));
    let out = check_nfr(&file);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "NodeFeatureRule passed\n"
    );

    let mut v = serde_json::to_value(&m.node_feature_rule).expect("json");
    v["spec"]["rules"][0]["matchFeatures"][0]["matchExpressions"]["sev.snp.enabled"]["op"] =
        "IsTruthy".into();
    let bad = write(
        dir.path(),
        "bad.yaml",
        &serde_yaml_ng::to_string(&v).expect("yaml"),
    );
    let out = check_nfr(&bad);
    assert!(!out.status.success(), "accepted a bad op: {}", text(&out));
    assert!(text(&out).contains("IsTruthy"), "{}", text(&out));
}

/// The deployment against the strict schemas of the oldest and newest Kubernetes that
/// k8s-openapi (and so this crate) supports: 1.33 and 1.37.
#[test]
fn the_deployment_passes_the_schemas_of_the_oldest_and_newest_kubernetes() {
    use kata_gpu_manifests::deploy::{DeployOptions, Deployment};
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Deployment::new(&DeployOptions {
        profiles: Profile::ALL.to_vec(),
        max_unavailable: 3,
        artifacts: [(Profile::Tdx, "/opt/sets/tdx.tar".to_owned())].into(),
        ..DeployOptions::default()
    });
    let file = write(dir.path(), "deploy.yaml", &d.to_yaml().expect("yaml"));
    for version in ["1.33.0", "1.37.0"] {
        let out = validator()
            .args(["-k", version])
            .arg(&file)
            .output()
            .expect("run kubernetes-validate");
        let said = text(&out);
        assert!(out.status.success(), "{version}: {said}");
        // Namespace, ServiceAccount, two DaemonSets, three RuntimeClasses.
        assert_eq!(said.matches("passed").count(), 7, "{version}: {said}");
        assert!(!said.contains("WARN"), "{version}: {said}");
    }
    // A DaemonSet field misspelt fails, so the check above can fail.
    let mut v = serde_json::to_value(&d.daemonsets[0]).expect("json");
    v["spec"]["template"]["spec"]["hostPid"] = true.into();
    let bad = write(
        dir.path(),
        "bad.yaml",
        &serde_yaml_ng::to_string(&v).expect("yaml"),
    );
    let out = validator()
        .args(["-k", "1.33.0"])
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success(), "accepted: {}", text(&out));
}
