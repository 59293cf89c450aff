//! The QEMU arguments the plan predicts Kata will run, checked against a real QEMU 10 (the
//! first with both `sev-snp-guest` and `iommufd`): every property of every `-device`,
//! `-object` and `-machine` argument of an HGX SNP plan is one QEMU lists, and the
//! root-port topology, the iommufd objects and the SNP guest object start (paused) and
//! read back over QMP as given. Kata's random ids (shown by the plan as patterns) are given
//! fixed values here. That the arguments are Kata's own is `kata_argv.rs`'s to prove.
//!
//! QEMU is spoken to over QMP on its stdin and stdout (`-qmp stdio`), so no socket has to
//! appear before the test can talk. The lists come from QMP (`device-list-properties`,
//! `qom-list-properties`), not from `-object X,help`, which omits properties QEMU adds per
//! instance: `sev-snp-guest,help` does not list `cbitpos` or `reduced-phys-bits`.
//! The `vfio-pci` devices themselves cannot start without the host functions they name.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use kata_gpu_plan::host::Host;
use kata_gpu_plan::sandbox::kata::{random_hex, RANDOM_UUID};
use kata_gpu_plan::sandbox::{plan, KataValues, PlanInput, Policy, SandboxPlan};
use kata_gpu_plan::Profile;
use kata_gpu_tests::parts::qemu;
use kata_gpu_tests::{available, SimHost, WriteCdiSpecs};
use serde_json::{json, Value};

fn hgx_plan() -> SandboxPlan {
    let sim = SimHost::hgx_8x_h100();
    let host = Host::new(sim.root());
    sim.write_cdi_specs();
    let registry = sim.registry();
    let names: Vec<String> = (0..8)
        .map(|i| format!("nvidia.com/pgpu={i}"))
        .chain((0..4).map(|i| format!("nvidia.com/nvswitch={i}")))
        .collect();
    let mut oci = oci_spec::runtime::Spec::default();
    oci.set_annotations(Some(
        [("cdi.k8s.io/all".to_owned(), names.join(","))]
            .into_iter()
            .collect(),
    ));
    plan(&PlanInput {
        profile: Profile::Snp,
        oci: &oci,
        registry: &registry,
        host: &host,
        base: &KataValues::template(Profile::Snp),
        policy: &Policy::default(),
        sandbox_id: None,
    })
    .expect("plans")
}

/// The plan's arguments with each random part Kata draws at start given a fixed value.
fn concrete(args: &[String]) -> Vec<String> {
    args.iter()
        .map(|a| {
            a.replace(&random_hex(16), "0123456789abcdef")
                .replace(RANDOM_UUID, "d5094f22-a9fc-4ace-ad43-f47def6e3559")
                .replace("<vhost-vsock fd>", "4")
                .replace("<guest cid>", "3")
        })
        .collect()
}

/// The values following `flag` in an argument list (`-device X` → X).
fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

/// The `type,key=value,…` arguments of `flag` whose type is `ty`.
fn of_type<'a>(args: &'a [String], flag: &str, ty: &str) -> Vec<&'a str> {
    values(args, flag)
        .into_iter()
        .filter(|a| a.split(',').next() == Some(ty))
        .collect()
}

/// The `key=value` pairs of a `type,key=value,…` argument, without the type.
fn pairs(arg: &str) -> Vec<(&str, &str)> {
    arg.split(',')
        .skip(1)
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .collect()
}

/// A QEMU started paused with QMP on its stdin and stdout.
struct Qemu {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Qemu {
    fn start(qemu: &Path, args: &[String]) -> Self {
        let mut child = Command::new(qemu)
            .args(["-S", "-nodefaults", "-display", "none", "-qmp", "stdio"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start qemu");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut q = Self {
            child,
            stdin,
            stdout,
        };
        let greeting = q.message();
        assert!(greeting.get("QMP").is_some(), "{greeting}");
        q.execute("qmp_capabilities", json!({}));
        q
    }

    /// The next QMP message; QEMU exiting instead is a failure that shows its stderr.
    fn message(&mut self) -> Value {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).expect("read QMP");
        if n == 0 {
            let status = self.child.wait().expect("wait qemu");
            let mut stderr = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            panic!("qemu exited ({status}): {stderr}");
        }
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP sent {line:?}: {e}"))
    }

