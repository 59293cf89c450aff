//! Small edits of a `toml_edit` document that keep the bytes around them: a value replaced
//! in place keeps its spacing and trailing comment; an array entry removed takes its own
//! comment lines with it and leaves its neighbours' alone.

use toml_edit::{Array, Item, RawString, TableLike, Value};

/// The comment that precedes a key we add to a section that did not have it.
pub const ADDED_KEY_COMMENT: &str = "# Set by kata-gpu for this sandbox.\n";

/// Sets `key` to `new` in `table`. An existing value equal to `new` is left as it was (not
/// even its quoting changes); a different one is replaced, keeping its decor (the space
/// after `=` and a trailing comment). A missing key is added at the end of the table, after
/// [`ADDED_KEY_COMMENT`] unless the table is `inline` (`qemu = { … }`: TOML allows no
/// comment or line break there). Returns whether anything changed.
pub fn set_value(table: &mut dyn TableLike, inline: bool, key: &str, mut new: Value) -> bool {
    match table.get_mut(key) {
        Some(item) => {
            if let Some(old) = item.as_value() {
                if same_value(old, &new) {
                    return false;
                }
                *new.decor_mut() = old.decor().clone();
            }
            *item = Item::Value(new);
        }
        None => {
            table.insert(key, Item::Value(new));
            if let Some(mut k) = table.key_mut(key).filter(|_| !inline) {
                k.leaf_decor_mut().set_prefix(ADDED_KEY_COMMENT);
            }
        }
    }
    true
}

/// Whether two values mean the same to Kata (their formatting aside).
pub fn same_value(a: &Value, b: &Value) -> bool {
    canonical(a) == canonical(b)
}

/// A value in TOML's default formatting, one line, no comments: how the diff shows it.
pub fn canonical(v: &Value) -> String {
    match v {
        Value::String(s) => Value::from(s.value().as_str()).to_string(),
        Value::Integer(i) => i.value().to_string(),
        Value::Float(f) => Value::from(*f.value()).to_string(),
        Value::Boolean(b) => b.value().to_string(),
        Value::Datetime(d) => d.value().to_string(),
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(canonical).collect();
            format!("[{}]", items.join(", "))
        }
        Value::InlineTable(t) => {
            let items: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{} = {}", toml_edit::Key::new(k), canonical(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
    }
}

/// Splits whitespace-and-comments before an array entry into what ends the previous line
/// (up to and including its first newline: the previous entry's trailing comment) and what
/// belongs to this entry (its own comment lines and indentation).
fn split_prefix(prefix: &str) -> (&str, &str) {
    match prefix.find('\n') {
        Some(i) => prefix.split_at(i + 1),
        None => ("", prefix),
    }
}

fn raw(r: Option<&RawString>) -> &str {
    r.and_then(RawString::as_str).unwrap_or("")
}

/// Removes entry `index` of `array`, with the comment lines above it and its own trailing
/// comment, keeping the comment that ends the line before it.
pub fn remove_entry(array: &mut Array, index: usize) -> Option<Value> {
    if index >= array.len() {
        return None;
    }
    let removed = array.remove(index);
    let removed_prefix = raw(removed.decor().prefix()).to_owned();
    let (ends_previous, _own) = split_prefix(&removed_prefix);
    let multi_line = removed_prefix.contains('\n');
    if let Some(next) = array.get_mut(index) {
        let next_prefix = raw(next.decor().prefix()).to_owned();
        let (_removed_trailing, next_own) = split_prefix(&next_prefix);
        let prefix = if !multi_line && !next_prefix.contains('\n') && index == 0 {
            // `["path", "b"]` → `["b"]`: the new first entry takes the old first's spacing.
            removed_prefix.clone()
        } else {
            format!("{ends_previous}{next_own}")
        };
        next.decor_mut().set_prefix(prefix);
    } else if multi_line {
        let trailing = array.trailing().as_str().unwrap_or("").to_owned();
        let (_removed_trailing, closing) = split_prefix(&trailing);
        array.set_trailing(format!("{ends_previous}{closing}"));
    } else if array.is_empty() {
        array.set_trailing("");
    }
    Some(removed)
}

