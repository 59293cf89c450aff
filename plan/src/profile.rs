//! Profiles: one shim binary serves several runtime classes, told apart by the name it is
//! invoked as (ARCHITECTURE.md, "Profiles").

use std::fmt;
use std::str::FromStr;

/// The trusted execution environment a profile's VM runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tee {
    /// AMD SEV-SNP.
    SevSnp,
    /// Intel TDX.
    Tdx,
    /// No TEE: plain GPU passthrough.
    None,
}

/// A runtime class this project serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Profile {
    /// `kata-qemu-nvidia-gpu-snp`, the default.
    Snp,
    /// `kata-qemu-nvidia-gpu-tdx`.
    Tdx,
    /// `kata-qemu-nvidia-gpu`, no confidential computing.
    Gpu,
}

impl Profile {
    /// Every profile.
    pub const ALL: [Profile; 3] = [Profile::Snp, Profile::Tdx, Profile::Gpu];

    /// The short name used on the command line (`snp`, `tdx`, `gpu`).
    pub fn name(self) -> &'static str {
        match self {
            Profile::Snp => "snp",
            Profile::Tdx => "tdx",
            Profile::Gpu => "gpu",
        }
    }

    /// The containerd handler, which is also the RuntimeClass name.
    pub fn handler(self) -> &'static str {
        match self {
            Profile::Snp => "kata-qemu-nvidia-gpu-snp",
            Profile::Tdx => "kata-qemu-nvidia-gpu-tdx",
            Profile::Gpu => "kata-qemu-nvidia-gpu",
        }
    }

    /// containerd's `runtime_type`; containerd derives the shim binary's name from it.
    pub fn runtime_type(self) -> String {
        format!("io.containerd.{}.v2", self.handler())
    }

    /// The shim binary containerd runs for this profile.
    pub fn shim_binary(self) -> String {
        format!("containerd-shim-{}-v2", self.handler())
    }

    /// The TEE the VM runs in.
    pub fn tee(self) -> Tee {
        match self {
            Profile::Snp => Tee::SevSnp,
            Profile::Tdx => Tee::Tdx,
            Profile::Gpu => Tee::None,
        }
    }

    /// Whether the guest is confidential (and so needs iommufd and no hotplug).
    pub fn confidential(self) -> bool {
        self.tee() != Tee::None
    }

    /// Which `io.katacontainers.*` pod annotations may reach Kata under this profile.
    pub fn annotation_policy(self) -> kata_gpu_configs::AnnotationPolicy {
        if self.confidential() {
            kata_gpu_configs::AnnotationPolicy::Confidential
        } else {
            kata_gpu_configs::AnnotationPolicy::Plain
        }
    }

    /// The profile a shim binary name selects, e.g. from `argv[0]`.
    pub fn from_binary_name(name: &str) -> Option<Profile> {
        let base = name.rsplit('/').next().unwrap_or(name);
        Profile::ALL.into_iter().find(|p| p.shim_binary() == base)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A profile name that is not `snp`, `tdx` or `gpu`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown profile {0:?}; the profiles are snp, tdx and gpu")]
pub struct UnknownProfile(pub String);

impl FromStr for Profile {
    type Err = UnknownProfile;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.name() == s || p.handler() == s)
            .ok_or_else(|| UnknownProfile(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_handlers_and_binaries_line_up() {
        let table = [
            (
                Profile::Snp,
                "io.containerd.kata-qemu-nvidia-gpu-snp.v2",
                "containerd-shim-kata-qemu-nvidia-gpu-snp-v2",
            ),
            (
                Profile::Tdx,
                "io.containerd.kata-qemu-nvidia-gpu-tdx.v2",
                "containerd-shim-kata-qemu-nvidia-gpu-tdx-v2",
            ),
            (
                Profile::Gpu,
                "io.containerd.kata-qemu-nvidia-gpu.v2",
                "containerd-shim-kata-qemu-nvidia-gpu-v2",
            ),
        ];
        for (p, runtime_type, binary) in table {
            assert_eq!(p.runtime_type(), runtime_type);
            assert_eq!(p.shim_binary(), binary);
            assert_eq!(
                Profile::from_binary_name(&format!("/usr/local/bin/{binary}")),
                Some(p)
            );
            assert_eq!(p.name().parse(), Ok(p));
            assert_eq!(p.handler().parse(), Ok(p));
        }
        assert_eq!(Profile::from_binary_name("containerd-shim-kata-v2"), None);
        assert!("sev".parse::<Profile>().is_err());
        assert!(Profile::Snp.confidential() && !Profile::Gpu.confidential());
    }
}
