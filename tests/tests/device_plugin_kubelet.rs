//! The device plugin against a stand-in for kubelet that speaks the real protocol: a
//! Registration server on kubelet's socket, then a client calling the plugin's socket the
//! way kubelet's device manager does, on simulated H100 and HGX hosts.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use kata_gpu_device_plugin::{Config, Naming};
use kata_gpu_kubelet_api::connect_unix;
use kata_gpu_kubelet_api::deviceplugin::v1beta1::device_plugin_client::DevicePluginClient;
use kata_gpu_kubelet_api::deviceplugin::v1beta1::{
    AllocateRequest, ContainerAllocateRequest, ContainerPreferredAllocationRequest, Empty,
    ListAndWatchResponse, PreferredAllocationRequest,
};
use kata_gpu_tests::kubelet::{DevicePlugin, KubeletRegistration};
use kata_gpu_tests::simhost::{SimHost, VfioMode};
use kata_gpu_tests::WriteCdiSpecs;
use tokio_stream::StreamExt;
use tonic::Streaming;

/// A bound meant only to fail a test that would otherwise hang.
const HANG: Duration = Duration::from_secs(60);

/// A client of the plugin's socket `endpoint`, as kubelet's device manager connects.
async fn plugin(
    kubelet: &KubeletRegistration,
    endpoint: &str,
) -> DevicePluginClient<tonic::transport::Channel> {
    DevicePluginClient::new(
        connect_unix(&kubelet.dir().join(endpoint))
            .await
            .expect("connect to the plugin's socket"),
    )
}

/// The plugin with a short interval, on its own runtime, naming its resources by kind
/// (`--resource-naming pgpu`; NVIDIA's names: `nvidia_names_by_default`).
fn start_plugin(root: &Path) -> DevicePlugin {
    DevicePlugin::start(Config {
        interval: Duration::from_millis(50),
        naming: Naming::Pgpu,
        ..Config::new(root)
    })
}

/// The H100 host's one GPU with `health`, as ListAndWatch lists it: by its PCI address.
fn gpu0(health: &str) -> Vec<(String, String)> {
    vec![("0000:41:00.0".to_owned(), health.to_owned())]
}

/// The HGX board's GPUs, by index, and NVSwitches: the device plugin's ids are their PCI
/// addresses (issue 24 item 7).
const HGX_GPUS: [&str; 8] = [
    "0000:18:00.0",
    "0000:2a:00.0",
    "0000:3a:00.0",
    "0000:5d:00.0",
    "0000:9a:00.0",
    "0000:ab:00.0",
    "0000:ba:00.0",
    "0000:db:00.0",
];
const HGX_SWITCHES: [&str; 4] = [
    "0000:05:00.0",
    "0000:06:00.0",
    "0000:07:00.0",
    "0000:08:00.0",
];

/// The HGX GPUs of indexes `i`.
fn gpus(i: &[usize]) -> Vec<String> {
    i.iter().map(|&i| HGX_GPUS[i].to_owned()).collect()
}

async fn next(stream: &mut Streaming<ListAndWatchResponse>) -> Vec<(String, String)> {
    tokio::time::timeout(HANG, stream.next())
        .await
        .expect("a device list within the hang bound")
        .expect("stream open")
        .expect("a device list")
        .devices
        .into_iter()
        .map(|d| (d.id, d.health))
        .collect()
}

