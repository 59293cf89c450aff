//! What Debian's QEMU can check of the arguments the plan emits: the root-port topology
//! of an HGX plan starts (paused) and QMP `query-pci` shows every port, and every property
//! we give `pcie-root-port`, `vfio-pci` and the confidential guest object exists.
//!
//! Debian 12's QEMU is 7.2: it has no `iommufd` object or `vfio-pci` property and no
//! `sev-snp-guest` object (both arrived in QEMU 9.x). The test checks that they are
//! absent there, checks the SNP properties on `sev-guest`, which shares them, and checks
//! the real objects whenever a QEMU that has them is installed.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kata_gpu_shim::host::Host;
use kata_gpu_shim::plan::{plan, BaseValues, PlanInput, Policy, SandboxPlan};
use kata_gpu_shim::Profile;
use kata_gpu_tests::{on_path, require, SimHost};

const QEMU: &str = "qemu-system-x86_64";

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
        base: &BaseValues::default(),
        policy: &Policy::default(),
    })
    .expect("plans")
}

/// The values following `flag` in an argument list (`-device X` → X).
fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

/// The property names QEMU lists for `-device NAME,help` or `-object NAME,help`.
fn properties(kind: &str, name: &str) -> Vec<String> {
    let out = Command::new(QEMU)
        .args([kind, &format!("{name},help")])
        .output()
        .expect("run qemu help");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().split_once('=').map(|(k, _)| k.to_owned()))
        .collect()
}

fn object_types() -> String {
    let out = Command::new(QEMU)
        .args(["-object", "help"])
        .output()
        .expect("run qemu -object help");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Property names of a `type,key=value,…` argument, without the type.
fn keys(arg: &str) -> Vec<&str> {
    arg.split(',')
        .skip(1)
        .map(|kv| kv.split_once('=').map_or(kv, |(k, _)| k))
        .collect()
}

fn assert_known(kind: &str, ty: &str, arg: &str, skip: &[&str]) {
    let known = properties(kind, ty);
    assert!(!known.is_empty(), "{QEMU} {kind} {ty},help listed nothing");
    for key in keys(arg) {
        if skip.contains(&key) || key == "id" {
            continue;
        }
        assert!(
            known.iter().any(|k| k == key),
            "{ty} has no property {key} (arg {arg})"
        );
    }
}

#[test]
fn every_property_we_emit_exists_in_qemu() {
    require(
        on_path(QEMU),
        "qemu-system-x86_64 (Debian's qemu-system-x86) is not on PATH",
    );
    let plan = hgx_plan();
    let devices = values(&plan.qemu_args, "-device");
    let ports: Vec<&str> = devices
        .iter()
        .copied()
        .filter(|d| d.starts_with("pcie-root-port,"))
        .collect();
    let vfio: Vec<&str> = devices
        .iter()
        .copied()
        .filter(|d| d.starts_with("vfio-pci,"))
        .collect();
    assert_eq!((ports.len(), vfio.len()), (12, 12));
    for p in &ports {
        // `bus` belongs to every device and is not listed; the QMP test proves it.
        assert_known("-device", "pcie-root-port", p, &["bus"]);
    }
    let types = object_types();
    let has_iommufd = types.lines().any(|l| l.trim() == "iommufd");
    let has_snp = types.lines().any(|l| l.trim() == "sev-snp-guest");
    for v in &vfio {
        // `bus` is a property of every device; iommufd only exists from QEMU 9.0 on.
        let skip: &[&str] = if has_iommufd {
            &["bus"]
        } else {
            &["bus", "iommufd"]
        };
        assert_known("-device", "vfio-pci", v, skip);
    }
    if !has_iommufd {
        assert!(!properties("-device", "vfio-pci")
            .iter()
            .any(|k| k == "iommufd"));
        eprintln!("note: this QEMU has no iommufd object; the iommufd arguments were not checked");
    } else {
        assert_known("-object", "iommufd", "iommufd,id=iommufd0", &[]);
    }
    if has_snp {
        let snp = snp_object(&plan);
        assert_known("-object", "sev-snp-guest", snp, &[]);
    } else {
        eprintln!("note: this QEMU has no sev-snp-guest; the SNP object's properties are checked on sev-guest by the QMP test");
    }
}

fn snp_object(plan: &SandboxPlan) -> &str {
    values(&plan.qemu_args, "-object")
        .into_iter()
        .find(|o| o.starts_with("sev-snp-guest,"))
        .expect("an SNP guest object")
}

struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &std::path::Path) -> Self {
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("QMP socket {} never answered: {e}", path.display()),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut qmp = Self {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            writer: stream,
        };
        let greeting = qmp.line();
        assert!(greeting.get("QMP").is_some(), "{greeting}");
        qmp.execute("qmp_capabilities");
        qmp
    }

    fn line(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read QMP");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP sent {line:?}: {e}"))
    }

    fn execute(&mut self, command: &str) -> serde_json::Value {
        self.execute_json(&format!("{{\"execute\": \"{command}\"}}"))
    }

    fn execute_json(&mut self, json: &str) -> serde_json::Value {
        let command = json.to_owned();
        writeln!(self.writer, "{json}").expect("write QMP");
        loop {
            let reply = self.line();
            if let Some(r) = reply.get("return") {
                return r.clone();
            }
            assert!(reply.get("error").is_none(), "{command}: {reply}");
        }
    }
}

