//! `register`: add (or update) one runtime handler table, touching nothing else, and say
//! exactly what was done so that [`crate::unregister`] can undo it byte for byte.

use toml_edit::{value, Array, DocumentMut, Item, Value};

use crate::build::{handler_inline, handler_table, key_indent, Style};
use crate::default_runtime;
use crate::error::Error;
use crate::node::{dotted, push_like_last, uses_literal_strings, walk, Node};
pub use crate::record::{HandlerChange, KeyChange, Registration, SavedValue};
use crate::spec::HandlerSpec;
use crate::text::{render, Source};
use crate::version::{declared, ConfigVersion, Declared};

/// The file being edited, and the version to assume where the file does not say.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The file's name, for messages.
    pub file: &'a str,
    /// The version to write into an empty or missing file, and the one a Go template
    /// (whose base template sets it) stands for. A file's own `version` key wins.
    pub version: Option<ConfigVersion>,
}

/// The result of an edit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    /// The new text (the old one when nothing changed).
    pub text: String,
    /// Whether the text changed; when false, the file must not be written.
    pub changed: bool,
    /// What was done.
    pub record: Registration,
}

/// Adds `spec`'s handler table to the config `text`, or brings an existing one of the same
/// name up to date, touching nothing else: comments, order, quoting and blank lines of all
/// other content stay as they are and intermediate tables are implicit. The result is
/// checked by undoing it: if [`crate::unregister`] would not give back `text` byte for
/// byte, the edit is refused with [`Error::NotSurgical`].
pub fn register(text: &str, spec: &HandlerSpec, target: Target<'_>) -> Result<Registered, Error> {
    let (work, added_final_newline) = with_final_newline(text);
    let source = Source::split(&work);
    let mut doc = source.parse(target.file)?;
    let (version, created_version_key) = version_to_write(&doc, &source, target)?;
    if created_version_key {
        doc.insert("version", value(version.number()));
    }
    let path = version.runtimes_path();
    let add_runc = default_runtime::needed(doc.as_table_mut(), &path, source.is_template())
        && !matches!(walk(doc.as_table_mut(), &path), Ok(Some(r)) if r.contains(&spec.name));
    let literal = uses_literal_strings(doc.as_table());
    let (created_parents, handler_change) = {
        let (created_parents, mut runtimes) = ensure_path(&mut doc, &path, target.file)?;
        if add_runc {
            default_runtime::add(&mut runtimes, version, literal);
        }
        let change = ensure_handler(&mut runtimes, spec, &path, target.file)?;
        (created_parents, change)
    };
    let record = Registration {
        handler: spec.name.clone(),
        version,
        created_version_key,
        created_parents,
        handler_change,
        added_final_newline,
        final_line: added_final_newline.then(|| last_line(text)),
        added_default_runtime: add_runc,
    };
    let unchanged = matches!(&record.handler_change,
        HandlerChange::Updated { changes, created_tables, .. } if changes.is_empty() && created_tables.is_empty())
        && !record.created_version_key
        && record.created_parents.is_empty()
        && !record.added_default_runtime;
    if unchanged {
        return Ok(Registered {
            text: text.to_owned(),
            changed: false,
            record,
        });
    }
    let out = source.join(&render(&doc, false));
    let undone = crate::unregister::unregister(&out, &spec.name, Some(&record), target)
        .map_err(|e| not_surgical(target.file, format!("undoing it fails: {e}")))?;
    if undone.text != text {
        return Err(not_surgical(
            target.file,
            first_difference(text, &undone.text),
        ));
    }
    Ok(Registered {
        text: out,
        changed: true,
        record,
    })
}

/// `text` with a final newline (in its own line-ending style), and whether one was added.
pub(crate) fn with_final_newline(text: &str) -> (std::borrow::Cow<'_, str>, bool) {
    if text.is_empty() || text.ends_with('\n') {
        (text.into(), false)
    } else if text.contains("\r\n") {
        (format!("{text}\r\n").into(), true)
    } else {
        (format!("{text}\n").into(), true)
    }
}

/// The last line of a text without a final newline.
pub(crate) fn last_line(text: &str) -> String {
    text.rsplit('\n').next().unwrap_or_default().to_owned()
}

fn not_surgical(file: &str, why: String) -> Error {
    Error::NotSurgical {
        file: file.to_owned(),
        why,
    }
}

/// Where two texts first differ, for [`Error::NotSurgical`].
pub(crate) fn first_difference(want: &str, got: &str) -> String {
    let line = want
        .split_inclusive('\n')
        .zip(got.split_inclusive('\n'))
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| want.lines().count().min(got.lines().count()));
    let pick = |t: &str| {
        t.split_inclusive('\n')
            .nth(line)
            .unwrap_or("<end>")
            .to_owned()
    };
    format!(
        "line {} would read {:?} instead of {:?}",
        line + 1,
        pick(got),
        pick(want)
    )
}

