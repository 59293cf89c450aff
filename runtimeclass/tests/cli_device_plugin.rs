//! `kata-gpu device-plugin` as a node runs it, against a stand-in for kubelet's registration
//! (the real protocol), and `kata-gpu doctor`'s checks of it, on a simulated H100 host.

mod common;

use std::process::{Child, Command, Output, Stdio};

use kata_gpu_tests::kubelet::KubeletRegistration;
use kata_gpu_tests::{SimHost, VfioMode, WriteCdiSpecs};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use common::text;

/// The plugin, killed if a failed test leaves it running.
struct Plugin(Child);

impl Plugin {
    fn start(sim: &SimHost) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_kata-gpu"))
            .args(["device-plugin", "--interval", "1", "--host-root"])
            .arg(sim.root())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kata-gpu device-plugin");
        Self(child)
    }

    /// SIGTERM, then how it ended.
    fn terminate(mut self) -> Output {
        let pid = Pid::from_raw(i32::try_from(self.0.id()).expect("pid"));
        kill(pid, Signal::SIGTERM).expect("SIGTERM");
        let child = std::mem::replace(
            &mut self.0,
            Command::new("true").spawn().expect("placeholder"),
        );
        child.wait_with_output().expect("the plugin exits")
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn doctor(sim: &SimHost) -> serde_json::Value {
    let out =
        kata_gpu_tests::run_on_host(env!("CARGO_BIN_EXE_kata-gpu"), sim, &["doctor", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

#[test]
fn the_plugin_registers_doctor_checks_it_and_sigterm_removes_its_socket() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    sim.write_cdi_specs();
    // No kubelet: doctor says pods ask by annotation, and that is no failure.
    let report = doctor(&sim);
    assert_eq!(check(&report, "device plugin")["verdict"], "ok", "{report}");

    let kubelet = KubeletRegistration::start(sim.root());
    let report = doctor(&sim);
    let c = check(&report, "device plugin nvidia.com/GH100_H100_PCIE");
    assert_eq!(c["verdict"], "fail", "{report}");
    assert_eq!(
        c["detail"],
        "/var/lib/kubelet/device-plugins/kata-gpu-GH100_H100_PCIE.sock missing: pods asking for nvidia.com/GH100_H100_PCIE stay Pending"
    );

    // A plugin running (its process in the host's /proc) that has not served the GPU yet:
    // doctor does not tell the admin to run it.
    let cmdline = sim.path("proc/777/cmdline");
    std::fs::create_dir_all(cmdline.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &cmdline,
        b"/usr/local/bin/kata-gpu\0--host-root\0/host\0device-plugin\0",
    )
    .expect("cmdline");
    let report = doctor(&sim);
    let c = check(&report, "device plugin nvidia.com/GH100_H100_PCIE");
    assert_eq!(c["verdict"], "fail", "{report}");
    let fix = c["fix"].as_str().expect("a fix");
    assert!(!fix.contains("run the device plugin"), "{fix}");
    assert!(
        fix.contains("pid 777") && fix.contains("--interval"),
        "{fix}"
    );
    std::fs::remove_file(&cmdline).expect("rm cmdline");

    let plugin = Plugin::start(&sim);
    let registered = kubelet.next_registration();
    // NVIDIA's sandbox device plugin's name for an H100 PCIe (issue 24 item 0).
    assert_eq!(registered.resource_name, "nvidia.com/GH100_H100_PCIE");
    assert_eq!(registered.endpoint, "kata-gpu-GH100_H100_PCIE.sock");
    let report = doctor(&sim);
    assert_eq!(check(&report, "kubelet registration")["verdict"], "ok");
    let c = check(&report, "device plugin nvidia.com/GH100_H100_PCIE");
    assert_eq!(c["verdict"], "ok", "{report}");
    assert_eq!(
        c["detail"],
        "advertises 1 (0000:41:00.0), all in the host CDI spec"
    );

    // The host spec no longer defines what the plugin advertises.
    std::fs::remove_file(sim.path("var/run/cdi/nvidia.com-pgpu.yaml")).expect("remove spec");
    let c = doctor(&sim);
    let c = check(&c, "device plugin nvidia.com/GH100_H100_PCIE");
    assert_eq!(c["verdict"], "fail");
    assert_eq!(
        c["detail"],
        "advertises 0000:41:00.0 which the host CDI spec does not define"
    );

    let out = plugin.terminate();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let socket = kubelet.dir().join("kata-gpu-GH100_H100_PCIE.sock");
    assert!(!socket.exists(), "{} left", socket.display());
}

/// SIGTERM while kubelet has accepted the registration and never answers: the plugin ends
/// at once (well within the registration's own timeout), cleanly, and leaves no socket.
#[test]
fn sigterm_ends_the_plugin_while_kubelet_never_answers() {
    use kata_gpu_tests::kubelet::SilentKubelet;
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    sim.write_cdi_specs();
    let silent = SilentKubelet::start(sim.root());
    let mut plugin = Plugin::start(&sim);
    assert!(
        silent.wait_accepted(1, std::time::Duration::from_secs(10)),
        "the plugin never tried to register"
    );
    // Registering now, and kubelet silent.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pid = Pid::from_raw(i32::try_from(plugin.0.id()).expect("pid"));
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = plugin.0.try_wait().expect("wait") {
            break Some(status);
        }
        if start.elapsed() > std::time::Duration::from_secs(3) {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let status = status.expect("the plugin did not end within 3 s of SIGTERM");
    assert_eq!(status.code(), Some(0));
    let socket = sim.path("var/lib/kubelet/device-plugins/kata-gpu-pgpu.sock");
    assert!(!socket.exists(), "{} left", socket.display());
}
