//! Secrets out of the files `kata-gpu report` copies, by key: containerd keeps registry
//! credentials in its config (`[plugins."io.containerd.grpc.v1.cri".registry.configs."R".auth]`
//! and containerd 2's `io.containerd.cri.v1.images`: `password`, `auth`, `identitytoken`;
//! CRI's `registrytoken`), `registry.headers` and `hosts.toml`'s `[host."…".header]` may
//! carry an `Authorization` header, and other tools write `token`s. A key whose name is one
//! of [`SECRET_KEYS`] (case, `_` and `-` aside) has its value replaced by `"<redacted>"`, in
//! tables, inline tables and commented-out assignments alike; every such key is listed
//! (its dotted path), never its value.

/// Key names whose values are secrets, compared lower-case with `_` and `-` removed.
pub const SECRET_KEYS: [&str; 10] = [
    "auth",
    "password",
    "identitytoken",
    "registrytoken",
    "token",
    "authorization",
    "accesstoken",
    "refreshtoken",
    "secret",
    "clientsecret",
];

/// What replaces a secret value.
pub const REDACTED: &str = "<redacted>";

/// Whether `key` names a secret.
pub fn is_secret(key: &str) -> bool {
    let k: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    SECRET_KEYS.contains(&k.as_str())
}

/// How a copied file's contents are redacted.
#[derive(Debug)]
pub enum Redaction {
    /// Nothing secret in it: copy its bytes as they are.
    Clean,
    /// These bytes instead, with the dotted paths of the keys redacted.
    Redacted(Vec<u8>, Vec<String>),
    /// It should have been TOML or JSON and is not, so its secrets cannot be found by key:
    /// it is left out, for this reason.
    Withheld(String),
}

/// Which kind of file a name says, for redaction.
fn kind(name: &str) -> Option<&'static str> {
    if name.ends_with(".json") {
        Some("json")
    } else if name.ends_with(".toml") || name.contains(".toml.") {
        // `config.toml.kata-gpu.bak` and other copies of a TOML file.
        Some("toml")
    } else {
        None
    }
}

/// The redaction of a file named `name` holding `bytes`. Files neither TOML nor JSON are
/// copied as they are (kata-gpu's own records, systemd units, CDI specs in YAML).
pub fn redact(name: &str, bytes: &[u8]) -> Redaction {
    let Some(kind) = kind(name) else {
        return Redaction::Clean;
    };
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Redaction::Withheld(format!("not UTF-8 {kind}"));
    };
    let done = if kind == "toml" {
        redact_toml(text).map_err(|e| e.message().to_owned())
    } else {
        redact_json(text).map_err(|e| e.to_string())
    };
    match done {
        Ok((_, keys)) if keys.is_empty() => Redaction::Clean,
        Ok((text, keys)) => Redaction::Redacted(text.into_bytes(), keys),
        Err(e) => Redaction::Withheld(format!("not valid {kind} ({e})")),
    }
}

/// A TOML key as it is written in a dotted path: bare when it can be, else quoted.
fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn redact_table(table: &mut dyn toml_edit::TableLike, path: &str, keys: &mut Vec<String>) {
    let names: Vec<String> = table.iter().map(|(k, _)| k.to_owned()).collect();
    for name in names {
        let here = join(path, &toml_key(&name));
        let Some(item) = table.get_mut(&name) else {
            continue;
        };
        redact_item(item, &name, &here, keys);
    }
}

fn redact_item(item: &mut toml_edit::Item, name: &str, here: &str, keys: &mut Vec<String>) {
    use toml_edit::{Item, Value};
    match item {
        Item::Table(t) => redact_table(t, here, keys),
        Item::ArrayOfTables(a) => {
            for (i, t) in a.iter_mut().enumerate() {
                redact_table(t, &format!("{here}[{i}]"), keys);
            }
        }
        Item::Value(Value::InlineTable(t)) => redact_table(t, here, keys),
        Item::Value(v) if is_secret(name) => {
            let decor = v.decor().clone();
            let mut new = Value::from(REDACTED);
            *new.decor_mut() = decor;
            *v = new;
            keys.push(here.to_owned());
        }
        Item::Value(_) | Item::None => {}
    }
}

/// A commented-out assignment to a secret key (`# password = "…"`): the key, and the line
/// with its value redacted.
fn commented_secret(line: &str) -> Option<(String, String)> {
    let (lead, body) = line.split_once('#')?;
    if !lead.trim().is_empty() {
        return None;
    }
    let (key, _) = body.split_once('=')?;
    let last = key.trim().rsplit('.').next()?.trim().trim_matches('"');
    if !is_secret(last) {
        return None;
    }
    Some((last.to_owned(), format!("{lead}#{key}= \"{REDACTED}\"")))
}

/// `text` (TOML) with every secret key's value redacted, and their dotted paths.
pub fn redact_toml(text: &str) -> Result<(String, Vec<String>), toml_edit::TomlError> {
    let mut doc: toml_edit::DocumentMut = text.parse()?;
    let mut keys = Vec::new();
    redact_table(doc.as_table_mut(), "", &mut keys);
    let mut out = String::with_capacity(text.len());
    for line in doc.to_string().split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        match commented_secret(body) {
            Some((key, redacted)) => {
                keys.push(format!("# {key} (a comment)"));
                out.push_str(&redacted);
                out.push_str(end);
            }
            None => out.push_str(line),
        }
    }
    Ok((out, keys))
}

fn redact_json_value(v: &mut serde_json::Value, path: &str, keys: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, value) in map.iter_mut() {
                let here = join(path, k);
                if is_secret(k) && !value.is_object() {
                    *value = serde_json::Value::from(REDACTED);
                    keys.push(here);
                } else {
                    redact_json_value(value, &here, keys);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                redact_json_value(item, &format!("{path}[{i}]"), keys);
            }
        }
        _ => {}
    }
}

/// `text` (JSON) with every secret key's value redacted, and their dotted paths.
pub fn redact_json(text: &str) -> Result<(String, Vec<String>), serde_json::Error> {
    let mut v: serde_json::Value = serde_json::from_str(text)?;
    let mut keys = Vec::new();
    redact_json_value(&mut v, "", &mut keys);
    Ok((serde_json::to_string_pretty(&v)? + "\n", keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_keys_match_whatever_their_case_and_separators() {
        for k in [
            "password",
            "Password",
            "identity_token",
            "IdentityToken",
            "auth",
            "Authorization",
            "registry-token",
        ] {
            assert!(is_secret(k), "{k}");
        }
        for k in ["username", "authority", "config_path", "tls"] {
            assert!(!is_secret(k), "{k}");
        }
    }

    #[test]
    fn a_toml_array_of_tables_and_an_array_value_are_redacted() {
        let (text, keys) =
            redact_toml("[[hosts]]\nname = \"a\"\ntoken = [\"t1\", \"t2\"]\n").expect("toml");
        assert_eq!(keys, ["hosts[0].token"]);
        assert!(
            !text.contains("t1") && text.contains("name = \"a\""),
            "{text}"
        );
    }

    #[test]
    fn a_file_that_should_be_toml_and_is_not_is_withheld() {
        assert!(matches!(
            redact("config.toml", b"password = \n"),
            Redaction::Withheld(_)
        ));
        assert!(matches!(
            redact("unit.service", b"password=x"),
            Redaction::Clean
        ));
    }
}
