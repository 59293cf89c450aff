//! What a pod may not ask Kata for through `io.katacontainers.*` annotations.
//!
//! containerd hands a Kata pod every `io.katacontainers.*` annotation (our handler's
//! `pod_annotations`), and Kata applies those under `io.katacontainers.config.hypervisor.`
//! that its `enable_annotations` allows, and every other one unchecked. Two lines of
//! defence keep a pod inside its VM:
//!
//! 1. rendering removes from `enable_annotations` every entry that would allow one of
//!    [`HOST_PATH_ANNOTATIONS`] (see [`crate::render()`]);
//! 2. the sandbox plan calls [`check_pod_annotations`], which lets through only the
//!    profile's allow-list ([`AnnotationPolicy`]), refuses host-path and debug annotations
//!    with their own reason whatever the configuration says, and refuses guest kernel
//!    parameters that would open a debug path into the guest.
//!
//! `kernel_params` itself stays allowed: it is how a pod passes where its attestation
//! broker (KBS) is, e.g. `agent.aa_kbc_params=cc_kbc::https://kbs.example:8080`.

use std::collections::BTreeMap;
use std::fmt;

use crate::allow::effect;
pub use crate::allow::AnnotationPolicy;
use crate::cmdline::{describe, split_pod_kernel_params};

/// The prefix of the hypervisor annotations Kata checks against `enable_annotations`.
pub const HYPERVISOR_ANNOTATION_PREFIX: &str = "io.katacontainers.config.hypervisor.";

/// The annotation through which a pod passes guest kernel parameters.
pub const KERNEL_PARAMS_ANNOTATION: &str = "io.katacontainers.config.hypervisor.kernel_params";

/// Hypervisor annotation names (after [`HYPERVISOR_ANNOTATION_PREFIX`]) that name a file,
/// directory or program on the host, or arguments to a host program. A pod never chooses
/// these; the node's configuration does. From Kata's annotation lists (Go runtime
/// `pkg/annotations`, runtime-rs `kata-types`).
pub const HOST_PATH_ANNOTATIONS: [&str; 13] = [
    "path",
    "ctlpath",
    "jailer_path",
    "kernel",
    "image",
    "initrd",
    "firmware",
    "firmware_volume",
    "virtio_fs_daemon",
    "virtio_fs_extra_args",
    "file_mem_backend",
    "entropy_source",
    "vhost_user_store_path",
];

/// What a host-path annotation would let a pod choose, in words.
fn host_path_what(name: &str) -> &'static str {
    match name {
        "path" => "the hypervisor binary",
        "ctlpath" => "the hypervisor control binary",
        "jailer_path" => "the jailer binary",
        "kernel" => "the guest kernel",
        "image" => "the guest image",
        "initrd" => "the guest initrd",
        "firmware" => "the guest firmware",
        "firmware_volume" => "the guest firmware volume",
        "virtio_fs_daemon" => "the virtio-fs daemon binary",
        "virtio_fs_extra_args" => "arguments to the host's virtio-fs daemon",
        "file_mem_backend" => "the host directory backing guest memory",
        "entropy_source" => "the host entropy device",
        "vhost_user_store_path" => "the host directory of vhost-user sockets",
        _ => "a host path",
    }
}

/// Annotations that are refused whatever their value, with what they would do. Kata has no
/// annotation for the agent's debug switches today; these names mirror the TOML keys so
/// that a Kata that grows them cannot be used to open the guest.
const REFUSED_ANNOTATIONS: [(&str, &str); 6] = [
    (
        "io.katacontainers.config_path",
        "it would make Kata read a configuration file the pod names on the host",
    ),
    (
        "io.katacontainers.config.agent.debug_console_enabled",
        "it would turn on the agent's debug console",
    ),
    (
        "io.katacontainers.config.agent.enable_debug",
        "it would turn on the agent's debug logging",
    ),
    (
        "io.katacontainers.config.agent.enable_tracing",
        "it would send the agent's trace spans to the host",
    ),
    (
        "io.katacontainers.config.hypervisor.enable_debug",
        "it would turn on debug output of the hypervisor and guest kernel",
    ),
    (
        "io.katacontainers.config.hypervisor.debug_console_enabled",
        "it would turn on the agent's debug console",
    ),
];

/// Why a pod annotation is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A hypervisor annotation naming something on the host.
    HostPath {
        /// The name after [`HYPERVISOR_ANNOTATION_PREFIX`], e.g. `jailer_path`.
        name: String,
        /// What it would choose, in words.
        what: &'static str,
    },
    /// An annotation refused whatever its value.
    Refused {
        /// What it would do, in words.
        what: &'static str,
    },
    /// A Kata annotation off the profile's allow-list.
    NotAllowed {
        /// What it would do, in words, when known.
        what: Option<&'static str>,
        /// The policy that refuses it.
        policy: AnnotationPolicy,
    },
    /// Kernel parameters holding a character Kata, the guest kernel and this check would
    /// split or read differently (Unicode whitespace, a quote, a control character).
    KernelParamsText {
        /// The character.
        found: char,
    },
    /// A guest kernel parameter that opens a debug path into the guest.
    KernelParam {
        /// The parameter as the pod wrote it.
        param: String,
        /// What it would do, in words.
        what: &'static str,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::HostPath { name, what } => write!(
                f,
                "it would let the pod choose {what} (`{name}`); the node's Kata configuration decides it"
            ),
            Refusal::Refused { what } => f.write_str(what),
            Refusal::NotAllowed { what, policy } => {
                let names: Vec<&str> = policy
                    .allowed()
                    .iter()
                    .map(|k| k.trim_start_matches(HYPERVISOR_ANNOTATION_PREFIX))
                    .collect();
                let (last, rest) = names.split_last().unwrap_or((&"", &[]));
                write!(
                    f,
                    "{}; {policy} lets a pod set only {} and {last} \
                     ({HYPERVISOR_ANNOTATION_PREFIX}*); remove it",
                    what.unwrap_or("it is not on the allow-list"),
                    rest.join(", ")
                )
            }
            Refusal::KernelParamsText { found } => write!(
                f,
                "it holds {}, which Kata or the guest kernel reads differently from this \
                 check (Kata splits on Unicode whitespace, the kernel strips quotes); write \
                 the parameters in printable ASCII without quotes, separated by spaces",
                describe(*found)
            ),
            Refusal::KernelParam { param, what } => {
                write!(f, "guest kernel parameter {param:?} {what}")
            }
        }
    }
}