/// The version to write for, and whether `version = N` must be added.
fn version_to_write(
    doc: &DocumentMut,
    source: &Source,
    target: Target<'_>,
) -> Result<(ConfigVersion, bool), Error> {
    let unknown = |why: &str| Error::VersionUnknown {
        file: target.file.to_owned(),
        why: why.to_owned(),
    };
    match declared(doc, target.file) {
        Ok(Declared::Version(v)) => Ok((v, false)),
        Ok(Declared::Empty) if source.is_template() => target
            .version
            .map(|v| (v, false))
            .ok_or_else(|| unknown("it is a Go template whose base sets the version")),
        Ok(Declared::Empty) => target
            .version
            .map(|v| (v, true))
            .ok_or_else(|| unknown("the file is empty")),
        Ok(Declared::Missing) if source.is_template() => target
            .version
            .map(|v| (v, false))
            .ok_or_else(|| unknown("it is a Go template whose base sets the version")),
        Ok(Declared::Missing) => Err(Error::Version1 {
            file: target.file.to_owned(),
        }),
        Err(e) => Err(e),
    }
}

/// Walks to the `runtimes` table, creating what is missing as implicit tables; returns the
/// keys it created.
fn ensure_path<'a>(
    doc: &'a mut DocumentMut,
    path: &[&str],
    file: &str,
) -> Result<(Vec<String>, Node<'a>), Error> {
    let mut created = Vec::new();
    let mut node = Node::Table(doc.as_table_mut());
    for (depth, key) in path.iter().enumerate() {
        if !node.contains(key) {
            node.insert_table(key, true, false);
            created.push((*key).to_owned());
        }
        node = match node.child(key) {
            Ok(Some(next)) => next,
            Ok(None) => unreachable_missing(file, &path[..=depth])?,
            Err(kind) => {
                return Err(Error::WrongKind {
                    file: file.to_owned(),
                    path: dotted(&path[..=depth]),
                    found: kind.0,
                    expected: "a table",
                })
            }
        };
    }
    Ok((created, node))
}

fn unreachable_missing<T>(file: &str, path: &[&str]) -> Result<T, Error> {
    Err(not_surgical(
        file,
        format!("{} vanished after it was inserted", dotted(path)),
    ))
}

/// Adds the handler to `runtimes`, or updates it.
fn ensure_handler(
    runtimes: &mut Node<'_>,
    spec: &HandlerSpec,
    path: &[&str],
    file: &str,
) -> Result<HandlerChange, Error> {
    let name = spec.name.as_str();
    if !runtimes.contains(name) {
        match runtimes {
            Node::Table(t) => {
                let style = Style::of_siblings(t);
                t.insert(name, Item::Table(handler_table(spec, &style)));
            }
            Node::Inline(t) => {
                t.insert(name, Value::InlineTable(handler_inline(spec)));
            }
        }
        return Ok(HandlerChange::Created);
    }
    let full: Vec<&str> = path.iter().copied().chain([name]).collect();
    let mut handler = match runtimes.reborrow().child(name) {
        Ok(Some(h)) => h,
        Ok(None) => return unreachable_missing(file, &full),
        Err(kind) => {
            return Err(Error::WrongKind {
                file: file.to_owned(),
                path: dotted(&full),
                found: kind.0,
                expected: "a table",
            })
        }
    };
    let was_implicit = handler.is_implicit();
    let mut ctx = Update {
        file,
        path: &full,
        changes: Vec::new(),
    };
    let indent = key_indent(&handler);
    ctx.string(
        &mut handler,
        &[],
        "runtime_type",
        &spec.runtime_type,
        &indent,
    )?;
    if let Some(p) = &spec.runtime_path {
        ctx.string(&mut handler, &[], "runtime_path", p, &indent)?;
    }
    ctx.privileged(&mut handler, &indent)?;
    ctx.annotations(&mut handler, &spec.pod_annotations, &indent)?;
    if let Some(s) = &spec.snapshotter {
        ctx.string(&mut handler, &[], "snapshotter", s, &indent)?;
    }
    let mut created_tables = Vec::new();
    if !handler.contains("options") {
        let dotted_parent = handler.is_dotted();
        handler.insert_table("options", false, dotted_parent);
        created_tables.push("options".to_owned());
    }
    let mut options = match handler.child("options") {
        Ok(Some(o)) => o,
        Ok(None) => return unreachable_missing(file, &full),
        Err(kind) => {
            let mut p = full.clone();
            p.push("options");
            return Err(Error::WrongKind {
                file: file.to_owned(),
                path: dotted(&p),
                found: kind.0,
                expected: "a table",
            });
        }
    };
    let opt_indent = key_indent(&options);
    ctx.string(
        &mut options,
        &["options"],
        "ConfigPath",
        &spec.config_path,
        if opt_indent.is_empty() {
            &indent
        } else {
            &opt_indent
        },
    )?;
    let was_implicit = was_implicit && !ctx.changes.is_empty();
    Ok(HandlerChange::Updated {
        changes: ctx.changes,
        created_tables,
        was_implicit,
    })
}

