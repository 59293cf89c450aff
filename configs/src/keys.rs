//! The Kata configuration keys this crate knows: the few it owns, and the types Kata 4.x
//! reads the others with (from the Go runtime's `katautils` TOML structs), so that a base
//! config with a value of the wrong type is refused here, naming the key, and not by Kata at
//! sandbox start.

/// The section holding every key we own.
pub const QEMU_SECTION: [&str; 2] = ["hypervisor", "qemu"];

/// `[runtime]`.
pub const RUNTIME_SECTION: [&str; 1] = ["runtime"];

/// `[agent.kata]`.
pub const AGENT_SECTION: [&str; 2] = ["agent", "kata"];

/// `pcie_root_port`: the minimum number of PCIe root ports (Kata makes at most 16).
pub const PCIE_ROOT_PORT: &str = "pcie_root_port";
/// `cold_plug_vfio`: where VFIO devices are plugged before the guest boots.
pub const COLD_PLUG_VFIO: &str = "cold_plug_vfio";
/// `hot_plug_vfio`: where VFIO devices are hot-plugged; `no-port` when cold-plugging.
pub const HOT_PLUG_VFIO: &str = "hot_plug_vfio";
/// `default_memory`: guest memory in MiB.
pub const DEFAULT_MEMORY: &str = "default_memory";
/// `cpu_features`: appended to QEMU's `-cpu` model; carries the guest's `phys-bits`.
pub const CPU_FEATURES: &str = "cpu_features";
/// `kernel_params`: the guest kernel command line Kata adds to its own.
pub const KERNEL_PARAMS: &str = "kernel_params";
/// `enable_annotations`: which `io.katacontainers.config.hypervisor.*` pod annotations
/// Kata accepts (Go regular expressions, searched unanchored).
pub const ENABLE_ANNOTATIONS: &str = "enable_annotations";

/// `[runtime] pod_resource_api_sock`: kubelet's PodResources socket, which Kata asks at
/// sandbox Create for the devices to cold-plug. Owned: always rendered empty, for the shim
/// asks kubelet itself and hands Kata the planned set (ARCHITECTURE.md, "Devices kubelet
/// allocates"); a Kata that asked too would cold-plug what it found, not what was planned.
pub const POD_RESOURCE_API_SOCK: &str = "pod_resource_api_sock";

/// The keys of `[hypervisor.qemu]` a rendering may change, in the order the diff lists them.
/// Every other byte of a base configuration is left alone.
pub const OWNED_KEYS: [&str; 7] = [
    PCIE_ROOT_PORT,
    COLD_PLUG_VFIO,
    HOT_PLUG_VFIO,
    DEFAULT_MEMORY,
    CPU_FEATURES,
    KERNEL_PARAMS,
    ENABLE_ANNOTATIONS,
];

/// The values Kata accepts for `cold_plug_vfio` and `hot_plug_vfio`.
pub const PORT_VALUES: [&str; 4] = ["no-port", "bridge-port", "root-port", "switch-port"];

/// The most root ports Kata creates; a larger `pcie_root_port` is cut to this.
pub const MAX_PCIE_ROOT_PORTS: i64 = 16;

/// The TOML type Kata reads a key with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A string.
    Str,
    /// A boolean.
    Bool,
    /// An integer from 0 to 2³²−1.
    U32,
    /// An integer from 0 up.
    U64,
    /// Any integer.
    I64,
    /// An integer or a float (`default_vcpus` is a float in Kata).
    Number,
    /// An array of strings.
    StrArray,
}

impl Kind {
    /// What a value of this kind is, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Bool => "a boolean (true or false)",
            Kind::U32 => "an integer from 0 to 4294967295",
            Kind::U64 => "a non-negative integer",
            Kind::I64 => "an integer",
            Kind::Number => "a number",
            Kind::StrArray => "an array of strings",
        }
    }

    /// Whether `value` is of this kind.
    pub fn accepts(self, value: &toml_edit::Value) -> bool {
        use toml_edit::Value;
        match (self, value) {
            (Kind::Str, Value::String(_)) | (Kind::Bool, Value::Boolean(_)) => true,
            (Kind::U32, Value::Integer(i)) => u32::try_from(*i.value()).is_ok(),
            (Kind::U64, Value::Integer(i)) => *i.value() >= 0,
            (Kind::I64 | Kind::Number, Value::Integer(_)) | (Kind::Number, Value::Float(_)) => true,
            (Kind::StrArray, Value::Array(a)) => a.iter().all(|v| v.is_str()),
            _ => false,
        }
    }
}

