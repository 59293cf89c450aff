//! The base Kata configurations we ship, one per profile: Kata 3.30.0's generated NVIDIA
//! configs (`configuration-qemu-nvidia-gpu{,-snp,-tdx}.toml`) with only the keys we own
//! overlaid (artifact paths under
//! `/opt/nvidia-gpu-operator/artifacts/runtimeclasses/<class>/current/`, the
//! `enable_annotations` our renderer keeps, `pcie_root_port = 0`, an empty
//! `pod_resource_api_sock`). The test `kata_config` of `kata-gpu-tests` derives them from
//! Kata's files and checks them. Each is embedded in the binary and passes
//! [`crate::validate_config`].
//!
//! Kata 4.1's Rust runtime (runtime-rs) has a config schema of its own and refuses keys of
//! the Go runtime's (`[agent.kata] dial_timeout`), so it gets templates of its own, made the
//! same way from its generated `configuration-qemu-nvidia-gpu{,-snp,-tdx}-runtime-rs.toml`:
//! [`template_for`] and [`template_file_name_for`] pick one by profile and [`KataRuntime`].

use crate::error::ConfigError;

/// Which of Kata's two runtimes reads a configuration: they share the file format but not
/// the schema, so a template (and an installed base config) belongs to one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum KataRuntime {
    /// Kata's Go runtime (`containerd-shim-kata-v2` of Kata 3.x, `src/runtime`).
    #[default]
    Go,
    /// Kata's Rust runtime, runtime-rs (`src/runtime-rs`, Kata 4.x).
    Rs,
}

/// Keys that only one runtime's configs have, with the runtime they mark: runtime-rs
/// refuses the Go runtime's `dial_timeout` in `[agent.kata]` (it denies unknown keys there)
/// and reads `dial_timeout_ms` instead; the Go runtime has no `dial_timeout_ms`.
const MARKERS: [(&[&str], KataRuntime); 2] = [
    (&["agent", "kata", "dial_timeout"], KataRuntime::Go),
    (&["agent", "kata", "dial_timeout_ms"], KataRuntime::Rs),
];

impl KataRuntime {
    /// Both runtimes, Go first.
    pub const ALL: [KataRuntime; 2] = [KataRuntime::Go, KataRuntime::Rs];

    /// The name on the command line and in messages: `go` or `rs`.
    pub fn name(self) -> &'static str {
        match self {
            KataRuntime::Go => "go",
            KataRuntime::Rs => "rs",
        }
    }

    /// The runtime in words, for what people read.
    pub fn describe(self) -> &'static str {
        match self {
            KataRuntime::Go => "Kata's Go runtime",
            KataRuntime::Rs => "Kata's Rust runtime (runtime-rs)",
        }
    }

    /// The runtime a configuration text was written for, by the first key only one
    /// runtime's configs have (returned as a dotted key, e.g. `agent.kata.dial_timeout`);
    /// `None` when it has none of them (or is no TOML), for a caller to take as unknown.
    pub fn of_config(text: &str) -> Option<(KataRuntime, String)> {
        let doc: toml_edit::DocumentMut = text.parse().ok()?;
        MARKERS.iter().find_map(|(path, runtime)| {
            let mut item = doc.as_item();
            for part in *path {
                item = item.get(part)?;
            }
            (!item.is_none()).then(|| (*runtime, path.join(".")))
        })
    }
}

impl std::fmt::Display for KataRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KataRuntime {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "go" => Ok(KataRuntime::Go),
            "rs" | "runtime-rs" => Ok(KataRuntime::Rs),
            _ => Err(format!(
                "unknown Kata runtime {s:?}: go (Kata's Go runtime) or rs (runtime-rs)"
            )),
        }
    }
}

/// The profile names, in the order [`template`] knows them.
pub const PROFILES: [&str; 3] = ["snp", "tdx", "gpu"];

const SNP: &str = include_str!("../templates/configuration-qemu-nvidia-gpu-snp.toml");
const TDX: &str = include_str!("../templates/configuration-qemu-nvidia-gpu-tdx.toml");
const GPU: &str = include_str!("../templates/configuration-qemu-nvidia-gpu.toml");
const RS_SNP: &str = include_str!("../templates/configuration-qemu-nvidia-gpu-snp-runtime-rs.toml");
const RS_TDX: &str = include_str!("../templates/configuration-qemu-nvidia-gpu-tdx-runtime-rs.toml");
const RS_GPU: &str = include_str!("../templates/configuration-qemu-nvidia-gpu-runtime-rs.toml");

/// The base configuration of a profile (`snp`, `tdx` or `gpu`) for Kata's Go runtime.
pub fn template(profile_name: &str) -> Result<&'static str, ConfigError> {
    template_for(profile_name, KataRuntime::Go)
}

/// The base configuration of a profile (`snp`, `tdx` or `gpu`) for one of Kata's runtimes.
pub fn template_for(profile_name: &str, runtime: KataRuntime) -> Result<&'static str, ConfigError> {
    match (profile_name, runtime) {
        ("snp", KataRuntime::Go) => Ok(SNP),
        ("tdx", KataRuntime::Go) => Ok(TDX),
        ("gpu", KataRuntime::Go) => Ok(GPU),
        ("snp", KataRuntime::Rs) => Ok(RS_SNP),
        ("tdx", KataRuntime::Rs) => Ok(RS_TDX),
        ("gpu", KataRuntime::Rs) => Ok(RS_GPU),
        _ => Err(ConfigError::UnknownProfile {
            name: profile_name.to_owned(),
        }),
    }
}

