//! The artifact store under `/opt/nvidia-gpu-operator/artifacts/runtimeclasses/<class>/`.
//!
//! A confidential VM is only as trustworthy as what it boots, so every set is installed by
//! digest and switched atomically.

pub mod layout;
