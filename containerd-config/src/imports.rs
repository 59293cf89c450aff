//! The root `imports` list: adding a drop-in's path once, and removing it again.

use serde::{Deserialize, Serialize};
use toml_edit::{value, Array, DocumentMut, Item, Value};

use crate::error::Error;
use crate::node::{push_like_last, string_value, uses_literal_strings};
use crate::register::{first_difference, last_line, with_final_newline, Target};
use crate::text::{render, Source};
use crate::unregister::strip_added_newline;
use crate::version::{declared, Declared};

/// What [`add_import`] did, kept so that [`remove_import`] can undo it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportChange {
    /// The path added (as containerd sees it).
    pub entry: String,
    /// Whether it was added (false: an entry already covered it).
    pub added: bool,
    /// `imports` did not exist and was created.
    #[serde(default)]
    pub created_key: bool,
    /// `version = N` was added (the file was empty).
    #[serde(default)]
    pub created_version_key: bool,
    /// The file did not end with a newline, and now does.
    #[serde(default)]
    pub added_final_newline: bool,
    /// With `added_final_newline`: the file's last line, the one that lacked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_line: Option<String>,
}

/// The result of an imports edit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportEdit {
    /// The new text (the old one when nothing changed).
    pub text: String,
    /// Whether the text changed.
    pub changed: bool,
    /// What was done.
    pub change: ImportChange,
}

/// The entries of `imports` in `text` (none when the key is absent).
pub fn imports(text: &str, file: &str) -> Result<Vec<String>, Error> {
    let source = Source::split(text);
    let doc = source.parse(file)?;
    read_imports(&doc, file)
}

fn read_imports(doc: &DocumentMut, file: &str) -> Result<Vec<String>, Error> {
    match doc.get("imports") {
        None => Ok(Vec::new()),
        Some(Item::Value(Value::Array(a))) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| Error::BadImports {
                        file: file.to_owned(),
                        found: format!("the entry {}", v.to_string().trim()),
                    })
            })
            .collect(),
        Some(other) => Err(Error::BadImports {
            file: file.to_owned(),
            found: other.to_string().trim().to_owned(),
        }),
    }
}

/// Adds `entry` to the root `imports` of `text`, unless an entry (a path or a glob such as
/// `/etc/containerd/conf.d/*.toml`) already covers it. An empty file gets `version = N`
/// from `target` first. A Go template is refused: its base template owns `imports`.
pub fn add_import(text: &str, entry: &str, target: Target<'_>) -> Result<ImportEdit, Error> {
    let (work, added_final_newline) = with_final_newline(text);
    let source = Source::split(&work);
    let mut doc = source.parse(target.file)?;
    if source.is_template() {
        return Err(Error::TemplateImports {
            file: target.file.to_owned(),
            hint: "config.toml.d/ or config-v3.toml.d/ beside it".to_owned(),
        });
    }
    let created_version_key = match declared(&doc, target.file)? {
        Declared::Version(_) => false,
        Declared::Empty => {
            let v = target.version.ok_or_else(|| Error::VersionUnknown {
                file: target.file.to_owned(),
                why: "the file is empty".to_owned(),
            })?;
            doc.insert("version", value(v.number()));
            true
        }
        Declared::Missing => {
            return Err(Error::Version1 {
                file: target.file.to_owned(),
            })
        }
    };
    let existing = read_imports(&doc, target.file)?;
    let mut change = ImportChange {
        entry: entry.to_owned(),
        added: false,
        created_key: false,
        created_version_key,
        added_final_newline,
        final_line: added_final_newline.then(|| last_line(text)),
    };
    if existing.iter().any(|pattern| covers(pattern, entry)) {
        return Ok(ImportEdit {
            text: text.to_owned(),
            changed: false,
            change: ImportChange {
                created_version_key: false,
                added_final_newline: false,
                final_line: None,
                ..change
            },
        });
    }
    change.added = true;
    let literal = uses_literal_strings(doc.as_table());
    match doc.get_mut("imports").and_then(Item::as_array_mut) {
        Some(arr) => {
            let literal = arr
                .iter()
                .next()
                .map_or(literal, |v| v.to_string().trim_start().starts_with('\''));
            push_like_last(arr, string_value(entry, literal));
        }
        None => {
            change.created_key = true;
            let mut arr = Array::new();
            arr.push_formatted(string_value(entry, literal));
            doc.insert("imports", value(arr));
        }
    }
    let out = source.join(&render(&doc, false));
    let undone = remove_import(&out, &change, target)?;
    if undone.text != text {
        return Err(Error::NotSurgical {
            file: target.file.to_owned(),
            why: first_difference(text, &undone.text),
        });
    }
    Ok(ImportEdit {
        text: out,
        changed: true,
        change,
    })
}

