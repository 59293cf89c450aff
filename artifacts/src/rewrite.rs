//! Points a base Kata configuration at the installed files, through `toml_edit` so that
//! comments, order and every other key stay as they were. Pure: text in, text out.
//!
//! In every `[hypervisor.<name>]` table: `kernel`; `image` or `initrd` (the other one is
//! removed, Kata refuses both); `firmware` when the set ships one; `path` and
//! `valid_hypervisor_paths` when the set ships a QEMU binary.

use serde::Serialize;
use toml_edit::{Array, DocumentMut, Item, TableLike, Value};

/// The installed files the configuration must name, as absolute host paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    /// The kernel.
    pub kernel: String,
    /// The image or initrd.
    pub guest: GuestTarget,
    /// The firmware, when the set ships one.
    pub firmware: Option<String>,
    /// The QEMU binary, when the set ships one.
    pub qemu: Option<String>,
}

/// The guest root file system the configuration must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestTarget {
    /// Kata's `image`.
    Image(String),
    /// Kata's `initrd`.
    Initrd(String),
}

/// One key the rewrite changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The dotted key, e.g. `hypervisor.qemu.kernel`.
    pub key: String,
    /// The value before, as TOML; `None` when the key was absent.
    pub old: Option<String>,
    /// The value after, as TOML; `None` when the key was removed.
    pub new: Option<String>,
}

/// Rewrites `text`; the error says what is wrong with the configuration and how to fix it.
pub fn rewrite(text: &str, targets: &Targets) -> Result<(String, Vec<Change>), String> {
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].lines().count().max(1);
                format!(" at line {line}")
            })
            .unwrap_or_default();
        format!(
            "not valid TOML{at}: {}; fix the base configuration in the source",
            e.message().trim()
        )
    })?;
    let hypervisors = doc
        .get_mut("hypervisor")
        .and_then(Item::as_table_like_mut)
        .ok_or("no [hypervisor.<name>] table; a Kata configuration names its hypervisor there")?;
    let mut changes = Vec::new();
    let mut found = false;
    for (name, item) in hypervisors.iter_mut() {
        let prefix = format!("hypervisor.{}", name.get());
        let Some(table) = item.as_table_like_mut() else {
            continue;
        };
        found = true;
        let mut set = |key: &str, value: Value| {
            if let Some(c) = set_value(table, &prefix, key, value) {
                changes.push(c);
            }
        };
        set("kernel", Value::from(targets.kernel.as_str()));
        let (keep, drop) = match &targets.guest {
            GuestTarget::Image(p) => (("image", p), "initrd"),
            GuestTarget::Initrd(p) => (("initrd", p), "image"),
        };
        set(keep.0, Value::from(keep.1.as_str()));
        if let Some(f) = &targets.firmware {
            set("firmware", Value::from(f.as_str()));
        }
        if let Some(q) = &targets.qemu {
            set("path", Value::from(q.as_str()));
            let mut paths = Array::new();
            paths.push(q.as_str());
            set("valid_hypervisor_paths", Value::Array(paths));
        }
        if let Some(old) = table.remove(drop) {
            changes.push(Change {
                key: format!("{prefix}.{drop}"),
                old: Some(shown(&old)),
                new: None,
            });
        }
    }
    if !found {
        return Err(
            "no [hypervisor.<name>] table; a Kata configuration names its hypervisor there".into(),
        );
    }
    Ok((doc.to_string(), changes))
}

/// Sets `key` to `value`, keeping the old value's comments; the change, if any.
fn set_value(
    table: &mut dyn TableLike,
    prefix: &str,
    key: &str,
    mut value: Value,
) -> Option<Change> {
    let new = value.to_string().trim().to_owned();
    let old = match table.get_mut(key) {
        Some(item) => {
            let old = shown(item);
            if let Some(v) = item.as_value_mut() {
                *value.decor_mut() = v.decor().clone();
                *v = value;
            } else {
                *item = Item::Value(value);
            }
            Some(old)
        }
        None => {
            table.insert(key, Item::Value(value.decorated(" ", "")));
            None
        }
    };
    (old.as_deref() != Some(new.as_str())).then(|| Change {
        key: format!("{prefix}.{key}"),
        old,
        new: Some(new),
    })
}

