//! Paths inside a set, and the rules that keep every entry of a source inside it.
//! Pure: these functions look at names, never at the file system.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A path inside a set: relative, '/'-separated, normalised (no `.`, no empty component)
/// and never climbing out with `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RelPath(String);

/// Why a name cannot be a path inside a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsafe {
    /// The name starts with `/`.
    Absolute,
    /// A `..` component climbs above the set's root.
    ClimbsOut,
    /// The name is empty or only `.` components.
    Empty,
    /// The name holds a NUL byte.
    Nul,
    /// A link's target is absolute.
    LinkAbsolute,
    /// A link's target climbs above the set's root.
    LinkClimbsOut,
}

impl fmt::Display for Unsafe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unsafe::Absolute => "is an absolute path",
            Unsafe::ClimbsOut => "climbs out of the set with `..`",
            Unsafe::Empty => "has no name",
            Unsafe::Nul => "holds a NUL byte",
            Unsafe::LinkAbsolute => "is a link to an absolute path, outside the set",
            Unsafe::LinkClimbsOut => "is a link that climbs out of the set with `..`",
        })
    }
}

impl RelPath {
    /// Parses an entry name as a source gives it (`./a/b`, `a//b` are fine; `/a`, `../a`
    /// and `a/../../b` are not). A `..` that stays inside (`a/../b`) is resolved.
    pub fn parse(raw: &str) -> Result<RelPath, Unsafe> {
        if raw.contains('\0') {
            return Err(Unsafe::Nul);
        }
        if raw.starts_with('/') {
            return Err(Unsafe::Absolute);
        }
        let parts = resolve(Vec::new(), raw).ok_or(Unsafe::ClimbsOut)?;
        if parts.is_empty() {
            return Err(Unsafe::Empty);
        }
        Ok(RelPath(parts.join("/")))
    }

    /// Where a symbolic link at `self` pointing at `target` leads, resolved by name
    /// relative to the link's directory; it must stay inside the set.
    pub fn symlink_target(&self, target: &str) -> Result<RelPath, Unsafe> {
        if target.contains('\0') {
            return Err(Unsafe::Nul);
        }
        if target.starts_with('/') {
            return Err(Unsafe::LinkAbsolute);
        }
        let mut dir: Vec<&str> = self.0.split('/').collect();
        dir.pop();
        let parts = resolve(dir, target).ok_or(Unsafe::LinkClimbsOut)?;
        if parts.is_empty() {
            return Err(Unsafe::Empty);
        }
        Ok(RelPath(parts.join("/")))
    }

    /// The path as a string, '/'-separated.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The path as a relative [`PathBuf`].
    pub fn to_path(&self) -> PathBuf {
        PathBuf::from(&self.0)
    }

    /// The directories above this path, outermost first (`a/b/c` → `a`, `a/b`).
    pub fn ancestors(&self) -> Vec<RelPath> {
        let mut out = Vec::new();
        for (i, c) in self.0.char_indices() {
            if c == '/' {
                out.push(RelPath(self.0[..i].to_owned()));
            }
        }
        out
    }
}

/// Applies the components of `raw` to `start`; `None` when a `..` climbs above the root.
fn resolve<'a>(mut parts: Vec<&'a str>, raw: &'a str) -> Option<Vec<&'a str>> {
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts)
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for RelPath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        RelPath::parse(&s).map_err(|e| format!("path {s:?} {e}"))
    }
}

impl From<RelPath> for String {
    fn from(p: RelPath) -> String {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        RelPath::parse(raw)
            .map(|p| p.0)
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(ok("./vmlinuz-6.1"), "vmlinuz-6.1");
        assert_eq!(ok("a//b/./c"), "a/b/c");
        assert_eq!(ok("a/../b"), "b");
        assert_eq!(ok("a/"), "a");
    }

    #[test]
    fn escapes_are_refused() {
        assert_eq!(RelPath::parse("/etc/passwd"), Err(Unsafe::Absolute));
        assert_eq!(RelPath::parse("../x"), Err(Unsafe::ClimbsOut));
        assert_eq!(RelPath::parse("a/../../x"), Err(Unsafe::ClimbsOut));
        assert_eq!(RelPath::parse("./"), Err(Unsafe::Empty));
        assert_eq!(RelPath::parse("a\0b"), Err(Unsafe::Nul));
    }

    #[test]
    fn link_targets_resolve_from_the_link_directory() {
        let link = RelPath::parse("share/vmlinuz.container").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            link.symlink_target("vmlinuz-6.1").map(|p| p.0),
            Ok("share/vmlinuz-6.1".into())
        );
        assert_eq!(
            link.symlink_target("../vmlinuz-6.1").map(|p| p.0),
            Ok("vmlinuz-6.1".into())
        );
        assert_eq!(
            link.symlink_target("../../etc/passwd"),
            Err(Unsafe::LinkClimbsOut)
        );
        assert_eq!(
            link.symlink_target("/etc/passwd"),
            Err(Unsafe::LinkAbsolute)
        );
    }

    #[test]
    fn ancestors_and_file_name() {
        let p = RelPath::parse("a/b/c").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.file_name(), "c");
        let a: Vec<String> = p.ancestors().into_iter().map(|p| p.0).collect();
        assert_eq!(a, vec!["a", "a/b"]);
    }
}