/// A pod annotation the sandbox plan must refuse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pod annotation {annotation} is refused: {reason}")]
pub struct AnnotationRefused {
    /// The annotation's key.
    pub annotation: String,
    /// Why.
    pub reason: Refusal,
}

/// Refuses the first (in key order) annotation of a pod that would let it steer the host or
/// open the guest: see [`check_pod_annotation`].
pub fn check_pod_annotations(
    annotations: &BTreeMap<String, String>,
    policy: AnnotationPolicy,
) -> Result<(), AnnotationRefused> {
    annotations
        .iter()
        .try_for_each(|(key, value)| check_pod_annotation(key, value, policy))
}

/// Refuses one pod annotation when it
/// - is `io.katacontainers.config.hypervisor.<name>` for a name in [`HOST_PATH_ANNOTATIONS`];
/// - is `io.katacontainers.config_path`, or an agent/hypervisor debug switch
///   (`...agent.debug_console_enabled`, `...agent.enable_debug`, `...agent.enable_tracing`,
///   `...hypervisor.enable_debug`, `...hypervisor.debug_console_enabled`);
/// - is any other `io.katacontainers.*` annotation off the `policy`'s allow-list;
/// - is [`KERNEL_PARAMS_ANNOTATION`] and holds a character other than printable ASCII
///   (quotes excepted) and ASCII whitespace, or a parameter [`debug_kernel_param`] names.
///
/// Annotations outside `io.katacontainers.` pass: they are not Kata's (Kata's own
/// `enable_annotations` still applies to the hypervisor ones allowed).
pub fn check_pod_annotation(
    key: &str,
    value: &str,
    policy: AnnotationPolicy,
) -> Result<(), AnnotationRefused> {
    let refuse = |reason| {
        Err(AnnotationRefused {
            annotation: key.to_owned(),
            reason,
        })
    };
    if let Some(name) = key.strip_prefix(HYPERVISOR_ANNOTATION_PREFIX) {
        if HOST_PATH_ANNOTATIONS.contains(&name) {
            return refuse(Refusal::HostPath {
                name: name.to_owned(),
                what: host_path_what(name),
            });
        }
    }
    if let Some((_, what)) = REFUSED_ANNOTATIONS.iter().find(|(k, _)| *k == key) {
        return refuse(Refusal::Refused { what });
    }
    if !policy.allows(key) {
        return refuse(Refusal::NotAllowed {
            what: effect(key),
            policy,
        });
    }
    if key == KERNEL_PARAMS_ANNOTATION {
        let params = match split_pod_kernel_params(value) {
            Ok(p) => p,
            Err(found) => return refuse(Refusal::KernelParamsText { found }),
        };
        for param in params {
            if let Some(what) = debug_kernel_param(param) {
                return refuse(Refusal::KernelParam {
                    param: param.to_owned(),
                    what,
                });
            }
        }
    }
    Ok(())
}

/// What a guest kernel parameter would open, when it is one a pod may not pass; `None` for
/// any other. The agent reads `/proc/cmdline` split on whitespace; a key is compared with
/// `-` read as `_` and without regard to case, so that no spelling slips through.
///
/// Refused: `agent.debug_console`, `agent.debug_console_vport` (debug console);
/// `agent.log=debug|trace`, `agent.log_vport`, `agent.devmode`, `agent.trace` (debug logging
/// and tracing to the host); `agent.config_file` (a whole agent configuration, which can turn
/// the console on); `console`, `earlycon`, `earlyprintk` (move the guest kernel's console);
/// `init`, `rdinit` (replace the guest's init, and with it the agent).
pub fn debug_kernel_param(param: &str) -> Option<&'static str> {
    let (key, value) = match param.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (param, None),
    };
    let key = key.to_ascii_lowercase().replace('-', "_");
    let value = value.map(|v| v.trim_matches(['"', '\'']).to_ascii_lowercase());
    Some(match key.as_str() {
        "agent.debug_console" => "turns on the agent's debug console",
        "agent.debug_console_vport" => "opens the agent's debug console on a vsock port",
        "agent.log" if matches!(value.as_deref(), Some("debug" | "trace")) => {
            "turns on the agent's debug logging"
        }
        "agent.log_vport" => "sends the agent's log to the host over vsock",
        "agent.devmode" => "puts the agent in development mode",
        "agent.trace" => "turns on agent tracing to the host",
        "agent.config_file" => {
            "replaces the agent's configuration, which can turn on its debug console"
        }
        "console" | "earlycon" | "earlyprintk" => "moves the guest kernel's console",
        "init" | "rdinit" => "replaces the guest's init and with it the agent",
        _ => return None,
    })
}

#[cfg(test)]
#[path = "annotations_tests.rs"]
mod tests;
