//! The proxy's `start` as each containerd generation calls it, with the test playing
//! containerd (only 1.6 can be installed here): the reply form each expects, not one stray
//! byte, the bundle's `address` file, and the Task service under the name each one calls.
//! runc's real shim is downstream.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use containerd_shim_protos::bootstrap_api::{BootstrapParams, BootstrapResult};
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::shim::{
    ConnectRequest, ConnectResponse, ShutdownRequest, StateRequest,
};
use kata_gpu_tests::shimrig::wait_until;
use kata_gpu_tests::{is_root, require, workspace_bin};

const SHIM: &str = "containerd-shim-kata-qemu-nvidia-gpu-snp-v2";

struct MockContainerd {
    work: tempfile::TempDir,
    shim: PathBuf,
}

enum Caller {
    /// containerd 1.6 and 1.7: no MAX_SHIM_VERSION, empty stdin.
    Legacy,
    /// containerd 2.0–2.2: MAX_SHIM_VERSION.
    MaxVersion(&'static str),
    /// containerd 2.3+: a BootstrapParams message on stdin.
    Protobuf,
}

impl MockContainerd {
    fn new() -> Self {
        Self::with_downstream("/usr/bin/containerd-shim-runc-v2", "")
    }

    fn with_downstream(downstream: &str, extra: &str) -> Self {
        Self::with_downstream_kind(downstream, "runc", extra)
    }

    fn with_downstream_kind(downstream: &str, kind: &str, extra: &str) -> Self {
        require(is_root(), "root is needed to run runc's shim");
        let work = tempfile::Builder::new()
            .prefix("mockctrd")
            .tempdir()
            .expect("tempdir");
        let settings = format!(
            "downstream = \"{downstream}\"\ndownstream_kind = \"{kind}\"\nstate_dir = \"{}\"\n{extra}",
            work.path().join("st").display()
        );
        fs::write(work.path().join("shim.toml"), settings).expect("settings");
        let bundle = work.path().join("bundle");
        fs::create_dir_all(&bundle).expect("bundle");
        fs::write(bundle.join("config.json"), "{\"ociVersion\":\"1.0.2\"}").expect("config.json");
        Self::log_fifo(&bundle);
        Self {
            work,
            shim: workspace_bin("kata-gpu-shim", SHIM),
        }
    }

    fn bundle(&self) -> PathBuf {
        self.work.path().join("bundle")
    }

    /// Runs `start` as containerd would and returns (stdout, stderr); panics if it fails.
    fn start(&self, id: &str, caller: &Caller) -> (Vec<u8>, Vec<u8>) {
        let out = self.try_start(id, caller);
        assert!(
            out.status.success(),
            "start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out.stdout, out.stderr)
    }

    /// Runs `start` as containerd would.
    fn try_start(&self, id: &str, caller: &Caller) -> std::process::Output {
        self.try_start_in(&self.bundle(), id, caller)
    }

    /// A bundle of its own for container `id` of pod `group` (CRI's sandbox-id annotation).
    fn pod_bundle(&self, id: &str, group: &str) -> PathBuf {
        let bundle = self.work.path().join(format!("bundle-{id}"));
        fs::create_dir_all(&bundle).expect("bundle");
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": { "io.kubernetes.cri.sandbox-id": group },
        });
        fs::write(bundle.join("config.json"), config.to_string()).expect("config.json");
        Self::log_fifo(&bundle);
        bundle
    }

    /// Like containerd: a `log` FIFO in the bundle, read for the shims' lifetime.
    fn log_fifo(bundle: &Path) {
        let log = bundle.join("log");
        let made = Command::new("mkfifo").arg(&log).status().expect("mkfifo");
        assert!(made.success());
        std::thread::spawn(move || {
            let _ = fs::read(&log);
        });
    }

