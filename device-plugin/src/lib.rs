//! The sandbox device plugin: kubelet's device plugin API v1beta1 for the host's passthrough
//! GPUs and NVSwitches, under NVIDIA's sandbox device plugin's resource names
//! (`nvidia.com/GH100_H100_PCIE`) or the CDI kinds (`nvidia.com/pgpu`,
//! `nvidia.com/nvswitch`), so that the scheduler counts them and kubelet hands each to one pod.
//!
//! Device ids are the devices' names in the host CDI spec (the same code as
//! `kata-gpu cdi generate`), so `<kind>=<id>` is a CDI name the shim and Kata resolve.

pub mod allocate;
pub mod health;
pub mod inventory;
pub mod preferred;
pub mod serve;
pub mod service;

pub use allocate::{allocate, AllocateError, Strategy};
pub use inventory::{inventory, inventory_of, PluginDevice, Resource, RESOURCES};
pub use preferred::preferred;
pub use serve::{run, Config, Naming, PluginError};
