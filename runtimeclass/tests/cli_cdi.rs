//! `kata-gpu cdi validate|list` as a user runs them: exit codes, one line per verdict,
//! JSON on request, against the shipped corpus and simulated hosts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kata_gpu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kata-gpu"))
        .args(args)
        .output()
        .expect("run kata-gpu")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn corpus(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cdi/tests/data")
        .join(rel)
        .display()
        .to_string()
}

#[test]
fn a_valid_directory_passes_with_one_line_per_file() {
    let out = kata_gpu(&["cdi", "validate", &corpus("valid")]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let files = fs::read_dir(corpus("valid")).expect("ls").count();
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), files);
    assert!(
        text.ends_with(&format!("{files} file(s): {files} valid, 0 invalid\n")),
        "{text}"
    );
}

#[test]
fn an_invalid_file_fails_naming_file_line_and_rule() {
    let bad = corpus("invalid/type-major-as-string.json");
    let good = corpus("valid/v0.5.0-pgpu-iommufd.yaml");
    let out = kata_gpu(&["cdi", "validate", &good, &bad]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "invalid {bad}:12:26: invalid JSON: invalid type: a string, expected i64"
        )),
        "{text}"
    );
    assert!(text.contains("2 file(s): 1 valid, 1 invalid"), "{text}");

    let out = kata_gpu(&["cdi", "validate", "--json", &bad]);
    let verdicts: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(verdicts[0]["valid"], false);
    assert_eq!(verdicts[0]["path"], bad.as_str());
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn missing_paths_and_bad_usage_have_their_exit_codes() {
    // A path that is not there says so, whatever its name ends in.
    for missing in ["/nonexistent/x.yaml", "/nonexistent"] {
        let out = kata_gpu(&["cdi", "validate", missing]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            stdout(&out),
            format!(
                "invalid {missing}: does not exist; name a .json or .yaml spec file, or a \
                 directory of them\n1 file(s): 0 valid, 1 invalid\n"
            )
        );
    }

    assert_eq!(kata_gpu(&["cdi", "validate"]).status.code(), Some(2));
    assert_eq!(kata_gpu(&["cdi", "frobnicate"]).status.code(), Some(2));
}

/// Issue 19 item 10: an empty spec directory (what install leaves on a host with no GPU
/// bound yet) stopped the run before the next path was checked, and a world-writable spec
/// was called ok although every reader running as root skips it.
#[test]
fn validate_goes_on_past_an_empty_directory_and_fails_a_spec_readers_skip() {
    use std::os::unix::fs::PermissionsExt;
    let empty = tempfile::tempdir().expect("tempdir");
    let specs = tempfile::tempdir().expect("tempdir");
    let good = specs.path().join("a.yaml");
    fs::copy(corpus("valid/v0.5.0-pgpu-iommufd.yaml"), &good).expect("copy");
    let open = specs.path().join("b.yaml");
    fs::copy(corpus("valid/v0.5.0-pgpu-iommufd.yaml"), &open).expect("copy");
    fs::set_permissions(&open, fs::Permissions::from_mode(0o666)).expect("chmod");
    let (e, d) = (
        empty.path().display().to_string(),
        specs.path().display().to_string(),
    );

    let out = kata_gpu(&["cdi", "validate", &e, &d]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "empty   {e}: no .json or .yaml spec files in this directory\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("ok      {}: ", good.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "invalid {}: skipped: owned by uid {} with mode 666; spec files must be owned by root and not world-writable (chown root: and chmod o-w)",
            open.display(),
            nix::unistd::geteuid()
        )),
        "{text}"
    );
    assert!(text.ends_with("2 file(s): 1 valid, 1 invalid\n"), "{text}");

    // An empty directory alone is nothing wrong.
    let out = kata_gpu(&["cdi", "validate", "--json", &e]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let verdicts: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        verdicts[0]["note"],
        "no .json or .yaml spec files in this directory"
    );
}

fn sim_host() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("tempdir");
    let etc = root.path().join("etc/cdi");
    let run = root.path().join("var/run/cdi");
    fs::create_dir_all(&etc).expect("mkdir");
    fs::create_dir_all(&run).expect("mkdir");
    fs::copy(
        corpus("valid/v0.5.0-pgpu-iommufd.yaml"),
        run.join("pgpu.yaml"),
    )
    .expect("copy");
    fs::copy(
        corpus("valid/v0.6.0-nvswitch.yaml"),
        etc.join("nvswitch.yaml"),
    )
    .expect("copy");
    (root, etc)
}

#[test]
fn list_shows_the_devices_of_a_simulated_host() {
    let (root, _) = sim_host();
    let root_arg = root.path().display().to_string();
    let out = kata_gpu(&["cdi", "list", "--host-root", &root_arg]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("nvidia.com/pgpu=") && l.ends_with("var/run/cdi/pgpu.yaml")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("nvidia.com/nvswitch=")),
        "{text}"
    );

    let out = kata_gpu(&["cdi", "list", "--host-root", &root_arg, "--json"]);
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(listing["devices"].as_array().is_some_and(|d| !d.is_empty()));
    assert_eq!(listing["skipped"], serde_json::json!([]));
}

#[test]
fn list_reports_broken_files_and_still_lists_the_rest() {
    let (root, etc) = sim_host();
    fs::write(etc.join("broken.yaml"), "cdiVersion: [").expect("write");
    let root_arg = root.path().display().to_string();
    let out = kata_gpu(&["cdi", "list", "--host-root", &root_arg]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("warning: {}:", etc.join("broken.yaml").display())),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("nvidia.com/pgpu=")),
        "{text}"
    );
}

#[test]
fn under_umask_000_generate_makes_no_directory_others_can_write() {
    let sim = kata_gpu_tests::SimHost::h100_pcie(kata_gpu_tests::VfioMode::Iommufd);
    let dir = sim.path("new/cdi");
    let out = kata_gpu_tests::run_on_host_umask_000(
        env!("CARGO_BIN_EXE_kata-gpu"),
        sim.root(),
        &[
            "cdi",
            "generate",
            "--output-dir",
            &dir.display().to_string(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        kata_gpu_tests::output_text(&out)
    );
    assert!(dir.join("nvidia.com-pgpu.yaml").is_file());
    assert_eq!(
        kata_gpu_tests::writable_by_others(&sim.path("new")),
        Vec::<String>::new()
    );
}
