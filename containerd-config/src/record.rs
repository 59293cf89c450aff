//! The record of a registration: what [`crate::register`] did, kept by the caller (as
//! JSON) so that [`crate::unregister`] can undo exactly that.

use serde::{Deserialize, Serialize};

use crate::version::ConfigVersion;

/// What [`crate::register`] did, kept by the caller so that [`crate::unregister`] can undo it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The handler.
    pub handler: String,
    /// The config version the handler was written for.
    pub version: ConfigVersion,
    /// `version = N` was added (the file was empty).
    #[serde(default)]
    pub created_version_key: bool,
    /// Tables on the way to the handler that did not exist, outermost first.
    #[serde(default)]
    pub created_parents: Vec<String>,
    /// The handler table itself.
    pub handler_change: HandlerChange,
    /// The file did not end with a newline, and now does.
    #[serde(default)]
    pub added_final_newline: bool,
    /// With `added_final_newline`: the file's last line, the one that lacked it; unregister
    /// takes the newline off only while the file still ends with this line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_line: Option<String>,
    /// `runc` was written beside the handler, because it is the first runtime the file
    /// names (see [`crate::dropin`] and containerd 1.6's map decoding).
    #[serde(default)]
    pub added_default_runtime: bool,
}

impl Registration {
    /// The record of this registration followed by `later`, a register run on the text
    /// this one produced: what must be undone to get back to the text before this one.
    /// What this one created stays created; of keys set twice, the first value is kept.
    pub fn then(self, later: Registration) -> Registration {
        let handler_change = match (self.handler_change, later.handler_change) {
            (HandlerChange::Created, _) => HandlerChange::Created,
            (
                HandlerChange::Updated {
                    mut changes,
                    mut created_tables,
                    was_implicit,
                },
                HandlerChange::Updated {
                    changes: more,
                    created_tables: more_tables,
                    ..
                },
            ) => {
                for c in more {
                    match changes.iter_mut().find(|old| old.key == c.key) {
                        Some(old) => old.after = c.after,
                        None => changes.push(c),
                    }
                }
                for t in more_tables {
                    if !created_tables.contains(&t) {
                        created_tables.push(t);
                    }
                }
                HandlerChange::Updated {
                    changes,
                    created_tables,
                    was_implicit,
                }
            }
            // The handler vanished in between and was created anew.
            (HandlerChange::Updated { .. }, HandlerChange::Created) => HandlerChange::Created,
        };
        Registration {
            handler: self.handler,
            version: self.version,
            created_version_key: self.created_version_key || later.created_version_key,
            created_parents: if self.created_parents.len() >= later.created_parents.len() {
                self.created_parents
            } else {
                later.created_parents
            },
            handler_change,
            added_final_newline: self.added_final_newline || later.added_final_newline,
            final_line: self.final_line.or(later.final_line),
            added_default_runtime: self.added_default_runtime || later.added_default_runtime,
        }
    }
}

/// What happened to the handler table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HandlerChange {
    /// It did not exist and was added whole.
    Created,
    /// It existed (with our name) and these keys were set.
    Updated {
        /// Keys set, in order, with what they held before.
        changes: Vec<KeyChange>,
        /// Sub-tables (e.g. `options`) that were added.
        created_tables: Vec<String>,
        /// The handler was implicit (only its sub-tables had headers) and got a header.
        #[serde(default)]
        was_implicit: bool,
    },
}

/// One key of an existing handler that [`crate::register`] set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChange {
    /// The key's path below the handler, e.g. `["options", "ConfigPath"]`.
    pub key: Vec<String>,
    /// Its value before, exactly as written; `None` if it was absent.
    pub before: Option<SavedValue>,
    /// The value register wrote: a key that no longer holds it was edited since, and is
    /// left as it is. `None` in records from before this was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<SavedValue>,
}

/// A value exactly as it was written: its text and the whitespace and comment around it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedValue {
    /// The value's own text, e.g. `"old"` or a multi-line array.
    pub repr: String,
    /// What stood between `=` and the value.
    pub prefix: Option<String>,
    /// What followed the value on its line (spaces, a comment).
    pub suffix: Option<String>,
}
