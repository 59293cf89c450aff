//! `kata-gpu report` on a temp host root: secrets in containerd's config (and its backup,
//! and any TOML or JSON file it copies) redacted by key and listed without their values,
//! and no symlink followed, whatever component it is.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// containerd's CRI registry credentials, as containerd 1.x's and 2.x's configs hold them,
/// and the values that must not reach a report.
const CREDENTIALS: &str = r#"version = 2

[plugins."io.containerd.grpc.v1.cri".registry.configs."registry.example".auth]
  username = "robot"
  password = "hunter2-password"
  auth = "cm9ib3Q6aHVudGVyMg-auth"
  identitytoken = "idtok-secret"
# password = "old-commented-password"

[plugins."io.containerd.grpc.v1.cri".registry.headers]
  Authorization = ["Bearer header-secret"]

[plugins."io.containerd.grpc.v1.cri".registry.configs."other.example"]
  auth = { username = "u2", password = "inline-password" }
"#;

const SECRETS: [&str; 7] = [
    "hunter2-password",
    "cm9ib3Q6aHVudGVyMg-auth",
    "idtok-secret",
    "old-commented-password",
    "header-secret",
    "inline-password",
    "json-token-secret",
];

const CONFIG: &str = "/etc/containerd/config.toml";

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

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kata-gpu"))
            .arg("--host-root")
            .arg(self.dir.path())
            .args(args)
            .output()
            .expect("run kata-gpu")
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every file under `dir`, with its contents.
fn everything(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("ls").map(|e| e.expect("entry")) {
        let meta = fs::symlink_metadata(e.path()).expect("stat");
        if meta.is_dir() {
            out.extend(everything(&e.path()));
        } else {
            let body = fs::read(e.path()).expect("read");
            out.push((e.path(), String::from_utf8_lossy(&body).into_owned()));
        }
    }
    out
}

#[track_caller]
fn assert_no_secret(report: &Path) {
    for (file, body) in everything(report) {
        for s in SECRETS {
            assert!(!body.contains(s), "{s} in {}:\n{body}", file.display());
        }
    }
}

