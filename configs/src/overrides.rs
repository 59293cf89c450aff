//! What the sandbox plan asks to change in Kata's configuration, as plain values.
//!
//! The plan (in the shim) decides these from the pod and the host; rendering (here)
//! writes them into a copy of the base config. Keeping them a plain struct lets each side
//! be tested without the other.

/// Changes to Kata's `[hypervisor.qemu]` section for one sandbox. `None` leaves a key as
/// the base config has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `pcie_root_port`: root ports for cold-plugged devices (max of base and devices, ≤ 16).
    pub pcie_root_port: Option<u32>,
    /// `cold_plug_vfio`, e.g. `root-port`.
    pub cold_plug_vfio: Option<String>,
    /// `hot_plug_vfio`, `no-port` whenever devices are cold-plugged.
    pub hot_plug_vfio: Option<String>,
    /// `default_memory` in MiB.
    pub default_memory: Option<u32>,
    /// Parameters appended to `kernel_params` (each `key=value` or a flag), in order.
    pub kernel_params_append: Vec<String>,
    /// `cpu_features`, whole: the base config's features with the guest's `phys-bits`.
    pub cpu_features: Option<String>,
}