/// The keys an update sets, with what they held.
struct Update<'p> {
    file: &'p str,
    path: &'p [&'p str],
    changes: Vec<KeyChange>,
}

impl Update<'_> {
    fn key_path(&self, under: &[&str], key: &str) -> Vec<String> {
        under
            .iter()
            .copied()
            .chain([key])
            .map(str::to_owned)
            .collect()
    }

    fn wrong(
        &self,
        under: &[&str],
        key: &str,
        found: &'static str,
        expected: &'static str,
    ) -> Error {
        let full: Vec<&str> = self
            .path
            .iter()
            .chain(under)
            .copied()
            .chain([key])
            .collect();
        Error::WrongKind {
            file: self.file.to_owned(),
            path: dotted(&full),
            found,
            expected,
        }
    }

    /// Sets `key` to `want` unless it already holds it.
    fn set(
        &mut self,
        node: &mut Node<'_>,
        under: &[&str],
        key: &str,
        want: Value,
        same: impl Fn(&Value) -> bool,
        indent: &str,
    ) -> Result<(), Error> {
        let key_path = self.key_path(under, key);
        if node.contains(key) && node.value(key).is_none() {
            return Err(self.wrong(under, key, "a table", "a value"));
        }
        if let Some(v) = node.value_mut(key) {
            if !same(v) {
                let before = Some(save(v));
                replace_keeping_decor(v, want);
                self.changes.push(KeyChange {
                    key: key_path,
                    before,
                    after: Some(save(v)),
                });
            }
            return Ok(());
        }
        self.changes.push(KeyChange {
            key: key_path,
            before: None,
            after: Some(save(&want)),
        });
        node.insert_value(key, want);
        if let Node::Table(t) = node {
            if let Some(mut k) = t.key_mut(key) {
                k.leaf_decor_mut().set_prefix(indent.to_owned());
            }
        }
        Ok(())
    }

    fn string(
        &mut self,
        node: &mut Node<'_>,
        under: &[&str],
        key: &str,
        want: &str,
        indent: &str,
    ) -> Result<(), Error> {
        self.set(
            node,
            under,
            key,
            Value::from(want),
            |v| v.as_str() == Some(want),
            indent,
        )
    }

    fn privileged(&mut self, node: &mut Node<'_>, indent: &str) -> Result<(), Error> {
        self.set(
            node,
            &[],
            "privileged_without_host_devices",
            Value::from(true),
            |v| v.as_bool() == Some(true),
            indent,
        )
    }

    /// Adds the missing annotation patterns to `pod_annotations`, keeping those it has.
    fn annotations(
        &mut self,
        node: &mut Node<'_>,
        want: &[String],
        indent: &str,
    ) -> Result<(), Error> {
        let key = "pod_annotations";
        match node.value_mut(key) {
            Some(Value::Array(arr)) => {
                let missing: Vec<&String> = want
                    .iter()
                    .filter(|w| !arr.iter().any(|v| v.as_str() == Some(w.as_str())))
                    .collect();
                if missing.is_empty() {
                    return Ok(());
                }
                let before = save(&Value::Array(arr.clone()));
                for m in missing {
                    push_like_last(arr, Value::from(m.as_str()));
                }
                self.changes.push(KeyChange {
                    key: vec![key.to_owned()],
                    before: Some(before),
                    after: Some(save(&Value::Array(arr.clone()))),
                });
                Ok(())
            }
            _ => {
                let arr: Array = want.iter().map(String::as_str).collect();
                self.set(node, &[], key, Value::Array(arr), |_| false, indent)
            }
        }
    }
}

/// A value exactly as written.
pub(crate) fn save(v: &Value) -> SavedValue {
    let raw = |r: Option<&toml_edit::RawString>| r.and_then(|r| r.as_str()).map(str::to_owned);
    let mut bare = v.clone();
    bare.decor_mut().clear();
    SavedValue {
        repr: bare.to_string(),
        prefix: raw(v.decor().prefix()),
        suffix: raw(v.decor().suffix()),
    }
}

/// Replaces `*slot` by `new`, keeping the space and comment around the old value.
fn replace_keeping_decor(slot: &mut Value, mut new: Value) {
    *new.decor_mut() = slot.decor().clone();
    *slot = new;
}