#[test]
fn the_root_port_topology_starts_and_qmp_shows_every_port() {
    require(
        on_path(QEMU),
        "qemu-system-x86_64 (Debian's qemu-system-x86) is not on PATH",
    );
    let plan = hgx_plan();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("qmp.sock");
    let mut args: Vec<String> = vec![
        "-S".into(),
        "-machine".into(),
        "q35,accel=tcg".into(),
        "-m".into(),
        "256".into(),
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", sock.display()),
    ];
    for port in values(&plan.qemu_args, "-device")
        .into_iter()
        .filter(|d| d.starts_with("pcie-root-port,"))
    {
        args.push("-device".into());
        args.push(port.to_owned());
    }
    // The SNP guest object, on sev-guest where QEMU has no sev-snp-guest: the properties we
    // set (cbitpos, reduced-phys-bits, policy, kernel-hashes) are shared by both.
    let has_snp = object_types().lines().any(|l| l.trim() == "sev-snp-guest");
    let snp = snp_object(&plan);
    args.push("-object".into());
    args.push(if has_snp {
        snp.to_owned()
    } else {
        snp.replacen("sev-snp-guest", "sev-guest", 1)
    });
    let mut child = Command::new(QEMU)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu");
    let mut qmp = Qmp::connect(&sock);
    let pci = qmp.execute("query-pci");
    let cbitpos = qmp.execute_json(
        r#"{"execute": "qom-get", "arguments": {"path": "/objects/snp", "property": "cbitpos"}}"#,
    );
    let policy = qmp.execute_json(
        r#"{"execute": "qom-get", "arguments": {"path": "/objects/snp", "property": "policy"}}"#,
    );
    let reduced = qmp.execute_json(r#"{"execute": "qom-get", "arguments": {"path": "/objects/snp", "property": "reduced-phys-bits"}}"#);
    let _ = writeln!(qmp.writer, "{{\"execute\": \"quit\"}}");
    let status = child.wait().expect("qemu exits");
    assert!(
        status.success() || status.code().is_none(),
        "qemu: {status}"
    );

    let bus0 = &pci[0]["devices"];
    let ports: Vec<(String, u64)> = bus0
        .as_array()
        .expect("devices")
        .iter()
        .filter(|d| d["class_info"]["class"] == 0x0604)
        .map(|d| {
            (
                d["qdev_id"].as_str().unwrap_or_default().to_owned(),
                d["slot"].as_u64().unwrap_or(99),
            )
        })
        .collect();
    let ids: Vec<&str> = ports.iter().map(|(id, _)| id.as_str()).collect();
    let want: Vec<String> = (0..12).map(|i| format!("rp{i}")).collect();
    assert_eq!(ids, want, "root ports on pcie.0: {bus0}");
    let slots: Vec<u64> = ports.iter().map(|(_, slot)| *slot).collect();
    assert!(
        slots.windows(2).all(|w| w[0] < w[1]),
        "one slot per port: {slots:?}"
    );
    assert_eq!(
        cbitpos,
        serde_json::json!(u64::from(Policy::default().tee.cbitpos))
    );
    assert_eq!(policy, serde_json::json!(0x30000));
    assert_eq!(reduced, serde_json::json!(1));
}

#[test]
fn qemu_refuses_a_property_it_does_not_have() {
    // The control for the tests above: a misspelt property stops QEMU at once.
    require(
        on_path(QEMU),
        "qemu-system-x86_64 (Debian's qemu-system-x86) is not on PATH",
    );
    let out = Command::new(QEMU)
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