    /// Runs `start` as containerd would, in `bundle`.
    fn try_start_in(&self, bundle: &Path, id: &str, caller: &Caller) -> std::process::Output {
        let address = self
            .work
            .path()
            .join("containerd.sock")
            .display()
            .to_string();
        let ttrpc = format!("{address}.ttrpc");
        let mut cmd = Command::new(&self.shim);
        cmd.args([
            "-namespace",
            "mock",
            "-address",
            &address,
            "-publish-binary",
            "/bin/true",
            "-id",
            id,
            "start",
        ])
        .current_dir(bundle)
        .env("KATA_GPU_SHIM_CONFIG", self.work.path().join("shim.toml"))
        .env_remove("MAX_SHIM_VERSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut stdin = Vec::new();
        match caller {
            Caller::Legacy => {
                cmd.env("TTRPC_ADDRESS", &ttrpc);
            }
            Caller::MaxVersion(v) => {
                cmd.env("TTRPC_ADDRESS", &ttrpc).env("MAX_SHIM_VERSION", v);
            }
            Caller::Protobuf => {
                cmd.env_remove("TTRPC_ADDRESS").env("MAX_SHIM_VERSION", "3");
                stdin = BootstrapParams {
                    instance_id: id.into(),
                    namespace: "mock".into(),
                    containerd_ttrpc_address: ttrpc.clone(),
                    containerd_grpc_address: address.clone(),
                    containerd_binary: "/bin/true".into(),
                    ..BootstrapParams::default()
                }
                .write_to_bytes()
                .expect("encode params");
            }
        }
        let mut child = cmd.spawn().expect("run shim start");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&stdin)
            .expect("write stdin");
        child.wait_with_output().expect("wait shim start")
    }
}

/// One unary ttrpc call under `service`.
fn call(address: &str, service: &str, method: &str, payload: Vec<u8>) -> ttrpc::Result<Vec<u8>> {
    let client = ttrpc::Client::connect(address)?;
    let req = ttrpc::Request {
        service: service.into(),
        method: method.into(),
        payload,
        timeout_nano: 5_000_000_000,
        ..ttrpc::Request::default()
    };
    client.request(req).map(|r| r.payload)
}

fn connect_and_shutdown(address: &str, service: &str, id: &str) {
    let payload = ConnectRequest {
        id: id.into(),
        ..ConnectRequest::default()
    }
    .write_to_bytes()
    .expect("encode");
    let reply = call(address, service, "Connect", payload)
        .unwrap_or_else(|e| panic!("{service}/Connect: {e}"));
    let connect = ConnectResponse::parse_from_bytes(&reply).expect("ConnectResponse");
    assert!(
        connect.shim_pid > 0,
        "the downstream answered through the proxy"
    );
    let shutdown = ShutdownRequest {
        id: id.into(),
        now: true,
        ..ShutdownRequest::default()
    }
    .write_to_bytes()
    .expect("encode");
    // The downstream exits while answering; an error from a closing socket is fine.
    let _ = call(address, service, "Shutdown", shutdown);
    wait_gone(Path::new(address.trim_start_matches("unix://")));
}

#[test]
fn containerd_1_6_and_1_7_get_a_plain_address_and_task_v2() {
    let mock = MockContainerd::new();
    let (stdout, stderr) = mock.start("legacy", &Caller::Legacy);
    assert!(
        stderr.is_empty(),
        "stray stderr: {}",
        String::from_utf8_lossy(&stderr)
    );
    let address = String::from_utf8(stdout).expect("utf-8");
    assert!(
        address.starts_with("unix:///") && !address.contains(char::is_whitespace),
        "{address:?}"
    );
    assert!(
        address.contains(&mock.work.path().join("st/s/").display().to_string()),
        "our own socket name: {address}"
    );
    assert_eq!(
        fs::read_to_string(mock.bundle().join("address")).expect("address file"),
        address
    );
    connect_and_shutdown(&address, "containerd.task.v2.Task", "legacy");
}

#[test]
fn containerd_2_gets_json_with_the_version_it_allows_and_task_v3() {
    for (max, version) in [("2", 2), ("3", 3)] {
        let mock = MockContainerd::new();
        let id = format!("json{max}");
        let (stdout, stderr) = mock.start(&id, &Caller::MaxVersion(max));
        assert!(
            stderr.is_empty(),
            "stray stderr: {}",
            String::from_utf8_lossy(&stderr)
        );
        let reply: serde_json::Value =
            serde_json::from_slice(&stdout).expect("a JSON reply and nothing else");
        assert_eq!(reply["version"], version);
        assert_eq!(reply["protocol"], "ttrpc");
        let address = reply["address"].as_str().expect("address").to_owned();
        let service = if version == 3 {
            "containerd.task.v3.Task"
        } else {
            "containerd.task.v2.Task"
        };
        connect_and_shutdown(&address, service, &id);
    }
}

