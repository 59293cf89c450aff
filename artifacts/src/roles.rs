//! What each file of a set is for, decided by its name. Pure.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::relpath::RelPath;

/// The part a file plays in a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The guest kernel: `vmlinuz` or `vmlinuz-*`.
    Kernel,
    /// A guest root-file-system image: `*.img`, `*.image`.
    Image,
    /// A guest initrd: a name containing `initrd`.
    Initrd,
    /// The guest firmware: `*.fd`, `OVMF*`, `AMDSEV*`.
    Firmware,
    /// The QEMU binary: `qemu-system-*`.
    Qemu,
    /// The base Kata configuration: `configuration-*.toml` or `configuration.toml`.
    Config,
    /// The software bill of materials: `sbom*`, `*.spdx`, `*.spdx.json`, `*.cdx.json`.
    Sbom,
    /// Anything else; installed and verified, but nothing points at it.
    Other,
}

impl Role {
    /// The role a file plays, by its name.
    pub fn of(path: &RelPath) -> Role {
        let name = path.file_name();
        let lower = name.to_ascii_lowercase();
        if name == "configuration.toml"
            || (name.starts_with("configuration-") && name.ends_with(".toml"))
        {
            Role::Config
        } else if name == "vmlinuz" || name.starts_with("vmlinuz-") {
            Role::Kernel
        } else if lower.contains("initrd") {
            Role::Initrd
        } else if lower.ends_with(".img") || lower.ends_with(".image") {
            Role::Image
        } else if lower.ends_with(".fd") || lower.starts_with("ovmf") || lower.starts_with("amdsev")
        {
            Role::Firmware
        } else if name.starts_with("qemu-system-") {
            Role::Qemu
        } else if lower.starts_with("sbom")
            || lower.ends_with(".spdx")
            || lower.ends_with(".spdx.json")
            || lower.ends_with(".cdx.json")
        {
            Role::Sbom
        } else {
            Role::Other
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Kernel => "kernel",
            Role::Image => "image",
            Role::Initrd => "initrd",
            Role::Firmware => "firmware",
            Role::Qemu => "qemu",
            Role::Config => "config",
            Role::Sbom => "sbom",
            Role::Other => "other",
        })
    }
}

/// The guest's root file system: an image or an initrd, never both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guest {
    /// A disk image (Kata's `image`).
    Image(RelPath),
    /// An initrd (Kata's `initrd`).
    Initrd(RelPath),
}

impl Guest {
    /// The file.
    pub fn path(&self) -> &RelPath {
        match self {
            Guest::Image(p) | Guest::Initrd(p) => p,
        }
    }
}

/// The file that plays each role of a valid set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    /// The kernel.
    pub kernel: RelPath,
    /// The image or initrd.
    pub guest: Guest,
    /// The firmware, when the set ships one.
    pub firmware: Option<RelPath>,
    /// The QEMU binary, when the set ships one.
    pub qemu: Option<RelPath>,
    /// The base Kata configuration.
    pub config: RelPath,
    /// The SBOM list, when the set ships one.
    pub sbom: Option<RelPath>,
}

/// Why a list of files is not a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleError {
    /// No file plays a required role; `files` lists every file.
    Missing {
        /// The role and its pattern.
        role: &'static str,
        /// All files.
        files: Vec<RelPath>,
    },
    /// Several files claim one role.
    Ambiguous {
        /// The role.
        role: &'static str,
        /// The candidates.
        files: Vec<RelPath>,
    },
}

const KERNEL: &str = "kernel (vmlinuz-*)";
const GUEST: &str = "guest image or initrd (*.img, *initrd*)";
const CONFIG: &str = "base Kata configuration (configuration-*.toml)";

