//! The text around the TOML: a Go-template header (k3s/rke2 `{{ template "base" . }}`),
//! CRLF line endings and a missing final newline. The TOML in between is what toml_edit
//! sees; everything here is put back exactly on output.

use toml_edit::DocumentMut;

use crate::error::Error;

/// A config file's text, taken apart for editing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Source {
    /// Leading Go-template lines, with their line endings.
    pub header: String,
    /// How many lines the header has.
    pub header_lines: usize,
    /// The TOML after the header, with `\n` line endings.
    pub body: String,
    /// Whether every line of the original ended with `\r\n`.
    pub crlf: bool,
}

/// Whether a line is a Go-template action and nothing else, such as `{{ template "base" . }}`.
pub fn is_template_line(line: &str) -> bool {
    let t = line.trim();
    t.starts_with("{{") && t.ends_with("}}")
}

impl Source {
    /// Splits `text` into its template header and its TOML body.
    pub fn split(text: &str) -> Source {
        let mut header_end = 0;
        let mut header_lines = 0;
        for line in text.split_inclusive('\n') {
            if !is_template_line(line) {
                break;
            }
            header_end += line.len();
            header_lines += 1;
        }
        let (header, rest) = text.split_at(header_end);
        let newlines = text.matches('\n').count();
        let crlf = newlines > 0 && text.matches("\r\n").count() == newlines;
        let body = if crlf {
            rest.replace("\r\n", "\n")
        } else {
            rest.to_owned()
        };
        Source {
            header: header.to_owned(),
            header_lines,
            body,
            crlf,
        }
    }

    /// Whether the file is a Go template (k3s/rke2).
    pub fn is_template(&self) -> bool {
        self.header_lines > 0
    }

    /// Parses the body, naming `file` and the line and column (of the whole file) on error.
    pub fn parse(&self, file: &str) -> Result<DocumentMut, Error> {
        self.body.parse::<DocumentMut>().map_err(|e| {
            let (line, column) = self.position(e.span().map_or(0, |s| s.start));
            Error::InvalidToml {
                file: file.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })
    }

    /// The 1-based line (of the whole file, header counted) and column (in characters) of
    /// a byte offset into the body.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.body.len());
        let before = &self.body[..floor_char_boundary(&self.body, offset)];
        let line = self.header_lines + before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    /// Puts a rendered body back together with the header and the line endings.
    pub fn join(&self, body: &str) -> String {
        let body = if self.crlf {
            body.replace('\n', "\r\n")
        } else {
            body.to_owned()
        };
        format!("{}{}", self.header, body)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Renders a document whose source had no final newline: toml_edit always ends the last
/// line, so the newline is dropped again when the source lacked it and the last line is
/// still the source's own.
pub(crate) fn render(doc: &DocumentMut, strip_final_newline: bool) -> String {
    let mut out = doc.to_string();
    if strip_final_newline && out.ends_with('\n') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_line_endings_are_taken_apart_and_put_back() {
        let table = [
            ("version = 2\n", "", "version = 2\n", false),
            (
                "{{ template \"base\" . }}\n[a]\nb = 1\n",
                "{{ template \"base\" . }}\n",
                "[a]\nb = 1\n",
                false,
            ),
            ("a = 1\r\nb = 2\r\n", "", "a = 1\nb = 2\n", true),
            ("a = 1\r\nb = 2\n", "", "a = 1\r\nb = 2\n", false),
            ("", "", "", false),
            (
                "  {{- template \"base\" . -}}  \r\n",
                "  {{- template \"base\" . -}}  \r\n",
                "",
                true,
            ),
        ];
        for (text, header, body, crlf) in table {
            let s = Source::split(text);
            assert_eq!(
                (s.header.as_str(), s.body.as_str(), s.crlf),
                (header, body, crlf),
                "{text:?}"
            );
            assert_eq!(s.join(&s.body), text);
        }
    }

    #[test]
    fn errors_name_the_line_of_the_whole_file() {
        let text = "{{ template \"base\" . }}\n[a]\nb = = 1\n";
        let err = Source::split(text).parse("k3s.tmpl").expect_err("invalid");
        let msg = err.to_string();
        assert!(msg.starts_with("k3s.tmpl:3:"), "{msg}");
        assert!(msg.contains("the file was not touched"), "{msg}");
        let err = Source::split("a = \"é\" x\n")
            .parse("f")
            .expect_err("invalid");
        assert!(err.to_string().starts_with("f:1:9:"), "{err}");
    }
}
