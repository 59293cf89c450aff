//! The shim's settings: a small TOML file, all keys optional. Here, not in the shim, because
//! `kata-gpu doctor` reads them too and must not link the shim's ttrpc stack.
//!
//! Looked up at `$KATA_GPU_SHIM_CONFIG` (tests), else beside the profile's base Kata
//! config (`<artifacts>/<class>/shim.toml`), else `/etc/kata-gpu/shim.toml`; no file means
//! the defaults. A bad file fails `start` naming the file, line and key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::profile::Profile;

/// kubelet's PodResources socket (under the default kubelet root).
pub const POD_RESOURCES_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";

/// Environment variable naming the settings file (for tests).
pub const SETTINGS_ENV: &str = "KATA_GPU_SHIM_CONFIG";
/// The system-wide settings file.
pub const SYSTEM_SETTINGS: &str = "/etc/kata-gpu/shim.toml";
/// Kata's shim, our default downstream.
pub const DEFAULT_DOWNSTREAM: &str = "/opt/kata/bin/containerd-shim-kata-v2";

/// What the downstream shim is, which decides what its `Create` options may be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DownstreamKind {
    /// Kata's Go shim (3.x): reads `runtimeoptions.v1.Options{config_path}`.
    #[default]
    Kata,
    /// Kata's Rust shim (runtime-rs, 4.x): reads the same options as the Go shim, but a
    /// failed `start` exits 0 with nothing on stdout, `Shutdown` replies before it exits,
    /// and it ignores SIGTERM (a leftover daemon is ended with SIGKILL).
    #[serde(rename = "kata-rs")]
    KataRs,
    /// runc's shim (tests): reads only its own option type, so ours are never sent.
    Runc,
}

impl DownstreamKind {
    /// Whether `Create` takes `runtimeoptions.v1.Options` (both Kata shims); runc's shim
    /// knows only its own options type.
    pub fn reads_kata_options(self) -> bool {
        matches!(self, Self::Kata | Self::KataRs)
    }
}

/// Where a sandbox's devices come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceSource {
    /// kubelet's allocation, asked at a sandbox's Create: exactly those devices, and a
    /// `cdi.k8s.io/*` annotation at most restates them. A node of a Kubernetes cluster.
    #[default]
    Kubelet,
    /// The pod's `cdi.k8s.io/*` annotations, unchecked by any scheduler: a node without
    /// kubelet (`ctr` users, the demo). Whoever can create a sandbox can take any GPU.
    Annotations,
}

impl DeviceSource {
    /// The setting's value, as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kubelet => "kubelet",
            Self::Annotations => "annotations",
        }
    }
}

/// The settings, with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The downstream shim binary.
    pub downstream: PathBuf,
    /// What the downstream is.
    pub downstream_kind: DownstreamKind,
    /// Root under which the host (sysfs, /dev, CDI dirs) is read.
    pub host_root: PathBuf,
    /// CDI spec directories, lowest priority first, under `host_root`.
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// Our state: per-sandbox Kata configs and our sockets (`<state_dir>/s/`).
    pub state_dir: PathBuf,
    /// The base Kata config; empty means the profile's installed artifact set.
    pub base_config: Option<PathBuf>,
    /// Lowest `default_memory` a pod may ask for, MiB.
    pub memory_min_mib: u32,
    /// Highest `default_memory` a pod may ask for, MiB.
    pub memory_max_mib: u32,
    /// Highest `default_memory` a pod without a memory limit may ask for, MiB; a pod with
    /// one may ask up to it.
    pub memory_without_limit_max_mib: u32,
    /// Highest `default_vcpus` a pod without a CPU limit may ask for; a pod with one may ask
    /// up to it.
    pub vcpus_without_limit_max: u32,
    /// Refuse GPUs that are not CC-capable under snp/tdx instead of warning.
    pub refuse_non_cc_gpus: bool,
    /// The attestation KBS URL, passed to the guest as `agent.aa_kbc_params=cc_kbc::<url>`.
    pub kbs_address: Option<String>,
    /// Seconds the downstream's `start` may take.
    pub start_timeout_seconds: u64,
    /// kubelet's PodResources socket (under `host_root`), asked at a sandbox's Create which
    /// devices kubelet allocated to the pod; empty only with `device_source = "annotations"`.
    pub pod_resources_socket: PathBuf,
    /// Seconds that lookup may take, connection included.
    pub pod_resources_timeout_seconds: u64,
    /// Where a sandbox's devices come from: kubelet's allocation (the default) or, on a
    /// node without kubelet, the pod's annotations.
    pub device_source: DeviceSource,
}