/// `[hypervisor.qemu]` keys and their kinds.
pub const QEMU_KEYS: &[(&str, Kind)] = &[
    ("path", Kind::Str),
    ("jailer_path", Kind::Str),
    ("kernel", Kind::Str),
    ("initrd", Kind::Str),
    ("image", Kind::Str),
    ("rootfs_type", Kind::Str),
    ("firmware", Kind::Str),
    ("firmware_volume", Kind::Str),
    ("machine_accelerators", Kind::Str),
    (CPU_FEATURES, Kind::Str),
    (KERNEL_PARAMS, Kind::Str),
    ("kernel_verity_params", Kind::Str),
    ("machine_type", Kind::Str),
    ("tdx_quote_generation_service_socket_port", Kind::U32),
    ("block_device_driver", Kind::Str),
    ("entropy_source", Kind::Str),
    ("shared_fs", Kind::Str),
    ("virtio_fs_daemon", Kind::Str),
    ("virtio_fs_cache", Kind::Str),
    ("vhost_user_store_path", Kind::Str),
    ("guest_hook_path", Kind::Str),
    ("guest_memory_dump_path", Kind::Str),
    ("seccompsandbox", Kind::Str),
    ("block_device_aio", Kind::Str),
    ("snp_id_block", Kind::Str),
    ("snp_id_auth", Kind::Str),
    ("snp_guest_policy", Kind::U64),
    ("measurement_algo", Kind::Str),
    ("valid_hypervisor_paths", Kind::StrArray),
    ("valid_jailer_paths", Kind::StrArray),
    ("valid_virtio_fs_daemon_paths", Kind::StrArray),
    ("virtio_fs_extra_args", Kind::StrArray),
    ("pflashes", Kind::StrArray),
    ("valid_vhost_user_store_paths", Kind::StrArray),
    ("valid_entropy_sources", Kind::StrArray),
    (ENABLE_ANNOTATIONS, Kind::StrArray),
    ("rx_rate_limiter_max_rate", Kind::U64),
    ("tx_rate_limiter_max_rate", Kind::U64),
    ("memory_offset", Kind::U64),
    ("default_maxmemory", Kind::U64),
    ("hypervisor_loglevel", Kind::U32),
    ("virtio_fs_cache_size", Kind::U32),
    ("virtio_fs_queue_size", Kind::U32),
    ("default_maxvcpus", Kind::U32),
    (DEFAULT_MEMORY, Kind::U32),
    ("memory_slots", Kind::U32),
    ("default_bridges", Kind::U32),
    ("msize_9p", Kind::U32),
    ("default_vcpus", Kind::Number),
    ("block_device_cache_set", Kind::Bool),
    ("block_device_cache_direct", Kind::Bool),
    ("block_device_cache_noflush", Kind::Bool),
    ("block_device_logical_sector_size", Kind::U32),
    ("block_device_physical_sector_size", Kind::U32),
    ("enable_vhost_user_store", Kind::Bool),
    ("vhost_user_reconnect_timeout_sec", Kind::U32),
    ("disable_block_device_use", Kind::Bool),
    ("enable_mem_prealloc", Kind::Bool),
    ("reclaim_guest_freed_memory", Kind::Bool),
    ("enable_hugepages", Kind::Bool),
    ("enable_virtio_mem", Kind::Bool),
    ("enable_iommu", Kind::Bool),
    ("enable_iommu_platform", Kind::Bool),
    ("enable_numa", Kind::Bool),
    ("numa_mapping", Kind::StrArray),
    ("enable_debug", Kind::Bool),
    ("disable_nesting_checks", Kind::Bool),
    ("enable_iothreads", Kind::Bool),
    ("indep_iothreads", Kind::U32),
    ("disable_image_nvdimm", Kind::Bool),
    (HOT_PLUG_VFIO, Kind::Str),
    (COLD_PLUG_VFIO, Kind::Str),
    (PCIE_ROOT_PORT, Kind::U32),
    ("pcie_switch_port", Kind::U32),
    ("disable_vhost_net", Kind::Bool),
    ("guest_memory_dump_paging", Kind::Bool),
    ("confidential_guest", Kind::Bool),
    ("sev_snp_guest", Kind::Bool),
    ("enable_guest_swap", Kind::Bool),
    ("rootless", Kind::Bool),
    ("disable_seccomp", Kind::Bool),
    ("disable_selinux", Kind::Bool),
    ("disable_guest_selinux", Kind::Bool),
    ("use_legacy_serial", Kind::Bool),
    ("extra_monitor_socket", Kind::Str),
];

