//! Reading a handler back out of a config, as containerd would see it: for tests, for
//! `status` and for checking `containerd config dump`.

use toml_edit::{DocumentMut, Value};

use crate::node::{walk, Node};
use crate::spec::HandlerSpec;
use crate::text::Source;
use crate::version::ConfigVersion;

/// The handler's values as containerd would read them, from a parsed config; `None` if the
/// handler is absent. Used by tests and by verification.
pub fn find_handler(text: &str, name: &str) -> Option<FoundHandler> {
    let source = Source::split(text);
    let mut doc = source.body.parse::<DocumentMut>().ok()?;
    ConfigVersion::ALL.into_iter().find_map(|v| {
        let path = v.runtimes_path();
        let runtimes = walk(doc.as_table_mut(), &path).ok()??;
        let handler = runtimes.child(name).ok()??;
        Some(FoundHandler::read(handler))
    })
}

/// A handler's keys as found in a config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FoundHandler {
    /// `runtime_type`.
    pub runtime_type: Option<String>,
    /// `runtime_path`.
    pub runtime_path: Option<String>,
    /// `privileged_without_host_devices`.
    pub privileged_without_host_devices: Option<bool>,
    /// `pod_annotations`.
    pub pod_annotations: Vec<String>,
    /// `snapshotter`.
    pub snapshotter: Option<String>,
    /// `options.ConfigPath`.
    pub config_path: Option<String>,
}

impl FoundHandler {
    fn read(mut node: Node<'_>) -> FoundHandler {
        let s = |n: &Node<'_>, k: &str| n.value(k).and_then(Value::as_str).map(str::to_owned);
        let mut found = FoundHandler {
            runtime_type: s(&node, "runtime_type"),
            runtime_path: s(&node, "runtime_path"),
            privileged_without_host_devices: node
                .value("privileged_without_host_devices")
                .and_then(Value::as_bool),
            pod_annotations: node
                .value("pod_annotations")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            snapshotter: s(&node, "snapshotter"),
            config_path: None,
        };
        if let Ok(Some(options)) = node.reborrow().child("options") {
            found.config_path = s(&options, "ConfigPath");
        }
        found
    }

    /// Whether this handler carries everything `spec` asks for.
    pub fn satisfies(&self, spec: &HandlerSpec) -> bool {
        self.runtime_type.as_deref() == Some(spec.runtime_type.as_str())
            && (spec.runtime_path.is_none() || self.runtime_path == spec.runtime_path)
            && self.privileged_without_host_devices == Some(true)
            && spec
                .pod_annotations
                .iter()
                .all(|a| self.pod_annotations.contains(a))
            && (spec.snapshotter.is_none() || self.snapshotter == spec.snapshotter)
            && self.config_path.as_deref() == Some(spec.config_path.as_str())
    }
}