/// Assigns the roles of a set; refuses a set without a kernel, image/initrd or config, or
/// with two candidates for one role.
pub fn assign<'a>(files: impl IntoIterator<Item = &'a RelPath>) -> Result<Roles, RoleError> {
    let all: Vec<RelPath> = files.into_iter().cloned().collect();
    let with = |roles: &[Role]| -> Vec<RelPath> {
        all.iter()
            .filter(|p| roles.contains(&Role::of(p)))
            .cloned()
            .collect()
    };
    let one = |role: &'static str, found: Vec<RelPath>| -> Result<Option<RelPath>, RoleError> {
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.into_iter().next()),
            _ => Err(RoleError::Ambiguous { role, files: found }),
        }
    };
    let required = |role: &'static str, found: Vec<RelPath>| -> Result<RelPath, RoleError> {
        one(role, found)?.ok_or_else(|| RoleError::Missing {
            role,
            files: all.clone(),
        })
    };
    let kernel = required(KERNEL, with(&[Role::Kernel]))?;
    let guest_path = required(GUEST, with(&[Role::Image, Role::Initrd]))?;
    let guest = match Role::of(&guest_path) {
        Role::Initrd => Guest::Initrd(guest_path),
        _ => Guest::Image(guest_path),
    };
    let config = required(CONFIG, with(&[Role::Config]))?;
    Ok(Roles {
        kernel,
        guest,
        firmware: one("firmware (*.fd)", with(&[Role::Firmware]))?,
        qemu: one("QEMU binary (qemu-system-*)", with(&[Role::Qemu]))?,
        config,
        sbom: one("SBOM list (sbom*, *.spdx.json)", with(&[Role::Sbom]))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(names: &[&str]) -> Vec<RelPath> {
        names
            .iter()
            .map(|n| RelPath::parse(n).expect("valid test path"))
            .collect()
    }

    #[test]
    fn names_decide_roles() {
        let role = |n: &str| Role::of(&RelPath::parse(n).expect("valid"));
        assert_eq!(role("vmlinuz-6.12.8-nvidia-gpu-confidential"), Role::Kernel);
        assert_eq!(role("kata-containers-confidential.img"), Role::Image);
        assert_eq!(
            role("kata-containers-initrd-confidential.img"),
            Role::Initrd
        );
        assert_eq!(role("AMDSEV.fd"), Role::Firmware);
        assert_eq!(role("OVMF.inteltdx.fd"), Role::Firmware);
        assert_eq!(role("bin/qemu-system-x86_64"), Role::Qemu);
        assert_eq!(role("configuration-qemu-nvidia-gpu-snp.toml"), Role::Config);
        assert_eq!(role("sbom.spdx.json"), Role::Sbom);
        assert_eq!(role("README"), Role::Other);
        assert_eq!(role("vmlinux-6.1"), Role::Other);
    }

    #[test]
    fn a_full_set_is_assigned() {
        let files = paths(&[
            "vmlinuz-6.1",
            "kata.img",
            "AMDSEV.fd",
            "qemu-system-x86_64",
            "configuration-qemu-snp.toml",
            "sbom.spdx.json",
            "README",
        ]);
        let roles = assign(&files).expect("a valid set");
        assert_eq!(roles.kernel.as_str(), "vmlinuz-6.1");
        assert_eq!(roles.guest, Guest::Image(files[1].clone()));
        assert_eq!(
            roles.firmware.as_ref().map(RelPath::as_str),
            Some("AMDSEV.fd")
        );
        assert_eq!(
            roles.qemu.as_ref().map(RelPath::as_str),
            Some("qemu-system-x86_64")
        );
        assert_eq!(
            roles.sbom.as_ref().map(RelPath::as_str),
            Some("sbom.spdx.json")
        );
    }

    #[test]
    fn missing_and_ambiguous_roles_are_refused() {
        let e = assign(&paths(&["kata.img", "configuration-a.toml"])).expect_err("no kernel");
        assert!(
            matches!(e, RoleError::Missing { role: KERNEL, .. }),
            "{e:?}"
        );
        let e = assign(&paths(&["vmlinuz-1", "configuration-a.toml"])).expect_err("no image");
        assert!(matches!(e, RoleError::Missing { role: GUEST, .. }), "{e:?}");
        let e = assign(&paths(&[
            "vmlinuz-1",
            "vmlinuz-2",
            "a.img",
            "configuration-a.toml",
        ]))
        .expect_err("two kernels");
        assert_eq!(
            e,
            RoleError::Ambiguous {
                role: KERNEL,
                files: paths(&["vmlinuz-1", "vmlinuz-2"])
            }
        );
        let e = assign(&paths(&[
            "vmlinuz-1",
            "a.img",
            "initrd.img",
            "configuration-a.toml",
        ]))
        .expect_err("image and initrd");
        assert!(
            matches!(e, RoleError::Ambiguous { role: GUEST, .. }),
            "{e:?}"
        );
    }
}
