//! Qualified device names (`vendor/class=name`) and the rules for each part.
//!
//! Names arrive from pod annotations, so every rule here guards input that a user (or an
//! attacker with pod-create rights) controls.

use std::fmt;
use std::str::FromStr;

/// Longest vendor accepted: a DNS name.
pub const MAX_VENDOR_LEN: usize = 253;
/// Longest class accepted: one DNS label.
pub const MAX_CLASS_LEN: usize = 63;
/// Longest device name accepted.
pub const MAX_DEVICE_NAME_LEN: usize = 253;

/// Which part of a name a rule was checked on; part of every [`NameError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamePart {
    /// The `vendor` of `vendor/class`.
    Vendor,
    /// The `class` of `vendor/class`.
    Class,
    /// The device name after `=`.
    Device,
}

impl fmt::Display for NamePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NamePart::Vendor => "vendor",
            NamePart::Class => "class",
            NamePart::Device => "device name",
        })
    }
}

/// Why a vendor, class, kind or qualified name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A part is empty.
    #[error("{part} is empty")]
    Empty {
        /// The empty part.
        part: NamePart,
    },
    /// A part is longer than its limit.
    #[error("{part} {name:?} is {len} characters long, the limit is {max}")]
    TooLong {
        /// The part.
        part: NamePart,
        /// Its text.
        name: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A part starts with a character its rule forbids there.
    #[error("{part} {name:?} must start with {expected}")]
    BadStart {
        /// The part.
        part: NamePart,
        /// Its text.
        name: String,
        /// What is allowed first.
        expected: &'static str,
    },
    /// A part ends with something other than a letter or digit.
    #[error("{part} {name:?} must end with a letter or digit")]
    BadEnd {
        /// The part.
        part: NamePart,
        /// Its text.
        name: String,
    },
    /// A part holds a character outside its alphabet.
    #[error("{part} {name:?} contains {ch:?}; allowed are {allowed}")]
    BadChar {
        /// The part.
        part: NamePart,
        /// Its text.
        name: String,
        /// The first offending character.
        ch: char,
        /// The alphabet, in words.
        allowed: &'static str,
    },
    /// A kind that is not `vendor/class`.
    #[error("{0:?} is not of the form vendor/class (e.g. nvidia.com/pgpu)")]
    NotAKind(String),
    /// A device reference that is not `vendor/class=name`.
    #[error("{0:?} is not a qualified device name vendor/class=name (e.g. nvidia.com/pgpu=0)")]
    NotQualified(String),
}

