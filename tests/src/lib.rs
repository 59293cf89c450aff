//! Shared fixtures for tests against real parts and simulated hosts.
//!
//! - [`containerd`]: a private containerd started per test.
//! - [`simhost`]: simulated GPU hosts, sysfs and `/dev` trees under a temp root that every
//!   path of the code under test goes through.

pub mod containerd;
pub mod simhost;

pub use containerd::{busybox_rootfs, is_root, on_path, require, PrivateContainerd};
pub use simhost::{SimHost, VfioMode};
