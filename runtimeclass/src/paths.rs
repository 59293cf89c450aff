//! Where kata-gpu keeps its files on a node, as the host sees them.

use std::path::{Path, PathBuf};

/// Where install writes the manifests, as the host sees it.
pub const MANIFEST_DIR: &str = "/var/lib/kata-gpu/manifests";

/// Where install writes the host CDI specs, as the host sees it.
pub const CDI_DIR: &str = "/var/run/cdi";

/// Our host CDI spec of `kind`, as the host sees it.
pub fn our_spec_path(kind: &str) -> PathBuf {
    Path::new(CDI_DIR).join(cdi::write::spec_file_name(kind))
}

/// The record of installed binaries, as the host sees it.
pub const RECORD: &str = "/var/lib/kata-gpu/binaries.json";

/// The default prefix.
pub const DEFAULT_PREFIX: &str = "/usr/local";
