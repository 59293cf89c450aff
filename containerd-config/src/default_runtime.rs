//! containerd's default runtime. containerd 1.6 decodes a config's `runtimes` table over
//! its defaults by replacing the whole map (checked with its `config dump`): a file that
//! names one runtime loses the built-in `runc`, and with `default_runtime_name = "runc"`
//! the CRI plugin then refuses to load. So when the handler is the first runtime a file
//! names, `runc` is written beside it, as containerd would have had it, and removed again
//! with the handler.

use toml_edit::{InlineTable, Item, Table, Value};

use crate::node::{string_value, walk, Node};
use crate::version::ConfigVersion;

/// The name of containerd's built-in runtime.
pub const DEFAULT_RUNTIME: &str = "runc";

/// The built-in runtime's keys, per version.
fn keys(version: ConfigVersion) -> Vec<(&'static str, &'static str)> {
    let mut keys = vec![("runtime_type", "io.containerd.runc.v2")];
    if version != ConfigVersion::V2 {
        keys.push(("sandboxer", "podsandbox"));
    }
    keys
}

/// Whether registering must also write `runc`: the file names no runtime yet and its
/// default runtime is the built-in one. Never for Go templates, whose base names it.
pub(crate) fn needed(root: &mut Table, path: &[&str; 4], template: bool) -> bool {
    if template {
        return false;
    }
    let default_is_runc = match walk(root, &path[..3]) {
        Ok(Some(containerd)) => containerd
            .value("default_runtime_name")
            .and_then(Value::as_str)
            .is_none_or(|n| n == DEFAULT_RUNTIME),
        Ok(None) => true,
        Err(_) => false,
    };
    let no_runtimes = match walk(root, path) {
        Ok(Some(runtimes)) => runtimes.is_empty(),
        Ok(None) => true,
        Err(_) => false,
    };
    default_is_runc && no_runtimes
}

/// Writes `runc` into `runtimes` (which has no entries).
pub(crate) fn add(runtimes: &mut Node<'_>, version: ConfigVersion, literal: bool) {
    match runtimes {
        Node::Table(t) => {
            let mut runc = Table::new();
            for (k, v) in keys(version) {
                runc.insert(k, Item::Value(string_value(v, literal)));
            }
            t.insert(DEFAULT_RUNTIME, Item::Table(runc));
        }
        Node::Inline(t) => {
            let mut runc = InlineTable::new();
            for (k, v) in keys(version) {
                runc.insert(k, string_value(v, literal));
            }
            t.insert(DEFAULT_RUNTIME, Value::InlineTable(runc));
        }
    }
}

/// Removes the `runc` that [`add`] wrote, if it still holds only what was written and no
/// other runtime is left beside it (another handler registered since still needs it).
pub(crate) fn remove(runtimes: &mut Node<'_>, version: ConfigVersion) {
    if runtimes.len() != 1 {
        return;
    }
    let ours = keys(version);
    let untouched = match runtimes.reborrow().child(DEFAULT_RUNTIME) {
        Ok(Some(Node::Table(t))) => {
            t.len() == ours.len()
                && ours
                    .iter()
                    .all(|(k, v)| t.get(k).and_then(Item::as_str) == Some(*v))
        }
        Ok(Some(Node::Inline(t))) => {
            t.len() == ours.len()
                && ours
                    .iter()
                    .all(|(k, v)| t.get(k).and_then(Value::as_str) == Some(*v))
        }
        _ => false,
    };
    if untouched {
        runtimes.remove(DEFAULT_RUNTIME);
    }
}