/// An item as TOML, without its comments.
fn shown(item: &Item) -> String {
    match item.as_value() {
        Some(v) => {
            let mut v = v.clone();
            v.decor_mut().clear();
            v.to_string().trim().to_owned()
        }
        None => item.to_string().trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"# Kata base config
[hypervisor.qemu]
# the QEMU binary
path = "/opt/kata/bin/qemu-system-x86_64" # shipped by kata
kernel = "/opt/kata/share/kata-containers/vmlinuz.container"
image = "/opt/kata/share/kata-containers/kata-containers.img"
firmware = "/opt/kata/share/ovmf/AMDSEV.fd"
valid_hypervisor_paths = ["/opt/kata/bin/qemu-system-x86_64"]
kernel_params = "pci=realloc"
confidential_guest = true

[runtime]
# keep me
static_sandbox_resource_mgmt = true
"#;

    fn targets(qemu: bool) -> Targets {
        Targets {
            kernel: "/s/v1/vmlinuz-6.1".into(),
            guest: GuestTarget::Image("/s/v1/kata.img".into()),
            firmware: Some("/s/v1/AMDSEV.fd".into()),
            qemu: qemu.then(|| "/s/v1/qemu-system-x86_64".into()),
        }
    }

    #[test]
    fn every_path_of_the_set_is_rewritten_and_the_rest_kept() {
        let (out, changes) = rewrite(BASE, &targets(true)).expect("valid");
        let expected = BASE
            .replace(
                "/opt/kata/bin/qemu-system-x86_64",
                "/s/v1/qemu-system-x86_64",
            )
            .replace(
                "/opt/kata/share/kata-containers/vmlinuz.container",
                "/s/v1/vmlinuz-6.1",
            )
            .replace(
                "/opt/kata/share/kata-containers/kata-containers.img",
                "/s/v1/kata.img",
            )
            .replace("/opt/kata/share/ovmf/AMDSEV.fd", "/s/v1/AMDSEV.fd");
        assert_eq!(out, expected);
        let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "hypervisor.qemu.kernel",
                "hypervisor.qemu.image",
                "hypervisor.qemu.firmware",
                "hypervisor.qemu.path",
                "hypervisor.qemu.valid_hypervisor_paths"
            ]
        );
    }

    #[test]
    fn without_qemu_in_the_set_the_binary_is_left_alone() {
        let (out, _) = rewrite(BASE, &targets(false)).expect("valid");
        assert!(out.contains("path = \"/opt/kata/bin/qemu-system-x86_64\" # shipped by kata"));
        assert!(out.contains("valid_hypervisor_paths = [\"/opt/kata/bin/qemu-system-x86_64\"]"));
    }

    #[test]
    fn an_initrd_replaces_the_image_and_missing_keys_are_added() {
        let base = "[hypervisor.qemu]\nimage = \"/old.img\"\n";
        let t = Targets {
            kernel: "/k".into(),
            guest: GuestTarget::Initrd("/i".into()),
            firmware: None,
            qemu: None,
        };
        let (out, changes) = rewrite(base, &t).expect("valid");
        assert_eq!(out, "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\n");
        assert_eq!(changes.len(), 3);
        assert_eq!(changes[2].new, None);
    }

    #[test]
    fn the_rewrite_is_idempotent() {
        let (once, _) = rewrite(BASE, &targets(true)).expect("valid");
        let (twice, changes) = rewrite(&once, &targets(true)).expect("valid");
        assert_eq!(once, twice);
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn broken_configs_are_refused_with_the_reason() {
        let e = rewrite("[hypervisor.qemu\n", &targets(false)).expect_err("bad toml");
        assert!(e.starts_with("not valid TOML at line 1:"), "{e}");
        let e = rewrite("[runtime]\n", &targets(false)).expect_err("no hypervisor");
        assert!(e.starts_with("no [hypervisor.<name>] table"), "{e}");
        let e = rewrite("hypervisor = 1\n", &targets(false)).expect_err("not a table");
        assert!(e.starts_with("no [hypervisor.<name>] table"), "{e}");
    }
}
