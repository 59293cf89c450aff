//! Annotations: the `cdi.k8s.io/*` keys through which pods ask for devices, and the
//! Kubernetes rules that spec and device annotations must follow.

use std::collections::BTreeMap;

use crate::name::{NameError, QualifiedName};

/// Prefix of the annotation keys that carry CDI device requests.
pub const CDI_ANNOTATION_PREFIX: &str = "cdi.k8s.io/";
/// Longest name part of an annotation key (after the `/`), as Kubernetes allows.
pub const MAX_KEY_NAME_LEN: usize = 63;
/// Longest prefix of an annotation key (a DNS subdomain).
pub const MAX_KEY_PREFIX_LEN: usize = 253;
/// Largest total size of one set of annotations, keys plus values, as Kubernetes allows.
pub const MAX_ANNOTATIONS_SIZE: usize = 256 * 1024;

/// Why an annotation key or value was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    /// The key breaks the Kubernetes qualified-name rules.
    #[error("annotation key {key:?}: {reason}")]
    Key {
        /// The key.
        key: String,
        /// The broken rule, in words.
        reason: &'static str,
    },
    /// A `cdi.k8s.io/*` value holds an empty entry (e.g. `a=0,,b=1` or nothing at all).
    #[error(
        "annotation {key:?} has an empty device entry; expected comma-separated vendor/class=name"
    )]
    EmptyEntry {
        /// The key.
        key: String,
    },
    /// A `cdi.k8s.io/*` value names something that is not a qualified device.
    #[error("annotation {key:?}: {problem}")]
    Device {
        /// The key.
        key: String,
        /// What is wrong with the entry.
        problem: NameError,
    },
    /// All keys and values together exceed the Kubernetes limit.
    #[error("annotations take {size} bytes, more than the limit of {max}")]
    TooLarge {
        /// Their size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Building a request would overwrite an existing key.
    #[error("annotation {key:?} is already set")]
    Collision {
        /// The key.
        key: String,
    },
    /// Building a request without devices.
    #[error("a CDI annotation needs at least one device")]
    NoDevices,
}

fn key_error(key: &str, reason: &'static str) -> AnnotationError {
    AnnotationError::Key {
        key: key.to_owned(),
        reason,
    }
}