#[test]
fn containerd_2_3_gets_a_bootstrap_result() {
    let mock = MockContainerd::new();
    let (stdout, stderr) = mock.start("proto", &Caller::Protobuf);
    assert!(
        stderr.is_empty(),
        "stray stderr: {}",
        String::from_utf8_lossy(&stderr)
    );
    let result =
        BootstrapResult::parse_from_bytes(&stdout).expect("a BootstrapResult and nothing else");
    assert_eq!((result.version, result.protocol.as_str()), (3, "ttrpc"));
    connect_and_shutdown(&result.address, "containerd.task.v3.Task", "proto");
}

/// A downstream that is a shell script, for the ways a downstream can fail.
fn script(mock: &MockContainerd, name: &str, body: &str) -> String {
    let path = mock.work.path().join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
    let mut perms = fs::metadata(&path).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(&path, perms).expect("chmod");
    path.display().to_string()
}

#[test]
fn a_downstream_that_hangs_or_fails_fails_start_in_bounded_time_naming_it() {
    let probe = MockContainerd::new();
    let hang = script(&probe, "hang", "exec sleep 30");
    let mock = MockContainerd::with_downstream(&hang, "start_timeout_seconds = 1\n");
    let started = std::time::Instant::now();
    let out = mock.try_start("hang", &Caller::Legacy);
    assert!(!out.status.success());
    // Far below the downstream's 30 s, on any machine; the message says the setting held.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(25),
        "took {:?}",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&format!(
            "the downstream shim {hang} did not finish `start` within 1 s"
        )),
        "{text}"
    );
    assert!(out.stdout.is_empty(), "no reply on failure");

    let fail = script(&probe, "fail", "echo 'cannot open /dev/kvm' >&2; exit 3");
    let mock = MockContainerd::with_downstream(&fail, "");
    let out = mock.try_start("fail", &Caller::Legacy);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&format!(
            "the downstream shim {fail} failed `start` (exit status: 3): cannot open /dev/kvm"
        )),
        "{text}"
    );

    let garbage = script(&probe, "garbage", "echo 'hello world'");
    let mock = MockContainerd::with_downstream(&garbage, "");
    let out = mock.try_start("garbage", &Caller::Legacy);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(
            "printed \"hello world\", which is not an address, JSON or a BootstrapResult"
        ),
        "{text}"
    );
}

/// Issue 29 item 2: Kata's Rust shim exits 0 on every failure, so a `start` that printed
/// no address failed: reported at once, in one line with what it said on stderr.
#[test]
fn a_downstream_start_that_exits_0_without_an_address_fails_in_one_line() {
    let probe = MockContainerd::new();
    let like_runtime_rs = script(
        &probe,
        "rs",
        "printf 'Kata Containers containerd shim (Rust): id: io.containerd.kata.v2, version: 4.1.0\\nERROR: containerd-shim-kata-v2 failed: shim start\\n\\nCaused by:\\n    0: do start\\n    1: bind address\\n    2: Address already in use (os error 98)\\n\\nStack backtrace:\\n   0: <unknown>\\n' >&2; exit 0",
    );
    let silent = script(&probe, "silent", "exit 0");
    for (downstream, said) in [
        (
            &like_runtime_rs,
            "ERROR: containerd-shim-kata-v2 failed: shim start: do start: bind address: Address already in use (os error 98)",
        ),
        (&silent, "it printed nothing"),
    ] {
        let mock = MockContainerd::with_downstream_kind(downstream, "kata-rs", "start_timeout_seconds = 20\n");
        let started = std::time::Instant::now();
        let out = mock.try_start("rs", &Caller::Legacy);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        assert!(!out.status.success(), "{downstream}: start succeeded");
        assert!(out.stdout.is_empty(), "no reply on failure");
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(text.trim_end().lines().count(), 1, "one line: {text:?}");
        assert!(
            text.contains(&format!(
                "the downstream shim {downstream} failed `start` (exit status: 0, but no address on stdout): {said}"
            )),
            "{text}"
        );
        assert!(
            !mock.work.path().join("bundle/address").exists(),
            "no address written"
        );
    }
}

#[test]
fn a_proxy_that_exits_right_after_start_leaves_no_record_socket_or_lock() {
    let probe = MockContainerd::new();
    // A downstream whose `start` names a socket nobody listens on: the proxy finds it gone
    // at once, with no task, and exits while `start` may still be writing its record.
    let gone = script(&probe, "gone", "echo unix:///nonexistent/kata.sock");
    let mock = MockContainerd::with_downstream(&gone, "");
    for i in 0..5 {
        let id = format!("quick{i}");
        let (stdout, _) = mock.start(&id, &Caller::Legacy);
        assert!(String::from_utf8_lossy(&stdout).starts_with("unix://"));
    }
    let sockets = mock.work.path().join("st/s");
    wait_until("every proxy exited and removed its files", || {
        fs::read_dir(&sockets).map_or(true, |d| d.count() == 0)
    });
}

