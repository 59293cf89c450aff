//! The sandbox device plugin: kubelet's device plugin API v1beta1 for the host's passthrough
//! GPUs (`nvidia.com/pgpu`) and NVSwitches (`nvidia.com/nvswitch`), so that the scheduler
//! counts them and kubelet hands each to one pod.
//!
//! Device ids are the devices' names in the host CDI spec (the same code as
//! `kata-gpu cdi generate`), so `<resource>=<id>` is a CDI name the shim and Kata resolve.

pub mod allocate;
pub mod health;
pub mod inventory;
pub mod preferred;
pub mod serve;
pub mod service;

pub use allocate::{allocate, AllocateError, Strategy};
pub use inventory::{inventory, PluginDevice, Resource, RESOURCES};
pub use preferred::preferred;
pub use serve::{run, Config, PluginError};
