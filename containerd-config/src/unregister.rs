//! `unregister`: undo exactly what [`crate::register`] did — the handler table (or the
//! keys it set in a handler that was there before), the empty parents it created, the
//! `version` key it added to an empty file.

use toml_edit::{DocumentMut, Value};

use crate::default_runtime;
use crate::error::Error;
use crate::node::{walk, Node};
use crate::register::{save, HandlerChange, KeyChange, Registration, Target};
use crate::text::{render, Source};
use crate::version::{declared, ConfigVersion, Declared};

/// The result of [`unregister`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unregistered {
    /// The new text (the old one when nothing changed).
    pub text: String,
    /// Whether the text changed; when false, the file must not be written.
    pub changed: bool,
    /// The handler was found (and removed or restored).
    pub found: bool,
    /// Keys of an existing handler that register set and someone changed since: left as
    /// they are, dotted below the handler (e.g. `pod_annotations`).
    pub kept: Vec<String>,
}

/// Removes the handler `name` from `text`. With the `record` of the [`crate::register`]
/// that added it, the result is the text before that register, byte for byte, as long as
/// no one else edited the same tables since; without it, the handler table is removed with
/// the implicit parents that are left empty. A handler that is absent is not an error: the
/// text is returned unchanged.
pub fn unregister(
    text: &str,
    name: &str,
    record: Option<&Registration>,
    target: Target<'_>,
) -> Result<Unregistered, Error> {
    let source = Source::split(text);
    let mut doc = source.parse(target.file)?;
    let versions: Vec<ConfigVersion> = match (record, declared(&doc, target.file)) {
        (Some(r), _) => vec![r.version],
        (None, Ok(Declared::Version(v))) => vec![v],
        _ => vec![ConfigVersion::V2, ConfigVersion::V3],
    };
    let mut found = false;
    let mut kept = Vec::new();
    for v in versions {
        if undo_handler(
            &mut doc,
            &v.runtimes_path(),
            name,
            record,
            target.file,
            &mut kept,
        )? {
            found = true;
            break;
        }
    }
    let mut changed = found;
    if record.is_some_and(|r| r.created_version_key)
        && doc.len() == 1
        && doc.contains_key("version")
    {
        doc.remove("version");
        changed = true;
    }
    if !changed {
        return Ok(Unregistered {
            text: text.to_owned(),
            changed: false,
            found,
            kept,
        });
    }
    let mut out = source.join(&render(&doc, false));
    if let Some(r) = record.filter(|r| r.added_final_newline) {
        strip_added_newline(&mut out, r.final_line.as_deref());
    }
    Ok(Unregistered {
        changed: out != text,
        text: out,
        found,
        kept,
    })
}

/// Takes off the final newline an edit added to a file that had none, but only while the
/// file still ends with `final_line`, the line that lacked it (`None`: a record from before
/// it was kept); a line appended since keeps its newline.
pub(crate) fn strip_added_newline(text: &mut String, final_line: Option<&str>) {
    let ends_with_it = final_line
        .is_none_or(|l| text.ends_with(&format!("{l}\n")) || text.ends_with(&format!("{l}\r\n")));
    if ends_with_it {
        strip_final_newline(text);
    }
}

/// Drops one final `\n` or `\r\n`.
pub(crate) fn strip_final_newline(text: &mut String) {
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.pop();
    }
}

/// Removes or restores the handler under `path`; whether it was there.
fn undo_handler(
    doc: &mut DocumentMut,
    path: &[&str],
    name: &str,
    record: Option<&Registration>,
    file: &str,
    kept: &mut Vec<String>,
) -> Result<bool, Error> {
    let Ok(Some(mut runtimes)) = walk(doc.as_table_mut(), path) else {
        return Ok(false);
    };
    if !runtimes.contains(name) {
        return Ok(false);
    }
    match record.map(|r| &r.handler_change) {
        None | Some(HandlerChange::Created) => {
            runtimes.remove(name);
            if let Some(r) = record.filter(|r| r.added_default_runtime) {
                default_runtime::remove(&mut runtimes, r.version);
            }
        }
        Some(HandlerChange::Updated {
            changes,
            created_tables,
            was_implicit,
        }) => {
            let Ok(Some(mut handler)) = runtimes.child(name) else {
                return Ok(true);
            };
            for change in changes.iter().rev() {
                if !restore(&mut handler, change, file)? {
                    kept.push(change.key.join("."));
                }
            }
            for table in created_tables.iter().rev() {
                let empty = matches!(handler.reborrow().child(table), Ok(Some(t)) if t.is_empty());
                if empty {
                    handler.remove(table);
                }
            }
            if let (true, Node::Table(t)) = (*was_implicit, &mut handler) {
                if t.iter().all(|(_, item)| item.is_table()) {
                    t.set_implicit(true);
                }
            }
            return Ok(true);
        }
    }
    let created = record.map_or(0, |r| r.created_parents.len());
    for depth in (0..path.len()).rev() {
        let Ok(Some(mut parent)) = walk(doc.as_table_mut(), &path[..depth]) else {
            break;
        };
        let key = path[depth];
        let ours = if record.is_some() {
            depth >= path.len() - created.min(path.len())
        } else {
            matches!(parent.reborrow().child(key), Ok(Some(t)) if t.is_implicit())
        };
        let empty = matches!(parent.reborrow().child(key), Ok(Some(t)) if t.is_empty());
        if !(ours && empty) {
            break;
        }
        parent.remove(key);
    }
    Ok(true)
}

/// Puts back one key of an existing handler; `false` when it no longer holds what register
/// wrote (someone edited it since) and is left as it is.
fn restore(handler: &mut Node<'_>, change: &KeyChange, file: &str) -> Result<bool, Error> {
    let Some((key, under)) = change.key.split_last() else {
        return Ok(true);
    };
    let mut node = handler.reborrow();
    for k in under {
        match node.child(k) {
            Ok(Some(next)) => node = next,
            _ => return Ok(true),
        }
    }
    if let Some(wrote) = &change.after {
        if node.value(key).map(|v| save(v).repr) != Some(wrote.repr.clone()) {
            return Ok(false);
        }
    }
    match &change.before {
        None => {
            node.remove(key);
        }
        Some(saved) => {
            let mut v: Value = saved.repr.parse().map_err(|e| Error::BadRecord {
                file: file.to_owned(),
                why: format!(
                    "saved value of {} does not parse: {e}",
                    change.key.join(".")
                ),
            })?;
            if let Some(p) = &saved.prefix {
                v.decor_mut().set_prefix(p.clone());
            }
            if let Some(s) = &saved.suffix {
                v.decor_mut().set_suffix(s.clone());
            }
            match node.value_mut(key) {
                Some(slot) => *slot = v,
                None => node.insert_value(key, v),
            }
        }
    }
    Ok(true)
}
