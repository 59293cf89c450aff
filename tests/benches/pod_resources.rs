//! The Create-time PodResources lookup on an HGX board (a pod allocated all 8 GPUs and 4
//! NVSwitches): a fresh runtime, a connection and one `Get` to a stand-in that speaks
//! kubelet's protocol, as the shim makes it once per sandbox; beside reading the board's PCI
//! functions from sysfs (the floor of the plan Create makes anyway), measured in one run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use kata_gpu_plan::host::Host;
use kata_gpu_shim::pod_resources::{allocated_names, get};
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
    group.finish();
}

criterion_group!(benches, hgx);
criterion_main!(benches);
