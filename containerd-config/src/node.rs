//! A table of either kind toml_edit has: a standard (or dotted, or implicit) [`Table`], or
//! an [`InlineTable`], so that the patcher walks both alike.

use toml_edit::{InlineTable, Item, Table, Value};

use crate::error::kind_of;

/// A mutable table of either kind.
pub(crate) enum Node<'a> {
    /// A `[header]`, dotted or implicit table.
    Table(&'a mut Table),
    /// A `{ … }` table.
    Inline(&'a mut InlineTable),
}

/// What the child under a key is, when it is not a table.
pub(crate) struct NotTable(pub &'static str);

impl<'a> Node<'a> {
    /// The child table under `key`: `Ok(None)` when absent, `Err` when it is not a table.
    pub fn child(self, key: &str) -> Result<Option<Node<'a>>, NotTable> {
        match self {
            Node::Table(t) => match t.get_mut(key) {
                None => Ok(None),
                Some(Item::Table(c)) => Ok(Some(Node::Table(c))),
                Some(Item::Value(Value::InlineTable(c))) => Ok(Some(Node::Inline(c))),
                Some(other) => Err(NotTable(kind_of(other))),
            },
            Node::Inline(t) => match t.get_mut(key) {
                None => Ok(None),
                Some(Value::InlineTable(c)) => Ok(Some(Node::Inline(c))),
                Some(other) => Err(NotTable(kind_of(&Item::Value(other.clone())))),
            },
        }
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        match self {
            Node::Table(t) => t.contains_key(key),
            Node::Inline(t) => t.contains_key(key),
        }
    }

    /// How many entries the table has.
    pub fn len(&self) -> usize {
        match self {
            Node::Table(t) => t.len(),
            Node::Inline(t) => t.len(),
        }
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        match self {
            Node::Table(t) => t.is_empty(),
            Node::Inline(t) => t.is_empty(),
        }
    }

    /// Whether this is a dotted table (`a.b.c = …`).
    pub fn is_dotted(&self) -> bool {
        match self {
            Node::Table(t) => t.is_dotted(),
            Node::Inline(t) => t.is_dotted(),
        }
    }

    /// Whether this is an implicit table (only named by the headers of its children).
    pub fn is_implicit(&self) -> bool {
        matches!(self, Node::Table(t) if t.is_implicit())
    }

    /// The value under `key`, if it is a value.
    pub fn value_mut(&mut self, key: &str) -> Option<&mut Value> {
        match self {
            Node::Table(t) => t.get_mut(key).and_then(Item::as_value_mut),
            Node::Inline(t) => t.get_mut(key),
        }
    }

    /// The value under `key`, if it is a value.
    pub fn value(&self, key: &str) -> Option<&Value> {
        match self {
            Node::Table(t) => t.get(key).and_then(Item::as_value),
            Node::Inline(t) => t.get(key),
        }
    }

    /// Inserts (or replaces) a value.
    pub fn insert_value(&mut self, key: &str, value: Value) {
        match self {
            Node::Table(t) => {
                t.insert(key, Item::Value(value));
            }
            Node::Inline(t) => {
                t.insert(key, value);
            }
        }
    }

    /// Inserts an empty child table: inline in an inline table; else a standard table,
    /// `implicit` (no header of its own unless it gets keys) and `dotted` as asked.
    pub fn insert_table(&mut self, key: &str, implicit: bool, dotted: bool) {
        match self {
            Node::Table(t) => {
                let mut child = Table::new();
                child.set_implicit(implicit);
                child.set_dotted(dotted);
                t.insert(key, Item::Table(child));
            }
            Node::Inline(t) => {
                t.insert(key, Value::InlineTable(InlineTable::new()));
            }
        }
    }

    /// Removes `key`; whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        match self {
            Node::Table(t) => t.remove(key).is_some(),
            Node::Inline(t) => t.remove(key).is_some(),
        }
    }

    /// A reborrow, to walk on without giving this one up.
    pub fn reborrow(&mut self) -> Node<'_> {
        match self {
            Node::Table(t) => Node::Table(t),
            Node::Inline(t) => Node::Inline(t),
        }
    }
}

/// Follows `path` from `root`; `Ok(None)` if some key is absent; `Err((depth, kind))` if the
/// key at `depth` is not a table.
pub(crate) fn walk<'a>(
    root: &'a mut Table,
    path: &[&str],
) -> Result<Option<Node<'a>>, (usize, &'static str)> {
    let mut node = Node::Table(root);
    for (depth, key) in path.iter().enumerate() {
        match node.child(key) {
            Ok(Some(next)) => node = next,
            Ok(None) => return Ok(None),
            Err(NotTable(kind)) => return Err((depth, kind)),
        }
    }
    Ok(Some(node))
}

/// The dotted path `a."b.c".d` of the first `n` keys, quoted where TOML needs it.
pub(crate) fn dotted(path: &[&str]) -> String {
    path.iter()
        .map(|k| toml_edit::Key::new(*k).display_repr().into_owned())
        .collect::<Vec<_>>()
        .join(".")
}

/// Appends `v` to `arr`, spaced like the elements already there: on its own line in a
/// multi-line array, after a space otherwise.
pub(crate) fn push_like_last(arr: &mut toml_edit::Array, mut v: Value) {
    if let Some(last) = arr.iter().last() {
        let prefix = last.decor().prefix().and_then(|p| p.as_str()).unwrap_or("");
        let prefix = if arr.len() > 1 || prefix.contains('\n') {
            prefix.to_owned()
        } else {
            " ".to_owned()
        };
        let suffix = last
            .decor()
            .suffix()
            .and_then(|p| p.as_str())
            .unwrap_or("")
            .to_owned();
        v.decor_mut().set_prefix(prefix);
        v.decor_mut().set_suffix(suffix);
    }
    arr.push_formatted(v);
}

/// A string value, as a 'literal string' when the neighbours use them and it can be one.
pub(crate) fn string_value(s: &str, literal: bool) -> Value {
    if literal && !s.contains(['\'', '\n', '\r']) {
        if let Ok(v) = format!("'{s}'").parse::<Value>() {
            return v;
        }
    }
    Value::from(s)
}

/// Whether a table's string values are written as 'literal strings' (its first one is).
pub(crate) fn uses_literal_strings(t: &Table) -> bool {
    t.iter()
        .find_map(|(_, item)| {
            item.as_value()
                .filter(|v| v.is_str())
                .map(|v| v.to_string().trim_start().starts_with('\''))
        })
        .unwrap_or(false)
}