#[tokio::test]
async fn advertised_ids_are_the_host_cdi_spec_names_on_hgx() {
    let sim = SimHost::hgx_8x_h100();
    sim.write_cdi_specs();
    let kubelet = KubeletRegistration::start(sim.root());
    let running = start_plugin(sim.root());

    let mut seen = vec![kubelet.next_registration(), kubelet.next_registration()];
    seen.sort_by(|a, b| a.resource_name.cmp(&b.resource_name));
    assert_eq!(
        seen.iter()
            .map(|r| (
                r.version.as_str(),
                r.resource_name.as_str(),
                r.endpoint.as_str()
            ))
            .collect::<Vec<_>>(),
        [
            ("v1beta1", "nvidia.com/nvswitch", "kata-gpu-nvswitch.sock"),
            ("v1beta1", "nvidia.com/pgpu", "kata-gpu-pgpu.sock"),
        ]
    );
    assert!(seen.iter().all(|r| r
        .options
        .as_ref()
        .is_some_and(|o| o.get_preferred_allocation_available)));
    for r in &seen {
        let meta = std::fs::metadata(kubelet.dir().join(&r.endpoint)).expect("plugin socket");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", r.endpoint);
    }

    // The ids are names of the spec `kata-gpu cdi generate` writes, one per device.
    let spec_names = |kind: &str| -> Vec<String> {
        let registry = sim.registry();
        registry
            .devices()
            .map(|(n, _)| n.to_string())
            .filter_map(|n| n.strip_prefix(&format!("{kind}=")).map(str::to_owned))
            .collect()
    };
    for (endpoint, kind, want) in [
        ("kata-gpu-pgpu.sock", "nvidia.com/pgpu", &HGX_GPUS[..]),
        (
            "kata-gpu-nvswitch.sock",
            "nvidia.com/nvswitch",
            &HGX_SWITCHES[..],
        ),
    ] {
        let mut client = plugin(&kubelet, endpoint).await;
        let first = client
            .list_and_watch(Empty {})
            .await
            .expect("ListAndWatch")
            .into_inner()
            .next()
            .await
            .expect("a first list")
            .expect("a list");
        let ids: Vec<&str> = first.devices.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, want, "{kind}");
        let names = spec_names(kind);
        assert!(
            ids.iter().all(|id| names.iter().any(|n| n == id)),
            "{ids:?} in {names:?}"
        );
        assert!(first.devices.iter().all(|d| d.health == "Healthy"));
        if kind == "nvidia.com/pgpu" {
            let numa: Vec<i64> = first
                .devices
                .iter()
                .map(|d| d.topology.as_ref().expect("topology").nodes[0].id)
                .collect();
            assert_eq!(numa, [0, 0, 0, 0, 1, 1, 1, 1]);
        }
    }

    // GetPreferredAllocation keeps a request on one NUMA node, packed beside earlier ones.
    let mut pgpu = plugin(&kubelet, "kata-gpu-pgpu.sock").await;
    let ask = |available: &[usize], size: i32| PreferredAllocationRequest {
        container_requests: vec![ContainerPreferredAllocationRequest {
            available_device_i_ds: gpus(available),
            must_include_device_i_ds: Vec::new(),
            allocation_size: size,
        }],
    };
    for (available, size, want) in [
        (&[0, 1, 2, 3, 4, 5, 6, 7][..], 4, &[0, 1, 2, 3][..]),
        (&[1, 2, 3, 4, 5, 6, 7][..], 4, &[4, 5, 6, 7][..]),
        (&[2, 3, 4, 5, 6, 7][..], 2, &[2, 3][..]),
    ] {
        let got = pgpu
            .get_preferred_allocation(ask(available, size))
            .await
            .expect("GetPreferredAllocation")
            .into_inner();
        assert_eq!(
            got.container_responses[0].device_i_ds,
            gpus(want),
            "{available:?} {size}"
        );
    }

    running.stop().expect("plugin ran");
    // Its sockets go with it; kubelet's stays.
    let left: Vec<_> = std::fs::read_dir(kubelet.dir())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["kubelet.sock"]);
}

