//! The node's facts, read once per command into one value that every view of the command
//! reads: the host ([`crate::host::HostFacts`]), a profile's status (containerd,
//! registrations, shims, artifact sets) and the node's GPU sandboxes. `doctor` checks it,
//! `--labels` labels from it and `sandboxes` shows it; a command that needs only part
//! reads only that part ([`HostFacts::gather`], [`crate::status::gather`]).

use std::path::Path;
use std::time::SystemTime;

pub use crate::host::{Device, HostFacts};
use crate::sandboxes::{self, Sandboxes};
use crate::shims;
use crate::status::{self, Status, StatusError, StatusQuery};

/// Everything `doctor` looks at for one profile, read once.
#[derive(Debug)]
pub struct NodeFacts {
    /// The host.
    pub host: HostFacts,
    /// The profile's status, with what the shim probes answered.
    pub status: Result<Status, StatusError>,
    /// The node's GPU sandboxes, of every profile's state directory.
    pub sandboxes: Sandboxes,
}

impl NodeFacts {
    /// Reads the node under `root` for the profile `query` asks about.
    pub fn gather(query: &StatusQuery, root: &Path, now: SystemTime) -> NodeFacts {
        let host = HostFacts::gather(root);
        let sandboxes = sandboxes::gather(&host, &shims::state_dirs(root), now);
        NodeFacts {
            status: status::gather(query, root),
            sandboxes,
            host,
        }
    }
}