/// Removes what [`add_import`] added: the entry, the `imports` key if it created it and
/// it is empty again, the `version` key if it created it and nothing else is left.
pub fn remove_import(
    text: &str,
    change: &ImportChange,
    target: Target<'_>,
) -> Result<ImportEdit, Error> {
    let unchanged = || ImportEdit {
        text: text.to_owned(),
        changed: false,
        change: change.clone(),
    };
    if !change.added {
        return Ok(unchanged());
    }
    let source = Source::split(text);
    let mut doc = source.parse(target.file)?;
    let mut changed = false;
    if let Some(arr) = doc.get_mut("imports").and_then(Item::as_array_mut) {
        let before = arr.len();
        arr.retain(|v| v.as_str() != Some(change.entry.as_str()));
        changed = arr.len() != before;
        if change.created_key && arr.is_empty() {
            doc.remove("imports");
        }
    }
    if change.created_version_key && doc.len() == 1 && doc.contains_key("version") {
        doc.remove("version");
        changed = true;
    }
    if !changed {
        return Ok(unchanged());
    }
    let mut out = source.join(&render(&doc, false));
    if change.added_final_newline {
        strip_added_newline(&mut out, change.final_line.as_deref());
    }
    Ok(ImportEdit {
        changed: out != text,
        text: out,
        change: change.clone(),
    })
}

/// Whether an `imports` entry (a path, or a glob that containerd's `filepath.Glob` expands:
/// `*`, `?` and `[...]` within one path segment) names `path`. A malformed glob names
/// nothing (containerd's `Glob` finds no file with it).
pub fn covers(pattern: &str, path: &str) -> bool {
    pattern == path || kata_gpu_fsutil::glob::glob_match(pattern, path).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::ConfigVersion;

    const T: Target<'static> = Target {
        file: "config.toml",
        version: Some(ConfigVersion::V2),
    };
    const E: &str = "/etc/containerd/conf.d/kata-qemu-nvidia-gpu-snp.toml";

    #[test]
    fn globs_cover_paths_within_one_segment() {
        let table = [
            ("/etc/containerd/conf.d/*.toml", E, true),
            ("/etc/containerd/conf.d/*", E, true),
            ("/etc/containerd/conf.d/kata-*-snp.toml", E, true),
            ("/etc/containerd/conf.d/?ata*.toml", E, true),
            (E, E, true),
            ("/etc/containerd/*.toml", E, false),
            ("/etc/containerd/conf.d/*.conf", E, false),
            ("conf.d/*.toml", E, false),
            // Classes, as Go's filepath.Match reads them; a malformed one covers nothing.
            ("/etc/containerd/conf.d/[jk]ata-*.toml", E, true),
            ("/etc/containerd/conf.d/[^k]ata-*.toml", E, false),
            ("/etc/containerd/conf.d/[*.toml", E, false),
        ];
        for (pattern, path, want) in table {
            assert_eq!(covers(pattern, path), want, "{pattern}");
        }
    }

    #[test]
    fn an_import_is_added_once_and_removed_to_the_same_bytes() {
        let table = [
            ("version = 2\n", "version = 2\nimports = [\"E\"]\n"),
            (
                "version = 2\nimports = []\n",
                "version = 2\nimports = [\"E\"]\n",
            ),
            (
                "version = 2\nimports = [\"/a.toml\"] # ours\n",
                "version = 2\nimports = [\"/a.toml\", \"E\"] # ours\n",
            ),
            (
                "version = 2\nimports = [\n  \"/a.toml\",\n]\n",
                "version = 2\nimports = [\n  \"/a.toml\",\n  \"E\",\n]\n",
            ),
            ("", "version = 2\nimports = [\"E\"]\n"),
            ("version = 2", "version = 2\nimports = [\"E\"]\n"),
            (
                "version = 2\r\n[grpc]\r\n  address = \"x\"\r\n",
                "version = 2\r\nimports = [\"E\"]\r\n[grpc]\r\n  address = \"x\"\r\n",
            ),
        ];
        for (before, after) in table {
            let after = after.replace('E', E);
            let edit = add_import(before, E, T).expect(before);
            assert_eq!(edit.text, after, "{before:?}");
            assert!(edit.changed);
            let again = add_import(&edit.text, E, T).expect("again");
            assert!(!again.changed, "{before:?}: second add changed it");
            let undone = remove_import(&edit.text, &edit.change, T).expect("remove");
            assert_eq!(undone.text, before, "{before:?}");
        }
    }

    #[test]
    fn a_covering_glob_adds_nothing_and_bad_imports_are_refused() {
        let text = "version = 3\nimports = ['/etc/containerd/conf.d/*.toml']\n";
        let edit = add_import(text, E, T).expect("covered");
        assert!(!edit.changed && !edit.change.added);
        assert_eq!(remove_import(text, &edit.change, T).expect("rm").text, text);

        let table = [
            (
                "version = 2\nimports = \"/a\"\n",
                "must be an array of strings",
            ),
            (
                "version = 2\nimports = [1]\n",
                "must be an array of strings",
            ),
            ("root = \"/x\"\n", "version-1"),
            ("{{ template \"base\" . }}\n", "Go template"),
        ];
        for (text, want) in table {
            let err = add_import(text, E, T).expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
