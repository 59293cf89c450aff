//! Which live sandbox holds which PCI function: one device, one sandbox.
//!
//! The host spec names each GPU three ways (index, IOMMU group, `vfioN`), and nothing but
//! kubelet (which annotation mode and `ctr` bypass) stops two sandboxes from naming one GPU;
//! the second VM would fail at QEMU start, after its sandbox was set up. So at Create the
//! shim claims the functions its plan passes through, by PCI address (what every name of a
//! device resolves to): `claims.json` in the sandbox's state directory
//! (`<state_dir>/<namespace>/<sandbox-id>/`), written under one bounded lock
//! (`<state_dir>/claims.lock`) after reading every other sandbox's, so that two concurrent
//! Creates cannot both win. The claim goes with the directory: a failed Create and a
//! sandbox's Delete (the proxy's, or `shim delete` after a crash) remove it.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The claim file in a sandbox's state directory.
pub const CLAIMS_FILE: &str = "claims.json";
/// The lock every check-and-claim takes, in the state directory.
pub use kata_gpu_fsutil::layout::CLAIMS_LOCK;
/// How long a Create waits for another's check-and-claim.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// What a sandbox holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The containerd namespace.
    pub namespace: String,
    /// The sandbox id.
    pub sandbox: String,
    /// The pod (`namespace/name`), when CRI named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The PCI functions it passes through, by address.
    pub devices: Vec<String>,
}

impl Claim {
    /// The holder, in words: `pod default/a (sandbox 1234)` or `sandbox 1234 in namespace x`.
    pub fn holder(&self) -> String {
        match &self.pod {
            Some(pod) => format!("pod {pod} (sandbox {})", self.sandbox),
            None => format!(
                "sandbox {} in containerd namespace {}",
                self.sandbox, self.namespace
            ),
        }
    }
}

