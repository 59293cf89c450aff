//! The host and the plan: which GPUs a pod gets, and the VM shaped for them.
//!
//! Everything here reads or writes the host, never containerd: the profiles, the host view
//! (PCI functions, IOMMU groups and `/dev` under a root), `vfio` bind and unbind, the host's
//! own CDI spec, the sandbox plan with its QEMU arguments and the shim's settings file (ARCHITECTURE.md). The shim
//! plans at `Create` with it; the `kata-gpu` CLI plans, generates CDI specs and binds
//! devices with it, without linking the shim's ttrpc stack.

pub mod host;
pub mod host_spec;
pub mod profile;
pub mod resource_names;
pub mod sandbox;
pub mod settings;
pub mod vfio;

pub use host::{Bdf, CpuMemory, Host, HostError, PciFunction, Platform, VfioNode};
pub use profile::Profile;