fn check_part(
    part: NamePart,
    name: &str,
    max: usize,
    first_ok: fn(char) -> bool,
    first_expected: &'static str,
    inner_ok: fn(char) -> bool,
    allowed: &'static str,
) -> Result<(), NameError> {
    let Some(first) = name.chars().next() else {
        return Err(NameError::Empty { part });
    };
    let len = name.chars().count();
    if len > max {
        return Err(NameError::TooLong {
            part,
            name: name.to_owned(),
            len,
            max,
        });
    }
    if !first_ok(first) {
        return Err(NameError::BadStart {
            part,
            name: name.to_owned(),
            expected: first_expected,
        });
    }
    if let Some(ch) = name.chars().find(|c| !inner_ok(*c)) {
        return Err(NameError::BadChar {
            part,
            name: name.to_owned(),
            ch,
            allowed,
        });
    }
    if !name.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(NameError::BadEnd {
            part,
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn vendor_or_class_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Checks a vendor: a letter first, then letters, digits, `-`, `_`, `.`, ending alphanumeric.
pub fn validate_vendor(vendor: &str) -> Result<(), NameError> {
    check_part(
        NamePart::Vendor,
        vendor,
        MAX_VENDOR_LEN,
        |c| c.is_ascii_alphabetic(),
        "a letter",
        vendor_or_class_char,
        "letters, digits, '-', '_' and '.'",
    )
}

/// Checks a class with the vendor's alphabet (a `.` needs cdiVersion 0.6.0, see [`crate::version`]).
pub fn validate_class(class: &str) -> Result<(), NameError> {
    check_part(
        NamePart::Class,
        class,
        MAX_CLASS_LEN,
        |c| c.is_ascii_alphabetic(),
        "a letter",
        vendor_or_class_char,
        "letters, digits, '-', '_' and '.'",
    )
}

/// Checks a device name: alphanumeric first and last; `-`, `_`, `.`, `:` inside.
pub fn validate_device_name(name: &str) -> Result<(), NameError> {
    check_part(
        NamePart::Device,
        name,
        MAX_DEVICE_NAME_LEN,
        |c| c.is_ascii_alphanumeric(),
        "a letter or digit",
        |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'),
        "letters, digits, '-', '_', '.' and ':'",
    )
}

/// Splits and checks a kind `vendor/class`.
pub fn parse_kind(kind: &str) -> Result<(&str, &str), NameError> {
    let (vendor, class) = kind
        .split_once('/')
        .ok_or_else(|| NameError::NotAKind(kind.to_owned()))?;
    if class.contains('/') {
        return Err(NameError::NotAKind(kind.to_owned()));
    }
    validate_vendor(vendor)?;
    validate_class(class)?;
    Ok((vendor, class))
}

/// A fully qualified device reference, `vendor/class=name`, as pods write it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QualifiedName {
    vendor: String,
    class: String,
    name: String,
}

impl QualifiedName {
    /// Builds a name from checked parts.
    pub fn new(vendor: &str, class: &str, name: &str) -> Result<Self, NameError> {
        validate_vendor(vendor)?;
        validate_class(class)?;
        validate_device_name(name)?;
        Ok(Self {
            vendor: vendor.to_owned(),
            class: class.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Builds a name from parts already checked (a validated spec's kind and device).
    pub(crate) fn from_checked(vendor: &str, class: &str, name: &str) -> Self {
        Self {
            vendor: vendor.to_owned(),
            class: class.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The vendor, e.g. `nvidia.com`.
    pub fn vendor(&self) -> &str {
        &self.vendor
    }

    /// The class, e.g. `pgpu`.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// The device name, e.g. `0`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kind, `vendor/class`.
    pub fn kind(&self) -> String {
        format!("{}/{}", self.vendor, self.class)
    }
}

impl FromStr for QualifiedName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let not_qualified = || NameError::NotQualified(s.to_owned());
        let (kind, name) = s.split_once('=').ok_or_else(not_qualified)?;
        if name.contains('=') {
            return Err(not_qualified());
        }
        let (vendor, class) = kind.split_once('/').ok_or_else(not_qualified)?;
        if class.contains('/') {
            return Err(not_qualified());
        }
        Self::new(vendor, class, name)
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}={}", self.vendor, self.class, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names_parse_and_format() {
        let cases = [
            ("nvidia.com/pgpu=0", "nvidia.com", "pgpu", "0"),
            ("nvidia.com/gpu=all", "nvidia.com", "gpu", "all"),
            ("vendor.com/cl.ass=vfio3", "vendor.com", "cl.ass", "vfio3"),
            ("a/b=x:y_z-1.2", "a", "b", "x:y_z-1.2"),
        ];
        for (input, vendor, class, name) in cases {
            let q: QualifiedName = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!((q.vendor(), q.class(), q.name()), (vendor, class, name));
            assert_eq!(q.to_string(), input);
            assert_eq!(q.kind(), format!("{vendor}/{class}"));
        }
    }

    #[test]
    fn malformed_qualified_names_are_refused_with_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "not a qualified device name"),
            ("nvidia.com/pgpu", "not a qualified device name"),
            ("pgpu=0", "not a qualified device name"),
            ("nvidia.com/pgpu=0=1", "not a qualified device name"),
            ("a/b/c=0", "not a qualified device name"),
            ("/dev/vfio/1", "not a qualified device name"),
            ("nvidia.com/pgpu=", "device name is empty"),
            ("/pgpu=0", "vendor is empty"),
            ("nvidia.com/=0", "class is empty"),
            ("1vendor/pgpu=0", "must start with a letter"),
            (
                "nvidia.com/1gpu=0",
                "class \"1gpu\" must start with a letter",
            ),
            ("nvidia.com/pgpu=-0", "must start with a letter or digit"),
            ("nvidia.com/pgpu=0-", "must end with a letter or digit"),
            ("nvidia.com/pg pu=0", "contains ' '"),
            ("nvidia.com/pgpu=gpu 0", "contains ' '"),
            ("nvid!a.com/pgpu=0", "contains '!'"),
            ("nvidia.com-/pgpu=0", "must end with a letter or digit"),
            ("nvidia.com/pgpu=é", "must start with a letter or digit"),
        ];
        for (input, want) in cases {
            let err = input.parse::<QualifiedName>().expect_err(input);
            assert!(err.to_string().contains(want), "{input}: {err}");
        }
    }

    #[test]
    fn length_limits_are_enforced() {
        let long_class = "c".repeat(MAX_CLASS_LEN + 1);
        let err = validate_class(&long_class).expect_err("too long");
        assert!(matches!(
            err,
            NameError::TooLong {
                len: 64,
                max: 63,
                ..
            }
        ));
        validate_class(&"c".repeat(MAX_CLASS_LEN)).expect("at the limit");
        let long_name = format!("vendor.com/gpu={}", "n".repeat(MAX_DEVICE_NAME_LEN + 1));
        assert!(long_name.parse::<QualifiedName>().is_err());
        assert!(validate_vendor(&"v".repeat(MAX_VENDOR_LEN + 1)).is_err());
    }

    #[test]
    fn kinds_split_into_vendor_and_class() {
        assert_eq!(parse_kind("nvidia.com/pgpu"), Ok(("nvidia.com", "pgpu")));
        for bad in [
            "nvidia.com",
            "nvidia.com/",
            "/pgpu",
            "a/b/c",
            "nvidia.com/p gpu",
        ] {
            assert!(parse_kind(bad).is_err(), "{bad}");
        }
    }
}
