//! Building a new handler table that looks like its neighbours: their indentation and
//! their quoting.

use toml_edit::{Array, InlineTable, Item, Table, Value};

use crate::node::{push_like_last, string_value, uses_literal_strings, Node};
use crate::spec::HandlerSpec;

/// The indentation of a table's keys: that of its first key.
pub(crate) fn key_indent(node: &Node<'_>) -> String {
    match node {
        Node::Table(t) => table_key_indent(t),
        Node::Inline(_) => String::new(),
    }
}

fn table_key_indent(t: &Table) -> String {
    t.iter()
        .next()
        .and_then(|(k, _)| t.key(k))
        .and_then(|k| k.leaf_decor().prefix())
        .and_then(|p| p.as_str())
        .filter(|p| p.chars().all(|c| c == ' ' || c == '\t'))
        .unwrap_or("")
        .to_owned()
}

/// How the existing runtime tables are indented, so that ours looks like its siblings.
#[derive(Default)]
pub(crate) struct Style {
    header: String,
    keys: String,
    options_header: String,
    options_keys: String,
    /// The siblings write strings as 'literal strings'.
    literal: bool,
}

fn last_line_indent(decor: &toml_edit::Decor) -> Option<String> {
    let prefix = decor.prefix()?.as_str()?;
    let last = prefix.rsplit('\n').next()?;
    last.chars()
        .all(|c| c == ' ' || c == '\t')
        .then(|| last.to_owned())
}

impl Style {
    pub(crate) fn of_siblings(runtimes: &Table) -> Style {
        let sibling = runtimes.iter().find_map(|(_, item)| match item {
            Item::Table(t) if !t.is_implicit() && !t.is_dotted() && t.position().is_some() => {
                Some(t)
            }
            _ => None,
        });
        let Some(sib) = sibling else {
            return Style::default();
        };
        let header = last_line_indent(sib.decor()).unwrap_or_default();
        let keys = table_key_indent(sib);
        let (options_header, options_keys) = match sib.get("options") {
            Some(Item::Table(o)) if !o.is_dotted() => (
                last_line_indent(o.decor()).unwrap_or_else(|| keys.clone()),
                table_key_indent(o),
            ),
            _ => (keys.clone(), format!("{keys}  ")),
        };
        Style {
            header,
            keys,
            options_header,
            options_keys,
            literal: uses_literal_strings(sib),
        }
    }
}

fn indent_keys(t: &mut Table, indent: &str) {
    let keys: Vec<String> = t.iter().map(|(k, _)| k.to_owned()).collect();
    for k in keys {
        if let Some(mut key) = t.key_mut(&k) {
            key.leaf_decor_mut().set_prefix(indent.to_owned());
        }
    }
}

/// The handler as a standard table with an `options` sub-table.
pub(crate) fn handler_table(spec: &HandlerSpec, style: &Style) -> Table {
    let mut t = Table::new();
    for (k, v) in handler_values(spec, style.literal) {
        t.insert(k, Item::Value(v));
    }
    let mut options = Table::new();
    options.insert(
        "ConfigPath",
        Item::Value(string_value(&spec.config_path, style.literal)),
    );
    indent_keys(&mut t, &style.keys);
    indent_keys(&mut options, &style.options_keys);
    t.decor_mut().set_prefix(format!("\n{}", style.header));
    options
        .decor_mut()
        .set_prefix(format!("\n{}", style.options_header));
    t.insert("options", Item::Table(options));
    t
}

/// The handler as an inline table, for a `runtimes = { … }` parent.
pub(crate) fn handler_inline(spec: &HandlerSpec) -> InlineTable {
    let mut t = InlineTable::new();
    for (k, v) in handler_values(spec, false) {
        t.insert(k, v);
    }
    let mut options = InlineTable::new();
    options.insert("ConfigPath", Value::from(spec.config_path.as_str()));
    t.insert("options", Value::InlineTable(options));
    t
}

fn handler_values(spec: &HandlerSpec, literal: bool) -> Vec<(&'static str, Value)> {
    let mut values = vec![("runtime_type", string_value(&spec.runtime_type, literal))];
    if let Some(p) = &spec.runtime_path {
        values.push(("runtime_path", string_value(p, literal)));
    }
    values.push(("privileged_without_host_devices", Value::from(true)));
    let mut annotations = Array::new();
    for a in &spec.pod_annotations {
        push_like_last(&mut annotations, string_value(a, literal));
    }
    values.push(("pod_annotations", Value::Array(annotations)));
    if let Some(s) = &spec.snapshotter {
        values.push(("snapshotter", string_value(s, literal)));
    }
    values
}
