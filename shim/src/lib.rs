//! The containerd v2 shim `containerd-shim-kata-qemu-nvidia-gpu-snp-v2`.
//!
//! It sits between containerd and Kata's own shim so that it sees every sandbox's
//! `Create` and can hand Kata a configuration shaped for exactly the GPUs the pod asked
//! for (see `DESIGN.md` §1). The host view, the sandbox plan and the Task proxy arrive
//! with their own issues; this crate holds the workspace's place for them today.