/// Removes the entries at `indices` (ascending) one by one with [`remove_entry`], so that
/// each removal sees its neighbours as the file has them.
pub fn remove_entries(array: &mut Array, indices: &[usize]) {
    for (removed, index) in indices.iter().enumerate() {
        if let Some(at) = index.checked_sub(removed) {
            remove_entry(array, at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml_edit::DocumentMut;

    fn remove_from(text: &str, index: usize) -> String {
        let mut doc: DocumentMut = text.parse().unwrap_or_else(|e| panic!("{e}"));
        let array = doc["a"]
            .as_array_mut()
            .unwrap_or_else(|| panic!("no array"));
        assert!(remove_entry(array, index).is_some());
        doc.to_string()
    }

    #[test]
    fn remove_entry_table() {
        let table: &[(&str, usize, &str)] = &[
            ("a = [\"x\", \"y\", \"z\"]\n", 1, "a = [\"x\", \"z\"]\n"),
            ("a = [\"x\", \"y\", \"z\"]\n", 0, "a = [\"y\", \"z\"]\n"),
            ("a = [\"x\", \"y\", \"z\"]\n", 2, "a = [\"x\", \"y\"]\n"),
            ("a = [ \"x\" ]\n", 0, "a = []\n"),
            ("a = [\"x\",]\n", 0, "a = []\n"),
            (
                "a = [\n  \"x\", # keep x\n  # about y\n  \"y\", # y's\n  \"z\",\n]\n",
                1,
                "a = [\n  \"x\", # keep x\n  \"z\",\n]\n",
            ),
            (
                "a = [\n  \"x\", # keep x\n  # about y\n  \"y\", # y's\n]\n",
                1,
                "a = [\n  \"x\", # keep x\n]\n",
            ),
            (
                "a = [\n  # about x\n  \"x\", # x's\n  \"y\", # y's\n]\n",
                0,
                "a = [\n  \"y\", # y's\n]\n",
            ),
            (
                "a = [ # header\n  \"x\",\n  \"y\"\n] # after\n",
                0,
                "a = [ # header\n  \"y\"\n] # after\n",
            ),
        ];
        for (input, index, expected) in table {
            assert_eq!(&remove_from(input, *index), expected, "{input:?} - {index}");
        }
        let mut a = Array::new();
        assert!(remove_entry(&mut a, 0).is_none());
    }

    #[test]
    fn set_value_keeps_decor_and_equal_values() {
        let mut doc: DocumentMut = "[t]\nn = 1 # one\ns = 'lit' # lit\n[u]\n"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let t = doc["t"].as_table_like_mut().unwrap_or_else(|| panic!("t"));
        assert!(set_value(t, false, "n", Value::from(2)));
        assert!(!set_value(t, false, "s", Value::from("lit")));
        assert!(set_value(t, false, "new", Value::from("x")));
        assert_eq!(
            doc.to_string(),
            format!("[t]\nn = 2 # one\ns = 'lit' # lit\n{ADDED_KEY_COMMENT}new = \"x\"\n[u]\n")
        );
    }

    #[test]
    fn canonical_forms() {
        let doc: DocumentMut =
            "s = 'a\"b'\ni = 0x10\nf = 1.50\nb = true\na = [ 1 ,\n 'x' ] # c\nt = { k = 1 }\n"
                .parse()
                .unwrap_or_else(|e| panic!("{e}"));
        let get = |k: &str| canonical(doc[k].as_value().unwrap_or_else(|| panic!("{k}")));
        assert_eq!(get("s"), "'a\"b'");
        assert_eq!(get("i"), "16");
        assert_eq!(get("f"), "1.5");
        assert_eq!(get("b"), "true");
        assert_eq!(get("a"), "[1, \"x\"]");
        assert_eq!(get("t"), "{ k = 1 }");
    }
}
