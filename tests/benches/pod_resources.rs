//! The Create-time PodResources lookup on an HGX board (a pod allocated all 8 GPUs and 4
//! NVSwitches): a fresh runtime, a connection and one `Get` to a stand-in that speaks
//! kubelet's protocol, as the shim makes it once per sandbox; beside reading the board's PCI
//! functions from sysfs (the floor of the plan Create makes anyway), measured in one run.
//! And the same lookup with the checks Create makes around it (the pod's own annotations
//! against the allocation, the allocation written into the sandbox's spec, and the claim of
//! its 12 functions under the node's claims lock against every other sandbox's), against
//! the lookup alone.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use kata_gpu_plan::host::Host;
use kata_gpu_plan::settings::DeviceSource;
use kata_gpu_shim::claims::{claim, Claim};
use kata_gpu_shim::pod_resources::{allocated_names, get, sandbox_devices, Lookup};
use kata_gpu_tests::kubelet::{Allocation, PodResourcesStandIn};
use kata_gpu_tests::{SimHost, WriteCdiSpecs};

fn hgx(c: &mut Criterion) {
    let sim = SimHost::hgx_8x_h100();
    sim.write_cdi_specs();
    let socket = sim.path("var/lib/kubelet/pod-resources/kubelet.sock");
    let gpus: Vec<String> = (0..8).map(|i| i.to_string()).collect();
    let switches: Vec<String> = (0..4).map(|i| i.to_string()).collect();
    let _kubelet = PodResourcesStandIn::start(
        &socket,
        vec![Allocation {
            namespace: "default".into(),
            name: "train".into(),
            containers: vec![(
                "main".into(),
                vec![
                    ("nvidia.com/pgpu".into(), gpus),
                    ("nvidia.com/nvswitch".into(), switches),
                ],
            )],
        }],
    );
    let timeout = Duration::from_secs(5);
    let pod = get(&socket, "default", "train", timeout).expect("lookup");
    let host = Host::new(sim.root());
    let resources = kata_gpu_plan::resource_names::host_resources(&host).expect("resources");
    let names = allocated_names(&pod, &resources).expect("names");
    assert_eq!(names.len(), 12);

    assert_eq!(host.pci_functions().expect("reads").len(), 12);

    let mut group = c.benchmark_group("pod_resources");
    group.bench_function("floor_read_pci_functions", |b| {
        b.iter(|| black_box(host.pci_functions().expect("reads")))
    });
    group.bench_function("lookup_hgx_12_devices", |b| {
        b.iter(|| {
            let pod = get(black_box(&socket), "default", "train", timeout).expect("lookup");
            black_box(allocated_names(&pod, &resources).expect("names"))
        })
    });
    // The checks: a sandbox spec as CRI makes it, naming the pod; its own annotation asks
    // what kubelet gave (NVIDIA's documented form); 7 other live sandboxes hold claims.
    let registry = sim.registry();
    let lookup = Lookup {
        socket: Some(socket.clone()),
        timeout,
        source: DeviceSource::Kubelet,
        host_root: sim.root().to_path_buf(),
    };
    let mut spec = oci_spec::runtime::Spec::default();
    spec.set_annotations(Some(
        [
            ("io.kubernetes.cri.sandbox-namespace", "default"),
            ("io.kubernetes.cri.sandbox-name", "train"),
            ("io.kubernetes.cri.container-type", "sandbox"),
            ("cdi.k8s.io/gpu", "nvidia.com/pgpu=0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    ));
    let state = tempfile::tempdir().expect("state dir");
    for i in 0..7 {
        let other = Claim {
            namespace: "k8s.io".into(),
            sandbox: format!("other-{i}"),
            pod: Some(format!("default/other-{i}")),
            devices: vec![format!("0000:f{i}:00.0")],
        };
        claim(
            state.path(),
            &state.path().join("k8s.io").join(&other.sandbox),
            &other,
        )
        .expect("another sandbox's claim");
    }
    let ours = Claim {
        namespace: "k8s.io".into(),
        sandbox: "train".into(),
        pod: Some("default/train".into()),
        devices: host
            .pci_functions()
            .expect("reads")
            .iter()
            .map(|f| f.bdf.to_string())
            .collect(),
    };
    let dir = state.path().join("k8s.io/train");
    group.bench_function("lookup_and_create_checks_hgx_12_devices", |b| {
        b.iter(|| {
            let mut sandbox = spec.clone();
            let allocated =
                sandbox_devices(&lookup, &mut sandbox, &registry, "train").expect("the allocation");
            claim(state.path(), &dir, &ours).expect("claimed");
            black_box((allocated, sandbox))
        })
    });
    group.finish();
}

criterion_group!(benches, hgx);
criterion_main!(benches);