#[test]
fn the_binary_name_selects_the_profile_and_v_prints_version_and_commit() {
    let mock = MockContainerd::new();
    for (profile, name) in [
        ("snp", SHIM),
        ("tdx", "containerd-shim-kata-qemu-nvidia-gpu-tdx-v2"),
        ("gpu", "containerd-shim-kata-qemu-nvidia-gpu-v2"),
    ] {
        let link = mock.work.path().join(name);
        std::os::unix::fs::symlink(&mock.shim, &link).expect("link");
        let out = Command::new(&link).arg("-v").output().expect("run -v");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(
            text.starts_with(&format!("{name} {}", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
        assert!(
            text.contains("(commit ") && text.trim_end().ends_with(&format!("profile {profile}")),
            "{text}"
        );
    }
    // A name that names no profile is refused, not served as snp.
    let link = mock.work.path().join("containerd-shim-kata-v2");
    std::os::unix::fs::symlink(&mock.shim, &link).expect("link");
    for args in [&["-v"][..], &["-namespace", "x", "-id", "y", "start"][..]] {
        let out = Command::new(&link).args(args).output().expect("run");
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
        assert!(
            text.contains("names no profile") && text.contains(SHIM),
            "{args:?}: {text}"
        );
    }
}

/// Our proxies for `group` started from `mock`'s settings.
fn proxies(mock: &MockContainerd, group: &str) -> Vec<u32> {
    let settings = mock.work.path().join("shim.toml").display().to_string();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").expect("proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let words: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let environ = fs::read(entry.path().join("environ")).unwrap_or_default();
        if words
            .windows(2)
            .any(|w| w == [&b"-id"[..], group.as_bytes()])
            && words.iter().any(|w| *w == b"serve")
            && String::from_utf8_lossy(&environ).contains(&settings)
        {
            pids.push(pid);
        }
    }
    pids
}

/// A downstream daemon played by the test: it accepts every connection and answers
/// nothing, until [`FakeDaemon::exit`].
struct FakeDaemon {
    socket: PathBuf,
    accepted: std::sync::Arc<std::sync::Mutex<Vec<std::os::unix::net::UnixStream>>>,
}

impl FakeDaemon {
    fn listen(socket: PathBuf) -> Self {
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&accepted);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                kept.lock().expect("lock").push(conn);
            }
        });
        Self { socket, accepted }
    }

    /// Exits: its socket goes and every connection closes.
    fn exit(&self) {
        let _ = fs::remove_file(&self.socket);
        for conn in self.accepted.lock().expect("lock").drain(..) {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn two_concurrent_starts_of_one_pod_get_one_server() {
    let probe = MockContainerd::new();
    let daemon = FakeDaemon::listen(probe.work.path().join("daemon.sock"));
    // A downstream whose `start` hands every container of the pod the same daemon at once
    // (runc's own start races when two run together, which is not under test here).
    let start = script(
        &probe,
        "instant",
        &format!("echo unix://{}", daemon.socket.display()),
    );
    let mock = MockContainerd::with_downstream(&start, "");
    for round in 0..5 {
        let group = format!("pod{round}");
        let ids = [format!("{group}-a"), format!("{group}-b")];
        let bundles: Vec<PathBuf> = ids.iter().map(|id| mock.pod_bundle(id, &group)).collect();
        let barrier = std::sync::Barrier::new(2);
        let replies: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = ids
                .iter()
                .zip(&bundles)
                .map(|(id, bundle)| {
                    let (mock, barrier) = (&mock, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let out = mock.try_start_in(bundle, id, &Caller::Legacy);
                        assert!(
                            out.status.success(),
                            "{id}: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                        String::from_utf8(out.stdout).expect("utf-8")
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        assert_eq!(replies[0], replies[1], "one address for the pod");
        let running = proxies(&mock, &group);
        assert_eq!(running.len(), 1, "round {round}: proxies {running:?}");
        // The record beside the socket names that very proxy, so that `delete` never
        // takes it for dead.
        let socket = PathBuf::from(replies[0].trim_start_matches("unix://"));
        let record = fs::read_to_string(socket.with_extension("downstream")).expect("record");
        assert_eq!(
            record.split_whitespace().nth(2),
            Some(running[0].to_string().as_str()),
            "{record}"
        );
    }
    // The downstream exits with no task run: every proxy follows.
    daemon.exit();
    wait_until("every proxy exited", || {
        (0..5).all(|round| proxies(&mock, &format!("pod{round}")).is_empty())
    });
}

#[test]
fn a_downstream_whose_start_leaves_its_output_open_does_not_hold_start() {
    let probe = MockContainerd::new();
    let pidfile = probe.work.path().join("lingerer.pid");
    // A start that prints its address and leaves a process holding its stdout and stderr.
    let body = format!(
        "sleep 120 &\necho $! > {}\necho unix:///nonexistent/downstream.sock",
        pidfile.display()
    );
    let lingering = script(&probe, "lingering", &body);
    let mock = MockContainerd::with_downstream(&lingering, "start_timeout_seconds = 2\n");
    let started = std::time::Instant::now();
    let out = mock.try_start("linger", &Caller::Legacy);
    let took = started.elapsed();
    if let Ok(pid) = fs::read_to_string(&pidfile) {
        if let Ok(pid) = pid.trim().parse() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("unix:///"));
    // Bounded by start_timeout_seconds, not by the 120 s of what holds the pipe.
    assert!(took < std::time::Duration::from_secs(60), "took {took:?}");
}

#[test]
fn a_server_started_with_a_bad_version_or_without_its_socket_refuses_to_serve() {
    let mock = MockContainerd::new();
    let socket = mock.work.path().join("st/s/by-hand");
    fs::create_dir_all(socket.parent().expect("dir")).expect("mkdir");
    for (version, want) in [
        ("two", "downstream task API version \"two\" (2 or 3)"),
        ("4", "downstream task API version \"4\" (2 or 3)"),
        ("3", "without its listening socket"),
    ] {
        let mut child = Command::new(&mock.shim)
            .args(["-namespace", "mock", "-id", "by-hand", "serve"])
            .env("KATA_GPU_SHIM_CONFIG", mock.work.path().join("shim.toml"))
            .env("KATA_GPU_DOWNSTREAM_ADDRESS", "unix:///nonexistent.sock")
            .env("KATA_GPU_DOWNSTREAM_VERSION", version)
            .env("KATA_GPU_SOCKET", &socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run serve");
        // A proxy that serves anyway never exits by itself: a bound only to fail.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while child.try_wait().expect("wait").is_none() {
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("version {version:?}: the proxy served");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let out = child.wait_with_output().expect("output");
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{version:?}: {text}");
        assert!(text.contains(want), "{version:?}: {text}");
        assert!(!socket.exists(), "{version:?}: nothing bound");
    }
}

/// Kata 3.30's shim downstream, each containerd generation's caller in turn: Kata serves
/// only `containerd.task.v2.Task`, and the proxy reaches it under that name whichever name
/// the caller used. Connect comes back from Kata; State of a task Kata does not have is
/// Kata's own error; Shutdown, which Kata answers by exiting without a reply, is answered
/// by the proxy, which then ends.
#[test]
fn kata_answers_connect_state_and_shutdown_through_the_proxy() {
    let test = "kata_answers_connect_state_and_shutdown_through_the_proxy";
    let Some(kata) = kata_gpu_tests::available(test, kata_gpu_tests::Kata::find()) else {
        return;
    };
    let shim = kata.shim().display().to_string();
    let callers = [
        ("legacy", Caller::Legacy, "containerd.task.v2.Task"),
        ("max3", Caller::MaxVersion("3"), "containerd.task.v3.Task"),
        ("proto", Caller::Protobuf, "containerd.task.v3.Task"),
    ];
    for (id, caller, service) in callers {
        let mock = MockContainerd::with_downstream_kind(&shim, "kata", "");
        // Kata's start reads the process and the container type from the spec.
        fs::write(
            mock.bundle().join("config.json"),
            r#"{"ociVersion":"1.0.2","process":{"args":["/bin/true"],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"rootfs"},"linux":{}}"#,
        )
        .expect("config.json");
        let (stdout, stderr) = mock.start(id, &caller);
        assert!(
            stderr.is_empty(),
            "{id}: {}",
            String::from_utf8_lossy(&stderr)
        );
        let address = match caller {
            Caller::Legacy => String::from_utf8(stdout).expect("utf-8"),
            Caller::MaxVersion(_) => {
                let reply: serde_json::Value = serde_json::from_slice(&stdout).expect("JSON");
                reply["address"].as_str().expect("address").to_owned()
            }
            Caller::Protobuf => {
                BootstrapResult::parse_from_bytes(&stdout)
                    .expect("BootstrapResult")
                    .address
            }
        };
        assert!(
            address.contains(&mock.work.path().join("st/s/").display().to_string()),
            "{id}: the proxy's own socket: {address}"
        );
        let connect = ConnectRequest {
            id: id.into(),
            ..ConnectRequest::default()
        };
        let reply = call(
            &address,
            service,
            "Connect",
            connect.write_to_bytes().expect("encode"),
        )
        .unwrap_or_else(|e| panic!("{id}: {service}/Connect: {e}"));
        let connect = ConnectResponse::parse_from_bytes(&reply).expect("ConnectResponse");
        assert!(connect.shim_pid > 0, "{id}: Kata's pid");
        let state = StateRequest {
            id: id.into(),
            ..StateRequest::default()
        };
        let e = call(
            &address,
            service,
            "State",
            state.write_to_bytes().expect("encode"),
        )
        .expect_err("State of a task Kata does not have");
        let e = e.to_string();
        assert!(
            e.contains("does not exist") && !e.contains("not implemented"),
            "{id}: {service}/State: {e}"
        );
        let shutdown = ShutdownRequest {
            id: id.into(),
            now: true,
            ..ShutdownRequest::default()
        };
        let answered = call(
            &address,
            service,
            "Shutdown",
            shutdown.write_to_bytes().expect("encode"),
        );
        assert!(answered.is_ok(), "{id}: Shutdown: {answered:?}");
        let socket = Path::new(address.trim_start_matches("unix://")).to_path_buf();
        wait_gone(&socket);
        // Kata's own socket: Kata removes the socket `address` names, which is now ours.
        let key = mock
            .work
            .path()
            .join("containerd.sock")
            .join("mock")
            .join(id);
        let hash = <sha2::Sha256 as sha2::Digest>::digest(key.display().to_string().as_bytes());
        let _ = fs::remove_file(Path::new("/run/containerd/s").join(kata_gpu_fsutil::hex(&hash)));
    }
}

#[track_caller]
fn wait_gone(socket: &Path) {
    wait_until(
        &format!(
            "the proxy exits after Shutdown and removes {}",
            socket.display()
        ),
        || !socket.exists(),
    );
}

/// The pids of processes running `binary` with `-id <id>` on their command line.
fn pids_of(binary: &str, id: &str) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let runs = args.first().is_some_and(|a| *a == binary.as_bytes())
                && args
                    .windows(2)
                    .any(|w| w[0] == b"-id".as_slice() && w[1] == id.as_bytes());
            runs.then_some(pid)
        })
        .collect()
}

/// Ends, with SIGKILL (it ignores SIGTERM), every runtime-rs daemon a test started for `id`,
/// and removes its socket: on the way out of a test, passed or failed.
struct RuntimeRsGuard {
    shim: String,
    id: String,
    socket: Option<PathBuf>,
}

impl Drop for RuntimeRsGuard {
    fn drop(&mut self) {
        for pid in pids_of(&self.shim, &self.id) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(socket) = &self.socket {
            let _ = fs::remove_file(socket);
        }
    }
}

/// Issue 29 item 2, with the real Kata 4.1 Rust shim: a second `start` for one id fails in
/// runtime-rs with status 0 ("Address already in use"), which the proxy reports in one line;
/// runtime-rs's `Shutdown` replies through the proxy, the daemon exits, and the socket it
/// leaves behind is removed by the proxy.
#[test]
fn kata_rs_second_start_fails_in_one_line_and_shutdown_replies_and_leaves_nothing() {
    let test = "kata_rs_second_start_fails_in_one_line_and_shutdown_replies_and_leaves_nothing";
    let Some(kata) = kata_gpu_tests::available(test, kata_gpu_tests::KataRs::find()) else {
        return;
    };
    let shim = kata.shim().display().to_string();
    let mock = MockContainerd::with_downstream_kind(&shim, "kata-rs", "");
    // runtime-rs's daemon exits at once when containerd's ttrpc socket (TTRPC_ADDRESS,
    // for its events) cannot be reached: a listener stands in, holding what connects.
    let events =
        std::os::unix::net::UnixListener::bind(mock.work.path().join("containerd.sock.ttrpc"))
            .expect("containerd's ttrpc socket");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in events.incoming().flatten() {
            held.push(stream);
        }
    });
    let id = format!("rs{}", std::process::id());
    let mut guard = RuntimeRsGuard {
        shim: shim.clone(),
        id: id.clone(),
        socket: None,
    };
    fs::write(
        mock.bundle().join("config.json"),
        r#"{"ociVersion":"1.0.2","process":{"args":["/bin/true"],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"rootfs"},"linux":{}}"#,
    )
    .expect("config.json");
    let (stdout, _) = mock.start(&id, &Caller::Legacy);
    let address = String::from_utf8(stdout).expect("utf-8");
    assert!(
        address.contains(&mock.work.path().join("st/s/").display().to_string()),
        "the proxy's own socket: {address}"
    );
    // runtime-rs's own socket, as its start printed it (upper-case hex), in the proxy's record.
    let record = Path::new(address.trim_start_matches("unix://")).with_extension("downstream");
    let record = fs::read_to_string(&record).expect("the proxy's record");
    let rs_socket = PathBuf::from(
        record
            .split_whitespace()
            .nth(1)
            .expect("a downstream address")
            .trim_start_matches("unix://"),
    );
    guard.socket = Some(rs_socket.clone());
    let name = rs_socket.file_name().and_then(|n| n.to_str()).unwrap_or("");
    assert!(
        rs_socket.exists() && name.len() == 64 && name == name.to_uppercase(),
        "runtime-rs's socket {} (daemons {:?})",
        rs_socket.display(),
        pids_of(&shim, &id),
    );
    assert_eq!(pids_of(&shim, &id).len(), 1, "one runtime-rs daemon");

    // A second start: runtime-rs exits 0 with nothing on stdout; the proxy fails it.
    let out = mock.try_start(&id, &Caller::Legacy);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second start succeeded: {text}");
    assert_eq!(text.trim_end().lines().count(), 1, "one line: {text:?}");
    assert!(
        text.contains("failed `start` (exit status: 0, but no address on stdout)")
            && text.contains("bind address: Address already in use (os error 98)"),
        "{text}"
    );

    // Shutdown replies (the Go shim exits without one), then the daemon and the proxy exit.
    let shutdown = ShutdownRequest {
        id: id.clone(),
        now: true,
        ..ShutdownRequest::default()
    };
    let answered = call(
        &address,
        "containerd.task.v2.Task",
        "Shutdown",
        shutdown.write_to_bytes().expect("encode"),
    );
    assert!(answered.is_ok(), "Shutdown: {answered:?}");
    wait_gone(Path::new(address.trim_start_matches("unix://")));
    wait_until("runtime-rs exits after Shutdown", || {
        pids_of(&shim, &id).is_empty()
    });
    wait_until(
        &format!(
            "the proxy removes runtime-rs's socket {}",
            rs_socket.display()
        ),
        || !rs_socket.exists(),
    );
}

/// Issue 29 item 2: a pod's later container whose `start` makes runtime-rs start a daemon of
/// its own (runtime-rs does when it cannot read the container's spec) gets the pod's proxy,
/// and that daemon, which nothing would ever use or shut down, is ended by the proxy's
/// `start`, its socket removed.
#[test]
fn kata_rs_a_stray_daemon_of_a_pods_later_container_is_ended_and_its_socket_removed() {
    let test = "kata_rs_a_stray_daemon_of_a_pods_later_container_is_ended_and_its_socket_removed";
    let Some(kata) = kata_gpu_tests::available(test, kata_gpu_tests::KataRs::find()) else {
        return;
    };
    let shim = kata.shim().display().to_string();
    let mock = MockContainerd::with_downstream_kind(&shim, "kata-rs", "");
    let events =
        std::os::unix::net::UnixListener::bind(mock.work.path().join("containerd.sock.ttrpc"))
            .expect("containerd's ttrpc socket");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in events.incoming().flatten() {
            held.push(stream);
        }
    });
    let group = format!("pod{}", std::process::id());
    let app = format!("app{}", std::process::id());
    let _pod_guard = RuntimeRsGuard {
        shim: shim.clone(),
        id: group.clone(),
        socket: None,
    };
    let mut app_guard = RuntimeRsGuard {
        shim: shim.clone(),
        id: app.clone(),
        socket: None,
    };
    // runtime-rs's socket for an id: upper-case sha256 of `<address>/<namespace>/<id>`.
    let rs_socket = |id: &str| {
        let key = mock
            .work
            .path()
            .join("containerd.sock")
            .join("mock")
            .join(id);
        let hash = <sha2::Sha256 as sha2::Digest>::digest(key.display().to_string().as_bytes());
        Path::new("/run/containerd/s").join(kata_gpu_fsutil::hex(&hash).to_uppercase())
    };
    app_guard.socket = Some(rs_socket(&app));
    // Both specs lack a process: runtime-rs takes each for a sandbox of its own.
    let pod = mock.pod_bundle(&group, &group);
    let out = mock.try_start_in(&pod, &group, &Caller::Legacy);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let proxy = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(pids_of(&shim, &group).len(), 1, "the pod's runtime-rs");

    let bundle = mock.pod_bundle(&app, &group);
    let out = mock.try_start_in(&bundle, &app, &Caller::Legacy);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).expect("utf-8"),
        proxy,
        "the pod's proxy"
    );
    wait_until("the stray runtime-rs daemon is gone", || {
        pids_of(&shim, &app).is_empty()
    });
    assert!(
        !rs_socket(&app).exists(),
        "the stray daemon's socket {} is left",
        rs_socket(&app).display()
    );
    assert_eq!(
        pids_of(&shim, &group).len(),
        1,
        "the pod's runtime-rs is kept"
    );

    // The pod's own: Shutdown through the proxy, as containerd would.
    let shutdown = ShutdownRequest {
        id: group.clone(),
        now: true,
        ..ShutdownRequest::default()
    };
    let answered = call(
        &proxy,
        "containerd.task.v2.Task",
        "Shutdown",
        shutdown.write_to_bytes().expect("encode"),
    );
    assert!(answered.is_ok(), "Shutdown: {answered:?}");
    wait_gone(Path::new(proxy.trim_start_matches("unix://")));
    wait_until("the pod's runtime-rs exits", || {
        pids_of(&shim, &group).is_empty()
    });
    wait_until("the pod's runtime-rs socket is removed", || {
        !rs_socket(&group).exists()
    });
}