/// Issue 24 item 0: by default the plugin advertises NVIDIA's sandbox device plugin's names
/// (pci.ids from the node, else the built-in table), one resource per model, and Allocate
/// answers the CDI kind's names (failed before: nvidia.com/pgpu and nvidia.com/nvswitch).
#[tokio::test]
async fn nvidia_names_by_default() {
    let sim = SimHost::hgx_8x_h100();
    sim.write_cdi_specs();
    let kubelet = KubeletRegistration::start(sim.root());
    let _plugin = DevicePlugin::start(Config {
        interval: Duration::from_millis(50),
        ..Config::new(sim.root())
    });
    let mut seen = [kubelet.next_registration(), kubelet.next_registration()];
    seen.sort_by(|a, b| a.resource_name.cmp(&b.resource_name));
    assert_eq!(
        seen.iter()
            .map(|r| (r.resource_name.as_str(), r.endpoint.as_str()))
            .collect::<Vec<_>>(),
        [
            (
                "nvidia.com/GH100_H100_NVSWITCH",
                "kata-gpu-GH100_H100_NVSWITCH.sock"
            ),
            (
                "nvidia.com/GH100_H100_SXM5_80GB",
                "kata-gpu-GH100_H100_SXM5_80GB.sock"
            ),
        ]
    );
    let mut client = plugin(&kubelet, "kata-gpu-GH100_H100_SXM5_80GB.sock").await;
    let answer = client
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: vec![HGX_GPUS[3].to_owned()],
            }],
        })
        .await
        .expect("Allocate")
        .into_inner();
    let c = &answer.container_responses[0];
    assert_eq!(c.cdi_devices[0].name, "nvidia.com/pgpu=0000:5d:00.0");
    assert_eq!(
        c.annotations
            .get("cdi.k8s.io/kata-gpu-device-plugin_GH100_H100_SXM5_80GB")
            .map(String::as_str),
        Some("nvidia.com/pgpu=0000:5d:00.0")
    );

    // The node's pci.ids wins over the built-in table.
    let h100 = SimHost::h100_pcie(VfioMode::Iommufd);
    std::fs::create_dir_all(h100.path("usr/share/hwdata")).expect("mkdir");
    std::fs::write(
        h100.path("usr/share/hwdata/pci.ids"),
        "10de  NVIDIA Corporation\n\t2331  GH100 [H100 PCIe 80GB/x]\n",
    )
    .expect("pci.ids");
    let resources = kata_gpu_device_plugin::inventory(
        &kata_gpu_plan::host::Host::new(h100.root()),
        Naming::Nvidia,
    )
    .expect("inventory");
    assert_eq!(resources[0].name, "nvidia.com/GH100_H100_PCIE_80GB_X");
}

#[tokio::test]
async fn allocate_answers_cdi_names_nodes_and_annotations_and_refuses_unknown_ids() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let kubelet = KubeletRegistration::start(sim.root());
    let _plugin = start_plugin(sim.root());
    let r = kubelet.next_registration();
    assert_eq!(r.resource_name, "nvidia.com/pgpu");
    let mut client = plugin(&kubelet, &r.endpoint).await;

    let asked = |ids: &[&str]| AllocateRequest {
        container_requests: vec![ContainerAllocateRequest {
            devices_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
        }],
    };
    let answer = client
        .allocate(asked(&["0000:41:00.0"]))
        .await
        .expect("Allocate")
        .into_inner();
    let c = &answer.container_responses[0];
    assert_eq!(
        c.cdi_devices
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>(),
        ["nvidia.com/pgpu=0000:41:00.0"]
    );
    assert_eq!(
        c.devices
            .iter()
            .map(|d| (
                d.host_path.as_str(),
                d.container_path.as_str(),
                d.permissions.as_str()
            ))
            .collect::<Vec<_>>(),
        [
            ("/dev/iommu", "/dev/iommu", "rw"),
            ("/dev/vfio/devices/vfio0", "/dev/vfio/devices/vfio0", "rw"),
        ]
    );
    assert_eq!(
        c.annotations
            .get("cdi.k8s.io/kata-gpu-device-plugin_pgpu")
            .map(String::as_str),
        Some("nvidia.com/pgpu=0000:41:00.0")
    );
    // The annotation form reads back as the same CDI names.
    let parsed = cdi::parse_cdi_annotations(&c.annotations).expect("annotations parse");
    assert_eq!(parsed.len(), 1);

    let refused = client
        .allocate(asked(&["0000:41:00.0", "9"]))
        .await
        .expect_err("an unknown id is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        refused.message(),
        "unknown nvidia.com/pgpu device \"9\"; this node advertises: 0000:41:00.0"
    );
    // The plugin is still there after the refusal.
    client
        .get_device_plugin_options(Empty {})
        .await
        .expect("still serving");
}