    /// Runs a QMP command and returns its `return`; an `error` reply fails the test.
    fn execute(&mut self, command: &str, arguments: Value) -> Value {
        let request = json!({"execute": command, "arguments": arguments});
        self.send(&request);
        loop {
            let reply = self.message();
            if let Some(r) = reply.get("return") {
                return r.clone();
            }
            assert!(reply.get("error").is_none(), "{request}: {reply}");
        }
    }

    fn qom_get(&mut self, path: &str, property: &str) -> Value {
        self.execute("qom-get", json!({"path": path, "property": property}))
    }

    /// Property name → type, as QEMU lists them for a device or an object type.
    fn properties(&mut self, flag: &str, ty: &str) -> BTreeMap<String, String> {
        let command = if flag == "-device" {
            "device-list-properties"
        } else {
            "qom-list-properties"
        };
        let list = self.execute(command, json!({ "typename": ty }));
        let map: BTreeMap<String, String> = list
            .as_array()
            .expect("a property list")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_owned(),
                    p["type"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        assert!(!map.is_empty(), "QEMU lists no property of {ty}");
        map
    }

    /// Writes one QMP line in one write: QEMU acts on a JSON object as soon as it is whole,
    /// so a `quit` written apart from its newline lets QEMU exit before the newline comes.
    fn send(&mut self, request: &Value) {
        self.stdin
            .write_all(format!("{request}\n").as_bytes())
            .expect("write QMP");
    }

    fn quit(mut self) {
        self.send(&json!({"execute": "quit"}));
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        let status = self.child.wait().expect("qemu exits");
        assert!(status.success(), "qemu: {status}");
    }
}

/// QEMU 10 or later, or `None` after saying the test was skipped (a failure in CI).
fn qemu10(test: &str) -> Option<PathBuf> {
    available(test, qemu())
}

#[test]
fn every_property_the_plan_emits_is_one_qemu_lists() {
    let Some(qemu) = qemu10("every_property_the_plan_emits_is_one_qemu_lists") else {
        return;
    };
    let args = &concrete(&hgx_plan().vm.args);
    let ports = of_type(args, "-device", "pcie-root-port");
    let vfio = of_type(args, "-device", "vfio-pci");
    let iommufd = of_type(args, "-object", "iommufd");
    let snp = of_type(args, "-object", "sev-snp-guest");
    assert_eq!(
        (ports.len(), vfio.len(), iommufd.len(), snp.len()),
        (12, 12, 12, 1),
        "{args:?}"
    );
    let mut q = Qemu::start(&qemu, &["-machine".into(), "none".into()]);
    for flag in ["-device", "-object"] {
        for arg in values(args, flag) {
            let ty = arg.split(',').next().unwrap_or_default();
            let known = q.properties(flag, ty);
            for (key, _) in pairs(arg) {
                // `id` names any device or object; `bus` is qdev's own, and the topology
                // test proves it by starting the ports on it.
                if key == "id" || (flag == "-device" && key == "bus") {
                    continue;
                }
                assert!(
                    known.contains_key(key),
                    "{ty} has no property {key} ({arg})"
                );
            }
        }
    }
    // Each vfio-pci device links to its iommufd object by that object's type.
    let vfio_props = q.properties("-device", "vfio-pci");
    assert_eq!(
        vfio_props.get("iommufd").map(String::as_str),
        Some("link<iommufd>")
    );
    for v in &vfio {
        let link = pairs(v)
            .into_iter()
            .find(|(k, _)| *k == "iommufd")
            .map(|(_, v)| v);
        let object = link.map(|id| format!("iommufd,id={id}"));
        assert!(
            object.as_deref().is_some_and(|o| iommufd.contains(&o)),
            "{v} does not name one of the plan's iommufd objects {iommufd:?}"
        );
    }
    // The machine: `confidential-guest-support` links to the SNP object, which is one;
    // `accel` and `kernel_irqchip` are taken from -machine on behalf of the accelerator.
    let machine = values(args, "-machine");
    assert_eq!(machine.len(), 1, "{args:?}");
    let machine_props = q.properties("-object", "x86-machine");
    for (key, value) in pairs(machine[0]) {
        match key {
            "accel" => assert_eq!(value, "kvm"),
            "kernel_irqchip" => {
                let kvm = q.properties("-object", "kvm-accel");
                assert!(kvm.contains_key("kernel-irqchip"), "{kvm:?}");
            }
            "confidential-guest-support" => {
                assert_eq!(
                    machine_props.get(key).map(String::as_str),
                    Some("link<confidential-guest-support>")
                );
                assert!(snp[0].contains(&format!(",id={value},")), "{}", snp[0]);
            }
            _ => assert!(machine_props.contains_key(key), "no machine property {key}"),
        }
    }
    let cgs = q.execute(
        "qom-list-types",
        json!({"implements": "confidential-guest-support"}),
    );
    assert!(
        cgs.as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "sev-snp-guest")),
        "{cgs}"
    );
    q.quit();
}

