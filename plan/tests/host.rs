//! The host view on every simulated host: PCI functions, groups, VFIO nodes, platform.

use kata_gpu_plan::host::{Bdf, Host, HostError, VfioNode};
use kata_gpu_simhost::{SimHost, VfioMode};

fn bdf(s: &str) -> Bdf {
    s.parse().expect("valid bdf")
}

#[test]
fn an_h100_pcie_in_iommufd_mode_reads_back_whole() {
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let host = Host::new(sim.root());
    let functions = host.pci_functions().expect("reads");
    assert_eq!(functions.len(), 1);
    let gpu = &functions[0];
    assert_eq!(gpu.bdf, bdf("0000:41:00.0"));
    assert_eq!((gpu.id().as_str(), gpu.class), ("10de:2331", 0x030200));
    assert_eq!(gpu.driver.as_deref(), Some("vfio-pci"));
    assert_eq!(
        (gpu.iommu_group, gpu.numa_node, gpu.pcie),
        (Some(40), Some(0), true)
    );
    let bars = gpu.bars.clone().expect("resource readable");
    let sizes: Vec<(usize, u64)> = bars.iter().map(|b| (b.index, b.size)).collect();
    assert_eq!(sizes, [(0, 16 << 20), (1, 128 << 30), (3, 32 << 20)]);
    assert!(bars[1].is_prefetchable_64() && !bars[0].is_prefetchable_64());
    assert!(gpu.is_nvidia_gpu() && !gpu.is_bridge());

    assert_eq!(
        host.vfio_cdev(gpu.bdf),
        Some(("vfio0".to_owned(), "237:0".to_owned()))
    );
    assert_eq!(
        host.vfio_node("/dev/vfio/devices/vfio0").expect("cdev"),
        VfioNode::Cdev {
            name: "vfio0".into(),
            bdf: gpu.bdf
        }
    );
    assert_eq!(
        host.vfio_node("/dev/vfio/40").expect("group"),
        VfioNode::Group(40)
    );
    assert_eq!(host.iommu_group_members(40).expect("group"), [gpu.bdf]);

    let p = host.platform();
    assert!(
        p.kvm && p.iommu && p.iommufd && p.sev_snp && !p.tdx,
        "{p:?}"
    );
    assert!(p.cmdline.contains("iommu=pt"));
    assert_eq!(p.cpu_vendor, kata_gpu_plan::host::CpuVendor::Amd);
}

#[test]
fn legacy_mode_has_group_nodes_only() {
    let sim = SimHost::h100_pcie(VfioMode::Legacy);
    let host = Host::new(sim.root());
    assert_eq!(host.vfio_cdev(bdf("0000:41:00.0")), None);
    assert!(matches!(
        host.vfio_node("/dev/vfio/devices/vfio0"),
        Err(HostError::UnknownCdev { .. })
    ));
    assert_eq!(
        host.vfio_node("/dev/vfio/40").expect("group"),
        VfioNode::Group(40)
    );
}

#[test]
fn an_hgx_board_has_eight_gpus_and_four_nvswitches() {
    let sim = SimHost::hgx_8x_h100();
    let host = Host::new(sim.root());
    let functions = host.pci_functions().expect("reads");
    assert_eq!(functions.len(), 12);
    let switches: Vec<_> = functions.iter().filter(|f| f.is_nvswitch()).collect();
    let gpus: Vec<_> = functions.iter().filter(|f| f.is_nvidia_gpu()).collect();
    assert_eq!((switches.len(), gpus.len()), (4, 8));
    assert!(switches
        .iter()
        .all(|s| !s.is_bridge() && s.class == 0x068000));
    assert!(gpus.iter().all(|g| g.device == 0x2330));
    assert_eq!(gpus.iter().filter(|g| g.numa_node == Some(1)).count(), 4);
    let cdevs: Vec<String> = functions
        .iter()
        .filter_map(|f| host.vfio_cdev(f.bdf).map(|(n, _)| n))
        .collect();
    assert_eq!(cdevs.len(), 12);
    assert_eq!(
        host.vfio_node("/dev/vfio/devices/vfio11")
            .expect("last cdev"),
        VfioNode::Cdev {
            name: "vfio11".into(),
            bdf: bdf("0000:db:00.0")
        }
    );
}

#[test]
fn a_group_with_audio_and_bridge_lists_all_three() {
    let sim = SimHost::gpu_with_audio_and_bridge();
    let host = Host::new(sim.root());
    let members = host.iommu_group_members(40).expect("group");
    assert_eq!(
        members,
        [
            bdf("0000:40:01.1"),
            bdf("0000:41:00.0"),
            bdf("0000:41:00.1")
        ]
    );
    let bridge = host.pci_function(members[0]).expect("bridge");
    assert!(bridge.is_bridge());
    assert_eq!(bridge.driver.as_deref(), Some("pcieport"));
}

#[test]
fn hosts_without_iommu_or_snp_say_so() {
    let sim = SimHost::no_iommu();
    let host = Host::new(sim.root());
    let p = host.platform();
    assert!(!p.iommu && !p.iommufd && p.kvm, "{p:?}");
    let gpu = host.pci_function(bdf("0000:41:00.0")).expect("gpu");
    assert_eq!((gpu.iommu_group, gpu.driver), (None, None));

    let sim = SimHost::no_snp();
    assert!(!Host::new(sim.root()).platform().sev_snp);

    let sim = SimHost::gpu_bound_to_nvidia();
    let host = Host::new(sim.root());
    let gpu = host.pci_function(bdf("0000:41:00.0")).expect("gpu");
    assert_eq!(gpu.driver.as_deref(), Some("nvidia"));
    assert!(matches!(
        host.pci_function(bdf("0000:42:00.0")),
        Err(HostError::NoSuchDevice(_))
    ));
}

#[test]
fn a_cdev_is_found_through_sys_dev_char_when_its_class_link_is_missing() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "precondition not met: this test creates a character device node with mknod and must run as root. Run the tests as root, as CI does."
    );
    let sim = SimHost::h100_pcie(VfioMode::Iommufd);
    let node = sim.path("dev/vfio/devices/vfio0");
    std::fs::remove_file(&node).expect("rm placeholder");
    let status = std::process::Command::new("mknod")
        .arg(&node)
        .args(["c", "237", "0"])
        .status()
        .expect("mknod");
    assert!(status.success());
    std::fs::remove_file(sim.path("sys/class/vfio-dev/vfio0")).expect("rm class link");
    let host = Host::new(sim.root());
    assert_eq!(
        host.vfio_node("/dev/vfio/devices/vfio0")
            .expect("found via /sys/dev/char"),
        VfioNode::Cdev {
            name: "vfio0".into(),
            bdf: bdf("0000:41:00.0")
        }
    );
}