/// A registered node whose containerd config holds registry credentials.
fn registered() -> Node {
    let node = Node::new();
    node.put(CONFIG, CREDENTIALS);
    let out = node.run(&["containerd", "register"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    node
}

#[test]
fn registry_credentials_are_redacted_by_key_and_listed_without_their_values() {
    let node = registered();
    // A rendered Kata config and a JSON file, both copied whole, with secrets of their own.
    node.put(
        "/var/run/cdi/extra.json",
        r#"{"kind":"x","containerEdits":{"token":"json-token-secret"}}"#,
    );
    let report = node.dir.path().join("report");
    let out = node.run(&["report", "--output", &report.display().to_string()]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert_no_secret(&report);

    let copied = fs::read_to_string(report.join("etc/containerd/config.toml")).expect("config");
    // The file is otherwise as it was: the user name, the tables, the handler we added.
    assert!(copied.contains("username = \"robot\""), "{copied}");
    assert!(copied.contains("password = \"<redacted>\""), "{copied}");
    assert!(copied.contains("kata-qemu-nvidia-gpu-snp"), "{copied}");
    // The backup register took holds the same credentials, and is redacted too.
    let backup = report.join("etc/containerd/config.toml.kata-gpu.bak");
    assert!(backup.is_file(), "{said}");

    let auth = r#"plugins."io.containerd.grpc.v1.cri".registry.configs."registry.example".auth"#;
    for line in [
        format!(
            "redacted {auth}.password in {}",
            node.path(CONFIG).display()
        ),
        format!("redacted {auth}.auth in {}", node.path(CONFIG).display()),
        format!(
            "redacted {auth}.identitytoken in {}",
            node.path(CONFIG).display()
        ),
        format!(
            "redacted # password (a comment) in {}",
            node.path(CONFIG).display()
        ),
        format!(
            r#"redacted plugins."io.containerd.grpc.v1.cri".registry.headers.Authorization in {}"#,
            node.path(CONFIG).display()
        ),
        format!(
            r#"redacted plugins."io.containerd.grpc.v1.cri".registry.configs."other.example".auth.password in {}"#,
            node.path(CONFIG).display()
        ),
        format!(
            "redacted containerEdits.token in {}",
            node.path("/var/run/cdi/extra.json").display()
        ),
    ] {
        assert!(said.lines().any(|l| l == line), "no line {line}:\n{said}");
    }
    assert!(!said.contains("username"), "{said}");
    // The list is in the report too, for whoever reads it without the terminal.
    let listed = fs::read_to_string(report.join("redacted.txt")).expect("redacted.txt");
    assert!(listed.contains(&format!("{auth}.password")), "{listed}");

    // --json lists them as objects.
    let report2 = node.dir.path().join("report2");
    let out = node.run(&[
        "--json",
        "report",
        "--output",
        &report2.display().to_string(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let redacted = v["redacted"].as_array().expect("redacted");
    assert!(
        redacted
            .iter()
            .any(|r| r["key"] == format!("{auth}.password")
                && r["file"] == node.path(CONFIG).display().to_string()),
        "{v}"
    );
    assert_no_secret(&report2);
}

#[test]
fn a_symlink_is_never_followed_and_is_named() {
    let node = registered();
    let secret = node.put("/root/secret", "the host's private key");
    let outside = tempfile::NamedTempFile::new().expect("tmp");
    fs::write(outside.path(), "outside the root").expect("write");
    let cdi = node.path("/var/run/cdi");
    fs::create_dir_all(&cdi).expect("mkdir");
    symlink("/root/secret", cdi.join("in-root.yaml")).expect("link");
    symlink(&secret, cdi.join("absolute.yaml")).expect("link");
    symlink(outside.path(), cdi.join("outside.yaml")).expect("link");
    symlink(node.path("/root"), cdi.join("dir")).expect("link");
    // A FIFO would block a plain open: it is skipped, not waited on.
    nix::unistd::mkfifo(
        &cdi.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    // The containerd config named by the record, replaced by a link to another file.
    let config = node.path(CONFIG);
    fs::rename(&config, node.path("/etc/containerd/real.toml")).expect("mv");
    symlink(&secret, &config).expect("link");

    let report = node.dir.path().join("report");
    let out = node.run(&["report", "--output", &report.display().to_string()]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    for (file, body) in everything(&report) {
        assert!(
            !body.contains("private key") && !body.contains("outside the root"),
            "{} copied a link's target: {body}",
            file.display()
        );
    }
    for name in ["in-root.yaml", "absolute.yaml", "outside.yaml", "dir"] {
        let line = format!("not followed: {} is a symlink", cdi.join(name).display());
        assert!(said.lines().any(|l| l == line), "no line {line}:\n{said}");
    }
    let line = format!("not followed: {} is a symlink", config.display());
    assert!(said.lines().any(|l| l == line), "no line {line}:\n{said}");
    assert!(!report.join("var/run/cdi/fifo").exists(), "{said}");
}

/// The report holds doctor's findings for every profile (as `doctor --json` prints them) and
/// the commit the binary was built from, which a node without git can still say.
#[test]
fn the_report_holds_doctors_output_and_the_commit() {
    let node = registered();
    let report = node.dir.path().join("report");
    let out = node.run(&["report", "--output", &report.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for profile in ["snp", "tdx", "gpu"] {
        let file = report.join(format!("doctor-{profile}.json"));
        let body = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(v["profile"], profile, "{body}");
        assert!(
            v["checks"].as_array().is_some_and(|c| !c.is_empty()),
            "{body}"
        );
    }
    let version = fs::read_to_string(report.join("version.txt")).expect("version.txt");
    let commit = version
        .lines()
        .find_map(|l| l.strip_prefix("commit "))
        .unwrap_or_else(|| panic!("no commit in {version}"));
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{version}"
    );
    assert_no_secret(&report);
}
