//! The containerd v2 shim `containerd-shim-kata-qemu-nvidia-gpu-snp-v2`, as a library.
//!
//! It sits between containerd and Kata's own shim so that it sees every sandbox's
//! `Create` and can hand Kata a VM shaped for exactly the GPUs the pod asked for
//! (`DESIGN.md` §1). Today this crate holds the profiles, the host view (sysfs and `/dev`
//! under a root) and the sandbox plan; the Task proxy arrives with its own issue.

pub mod bootstrap;
pub mod create;
pub mod daemon;
pub mod host;
pub mod host_spec;
pub mod info;
mod logging;
pub mod plan;
pub mod pod_resources;
pub mod profile;
pub mod proxy;
mod relay;
mod server_record;
pub mod settings;
pub mod vfio;

pub use host::{Bdf, Host, HostError, PciFunction, Platform, VfioNode};
pub use profile::Profile;