/// `[runtime]` keys and their kinds.
pub const RUNTIME_KEYS: &[(&str, Kind)] = &[
    ("internetworking_model", Kind::Str),
    ("jaeger_endpoint", Kind::Str),
    ("jaeger_user", Kind::Str),
    ("jaeger_password", Kind::Str),
    ("vfio_mode", Kind::Str),
    ("guest_selinux_label", Kind::Str),
    ("sandbox_bind_mounts", Kind::StrArray),
    ("experimental", Kind::StrArray),
    ("enable_tracing", Kind::Bool),
    ("disable_new_netns", Kind::Bool),
    ("disable_guest_seccomp", Kind::Bool),
    ("enable_vcpus_pinning", Kind::Bool),
    ("enable_debug", Kind::Bool),
    ("sandbox_cgroup_only", Kind::Bool),
    ("static_sandbox_resource_mgmt", Kind::Bool),
    ("enable_pprof", Kind::Bool),
    ("disable_guest_empty_dir", Kind::Bool),
    ("emptydir_mode", Kind::Str),
    ("create_container_timeout", Kind::U64),
    ("dan_conf", Kind::Str),
    ("experimental_force_guest_pull", Kind::Bool),
    ("pod_resource_api_sock", Kind::Str),
    ("kubelet_root_dir", Kind::Str),
];

/// `[agent.kata]` keys and their kinds.
pub const AGENT_KEYS: &[(&str, Kind)] = &[
    ("kernel_modules", Kind::StrArray),
    ("enable_debug", Kind::Bool),
    ("enable_tracing", Kind::Bool),
    ("debug_console_enabled", Kind::Bool),
    ("dial_timeout", Kind::U32),
    ("cdh_api_timeout", Kind::U32),
    ("launch_process_timeout", Kind::U32),
    ("visible_cdi_devices", Kind::Bool),
];

/// A section's keys and the kind of each.
pub type KeyTable = &'static [(&'static str, Kind)];

/// Every section whose keys are type-checked (its path), with its key table.
pub const TYPED_SECTIONS: [(&[&str], KeyTable); 3] = [
    (&QEMU_SECTION, QEMU_KEYS),
    (&RUNTIME_SECTION, RUNTIME_KEYS),
    (&AGENT_SECTION, AGENT_KEYS),
];

/// Joins a section path and a key into the dotted name errors use.
pub fn dotted(section: &[&str], key: &str) -> String {
    let mut s = section.join(".");
    if !key.is_empty() {
        if !s.is_empty() {
            s.push('.');
        }
        s.push_str(key);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_keys_are_typed() {
        for key in OWNED_KEYS {
            assert!(QEMU_KEYS.iter().any(|(k, _)| *k == key), "{key}");
        }
    }

    #[test]
    fn kinds_table() {
        use toml_edit::Value;
        let table: &[(Kind, Value, bool)] = &[
            (Kind::Str, Value::from("x"), true),
            (Kind::Str, Value::from(1), false),
            (Kind::Bool, Value::from(true), true),
            (Kind::Bool, Value::from("true"), false),
            (Kind::U32, Value::from(4_294_967_295_i64), true),
            (Kind::U32, Value::from(4_294_967_296_i64), false),
            (Kind::U32, Value::from(-1), false),
            (Kind::U64, Value::from(0), true),
            (Kind::U64, Value::from(-1), false),
            (Kind::I64, Value::from(-1), true),
            (Kind::Number, Value::from(1.5), true),
            (Kind::Number, Value::from(2), true),
            (Kind::Number, Value::from("2"), false),
            (Kind::StrArray, Value::from_iter(["a", "b"]), true),
            (Kind::StrArray, Value::from_iter([1, 2]), false),
            (Kind::StrArray, Value::from("a"), false),
        ];
        for (kind, value, ok) in table {
            assert_eq!(kind.accepts(value), *ok, "{kind:?} {value}");
        }
    }

    #[test]
    fn dotted_names() {
        assert_eq!(dotted(&QEMU_SECTION, "path"), "hypervisor.qemu.path");
        assert_eq!(dotted(&QEMU_SECTION, ""), "hypervisor.qemu");
    }
}