/// Why devices could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// A live sandbox holds one of them.
    #[error("{device} is held by {holder}, a live sandbox; one device goes to one sandbox at a time: delete that sandbox first, or ask for another device")]
    Held {
        /// The PCI function.
        device: String,
        /// The holder, in words.
        holder: String,
    },
    /// The lock was held past the wait.
    #[error("cannot claim devices: {} was held for {}s by another sandbox's Create; retry, and if it persists look for a stuck kata-gpu shim", lock.display(), waited.as_secs())]
    Busy {
        /// The lock file.
        lock: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// The state could not be read or written.
    #[error("cannot claim devices in {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClaimError + '_ {
    move |source| ClaimError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Every claim under `state_dir` but the one in `own` (a sandbox's directory). A claim file
/// that cannot be parsed is skipped (only the shim writes them, atomically).
fn others(state_dir: &Path, own: &Path) -> Vec<Claim> {
    let mut out = Vec::new();
    let dirs = |p: &Path| -> Vec<PathBuf> {
        fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect()
    };
    for ns in dirs(state_dir) {
        for sandbox in dirs(&ns) {
            if sandbox == own {
                continue;
            }
            let Ok(text) = fs::read(sandbox.join(CLAIMS_FILE)) else {
                continue;
            };
            if let Ok(claim) = serde_json::from_slice::<Claim>(&text) {
                out.push(claim);
            }
        }
    }
    out
}

/// Claims `claim.devices` for the sandbox whose state directory is `dir` (under
/// `state_dir`): refused, naming the holder, when another live sandbox holds one of them.
/// A claim of no device writes nothing.
pub fn claim(state_dir: &Path, dir: &Path, claim: &Claim) -> Result<(), ClaimError> {
    if claim.devices.is_empty() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(io(state_dir))?;
    let lock_path = state_dir.join(CLAIMS_LOCK);
    let _lock =
        kata_gpu_fsutil::FileLock::acquire(&lock_path, true, LOCK_WAIT, Duration::from_millis(10))
            .map_err(|e| match e {
                kata_gpu_fsutil::LockError::Busy { waited } => ClaimError::Busy {
                    lock: lock_path.clone(),
                    waited,
                },
                kata_gpu_fsutil::LockError::Io(source) => ClaimError::Io {
                    path: lock_path.clone(),
                    source,
                },
            })?;
    for other in others(state_dir, dir) {
        if let Some(device) = claim.devices.iter().find(|d| other.devices.contains(d)) {
            return Err(ClaimError::Held {
                device: device.clone(),
                holder: other.holder(),
            });
        }
    }
    kata_gpu_fsutil::create_dirs(dir, 0o700).map_err(io(dir))?;
    let path = dir.join(CLAIMS_FILE);
    let text = serde_json::to_vec_pretty(claim).map_err(|e| ClaimError::Io {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    kata_gpu_fsutil::write_atomic(&path, &text, 0o600).map_err(io(&path))
}

/// The claim of the sandbox whose state directory is `dir`, if it holds devices.
pub fn read(dir: &Path) -> Option<Claim> {
    serde_json::from_slice(&fs::read(dir.join(CLAIMS_FILE)).ok()?).ok()
}

/// Of the CDI names a container of a kubelet pod asks for, those its sandbox can give: a
/// name of our kinds whose VFIO nodes are functions the sandbox holds (`claim`), or a name
/// of another kind. The pod's own `cdi.k8s.io/*` annotation reaches its containers too
/// (containerd's `pod_annotations`), and may name other ids of the kind than kubelet
/// allocated; the sandbox runs on the allocation, so those are left out. Returns (kept,
/// left out).
pub fn within(
    claim: Option<&Claim>,
    host: &kata_gpu_plan::host::Host,
    registry: &cdi::Registry,
    names: &[cdi::QualifiedName],
) -> (Vec<cdi::QualifiedName>, Vec<cdi::QualifiedName>) {
    use kata_gpu_plan::host::VfioNode;
    use kata_gpu_plan::sandbox::allocated::{host_nodes, OUR_KINDS};
    let held = |bdf: &kata_gpu_plan::host::Bdf| {
        claim.is_some_and(|c| c.devices.contains(&bdf.to_string()))
    };
    let mut kept = Vec::new();
    let mut left = Vec::new();
    for name in names {
        if !OUR_KINDS.contains(&name.kind().as_str()) {
            kept.push(name.clone());
            continue;
        }
        let nodes = host_nodes(registry, name);
        let vfio: Vec<&String> = nodes
            .iter()
            .filter(|n| n.starts_with("/dev/vfio/") && *n != "/dev/vfio/vfio")
            .collect();
        let ok = !vfio.is_empty()
            && vfio.iter().all(|n| match host.vfio_node(n) {
                Ok(VfioNode::Cdev { bdf, .. }) => held(&bdf),
                Ok(VfioNode::Group(g)) => host
                    .iommu_group_members(g)
                    .is_ok_and(|members| members.iter().any(held)),
                Err(_) => false,
            });
        if ok {
            kept.push(name.clone());
        } else {
            left.push(name.clone());
        }
    }
    (kept, left)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(ns: &str, sandbox: &str, devices: &[&str]) -> Claim {
        Claim {
            namespace: ns.into(),
            sandbox: sandbox.into(),
            pod: None,
            devices: devices.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    #[test]
    fn a_held_device_is_refused_naming_the_holder_until_released() {
        let state = tempfile::tempdir().expect("tempdir");
        let st = state.path();
        let a = st.join("k8s.io/a");
        let mut first = of("k8s.io", "a", &["0000:41:00.0"]);
        first.pod = Some("default/train".into());
        claim(st, &a, &first).expect("first");
        let b = st.join("default/b");
        let err = claim(
            st,
            &b,
            &of("default", "b", &["0000:42:00.0", "0000:41:00.0"]),
        )
        .expect_err("held");
        assert_eq!(
            err.to_string(),
            "0000:41:00.0 is held by pod default/train (sandbox a), a live sandbox; one device goes to one sandbox at a time: delete that sandbox first, or ask for another device"
        );
        assert!(!b.exists(), "nothing written for the refused sandbox");
        // The same sandbox again (a retried Create) is not its own rival.
        claim(st, &a, &first).expect("again");
        // Released with the sandbox's directory.
        fs::remove_dir_all(&a).expect("delete");
        claim(st, &b, &of("default", "b", &["0000:41:00.0"])).expect("free now");
        // No device: nothing claimed, nothing written.
        claim(st, &st.join("default/c"), &of("default", "c", &[])).expect("none");
        assert!(!st.join("default/c").exists());
    }

    /// Two Creates at once for one device: exactly one wins.
    #[test]
    fn concurrent_claims_of_one_device_have_one_winner() {
        let state = tempfile::tempdir().expect("tempdir");
        let st = state.path().to_path_buf();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let st = st.clone();
                std::thread::spawn(move || {
                    let id = format!("s{i}");
                    claim(
                        &st,
                        &st.join("ns").join(&id),
                        &of("ns", &id, &["0000:41:00.0"]),
                    )
                    .is_ok()
                })
            })
            .collect();
        let won = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .filter(|w| *w)
            .count();
        assert_eq!(won, 1);
    }
}
