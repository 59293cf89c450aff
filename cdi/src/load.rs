//! Reading a spec: bytes → JSON or YAML → model → validated spec.

use std::fs;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Format};
use crate::model::Spec;
use crate::validate::validate_spec;

/// Largest spec file we read; a host spec for a full HGX board is a few KiB.
pub const MAX_SPEC_SIZE: u64 = 16 * 1024 * 1024;

impl Format {
    /// The format a file's extension names; `None` for anything but `.json` and `.yaml`.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "json" => Some(Format::Json),
            "yaml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// Removes the parser's " at line L column C" from its message; the error has its own.
fn strip_position(text: &str) -> String {
    let Some(start) = text.find(" at line ") else {
        return text.to_owned();
    };
    let rest = &text[start + " at line ".len()..];
    let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let line_len = digits(rest);
    let Some(after_col) = rest[line_len..].strip_prefix(" column ") else {
        return text.to_owned();
    };
    let col_len = digits(after_col);
    if line_len == 0 || col_len == 0 {
        return text.to_owned();
    }
    format!("{}{}", &text[..start], &after_col[col_len..])
}

/// Deepest nesting of YAML flow collections (`[`/`{`) accepted. libyaml's scanner takes
/// time superquadratic in this depth (200 KB of `{a: ` takes seconds), and no spec needs
/// more than a few levels.
pub const MAX_YAML_FLOW_DEPTH: usize = 64;

/// The 1-based line at which YAML flow collections nest deeper than the limit, if they do.
/// Quotes and comments are skipped; anything else is left to the parser.
fn flow_too_deep(bytes: &[u8]) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 1usize);
    let mut quote: Option<u8> = None;
    let mut comment = false;
    let mut previous = b'\n';
    for &b in bytes {
        if b == b'\n' {
            line += 1;
            comment = false;
        } else if comment {
        } else if let Some(q) = quote {
            if b == q {
                quote = None;
            }
        } else {
            match b {
                b'"' | b'\'' => quote = Some(b),
                b'#' if previous.is_ascii_whitespace() => comment = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_YAML_FLOW_DEPTH {
                        return Some(line);
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        previous = b;
    }
    None
}

/// A parser's message without the text it quotes from the file (serde's `string "…"`,
/// which names a scalar it did not expect): a file that is not a spec (a link to a key,
/// say) must not reach doctor's output or a bug report through its error.
fn elide_strings(message: &str) -> String {
    const AT: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find(AT) {
        out.push_str(&rest[..i]);
        out.push_str("a string");
        let mut escaped = false;
        let body = &rest[i + AT.len()..];
        let end = body
            .char_indices()
            .find(|&(_, c)| {
                let close = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                close
            })
            .map_or(body.len(), |(j, _)| j + 1);
        rest = &body[end..];
    }
    out.push_str(rest);
    out
}

/// Parses bytes into the spec model without checking the rules; `origin` labels errors.
pub fn parse_spec(bytes: &[u8], format: Format, origin: &Path) -> Result<Spec, Error> {
    let syntax = |line, column, message: String| Error::Syntax {
        path: origin.to_path_buf(),
        format,
        line,
        column,
        message: elide_strings(&strip_position(&message)),
    };
    match format {
        Format::Json => serde_json::from_slice(bytes).map_err(|e| {
            let line = (e.line() > 0).then_some(e.line());
            // serde_json counts a column of 0 before a line's first character.
            let column = (e.line() > 0).then_some(e.column().max(1));
            syntax(line, column, e.to_string())
        }),
        Format::Yaml if flow_too_deep(bytes).is_some() => Err(syntax(
            flow_too_deep(bytes),
            None,
            format!("flow collections ([ or {{) nested deeper than {MAX_YAML_FLOW_DEPTH}"),
        )),
        Format::Yaml => serde_yaml_ng::from_slice(bytes).map_err(|e| {
            let pos = e.location();
            syntax(
                pos.as_ref().map(|l| l.line()),
                pos.as_ref().map(|l| l.column()),
                e.to_string(),
            )
        }),
    }
}

/// Parses and validates a spec held in memory.
pub fn load_spec(bytes: &[u8], format: Format, origin: &Path) -> Result<Spec, Error> {
    let spec = parse_spec(bytes, format, origin)?;
    validate_spec(&spec, Some(origin))?;
    Ok(spec)
}

/// Reads, parses and validates one spec file; the extension decides the format.
pub fn read_spec_file(path: &Path) -> Result<Spec, Error> {
    let format = Format::from_path(path).ok_or_else(|| Error::Extension(path.to_path_buf()))?;
    let read_err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(read_err)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX_SPEC_SIZE {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            size: len,
            max: MAX_SPEC_SIZE,
        });
    }
    // Sized from the metadata so that one read fills it; `take` still bounds a file that
    // grows (or a device that lies about its size).
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0).saturating_add(1));
    file.take(MAX_SPEC_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_SPEC_SIZE {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            max: MAX_SPEC_SIZE,
        });
    }
    load_spec(&bytes, format, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD_YAML: &str = "cdiVersion: 0.5.0\nkind: nvidia.com/pgpu\ndevices:\n- name: \"0\"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/vfio/devices/vfio0\n";

    #[test]
    fn yaml_and_json_load() {
        let spec = load_spec(GOOD_YAML.as_bytes(), Format::Yaml, Path::new("a.yaml")).expect("ok");
        assert_eq!(spec.devices[0].name, "0");
        let json = serde_json::to_vec(&spec).expect("serializes");
        let again = load_spec(&json, Format::Json, Path::new("a.json")).expect("ok");
        assert_eq!(spec, again);
    }

    #[test]
    fn syntax_errors_carry_file_line_and_column() {
        let cases: &[(&str, Format, &str)] = &[
            ("{\"cdiVersion\": \"0.5.0\",", Format::Json, "x.json:1:"),
            (
                "{\"cdiVersion\":\"0.5.0\",\"kind\":\"a/b\",\"devices\":[],\"extra\":1}",
                Format::Json,
                "unknown field `extra`",
            ),
            (
                "cdiVersion: 0.5.0\nkind: a/b\ndevices:\n- name: x\n  containerEdits:\n    deviceNodes:\n    - path: /dev/x\n      major: \"one\"\n",
                Format::Yaml,
                "x.yaml:8:",
            ),
            ("cdiVersion: [\n", Format::Yaml, "invalid YAML"),

            ("", Format::Yaml, "invalid YAML"),
            ("kind: a/b\ndevices: []\n", Format::Yaml, "missing field `cdiVersion`"),
        ];
        for (text, format, want) in cases {
            let origin = match format {
                Format::Json => "x.json",
                Format::Yaml => "x.yaml",
            };
            let err = load_spec(text.as_bytes(), *format, Path::new(origin)).expect_err(text);
            let shown = err.to_string();
            assert!(shown.contains(want), "want {want:?} in {shown:?}");
            assert!(!shown.contains(" at line "), "position twice: {shown}");
        }
    }

    #[test]
    fn a_parsers_message_never_quotes_the_files_text() {
        assert_eq!(
            elide_strings(
                r#"invalid type: string "the host's \"private\" key", expected struct Spec"#
            ),
            "invalid type: a string, expected struct Spec"
        );
        let e = parse_spec(
            b"the host's private key\n",
            Format::Yaml,
            Path::new("k.yaml"),
        )
        .expect_err("not a spec");
        assert!(!e.to_string().contains("private"), "{e}");
    }

    #[test]
    fn parser_positions_are_cut_wherever_they_stand() {
        let cases = [
            (
                "EOF while parsing a list at line 10 column 0",
                "EOF while parsing a list",
            ),
            (
                "did not find expected '-' indicator at line 9 column 9, while parsing a block",
                "did not find expected '-' indicator, while parsing a block",
            ),
            ("no position here", "no position here"),
            ("at line x column 1", "at line x column 1"),
            ("odd at line 3 col 1", "odd at line 3 col 1"),
        ];
        for (input, want) in cases {
            assert_eq!(strip_position(input), want, "{input}");
        }
    }

    #[test]
    fn deeply_nested_yaml_is_refused_before_the_parser_sees_it() {
        let deep = format!("{}{}", "{a: ".repeat(40_000), "}".repeat(40_000));
        let started = std::time::Instant::now();
        let err =
            load_spec(deep.as_bytes(), Format::Yaml, Path::new("deep.yaml")).expect_err("too deep");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(
            err.to_string()
                .starts_with("deep.yaml:1: invalid YAML: flow collections"),
            "{err}"
        );
        // Brackets in quotes and comments do not count; ordinary flow lists still load.
        let quoted = format!(
            "cdiVersion: \"{}\" # {}\n",
            "[".repeat(100),
            "{".repeat(100)
        );
        assert!(flow_too_deep(quoted.as_bytes()).is_none());
        let at_limit = format!(
            "{}{}",
            "[".repeat(MAX_YAML_FLOW_DEPTH),
            "]".repeat(MAX_YAML_FLOW_DEPTH)
        );
        assert!(flow_too_deep(at_limit.as_bytes()).is_none());
        assert!(
            flow_too_deep(format!("x: {}", "[".repeat(MAX_YAML_FLOW_DEPTH + 1)).as_bytes())
                == Some(1)
        );
    }

    #[test]
    fn files_over_the_limit_are_refused_unread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("huge.yaml");
        let file = fs::File::create(&path).expect("create");
        file.set_len(MAX_SPEC_SIZE + 1).expect("sparse file");
        let err = read_spec_file(&path).expect_err("too large");
        assert!(
            matches!(err, Error::TooLarge { size, .. } if size == MAX_SPEC_SIZE + 1),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("more than the 16777216 a spec file may have"),
            "{err}"
        );
    }

    #[test]
    fn only_json_and_yaml_files_are_specs() {
        assert_eq!(Format::from_path(Path::new("a.json")), Some(Format::Json));
        assert_eq!(Format::from_path(Path::new("a.yaml")), Some(Format::Yaml));
        for other in ["a.yml", "a.toml", "a", "a.json.bak", ".yaml"] {
            assert_eq!(Format::from_path(Path::new(other)), None, "{other}");
        }
        let err = read_spec_file(Path::new("/nonexistent/a.yml")).expect_err("extension");
        assert!(matches!(err, Error::Extension(_)));
    }
}
