//! The Create-time PodResources lookup on an HGX board (a pod allocated all 8 GPUs and 4
//! NVSwitches): a fresh runtime, a connection and one `Get` to a stand-in that speaks
//! kubelet's protocol, as the shim makes it once per sandbox; beside the plan of the same
//! devices, the work Create already does, measured in one run.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use kata_gpu_shim::host::Host;
use kata_gpu_shim::plan::{plan, BaseValues, PlanInput, Policy};
use kata_gpu_shim::pod_resources::{allocated_names, get, list};
use kata_gpu_shim::Profile;
use kata_gpu_tests::kubelet::{Allocation, PodResourcesStandIn};
use kata_gpu_tests::SimHost;

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
    let names = allocated_names(&pod).expect("names");
    assert_eq!(names.len(), 12);

    let host = Host::new(sim.root());
    let registry = sim.registry();
    let mut oci = oci_spec::runtime::Spec::default();
    oci.set_annotations(Some(HashMap::from([(
        "cdi.k8s.io/kata-gpu-allocated".to_owned(),
        list(&names),
    )])));
    let base = BaseValues::default();
    let policy = Policy::default();
    let input = PlanInput {
        profile: Profile::Snp,
        oci: &oci,
        registry: &registry,
        host: &host,
        base: &base,
        policy: &policy,
    };
    assert_eq!(plan(&input).expect("plans").devices.len(), 12);

    let mut group = c.benchmark_group("pod_resources");
    group.bench_function("baseline_plan_hgx_12_devices", |b| {
        b.iter(|| black_box(plan(black_box(&input)).expect("plans")))
    });
    group.bench_function("lookup_hgx_12_devices", |b| {
        b.iter(|| {
            let pod = get(black_box(&socket), "default", "train", timeout).expect("lookup");
            black_box(allocated_names(&pod).expect("names"))
        })
    });
    group.finish();
}

criterion_group!(benches, hgx);
criterion_main!(benches);
