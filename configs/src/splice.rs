//! The fast path of rendering: the planned edits applied as byte replacements to the base
//! text, which is otherwise copied as it is. It gives the same bytes as editing the parsed
//! document and printing it (the tests hold the two to that), without the cost of turning
//! every span of a large, comment-heavy file into owned strings, and it keeps what
//! `toml_edit` would normalise (CR LF line ends). Where the layout is beyond it (the section
//! written inline or with dotted keys, a last line without a newline) it answers `None` and
//! rendering takes the slow path.

use std::ops::Range;

use toml_edit::{DocumentMut, Item, Table, Value};

use crate::edit::{remove_entries, ADDED_KEY_COMMENT};
use crate::keys::ENABLE_ANNOTATIONS;
use crate::render::Edits;

/// The base `text` with `edits` applied to its `[hypervisor.qemu]` table `qemu` (parsed
/// from `text`, with positions), or `None` when the layout is beyond this path.
pub(crate) fn splice(text: &str, qemu: &Table, edits: &Edits) -> Option<String> {
    if qemu.is_dotted() || qemu.span().is_none() {
        return None;
    }
    let newline = if crate::render::uses_crlf(text) {
        "\r\n"
    } else {
        "\n"
    };
    let mut replacements: Vec<(Range<usize>, String)> = Vec::new();
    let mut added = String::new();
    for (key, value) in &edits.set {
        match qemu.get(key) {
            Some(Item::Value(old)) => replacements.push((old.span()?, value.to_string())),
            Some(_) => return None,
            None => {
                added.push_str(ADDED_KEY_COMMENT);
                added.push_str(&format!("{} = {value}\n", toml_edit::Key::new(*key)));
            }
        }
    }
    if !edits.remove.is_empty() {
        let span = qemu.get(ENABLE_ANNOTATIONS)?.as_value()?.span()?;
        let array = rewrite_array(text.get(span.clone())?, &edits.remove)?;
        replacements.push((span, array));
    }
    if !added.is_empty() {
        let at = after_last_value(text, qemu)?;
        replacements.push((at..at, added));
    }
    replacements.sort_by_key(|(range, _)| range.start);
    let mut out = String::with_capacity(text.len() + 256);
    let mut done = 0;
    for (range, replacement) in replacements {
        if range.start < done {
            return None;
        }
        out.push_str(text.get(done..range.start)?);
        push_with_newline(&mut out, &replacement, newline);
        done = range.end;
    }
    out.push_str(text.get(done..)?);
    Some(out)
}

/// Appends `s`, its LF line ends turned into `newline`.
fn push_with_newline(out: &mut String, s: &str, newline: &str) {
    if newline == "\n" {
        out.push_str(s);
        return;
    }
    let mut previous = '\0';
    for c in s.chars() {
        if c == '\n' && previous != '\r' {
            out.push('\r');
        }
        out.push(c);
        previous = c;
    }
}

/// The array `[...]` written as `array_text`, with the entries at `remove` taken out the
/// way the slow path does, printed on its own.
fn rewrite_array(array_text: &str, remove: &[usize]) -> Option<String> {
    let mut doc: DocumentMut = format!("a = {array_text}\n").parse().ok()?;
    let value = doc.get_mut("a")?.as_value_mut()?;
    remove_entries(value.as_array_mut()?, remove);
    value.decor_mut().clear();
    Some(value.to_string())
}

/// The offset just after the line of the table's last key/value (or of its header when it
/// has none): where a key added to the table goes. `None` unless a newline ends that line.
fn after_last_value(text: &str, qemu: &Table) -> Option<usize> {
    let mut end = None;
    for (_, item) in qemu.iter() {
        match item {
            Item::Value(v) => end = Some(value_end(v)?),
            Item::Table(t) if t.is_dotted() => return None,
            _ => {}
        }
    }
    let end = match end {
        Some(end) => end,
        None => match qemu.decor().suffix().and_then(|s| s.span()) {
            Some(s) => s.end,
            None => qemu.span()?.end,
        },
    };
    let rest = text.get(end..)?;
    if rest.starts_with('\n') {
        Some(end + 1)
    } else if rest.starts_with("\r\n") {
        Some(end + 2)
    } else {
        None
    }
}

/// The end of a value and of the comment after it on its line.
fn value_end(v: &Value) -> Option<usize> {
    match v.decor().suffix().and_then(|s| s.span()) {
        Some(s) => Some(s.end),
        None => Some(v.span()?.end),
    }
}
