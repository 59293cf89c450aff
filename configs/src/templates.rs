//! The base Kata configurations we ship, one per profile: Kata 3.30.0's generated NVIDIA
//! configs (`configuration-qemu-nvidia-gpu{,-snp,-tdx}.toml`) with only the keys we own
//! overlaid (artifact paths under
//! `/opt/nvidia-gpu-operator/artifacts/runtimeclasses/<class>/current/`, the
//! `enable_annotations` our renderer keeps, `pcie_root_port = 0`, an empty
//! `pod_resource_api_sock`). The test `kata_config` of `kata-gpu-tests` derives them from
//! Kata's files and checks them. Each is embedded in the binary and passes
//! [`crate::validate_config`].

use crate::error::ConfigError;

/// The profile names, in the order [`template`] knows them.
pub const PROFILES: [&str; 3] = ["snp", "tdx", "gpu"];

const SNP: &str = include_str!("../templates/configuration-qemu-nvidia-gpu-snp.toml");
const TDX: &str = include_str!("../templates/configuration-qemu-nvidia-gpu-tdx.toml");
const GPU: &str = include_str!("../templates/configuration-qemu-nvidia-gpu.toml");

/// The base configuration of a profile (`snp`, `tdx` or `gpu`).
pub fn template(profile_name: &str) -> Result<&'static str, ConfigError> {
    match profile_name {
        "snp" => Ok(SNP),
        "tdx" => Ok(TDX),
        "gpu" => Ok(GPU),
        _ => Err(ConfigError::UnknownProfile {
            name: profile_name.to_owned(),
        }),
    }
}

/// The file name Kata gives a profile's configuration, e.g.
/// `configuration-qemu-nvidia-gpu-snp.toml`.
pub fn template_file_name(profile_name: &str) -> Result<&'static str, ConfigError> {
    match profile_name {
        "snp" => Ok("configuration-qemu-nvidia-gpu-snp.toml"),
        "tdx" => Ok("configuration-qemu-nvidia-gpu-tdx.toml"),
        "gpu" => Ok("configuration-qemu-nvidia-gpu.toml"),
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
        for name in PROFILES {
            let text = template(name).unwrap_or_else(|e| panic!("{e}"));
            let file = template_file_name(name).unwrap_or_else(|e| panic!("{e}"));
            if let Err(e) = crate::validate_config(text, Path::new(file)) {
                panic!("{name}: {e}");
            }
        }
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
