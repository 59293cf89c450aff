//! The containerd v2 shim `containerd-shim-kata-qemu-nvidia-gpu-snp-v2`, as a library.
//!
//! It sits between containerd and Kata's own shim so that it sees every sandbox's
//! `Create` and can hand Kata a VM shaped for exactly the GPUs the pod asked for
//! (ARCHITECTURE.md, "The VM Kata builds"). This crate holds only what runs in containerd's path: bootstrap, the
//! proxy, the relay, the Create hook and logging; the host view, the sandbox plan it hands
//! Kata and the settings file live in `kata-gpu-plan`.
//!
//! Names: *the proxy* is the long-running process this binary runs as (`serve`, spawned by
//! its own `start`) that containerd talks to and that relays every Task call; *the
//! downstream* is the shim it relays to, Kata's (runc's in tests).

pub mod actions;
pub mod bootstrap;
pub mod claims;
pub mod create;
pub mod info;
mod logging;
mod one_line;
pub mod pod_resources;
pub mod proxy;
mod proxy_record;
mod relay;