/// The file name Kata's Go runtime gives a profile's configuration, e.g.
/// `configuration-qemu-nvidia-gpu-snp.toml`.
pub fn template_file_name(profile_name: &str) -> Result<&'static str, ConfigError> {
    template_file_name_for(profile_name, KataRuntime::Go)
}

/// The file name a Kata runtime gives a profile's configuration, e.g.
/// `configuration-qemu-nvidia-gpu-snp-runtime-rs.toml` for runtime-rs's snp.
pub fn template_file_name_for(
    profile_name: &str,
    runtime: KataRuntime,
) -> Result<&'static str, ConfigError> {
    match (profile_name, runtime) {
        ("snp", KataRuntime::Go) => Ok("configuration-qemu-nvidia-gpu-snp.toml"),
        ("tdx", KataRuntime::Go) => Ok("configuration-qemu-nvidia-gpu-tdx.toml"),
        ("gpu", KataRuntime::Go) => Ok("configuration-qemu-nvidia-gpu.toml"),
        ("snp", KataRuntime::Rs) => Ok("configuration-qemu-nvidia-gpu-snp-runtime-rs.toml"),
        ("tdx", KataRuntime::Rs) => Ok("configuration-qemu-nvidia-gpu-tdx-runtime-rs.toml"),
        ("gpu", KataRuntime::Rs) => Ok("configuration-qemu-nvidia-gpu-runtime-rs.toml"),
        _ => Err(ConfigError::UnknownProfile {
            name: profile_name.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn every_template_validates() {
        for runtime in KataRuntime::ALL {
            for name in PROFILES {
                let text = template_for(name, runtime).unwrap_or_else(|e| panic!("{e}"));
                let file = template_file_name_for(name, runtime).unwrap_or_else(|e| panic!("{e}"));
                if let Err(e) = crate::validate_config(text, Path::new(file)) {
                    panic!("{runtime} {name}: {e}");
                }
            }
        }
    }

    /// Each template is known as its own runtime's by its marker key, so that install can
    /// refuse a base config of the other runtime.
    #[test]
    fn each_template_is_known_as_its_runtimes() {
        for runtime in KataRuntime::ALL {
            for name in PROFILES {
                let text = template_for(name, runtime).unwrap_or_else(|e| panic!("{e}"));
                let (found, key) = KataRuntime::of_config(text)
                    .unwrap_or_else(|| panic!("{runtime} {name}: no marker key"));
                assert_eq!(found, runtime, "{name}: {key}");
            }
        }
        assert_eq!(
            KataRuntime::of_config("[agent.kata]\ndial_timeout = 30\n"),
            Some((KataRuntime::Go, "agent.kata.dial_timeout".to_owned()))
        );
        assert_eq!(KataRuntime::of_config("[hypervisor.qemu]\n"), None);
        assert_eq!(KataRuntime::of_config("not = [toml"), None);
        assert_eq!("rs".parse::<KataRuntime>(), Ok(KataRuntime::Rs));
        assert!("rust".parse::<KataRuntime>().is_err());
        assert_eq!(KataRuntime::default(), KataRuntime::Go);
    }

    /// The TEE-specific keys sit in their own profile only: a TDX guest without a quote
    /// source cannot attest, and SNP keys in a TDX config (or the reverse) mislead.
    #[test]
    fn tee_keys_belong_to_their_profile() {
        let qemu = |name: &str| {
            let doc: toml_edit::DocumentMut = template(name)
                .unwrap_or_else(|e| panic!("{e}"))
                .parse()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            doc["hypervisor"]["qemu"].clone()
        };
        let (snp, tdx, gpu) = (qemu("snp"), qemu("tdx"), qemu("gpu"));
        for name in PROFILES {
            let go = qemu(name);
            let doc: toml_edit::DocumentMut = template_for(name, KataRuntime::Rs)
                .unwrap_or_else(|e| panic!("{e}"))
                .parse()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let rs = &doc["hypervisor"]["qemu"];
            for key in ["confidential_guest", "snp_guest_policy", "machine_type"] {
                assert_eq!(
                    rs.get(key).map(|v| v.to_string().trim().to_owned()),
                    go.get(key).map(|v| v.to_string().trim().to_owned()),
                    "{name}: {key} differs between the runtimes' templates"
                );
            }
        }
        assert_eq!(
            tdx.get("tdx_quote_generation_service_socket_port")
                .and_then(|v| v.as_integer()),
            Some(4050)
        );
        assert!(tdx.get("snp_guest_policy").is_none());
        assert!(snp.get("snp_guest_policy").is_some());
        for other in [&snp, &gpu] {
            assert!(other
                .get("tdx_quote_generation_service_socket_port")
                .is_none());
        }
        assert!(gpu.get("snp_guest_policy").is_none());
        for (name, t) in [("snp", &snp), ("tdx", &tdx)] {
            assert_eq!(
                t.get("confidential_guest").and_then(|v| v.as_bool()),
                Some(true),
                "{name}"
            );
        }
    }

    #[test]
    fn unknown_profile_is_named() {
        let e = template("sev").expect_err("should be refused");
        assert_eq!(
            e.to_string(),
            "unknown profile \"sev\": known profiles are snp, tdx and gpu"
        );
        assert!(template_file_name("").is_err());
    }
}
