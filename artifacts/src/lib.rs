//! The artifact store under `/opt/nvidia-gpu-operator/artifacts/runtimeclasses/<class>/`.
//!
//! A confidential VM is only as trustworthy as what it boots, so every set (kernel, guest
//! image or initrd, firmware, QEMU, base Kata configuration, SBOM) is installed by digest
//! and switched atomically:
//!
//! ```text
//! <root>/<class>/
//!   .lock                      flock: one writer at a time
//!   current  -> sha256-<hex>   the active set (containerd's ConfigPath goes through it)
//!   previous -> sha256-<hex>   the set before the last switch; `rollback` goes back to it
//!   sha256-<hex>/              one directory per set, named by its set digest
//!     vmlinuz-…, kata-containers.img, AMDSEV.fd, qemu-system-x86_64, …
//!     configuration.toml       the base config, rewritten to name the files above
//!     kata-gpu-manifest.json   file, role, size, sha256 of every file
//! ```
//!
//! Sources are a directory, a tarball or an OCI image layout ([`source`]). An install
//! ([`install()`]) refuses escaping entries and incomplete sets before it writes anything,
//! copies and hashes in one pass into a hidden staging directory, and only then renames it
//! into place and switches `current`; a failure leaves the store as it was.
//! [`verify()`] re-hashes, [`rollback`] switches back, [`prune`] removes old sets but never
//! the current one nor one a running sandbox uses, [`remove_class`] removes a class's
//! whole store unless a running sandbox uses it.

mod copy;
pub mod digest;
pub mod error;
mod fsutil;
pub mod install;
pub mod lifecycle;
pub mod manifest;
pub mod relpath;
pub mod rewrite;
pub mod roles;
pub mod source;
pub mod store;
pub mod verify;

/// Where installed sets live; the paths live in `kata-gpu-fsutil`, which the shim uses too.
pub use kata_gpu_fsutil::layout;

pub use error::{Error, Result};
pub use fsutil::Lock;
pub use install::{
    install, read_base_config, stage, InstallOptions, InstallOutcome, InstallReport, Staged,
};
pub use lifecycle::{
    prune, remove_class, rollback, sets_in_use, Kept, PruneReport, RemoveReport, Switch,
};
pub use manifest::{FileRecord, Manifest};
pub use roles::Role;
pub use store::{classes, SetInfo, Store, StoreConfig};
pub use verify::{verify, verify_set, Finding, Problem, VerifyReport};
