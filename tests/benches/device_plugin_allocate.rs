//! kubelet's `Allocate` of all 8 GPUs of an HGX board over the plugin's socket, beside the
//! floor of a gRPC call that does nothing (`GetDevicePluginOptions`) on the same connection,
//! and the answer's pure logic alone, measured in one run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use kata_gpu_device_plugin::{allocate, inventory, Config, Strategy};
use kata_gpu_kubelet_api::deviceplugin::v1beta1::device_plugin_client::DevicePluginClient;
use kata_gpu_kubelet_api::deviceplugin::v1beta1::{
    AllocateRequest, ContainerAllocateRequest, Empty,
};
use kata_gpu_plan::host::Host;
use kata_gpu_tests::kubelet::{DevicePlugin, KubeletRegistration};
use kata_gpu_tests::SimHost;

fn hgx(c: &mut Criterion) {
    let sim = SimHost::hgx_8x_h100();
    let kubelet = KubeletRegistration::start(sim.root());
    let _plugin = DevicePlugin::start(Config {
        interval: Duration::from_secs(3600),
        naming: kata_gpu_device_plugin::Naming::Pgpu,
        ..Config::new(sim.root())
    });
    let endpoint = loop {
        let r = kubelet.next_registration();
        if r.resource_name == "nvidia.com/pgpu" {
            break kubelet.dir().join(r.endpoint);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut client = runtime.block_on(async {
        DevicePluginClient::new(
            kata_gpu_kubelet_api::connect_unix(&endpoint)
                .await
                .expect("connect"),
        )
    });
    let request = AllocateRequest {
        container_requests: vec![ContainerAllocateRequest {
            devices_ids: [
                "0000:18:00.0",
                "0000:2a:00.0",
                "0000:3a:00.0",
                "0000:5d:00.0",
                "0000:9a:00.0",
                "0000:ab:00.0",
                "0000:ba:00.0",
                "0000:db:00.0",
            ]
            .map(str::to_owned)
            .to_vec(),
        }],
    };
    let answer = runtime
        .block_on(client.allocate(request.clone()))
        .expect("Allocate")
        .into_inner();
    assert_eq!(answer.container_responses[0].cdi_devices.len(), 8);
    let resources =
        inventory(&Host::new(sim.root()), kata_gpu_device_plugin::Naming::Pgpu).expect("inventory");

    let mut group = c.benchmark_group("device_plugin");
    group.bench_function("floor_get_device_plugin_options", |b| {
        b.iter(|| {
            black_box(
                runtime
                    .block_on(client.get_device_plugin_options(Empty {}))
                    .expect("options"),
            )
        })
    });
    group.bench_function("allocate_8_gpus_hgx", |b| {
        b.iter(|| {
            black_box(
                runtime
                    .block_on(client.allocate(black_box(request.clone())))
                    .expect("Allocate"),
            )
        })
    });
    group.bench_function("allocate_8_gpus_hgx_logic_only", |b| {
        b.iter(|| {
            black_box(allocate(
                &resources[0],
                black_box(&request),
                Strategy::default(),
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, hgx);
criterion_main!(benches);