/// Checks the name part of a key: alphanumeric at both ends, `-_.` inside, at most 63.
fn check_key_name(key: &str, name: &str) -> Result<(), AnnotationError> {
    if name.is_empty() {
        return Err(key_error(key, "the name part is empty"));
    }
    if name.len() > MAX_KEY_NAME_LEN {
        return Err(key_error(key, "the name part is longer than 63 characters"));
    }
    let ends_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ends_ok {
        return Err(key_error(
            key,
            "the name part must start and end with a letter or digit",
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(key_error(
            key,
            "the name part may hold only letters, digits, '-', '_' and '.'",
        ));
    }
    Ok(())
}

/// Checks a key prefix: a lower-case DNS subdomain of at most 253 characters.
fn check_key_prefix(key: &str, prefix: &str) -> Result<(), AnnotationError> {
    if prefix.is_empty() || prefix.len() > MAX_KEY_PREFIX_LEN {
        return Err(key_error(
            key,
            "the prefix must be a DNS subdomain of 1 to 253 characters",
        ));
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && label.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if !prefix.split('.').all(label_ok) {
        return Err(key_error(
            key,
            "the prefix must be a lower-case DNS subdomain (e.g. example.com)",
        ));
    }
    Ok(())
}

/// Checks one annotation key against the Kubernetes rules (`[prefix/]name`).
pub fn validate_annotation_key(key: &str) -> Result<(), AnnotationError> {
    match key.split_once('/') {
        Some((prefix, name)) => {
            if name.contains('/') {
                return Err(key_error(key, "a key holds at most one '/'"));
            }
            check_key_prefix(key, &prefix.to_ascii_lowercase())?;
            check_key_name(key, name)
        }
        None => check_key_name(key, key),
    }
}

/// Checks a whole set of annotations: every key, and the total size.
pub fn validate_annotations(annotations: &BTreeMap<String, String>) -> Result<(), AnnotationError> {
    let mut size = 0usize;
    for (key, value) in annotations {
        validate_annotation_key(key)?;
        size = size.saturating_add(key.len()).saturating_add(value.len());
    }
    if size > MAX_ANNOTATIONS_SIZE {
        return Err(AnnotationError::TooLarge {
            size,
            max: MAX_ANNOTATIONS_SIZE,
        });
    }
    Ok(())
}

/// Reads the devices a pod or container asks for from its `cdi.k8s.io/*` annotations.
///
/// Keys are visited in sorted order and a name asked for twice is kept once, so the same
/// annotations always give the same list. Entries may carry spaces around the commas.
pub fn parse_cdi_annotations<'a, I>(annotations: I) -> Result<Vec<QualifiedName>, AnnotationError>
where
    I: IntoIterator<Item = (&'a String, &'a String)>,
{
    let mut requests: Vec<(&String, &String)> = annotations
        .into_iter()
        .filter(|(key, _)| key.starts_with(CDI_ANNOTATION_PREFIX))
        .collect();
    requests.sort();
    let mut devices: Vec<QualifiedName> = Vec::new();
    for (key, value) in requests {
        check_key_name(key, &key[CDI_ANNOTATION_PREFIX.len()..])?;
        for entry in value.split(',').map(str::trim) {
            if entry.is_empty() {
                return Err(AnnotationError::EmptyEntry { key: key.clone() });
            }
            let device: QualifiedName =
                entry.parse().map_err(|problem| AnnotationError::Device {
                    key: key.clone(),
                    problem,
                })?;
            if !devices.contains(&device) {
                devices.push(device);
            }
        }
    }
    Ok(devices)
}

/// Builds the key for a device plugin's request: `cdi.k8s.io/<plugin>_<device-id>`.
pub fn cdi_annotation_key(plugin: &str, device_id: &str) -> Result<String, AnnotationError> {
    let name = format!("{plugin}_{}", device_id.replace('/', "_"));
    let key = format!("{CDI_ANNOTATION_PREFIX}{name}");
    check_key_name(&key, &name)?;
    Ok(key)
}

/// Adds a request for `devices` under `cdi.k8s.io/<plugin>_<device-id>`, refusing to
/// overwrite an existing key.
pub fn add_cdi_annotation(
    annotations: &mut BTreeMap<String, String>,
    plugin: &str,
    device_id: &str,
    devices: &[QualifiedName],
) -> Result<String, AnnotationError> {
    if devices.is_empty() {
        return Err(AnnotationError::NoDevices);
    }
    let key = cdi_annotation_key(plugin, device_id)?;
    if annotations.contains_key(&key) {
        return Err(AnnotationError::Collision { key });
    }
    let value = devices
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    annotations.insert(key.clone(), value);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn requests_are_read_in_key_order_without_duplicates() {
        let annotations = map(&[
            ("cdi.k8s.io/gpu", "nvidia.com/pgpu=1, nvidia.com/pgpu=0"),
            ("cdi.k8s.io/a-switch", "nvidia.com/nvswitch=0"),
            ("cdi.k8s.io/z", "nvidia.com/pgpu=0"),
            ("io.katacontainers.config.hypervisor.default_memory", "8192"),
        ]);
        let devices = parse_cdi_annotations(&annotations).expect("valid");
        let names: Vec<String> = devices.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "nvidia.com/nvswitch=0",
                "nvidia.com/pgpu=1",
                "nvidia.com/pgpu=0"
            ]
        );
    }

    #[test]
    fn bad_requests_name_the_key_and_the_problem() {
        let cases: &[(&str, &str, &str)] = &[
            ("cdi.k8s.io/gpu", "", "empty device entry"),
            ("cdi.k8s.io/gpu", "nvidia.com/pgpu=0,", "empty device entry"),
            ("cdi.k8s.io/gpu", "pgpu0", "not a qualified device name"),
            ("cdi.k8s.io/gpu", "nvidia.com/pgpu=0;rm", "contains ';'"),
            ("cdi.k8s.io/", "nvidia.com/pgpu=0", "the name part is empty"),
            ("cdi.k8s.io/-gpu", "nvidia.com/pgpu=0", "start and end"),
            ("cdi.k8s.io/gpu$", "nvidia.com/pgpu=0", "start and end"),
            ("cdi.k8s.io/g$u", "nvidia.com/pgpu=0", "may hold only"),
        ];
        for (key, value, want) in cases {
            let err = parse_cdi_annotations(&map(&[(key, value)])).expect_err(key);
            let text = err.to_string();
            assert!(text.contains(want), "{key}={value}: {text}");
            assert!(text.contains(key), "{key}={value}: {text}");
        }
        let long = format!("cdi.k8s.io/{}", "k".repeat(64));
        assert!(parse_cdi_annotations(&map(&[(&long, "a.com/b=0")])).is_err());
    }

    #[test]
    fn keys_follow_kubernetes_rules() {
        let good = ["a", "example.com/x", "nvidia.com/gpu.present", "A_b-c.D"];
        for key in good {
            validate_annotation_key(key).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        let bad = [
            "",
            "bad key!",
            "Example_Com/x",
            "a/b/c",
            "-x",
            "x.",
            "example.com/",
            "/x",
        ];
        for key in bad {
            assert!(validate_annotation_key(key).is_err(), "{key}");
        }
    }

    #[test]
    fn total_size_is_limited() {
        let big = map(&[("k", &"v".repeat(MAX_ANNOTATIONS_SIZE))]);
        assert!(matches!(
            validate_annotations(&big),
            Err(AnnotationError::TooLarge { .. })
        ));
    }

    #[test]
    fn requests_are_built_and_read_back() {
        let mut annotations = BTreeMap::new();
        let devices: Vec<QualifiedName> = ["nvidia.com/pgpu=0", "nvidia.com/pgpu=1"]
            .iter()
            .map(|n| n.parse().expect("valid"))
            .collect();
        let key = add_cdi_annotation(&mut annotations, "vfio", "gpu/0", &devices).expect("ok");
        assert_eq!(key, "cdi.k8s.io/vfio_gpu_0");
        assert_eq!(annotations[&key], "nvidia.com/pgpu=0,nvidia.com/pgpu=1");
        assert_eq!(parse_cdi_annotations(&annotations).expect("ok"), devices);
        assert!(matches!(
            add_cdi_annotation(&mut annotations, "vfio", "gpu/0", &devices),
            Err(AnnotationError::Collision { .. })
        ));
        assert!(matches!(
            add_cdi_annotation(&mut annotations, "vfio", "x", &[]),
            Err(AnnotationError::NoDevices)
        ));
        assert!(cdi_annotation_key(&"p".repeat(60), "device").is_err());
    }
}