#[tokio::test]
async fn a_device_that_leaves_vfio_pci_or_loses_its_node_is_reported_unhealthy() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let kubelet = KubeletRegistration::start(sim.root());
    let _plugin = start_plugin(sim.root());
    let r = kubelet.next_registration();
    let mut client = plugin(&kubelet, &r.endpoint).await;
    let mut stream = client
        .list_and_watch(Empty {})
        .await
        .expect("ListAndWatch")
        .into_inner();
    assert_eq!(next(&mut stream).await, gpu0("Healthy"));

    sim.set_driver("0000:41:00.0", Some("nvidia"));
    assert_eq!(next(&mut stream).await, gpu0("Unhealthy"));
    sim.set_driver("0000:41:00.0", Some("vfio-pci"));
    assert_eq!(next(&mut stream).await, gpu0("Healthy"));

    let node = sim.path("dev/vfio/devices/vfio0");
    std::fs::remove_file(&node).expect("remove the cdev");
    assert_eq!(next(&mut stream).await, gpu0("Unhealthy"));
    std::fs::write(&node, "").expect("cdev back");
    assert_eq!(next(&mut stream).await, gpu0("Healthy"));

    // A rebind gives its cdev to another function (issue 24 item 7): the node no longer
    // reaches the device the id names.
    let class = sim.path("sys/class/vfio-dev/vfio0");
    let was = std::fs::read_link(&class).expect("class link");
    let other = sim.path("sys/devices/pci0000:40/0000:42:00.0");
    std::fs::create_dir_all(other.join("vfio-dev/vfio0")).expect("other function");
    std::os::unix::fs::symlink("../..", other.join("vfio-dev/vfio0/device")).expect("link");
    std::fs::remove_file(&class).expect("unlink class");
    std::os::unix::fs::symlink(other.join("vfio-dev/vfio0"), &class).expect("relink class");
    assert_eq!(next(&mut stream).await, gpu0("Unhealthy"));
    std::fs::remove_file(&class).expect("unlink class");
    std::os::unix::fs::symlink(&was, &class).expect("restore class");
    assert_eq!(next(&mut stream).await, gpu0("Healthy"));

    // The function moves to another IOMMU group: its id no longer means what it did.
    let link = sim.path("sys/bus/pci/devices/0000:41:00.0/iommu_group");
    let real = std::fs::canonicalize(&link).expect("group link");
    let moved = real.with_file_name("41");
    std::fs::create_dir_all(moved.join("devices")).expect("new group");
    std::fs::remove_file(&link).expect("unlink group");
    std::os::unix::fs::symlink(&moved, &link).expect("relink group");
    assert_eq!(next(&mut stream).await, gpu0("Unhealthy"));
}

#[tokio::test]
async fn kubelet_restarting_makes_the_plugin_register_again() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let kubelet = KubeletRegistration::start(sim.root());
    let _plugin = start_plugin(sim.root());
    let first = kubelet.next_registration();

    let kubelet = kubelet.restart(sim.root());
    let again = kubelet.next_registration();
    assert_eq!(again, first);
    // The plugin's socket is back, private, and answers.
    let socket = kubelet.dir().join(&again.endpoint);
    assert_eq!(
        std::fs::metadata(&socket)
            .expect("socket")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let mut client = plugin(&kubelet, &again.endpoint).await;
    let mut stream = client
        .list_and_watch(Empty {})
        .await
        .expect("ListAndWatch after the restart")
        .into_inner();
    assert_eq!(next(&mut stream).await, gpu0("Healthy"));
}