/// Issue 29 item 2: a stray downstream that neither answers Shutdown nor minds SIGTERM (as
/// runtime-rs ignores SIGTERM) is ended with SIGKILL by the pod's later `start`, and its
/// socket removed.
#[test]
fn a_stray_downstream_that_ignores_shutdown_and_sigterm_is_killed() {
    let probe = MockContainerd::new();
    let dir = probe.work.path().display().to_string();
    // One daemon per id: it listens, ignores SIGTERM, never answers; its pid in <id>.pid.
    let body = format!(
        r#"for a in "$@"; do [ "$prev" = "-id" ] && id=$a; prev=$a; done
[ "$prev" = start ] || exit 0
setsid python3 -c '
import os, signal, socket, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(16)
open(sys.argv[2], "w").write(str(os.getpid()))
held = []
while True: held.append(s.accept())
' {dir}/$id.sock {dir}/$id.pid </dev/null >/dev/null 2>&1 &
while [ ! -s {dir}/$id.pid ]; do sleep 0.05; done
printf 'unix://{dir}/%s.sock' "$id""#
    );
    let downstream = script(&probe, "stubborn", &body);
    let mock = MockContainerd::with_downstream_kind(&downstream, "kata-rs", "");
    let pid_of = |id: &str| -> Option<i32> {
        fs::read_to_string(probe.work.path().join(format!("{id}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let alive = |pid: i32| {
        // A zombie is gone for our purpose: its state is Z.
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')))
    };
    let group = format!("spod{}", std::process::id());
    let app = format!("sapp{}", std::process::id());
    let pod = mock.pod_bundle(&group, &group);
    let out = mock.try_start_in(&pod, &group, &Caller::Legacy);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let proxy = String::from_utf8(out.stdout).expect("utf-8");
    let record = Path::new(proxy.trim_start_matches("unix://")).with_extension("downstream");
    let proxy_pid: Option<i32> = fs::read_to_string(&record)
        .ok()
        .and_then(|r| r.split_whitespace().nth(2).and_then(|p| p.parse().ok()));

    let bundle = mock.pod_bundle(&app, &group);
    let out = mock.try_start_in(&bundle, &app, &Caller::Legacy);
    let stray = pid_of(&app);
    let stray_alive = stray.is_some_and(alive);
    // What this test started ends here, whatever was seen.
    for pid in [pid_of(&group), stray, proxy_pid].into_iter().flatten() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).expect("utf-8"), proxy);
    assert!(stray.is_some(), "the stray daemon never started");
    assert!(!stray_alive, "the stray daemon was left running");
    assert!(
        !probe.work.path().join(format!("{app}.sock")).exists(),
        "the stray daemon's socket is left"
    );
}