#[test]
fn the_hgx_topology_starts_paused_and_qmp_reads_it_back() {
    let Some(qemu) = qemu10("the_hgx_topology_starts_paused_and_qmp_reads_it_back") else {
        return;
    };
    let planned = concrete(&hgx_plan().vm.args);
    let ports = of_type(&planned, "-device", "pcie-root-port");
    let iommufd = of_type(&planned, "-object", "iommufd");
    let snp = of_type(&planned, "-object", "sev-snp-guest");
    // TCG cannot run an SNP guest, so the machine does not point at the object; the object
    // is created with every property the plan gives it all the same.
    let mut args: Vec<String> = vec!["-machine".into(), "q35,accel=tcg".into()];
    args.extend(["-m".into(), "256".into()]);
    for p in &ports {
        args.extend(["-device".into(), (*p).to_owned()]);
    }
    for o in iommufd.iter().chain(&snp) {
        args.extend(["-object".into(), (*o).to_owned()]);
    }
    let mut q = Qemu::start(&qemu, &args);
    let pci = q.execute("query-pci", json!({}));
    let bus0 = &pci[0]["devices"];
    let found: Vec<(String, u64)> = bus0
        .as_array()
        .expect("devices")
        .iter()
        .filter(|d| d["class_info"]["class"] == 0x0604)
        .map(|d| {
            (
                d["qdev_id"].as_str().unwrap_or_default().to_owned(),
                d["slot"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    let ids: Vec<&str> = found.iter().map(|(id, _)| id.as_str()).collect();
    let want: Vec<String> = (0..12).map(|i| format!("rp{i}")).collect();
    assert_eq!(ids, want, "root ports on pcie.0: {bus0}");
    let slots: Vec<u64> = found.iter().map(|(_, slot)| *slot).collect();
    assert!(
        slots.windows(2).all(|w| w[0] < w[1]),
        "one slot per port: {slots:?}"
    );
    // Every property of every port reads back as the plan set it.
    for p in &ports {
        let (_, id) = pairs(p)
            .into_iter()
            .find(|(k, _)| *k == "id")
            .expect("a port id");
        for (key, value) in pairs(p) {
            let want = match key {
                "id" | "bus" => continue,
                "multifunction" => json!(value == "on"),
                _ => json!(value.parse::<u64>().expect("a number")),
            };
            let got = q.qom_get(&format!("/machine/peripheral/{id}"), key);
            assert_eq!(got, want, "{id}.{key} ({p})");
        }
    }
    let objects = q.execute("qom-list", json!({"path": "/objects"}));
    for o in &iommufd {
        let id = o.trim_start_matches("iommufd,id=");
        assert!(
            objects.as_array().is_some_and(|list| list
                .iter()
                .any(|e| e["name"] == id && e["type"] == "child<iommufd>")),
            "{id} not among {objects}"
        );
    }
    for (key, value) in pairs(snp[0]) {
        let want = match key {
            "id" => continue,
            "kernel-hashes" => json!(value == "on"),
            _ => json!(match value.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).expect("hex"),
                None => value.parse::<u64>().expect("a number"),
            }),
        };
        assert_eq!(q.qom_get("/objects/snp", key), want, "snp.{key}");
    }
    assert_eq!(
        q.qom_get("/objects/snp", "cbitpos"),
        json!(u64::from(Policy::default().tee.cbitpos))
    );
    q.quit();
}

#[test]
fn qemu_refuses_a_property_it_does_not_have() {
    // The control for the tests above: a misspelt property stops QEMU at once.
    let Some(qemu) = qemu10("qemu_refuses_a_property_it_does_not_have") else {
        return;
    };
    let out = Command::new(qemu)
        .args([
            "-S",
            "-machine",
            "q35,accel=tcg",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args([
            "-device",
            "pcie-root-port,id=rp0,bus=pcie.0,chassis=0,slot=0,pref64-reserv=1G",
        ])
        .output()
        .expect("run qemu");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pref64-reserv"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
