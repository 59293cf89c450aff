//! The sandbox plan for an HGX board (8 H100 + 4 NVSwitches, 12 functions), beside the
//! floor of merely reading the board's PCI functions from sysfs, measured in one run.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use kata_gpu_plan::host::Host;
use kata_gpu_plan::host_spec::host_specs;
use kata_gpu_plan::sandbox::{plan, KataValues, PlanInput, Policy};
use kata_gpu_plan::Profile;
use kata_gpu_simhost::SimHost;

fn hgx(c: &mut Criterion) {
    let sim = SimHost::hgx_8x_h100();
    let host = Host::new(sim.root());
    sim.write_specs(&host_specs(&host).expect("host specs").specs);
    let registry = sim.registry();
    let names: Vec<String> = (0..8)
        .map(|i| format!("nvidia.com/pgpu={i}"))
        .chain((0..4).map(|i| format!("nvidia.com/nvswitch={i}")))
        .collect();
    let mut oci = oci_spec::runtime::Spec::default();
    oci.set_annotations(Some(HashMap::from([(
        "cdi.k8s.io/all".to_owned(),
        names.join(","),
    )])));
    let base = KataValues::template(Profile::Snp);
    let policy = Policy::default();
    let input = PlanInput {
        profile: Profile::Snp,
        oci: &oci,
        registry: &registry,
        host: &host,
        base: &base,
        policy: &policy,
        sandbox_id: None,
    };
    assert_eq!(plan(&input).expect("plans").devices.len(), 12);

    let mut group = c.benchmark_group("plan");
    group.bench_function("floor_read_pci_functions", |b| {
        b.iter(|| black_box(host.pci_functions().expect("reads")))
    });
    group.bench_function("hgx_8gpu_4nvswitch_snp", |b| {
        b.iter(|| black_box(plan(black_box(&input)).expect("plans")))
    });
    group.finish();
}

criterion_group!(benches, hgx);
criterion_main!(benches);
