//! Drop-in mode: our own file in a conf.d directory, listed in the root `imports`.

use std::path::{Path, PathBuf};

use toml_edit::{Item, Value};

use crate::error::Error;
use crate::node::walk;
use crate::register::{register, Target};
use crate::spec::HandlerSpec;
use crate::text::Source;
use crate::version::{ConfigVersion, CRI_PLUGIN_V2};

/// The first line of every drop-in we write.
pub const DROP_IN_BANNER: &str =
    "# Written by kata-gpu; `kata-gpu containerd unregister` removes this file.\n";

/// The drop-in file's name for a handler.
pub fn drop_in_file_name(handler: &str) -> String {
    format!("{handler}.toml")
}

/// The whole text of the drop-in file for `spec`.
pub fn drop_in_text(spec: &HandlerSpec, version: ConfigVersion) -> Result<String, Error> {
    let body = register(
        "",
        spec,
        Target {
            file: "drop-in",
            version: Some(version),
        },
    )?;
    Ok(format!("{DROP_IN_BANNER}{}", body.text))
}

/// Refuses a drop-in that containerd 1.x would merge destructively: it replaces a plugin's
/// whole section with the imported file's (containerd issue 5837), so a version-2 drop-in
/// holding our runtime would wipe every CRI setting of the main file. Version 3 and later
/// (containerd 2.x) merge plugin sections key by key.
pub fn check_drop_in_safe(
    main_text: &str,
    version: ConfigVersion,
    file: &str,
) -> Result<(), Error> {
    if version != ConfigVersion::V2 {
        return Ok(());
    }
    let source = Source::split(main_text);
    let mut doc = source.parse(file)?;
    let Ok(Some(_)) = walk(doc.as_table_mut(), &["plugins", CRI_PLUGIN_V2]) else {
        return Ok(());
    };
    let mut leaves = Vec::new();
    if let Some(item) = doc.get("plugins").and_then(|p| p.get(CRI_PLUGIN_V2)) {
        collect_leaves(item, String::new(), &mut leaves);
    }
    match leaves.first() {
        None => Ok(()),
        Some(example) => Err(Error::DropInWouldReplaceCri {
            file: file.to_owned(),
            count: leaves.len(),
            example: example.clone(),
        }),
    }
}

fn collect_leaves(item: &Item, prefix: String, out: &mut Vec<String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match item {
        Item::Table(t) => t.iter().for_each(|(k, v)| collect_leaves(v, join(k), out)),
        Item::Value(Value::InlineTable(t)) => t
            .iter()
            .for_each(|(k, v)| collect_leaves(&Item::Value(v.clone()), join(k), out)),
        Item::None => {}
        _ => out.push(prefix),
    }
}

/// Where a k3s or rke2 node's rendered containerd config imports drop-ins from, for a
/// config (the rendered `config.toml` or a `config.toml.tmpl` / `config-v3.toml.tmpl`
/// template) under `/var/lib/rancher/{k3s,rke2}/agent/etc/containerd/`; `None` for other
/// paths. Version 3 configs use `config-v3.toml.d`, version 2 `config.toml.d`.
pub fn rancher_drop_in_dir(config: &Path, version: ConfigVersion) -> Option<PathBuf> {
    let dir = config.parent()?;
    let s = dir.to_string_lossy();
    let rancher = ["k3s", "rke2"]
        .iter()
        .any(|d| s.ends_with(&format!("/var/lib/rancher/{d}/agent/etc/containerd")));
    rancher.then(|| {
        dir.join(match version {
            ConfigVersion::V2 => "config.toml.d",
            ConfigVersion::V3 | ConfigVersion::V4 => "config-v3.toml.d",
        })
    })
}

/// The version a k3s/rke2 template stands for, from its name: `config-v3.toml.tmpl` is
/// version 3, `config.toml.tmpl` version 2.
pub fn template_version(config: &Path) -> Option<ConfigVersion> {
    match config.file_name()?.to_str()? {
        "config-v3.toml.tmpl" => Some(ConfigVersion::V3),
        "config.toml.tmpl" => Some(ConfigVersion::V2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drop_in_holds_the_handler_and_the_default_runtime() {
        let spec = HandlerSpec::new(
            "kata-x",
            "io.containerd.kata-x.v2",
            "/opt/x/configuration.toml",
        );
        let text = drop_in_text(&spec, ConfigVersion::V3).expect("drop-in");
        assert_eq!(
            text,
            format!(
                "{DROP_IN_BANNER}version = 3\n\n\
                 [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.runc]\n\
                 runtime_type = \"io.containerd.runc.v2\"\n\
                 sandboxer = \"podsandbox\"\n\n\
                 [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.kata-x]\n\
                 runtime_type = \"io.containerd.kata-x.v2\"\n\
                 privileged_without_host_devices = true\n\
                 pod_annotations = [\"io.katacontainers.*\", \"cdi.k8s.io/*\"]\n\n\
                 [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.kata-x.options]\n\
                 ConfigPath = \"/opt/x/configuration.toml\"\n"
            )
        );
        text.parse::<toml_edit::DocumentMut>().expect("valid TOML");
    }

    #[test]
    fn a_version_2_drop_in_is_refused_when_the_main_file_has_cri_settings() {
        let table = [
            ("version = 2\n", ConfigVersion::V2, None),
            ("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n", ConfigVersion::V2, None),
            (
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image = \"p\"\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\nbin_dir = \"/b\"\n",
                ConfigVersion::V2,
                Some("drop the 2 setting(s) this file has under plugins.\"io.containerd.grpc.v1.cri\" (e.g. sandbox_image)"),
            ),
            (
                "version = 3\n[plugins.\"io.containerd.cri.v1.runtime\"]\nx = 1\n",
                ConfigVersion::V3,
                None,
            ),
        ];
        for (text, version, want) in table {
            match (check_drop_in_safe(text, version, "c.toml"), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{e}"),
                (got, want) => panic!("{text}: {got:?} vs {want:?}"),
            }
        }
    }

    #[test]
    fn rancher_paths() {
        let k3s = Path::new("/var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl");
        assert_eq!(template_version(k3s), Some(ConfigVersion::V3));
        assert_eq!(
            rancher_drop_in_dir(k3s, ConfigVersion::V3),
            Some(PathBuf::from(
                "/var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.d"
            ))
        );
        let rke2 = Path::new("/host/var/lib/rancher/rke2/agent/etc/containerd/config.toml.tmpl");
        assert_eq!(template_version(rke2), Some(ConfigVersion::V2));
        assert_eq!(
            rancher_drop_in_dir(rke2, ConfigVersion::V2),
            Some(PathBuf::from(
                "/host/var/lib/rancher/rke2/agent/etc/containerd/config.toml.d"
            ))
        );
        assert_eq!(
            rancher_drop_in_dir(Path::new("/etc/containerd/config.toml"), ConfigVersion::V2),
            None
        );
        assert_eq!(
            template_version(Path::new("/etc/containerd/config.toml")),
            None
        );
    }
}