#[tokio::test]
async fn a_file_where_the_plugin_socket_goes_is_left_alone() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let kubelet = KubeletRegistration::start(sim.root());
    let squatter = kubelet.dir().join("kata-gpu-pgpu.sock");
    std::fs::write(&squatter, "not ours").expect("a file");
    let running = start_plugin(sim.root());
    // It ends by itself on the squatter: stopping it at once could come before it got there.
    let err = running
        .ended_within(Duration::from_secs(10))
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        format!(
            "{} exists and is not a socket; remove it or move it aside, then start the plugin again",
            squatter.display()
        )
    );
    assert_eq!(
        std::fs::read_to_string(&squatter).expect("kept"),
        "not ours"
    );
}

/// A kubelet that accepts and never answers: the registration is given up on after
/// `register_timeout` and tried again (the loop goes on), stopping the plugin meanwhile is
/// prompt, and once a kubelet that answers takes the socket, the plugin registers with it.
#[test]
fn a_kubelet_that_never_answers_stalls_neither_the_loop_nor_the_stop() {
    use kata_gpu_tests::kubelet::SilentKubelet;
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    sim.write_cdi_specs();
    let silent = SilentKubelet::start(sim.root());
    let running = DevicePlugin::start(Config {
        interval: Duration::from_millis(50),
        register_timeout: Duration::from_millis(200),
        ..Config::new(sim.root())
    });
    // One resource: a second connection is a second try, after the first was given up.
    assert!(
        silent.wait_accepted(3, Duration::from_secs(10)),
        "the plugin stalled on a kubelet that never answers: {} connection(s)",
        silent.accepted()
    );
    let start = std::time::Instant::now();
    running.stop().expect("the plugin stops cleanly");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "stopping took {:?}",
        start.elapsed()
    );

    // Again, then a kubelet that answers replaces the silent one.
    let running = DevicePlugin::start(Config {
        interval: Duration::from_millis(50),
        register_timeout: Duration::from_millis(200),
        ..Config::new(sim.root())
    });
    assert!(silent.wait_accepted(4, Duration::from_secs(10)));
    drop(silent);
    std::fs::remove_file(sim.path("var/lib/kubelet/device-plugins/kubelet.sock"))
        .expect("remove the silent socket");
    let kubelet = KubeletRegistration::start(sim.root());
    assert_eq!(
        kubelet.next_registration().resource_name,
        "nvidia.com/GH100_H100_PCIE"
    );
    running.stop().expect("the plugin stops cleanly");
}

/// A first rollout: the plugin starts before the init container binds the GPU. It serves
/// the GPU once bound, and stops advertising it once it has been gone for `gone_after`
/// (listed unhealthy meanwhile).
#[tokio::test]
async fn a_device_bound_after_start_is_advertised_and_one_that_left_is_removed() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    sim.set_driver("0000:41:00.0", Some("nvidia"));
    let kubelet = KubeletRegistration::start(sim.root());
    let _plugin = DevicePlugin::start(Config {
        interval: Duration::from_millis(50),
        naming: Naming::Pgpu,
        gone_after: Duration::from_millis(500),
        ..Config::new(sim.root())
    });
    assert!(
        kubelet
            .registration_within(Duration::from_millis(500))
            .is_none(),
        "registered with no device bound"
    );

    sim.set_driver("0000:41:00.0", Some("vfio-pci"));
    let r = kubelet.next_registration();
    assert_eq!(r.resource_name, "nvidia.com/pgpu");
    let socket = kubelet.dir().join(&r.endpoint);
    let mut client = plugin(&kubelet, &r.endpoint).await;
    let mut stream = client
        .list_and_watch(Empty {})
        .await
        .expect("ListAndWatch")
        .into_inner();
    assert_eq!(next(&mut stream).await, gpu0("Healthy"));

    sim.set_driver("0000:41:00.0", Some("nvidia"));
    assert_eq!(next(&mut stream).await, gpu0("Unhealthy"));
    let deadline = std::time::Instant::now() + HANG;
    while socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the departed GPU's resource is still served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
