//! Keys that name a runtime handler. containerd 1.6 refuses to load its CRI plugin when
//! `default_runtime_name` names a runtime that is not configured ("no corresponding runtime
//! configured"), so every pod on the node fails: a handler that such a key names must not
//! be removed.

use toml_edit::{Item, Value};

use crate::error::Error;
use crate::found::find_handler;
use crate::node::dotted;
use crate::text::Source;

/// The keys that name a runtime handler by its name.
const NAMING_KEYS: [&str; 1] = ["default_runtime_name"];

/// One key that names a handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamingKey {
    /// Its dotted path.
    pub key: String,
    /// Its 1-based line in the file.
    pub line: usize,
}

/// The keys of the config `text` that name the handler `handler`, in file order.
pub fn keys_naming(text: &str, handler: &str, file: &str) -> Result<Vec<NamingKey>, Error> {
    let source = Source::split(text);
    source.parse(file)?;
    let doc = toml_edit::Document::parse(source.body.as_str()).map_err(|e| {
        let (line, column) = source.position(e.span().map_or(0, |s| s.start));
        Error::InvalidToml {
            file: file.to_owned(),
            line,
            column,
            message: e.message().trim().to_owned(),
        }
    })?;
    let mut walk = Walk {
        handler,
        source: &source,
        path: Vec::new(),
        out: Vec::new(),
    };
    walk.item(doc.as_item());
    walk.out.sort_by_key(|k| k.line);
    Ok(walk.out)
}

/// Where the walk is: the keys above, and the file for line numbers.
struct Walk<'s> {
    handler: &'s str,
    source: &'s Source,
    path: Vec<String>,
    out: Vec<NamingKey>,
}

impl Walk<'_> {
    fn key(&mut self, key: &str, span: Option<std::ops::Range<usize>>, value: Option<&str>) {
        self.path.push(key.to_owned());
        if NAMING_KEYS.contains(&key) && value == Some(self.handler) {
            let path: Vec<&str> = self.path.iter().map(String::as_str).collect();
            self.out.push(NamingKey {
                key: dotted(&path),
                line: self.source.position(span.map_or(0, |s| s.start)).0,
            });
        }
    }

    fn item(&mut self, item: &Item) {
        match item {
            Item::Table(t) => {
                for (k, v) in t.iter() {
                    self.key(k, t.key(k).and_then(toml_edit::Key::span), v.as_str());
                    self.item(v);
                    self.path.pop();
                }
            }
            Item::Value(v) => self.value(v),
            _ => {}
        }
    }

    fn value(&mut self, value: &Value) {
        if let Value::InlineTable(t) = value {
            for (k, v) in t.iter() {
                self.key(k, t.key(k).and_then(toml_edit::Key::span), v.as_str());
                self.value(v);
                self.path.pop();
            }
        }
    }
}

/// Refuses an edit of the config `text` into `after` that leaves `handler` undefined while
/// a key still names it: [`Error::HandlerInUse`] names the first, at its line in `text`.
pub fn refuse_dangling_name(
    text: &str,
    after: &str,
    handler: &str,
    file: &str,
) -> Result<(), Error> {
    if find_handler(after, handler).is_some() || keys_naming(after, handler, file)?.is_empty() {
        return Ok(());
    }
    match keys_naming(text, handler, file)?.into_iter().next() {
        None => Ok(()),
        Some(k) => Err(Error::HandlerInUse {
            file: file.to_owned(),
            line: k.line,
            key: k.key,
            handler: handler.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "kata-x";

    #[test]
    fn keys_that_name_the_handler_are_found_with_their_line() {
        let table: [(&str, &[(&str, usize)]); 6] = [
            ("version = 2\n", &[]),
            (
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"kata-x\"\n",
                &[("plugins.\"io.containerd.grpc.v1.cri\".containerd.default_runtime_name", 3)],
            ),
            (
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"runc\"\n",
                &[],
            ),
            (
                "{{ template \"base\" . }}\nversion = 3\n[plugins.'io.containerd.cri.v1.runtime']\ncontainerd = { default_runtime_name = 'kata-x' }\n",
                &[("plugins.\"io.containerd.cri.v1.runtime\".containerd.default_runtime_name", 4)],
            ),
            (
                "version = 3\n\n\nplugins.'io.containerd.cri.v1.runtime'.containerd.default_runtime_name = 'kata-x'\n",
                &[("plugins.\"io.containerd.cri.v1.runtime\".containerd.default_runtime_name", 4)],
            ),
            ("version = 2\nx = { default_runtime_name = 1 }\n", &[]),
        ];
        for (text, want) in table {
            let got = keys_naming(text, H, "c.toml").expect("valid");
            let got: Vec<(&str, usize)> = got.iter().map(|k| (k.key.as_str(), k.line)).collect();
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn a_name_left_dangling_is_refused_and_a_defined_one_is_not() {
        let named = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"kata-x\"\n";
        let err = refuse_dangling_name(named, named, H, "c.toml").expect_err("dangling");
        let msg = err.to_string();
        assert!(
            msg.starts_with("c.toml:3: plugins.\"io.containerd.grpc.v1.cri\".containerd.default_runtime_name = \"kata-x\""),
            "{msg}"
        );
        assert!(msg.contains("nothing was written"), "{msg}");
        let defined = format!("{named}[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata-x]\n  runtime_type = \"t\"\n");
        refuse_dangling_name(&defined, &defined, H, "c.toml").expect("still defined");
        refuse_dangling_name(&defined, named, H, "c.toml").expect_err("removed");
        refuse_dangling_name("version = 2\n", "version = 2\n", H, "c.toml").expect("not named");
    }
}