impl Default for Settings {
    fn default() -> Self {
        let policy = crate::sandbox::Policy::default();
        Self {
            downstream: PathBuf::from(DEFAULT_DOWNSTREAM),
            downstream_kind: DownstreamKind::Kata,
            host_root: PathBuf::from("/"),
            cdi_spec_dirs: cdi::registry::DEFAULT_SPEC_DIRS
                .iter()
                .map(PathBuf::from)
                .collect(),
            state_dir: PathBuf::from("/run/kata-gpu"),
            base_config: None,
            memory_min_mib: policy.memory_min_mib,
            memory_max_mib: policy.memory_max_mib,
            memory_without_limit_max_mib: policy.memory_without_limit_max_mib,
            vcpus_without_limit_max: policy.vcpus_without_limit_max,
            refuse_non_cc_gpus: false,
            kbs_address: None,
            start_timeout_seconds: 30,
            pod_resources_socket: PathBuf::from(POD_RESOURCES_SOCKET),
            pod_resources_timeout_seconds: 5,
            device_source: DeviceSource::Kubelet,
        }
    }
}

/// A settings file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// It exists but cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not valid TOML, or a key is unknown or has the wrong type.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the key.
        message: String,
    },
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// The key whose value is at `line` (1-based): that line's, or for a value spanning lines
/// (an array) the nearest `key =` above it.
fn key_at(text: &str, line: usize) -> Option<&str> {
    text.lines()
        .take(line)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find_map(|l| {
            let (key, _) = l.split_once('=')?;
            let key = key.trim();
            (!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .then_some(key)
        })
}

impl Settings {
    /// Parses settings text; `origin` labels errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, SettingsError> {
        let settings: Settings = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            let message = e.message().trim();
            SettingsError::Invalid {
                path: origin.to_path_buf(),
                line,
                column,
                message: match key_at(text, line) {
                    Some(key) if !message.contains(&format!("`{key}`")) => {
                        format!("{key}: {message}")
                    }
                    _ => message.to_owned(),
                },
            }
        })?;
        if settings.memory_min_mib > settings.memory_max_mib {
            return Err(SettingsError::Invalid {
                path: origin.to_path_buf(),
                line: 1,
                column: 1,
                message: format!(
                    "memory_min_mib ({}) is above memory_max_mib ({})",
                    settings.memory_min_mib, settings.memory_max_mib
                ),
            });
        }
        if settings.device_source == DeviceSource::Kubelet
            && settings.pod_resources_socket.as_os_str().is_empty()
        {
            return Err(SettingsError::Invalid {
                path: origin.to_path_buf(),
                line: 1,
                column: 1,
                message: "pod_resources_socket is empty, so kubelet cannot be asked which devices a pod was allocated; name kubelet's socket, or on a node without kubelet set device_source = \"annotations\"".to_owned(),
            });
        }
        Ok(settings)
    }

    /// The file to read for `profile`, if any exists.
    pub fn locate(profile: Profile) -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(SETTINGS_ENV) {
            return Some(PathBuf::from(p));
        }
        let beside = kata_gpu_fsutil::layout::class_dir(
            Path::new(kata_gpu_fsutil::layout::DEFAULT_ROOT),
            profile.handler(),
        )
        .join("shim.toml");
        [beside, PathBuf::from(SYSTEM_SETTINGS)]
            .into_iter()
            .find(|p| p.exists())
    }

    /// Loads the settings for `profile`: the located file, or the defaults.
    pub fn load(profile: Profile) -> Result<(Self, Option<PathBuf>), SettingsError> {
        match Self::locate(profile) {
            None => Ok((Self::default(), None)),
            Some(path) => {
                let text =
                    std::fs::read_to_string(&path).map_err(|source| SettingsError::Read {
                        path: path.clone(),
                        source,
                    })?;
                Ok((Self::parse(&text, &path)?, Some(path)))
            }
        }
    }

    /// The base Kata config of `profile`: the configured file, or the installed set's.
    pub fn base_config_path(&self, profile: Profile) -> PathBuf {
        self.base_config.clone().unwrap_or_else(|| {
            cdi::inject::under_root(
                &self.host_root,
                &kata_gpu_fsutil::layout::current_config_path(
                    Path::new(kata_gpu_fsutil::layout::DEFAULT_ROOT),
                    profile.handler(),
                )
                .display()
                .to_string(),
            )
        })
    }

    /// The administrator's policy for the plan.
    pub fn policy(&self) -> crate::sandbox::Policy {
        crate::sandbox::Policy {
            memory_min_mib: self.memory_min_mib,
            memory_max_mib: self.memory_max_mib,
            memory_without_limit_max_mib: self.memory_without_limit_max_mib,
            vcpus_without_limit_max: self.vcpus_without_limit_max,
            refuse_non_cc_gpus: self.refuse_non_cc_gpus,
            kernel_params: self
                .kbs_address
                .iter()
                .filter(|a| !a.is_empty())
                .map(|a| format!("agent.aa_kbc_params=cc_kbc::{a}"))
                .collect(),
            ..crate::sandbox::Policy::default()
        }
    }

    /// The CDI registry configuration.
    pub fn registry_config(&self) -> cdi::RegistryConfig {
        cdi::RegistryConfig {
            spec_dirs: self
                .cdi_spec_dirs
                .iter()
                .map(|d| cdi::inject::under_root(&self.host_root, &d.display().to_string()))
                .collect(),
            dev_root: self.host_root.clone(),
            ..cdi::RegistryConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_defaults() {
        assert_eq!(
            Settings::parse("", Path::new("s.toml")).expect("parses"),
            Settings::default()
        );
    }

    #[test]
    fn keys_are_read() {
        let s = Settings::parse(
            "downstream = \"/usr/bin/containerd-shim-runc-v2\"\ndownstream_kind = \"runc\"\nstate_dir = \"/tmp/x\"\nkbs_address = \"http://kbs:8080\"\nmemory_max_mib = 65536\n",
            Path::new("s.toml"),
        )
        .expect("parses");
        assert_eq!(s.downstream_kind, DownstreamKind::Runc);
        assert_eq!(s.state_dir, PathBuf::from("/tmp/x"));
        assert_eq!(
            s.policy().kernel_params,
            ["agent.aa_kbc_params=cc_kbc::http://kbs:8080"]
        );
        assert_eq!(s.policy().memory_max_mib, 65536);
    }

    /// Issue 29 item 1: Kata's Rust shim is a kind of its own, and reads Kata's options.
    #[test]
    fn kata_rs_is_a_downstream_kind_that_takes_kata_options() {
        let s = Settings::parse("downstream_kind = \"kata-rs\"\n", Path::new("s.toml"))
            .expect("parses");
        assert_eq!(s.downstream_kind, DownstreamKind::KataRs);
        assert!(s.downstream_kind.reads_kata_options());
        assert!(DownstreamKind::Kata.reads_kata_options());
        assert!(!DownstreamKind::Runc.reads_kata_options());
    }

    /// Issue 24 item 1: devices come from kubelet unless a node says otherwise, and a
    /// setting that would leave kubelet unasked is refused (failed before: it turned the
    /// check off).
    #[test]
    fn devices_come_from_kubelet_unless_annotation_mode_is_set() {
        assert_eq!(Settings::default().device_source, DeviceSource::Kubelet);
        let s = Settings::parse("device_source = \"annotations\"\n", Path::new("s.toml"))
            .expect("parses");
        assert_eq!(s.device_source, DeviceSource::Annotations);
        let err = Settings::parse("pod_resources_socket = \"\"\n", Path::new("s.toml"))
            .expect_err("refused")
            .to_string();
        assert_eq!(err, "s.toml:1:1: pod_resources_socket is empty, so kubelet cannot be asked which devices a pod was allocated; name kubelet's socket, or on a node without kubelet set device_source = \"annotations\"");
        assert!(Settings::parse(
            "pod_resources_socket = \"\"\ndevice_source = \"annotations\"\n",
            Path::new("s.toml")
        )
        .is_ok());
    }

    #[test]
    fn bad_files_name_file_line_and_key() {
        let cases = [
            (
                "downstream = \"/x\"\nfrobnicate = 1\n",
                "s.toml:2:1: unknown field `frobnicate`",
            ),
            (
                "memory_min_mib = \"lots\"\n",
                "s.toml:1:18: memory_min_mib: invalid type: string \"lots\", expected u32",
            ),
            (
                "downstream_kind = \"crun\"\n",
                "s.toml:1:19: downstream_kind: unknown variant `crun`",
            ),
            ("state_dir = \n", "s.toml:1:"),
            (
                "memory_min_mib = 9000\nmemory_max_mib = 100\n",
                "memory_min_mib (9000) is above memory_max_mib (100)",
            ),
            // Issue 19 item 10: a mistyped value names its key, not only file and line.
            (
                "memory_min_mib = \"2048\"\n",
                "s.toml:1:18: memory_min_mib: invalid type: string \"2048\", expected u32",
            ),
            (
                "cdi_spec_dirs = [\n  \"/etc/cdi\",\n  3,\n]\n",
                "s.toml:3:3: cdi_spec_dirs: invalid type: integer `3`",
            ),
        ];
        for (text, want) in cases {
            let err = Settings::parse(text, Path::new("s.toml"))
                .expect_err(text)
                .to_string();
            assert!(
                err.starts_with("s.toml:") && err.contains(want),
                "{text:?}: {err}"
            );
        }
    }
}
