//! Errors of the `configs` crate. Each names the file, the key (as a dotted path such as
//! `hypervisor.qemu.hot_plug_vfio`) and, where known, the line and column, so that one line
//! tells a user what to open and what to fix.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A position in a file, both counted from 1; the column counts characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The line, from 1.
    pub line: usize,
    /// The column, from 1, in characters.
    pub column: usize,
}

impl Location {
    /// The line and column of byte `offset` in `text` (clamped to its end and to a
    /// character boundary).
    pub fn of_offset(text: &str, offset: usize) -> Location {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            line: before.bytes().filter(|&b| b == b'\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One thing wrong with a Kata configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The key concerned, dotted from the root (`hypervisor.qemu.firmware`), or the section
    /// (`hypervisor.qemu`) when the section itself is missing or wrong.
    pub key: String,
    /// What is wrong, and where it matters what to do.
    pub message: String,
    /// Where the key is in the file, when it is there and the text is known.
    pub location: Option<Location>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(location) = self.location {
            write!(f, "{location}: ")?;
        }
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a Kata configuration could not be rendered, validated or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The text is not TOML.
    #[error("{}:{}:{}: not valid TOML: {}", .origin.display(), .location.line, .location.column, .message)]
    Parse {
        /// The file the text came from.
        origin: PathBuf,
        /// Where the parser stopped.
        location: Location,
        /// The parser's message.
        message: String,
    },
    /// The text is TOML but not a configuration we can hand Kata.
    #[error("{}", display_invalid(.origin, .problems))]
    Invalid {
        /// The file the configuration came from.
        origin: PathBuf,
        /// Every problem found, in file order where known; never empty.
        problems: Vec<Problem>,
    },
    /// A profile name that is not `snp`, `tdx` or `gpu`.
    #[error("unknown profile {name:?}: known profiles are snp, tdx and gpu")]
    UnknownProfile {
        /// The name asked for.
        name: String,
    },
    /// Writing the rendered file failed; the previous file, if any, is intact.
    #[error("writing {}: {source}", .path.display())]
    Write {
        /// The file that was to be written.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

impl ConfigError {
    /// The problems of an [`ConfigError::Invalid`] error; empty for the other kinds.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }

    /// The location of a parse error, or of the first located problem.
    pub fn location(&self) -> Option<Location> {
        match self {
            ConfigError::Parse { location, .. } => Some(*location),
            ConfigError::Invalid { problems, .. } => problems.iter().find_map(|p| p.location),
            _ => None,
        }
    }
}

fn display_invalid(origin: &std::path::Path, problems: &[Problem]) -> String {
    let origin = origin.display();
    if problems.is_empty() {
        return format!("{origin}: invalid Kata configuration");
    }
    problems
        .iter()
        .map(|p| match p.location {
            Some(_) => format!("{origin}:{p}"),
            None => format!("{origin}: {p}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_to_line_and_column() {
        let text = "a = 1\n[b]\nc = \"é\" x\n";
        let table = [
            (0, 1, 1),
            (4, 1, 5),
            (6, 2, 1),
            (10, 3, 1),
            // the `x` after a two-byte character is in column 9
            (19, 3, 9),
            (999, 4, 1),
        ];
        for (offset, line, column) in table {
            assert_eq!(
                Location::of_offset(text, offset),
                Location { line, column },
                "offset {offset}"
            );
        }
        // inside a multi-byte character: clamped back to its start
        assert_eq!(Location::of_offset(text, 16).column, 6);
    }

    #[test]
    fn invalid_names_file_line_and_key() {
        let e = ConfigError::Invalid {
            origin: PathBuf::from("/etc/kata/c.toml"),
            problems: vec![
                Problem {
                    key: "hypervisor.qemu.firmware".into(),
                    message: "is required".into(),
                    location: Some(Location { line: 3, column: 1 }),
                },
                Problem {
                    key: "hypervisor.qemu".into(),
                    message: "missing".into(),
                    location: None,
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "/etc/kata/c.toml:3:1: hypervisor.qemu.firmware: is required; \
             /etc/kata/c.toml: hypervisor.qemu: missing"
        );
        assert_eq!(e.location(), Some(Location { line: 3, column: 1 }));
    }
}
