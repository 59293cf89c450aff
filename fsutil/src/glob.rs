//! Shell patterns as Go's `filepath.Match` reads them, the contract for the globs Kata and
//! containerd take from their configuration (Kata's `valid_hypervisor_paths`, containerd's
//! `imports`, whose `filepath.Glob` matches each name this way), matched against a path as
//! a string: Kata and containerd expand them on the host, we do not look.
//!
//! `*` is any run of characters other than `/`, `?` one such character, `[...]` a class
//! (`^` negates; a class may match `/`), and `\` escapes. A malformed pattern is an error
//! whatever the path, as Go's `ErrBadPattern`: a class that is empty or not closed, a `-`
//! or `]` where a class needs a character (write `\-`, `\]`), a trailing lone `\`.

use std::iter::Peekable;
use std::str::Chars;

/// A pattern Go's `filepath.Match` refuses (`ErrBadPattern`): whoever reads it matches
/// nothing with it, so it is a mistake to report, not a pattern to skip.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("glob {pattern:?} is malformed: {reason}")]
pub struct BadPattern {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A parsed pattern: checked once, matched against many paths.
#[derive(Clone, Debug)]
pub struct Glob {
    chunks: Vec<Chunk>,
}

/// Single-character items after one or more `*` (or none, for the pattern's start).
#[derive(Clone, Debug)]
struct Chunk {
    star: bool,
    items: Vec<Item>,
}

#[derive(Clone, Debug)]
enum Item {
    /// `?`: one character other than `/`.
    Any,
    /// A character, written as itself or escaped.
    Char(char),
    /// `[...]`: inclusive ranges, maybe negated.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Glob {
    /// Parses `pattern`; [`BadPattern`] names it and what is wrong.
    pub fn new(pattern: &str) -> Result<Glob, BadPattern> {
        parse(pattern).map_err(|reason| BadPattern {
            pattern: pattern.to_owned(),
            reason,
        })
    }

    /// Whether all of `path` matches, as `filepath.Match` answers: each `*` takes the
    /// leftmost place where the characters after it match.
    pub fn matches(&self, path: &str) -> bool {
        let text: Vec<char> = path.chars().collect();
        let mut name = &text[..];
        for (i, chunk) in self.chunks.iter().enumerate() {
            let last = i + 1 == self.chunks.len();
            if chunk.star && chunk.items.is_empty() {
                // A trailing `*`: the rest, unless it crosses a `/`.
                return !name.contains(&'/');
            }
            match match_chunk(&chunk.items, name) {
                Some(rest) if rest.is_empty() || !last => name = rest,
                _ if chunk.star => {
                    let skip = name.iter().position(|&c| c == '/').unwrap_or(name.len());
                    let found = (1..=skip).find_map(|from| {
                        match_chunk(&chunk.items, &name[from..])
                            .filter(|rest| !last || rest.is_empty())
                    });
                    match found {
                        Some(rest) => name = rest,
                        None => return false,
                    }
                }
                _ => return false,
            }
        }
        name.is_empty()
    }
}

/// Go's `filepath.Match(pattern, path)`: whether all of `path` matches `pattern`, or
/// [`BadPattern`] when the pattern is malformed (whatever the path).
pub fn glob_match(pattern: &str, path: &str) -> Result<bool, BadPattern> {
    Ok(Glob::new(pattern)?.matches(path))
}

/// `path`'s rest after `items` matched at its start, or `None`.
fn match_chunk<'a>(items: &[Item], path: &'a [char]) -> Option<&'a [char]> {
    let mut path = path;
    for item in items {
        let (&c, rest) = path.split_first()?;
        let ok = match item {
            Item::Any => c != '/',
            Item::Char(x) => *x == c,
            Item::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        };
        if !ok {
            return None;
        }
        path = rest;
    }
    Some(path)
}

fn parse(pattern: &str) -> Result<Glob, &'static str> {
    let mut chars = pattern.chars().peekable();
    let mut chunks = Vec::new();
    let mut current = Chunk {
        star: false,
        items: Vec::new(),
    };
    while let Some(c) = chars.next() {
        let item = match c {
            '*' => {
                if !current.items.is_empty() {
                    chunks.push(current);
                    current = Chunk {
                        star: true,
                        items: Vec::new(),
                    };
                }
                current.star = true;
                continue;
            }
            '?' => Item::Any,
            '\\' => Item::Char(chars.next().ok_or("it ends in a lone `\\`")?),
            '[' => class(&mut chars)?,
            c => Item::Char(c),
        };
        current.items.push(item);
    }
    if current.star || !current.items.is_empty() {
        chunks.push(current);
    }
    Ok(Glob { chunks })
}

/// A class, after its `[`: at least one character or range, then `]`.
fn class(chars: &mut Peekable<Chars<'_>>) -> Result<Item, &'static str> {
    let negated = chars.next_if_eq(&'^').is_some();
    let mut ranges = Vec::new();
    loop {
        if !ranges.is_empty() && chars.next_if_eq(&']').is_some() {
            return Ok(Item::Class { negated, ranges });
        }
        let lo = class_char(chars)?;
        let hi = match chars.next_if_eq(&'-') {
            Some(_) => class_char(chars)?,
            None => lo,
        };
        ranges.push((lo, hi));
    }
}

/// One character of a class, maybe escaped; more of the class must follow it.
fn class_char(chars: &mut Peekable<Chars<'_>>) -> Result<char, &'static str> {
    const UNCLOSED: &str = "a `[` class is not closed with `]`";
    let c = match chars.next() {
        None => return Err(UNCLOSED),
        Some('-') => return Err("a `-` in a class is not between two characters (write `\\-`)"),
        Some(']') => {
            return Err("a class is empty or has a `]` where a character goes (write `\\]`)")
        }
        Some('\\') => chars.next().ok_or(UNCLOSED)?,
        Some(c) => c,
    };
    if chars.peek().is_none() {
        return Err(UNCLOSED);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's own table: `matchTests` in `src/path/filepath/match_test.go` (pattern, name,
    /// match, whether `Match` returns `ErrBadPattern`), transcribed as data.
    #[test]
    fn go_match_tests() {
        let table: &[(&str, &str, bool, bool)] = &[
            ("abc", "abc", true, false),
            ("*", "abc", true, false),
            ("*c", "abc", true, false),
            ("a*", "a", true, false),
            ("a*", "abc", true, false),
            ("a*", "ab/c", false, false),
            ("a*/b", "abc/b", true, false),
            ("a*/b", "a/c/b", false, false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true, false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true, false),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false, false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false, false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true, false),
            ("a*b?c*x", "abxbbxdbxebxczzy", false, false),
            ("ab[c]", "abc", true, false),
            ("ab[b-d]", "abc", true, false),
            ("ab[e-g]", "abc", false, false),
            ("ab[^c]", "abc", false, false),
            ("ab[^b-d]", "abc", false, false),
            ("ab[^e-g]", "abc", true, false),
            ("a\\*b", "a*b", true, false),
            ("a\\*b", "ab", false, false),
            ("a?b", "a☺b", true, false),
            ("a[^a]b", "a☺b", true, false),
            ("a???b", "a☺b", false, false),
            ("a[^a][^a][^a]b", "a☺b", false, false),
            ("[a-ζ]*", "α", true, false),
            ("*[a-ζ]", "A", false, false),
            ("a?b", "a/b", false, false),
            ("a*b", "a/b", false, false),
            ("[\\]a]", "]", true, false),
            ("[\\-]", "-", true, false),
            ("[x\\-]", "x", true, false),
            ("[x\\-]", "-", true, false),
            ("[x\\-]", "z", false, false),
            ("[\\-x]", "x", true, false),
            ("[\\-x]", "-", true, false),
            ("[\\-x]", "a", false, false),
            ("[]a]", "]", false, true),
            ("[-]", "-", false, true),
            ("[x-]", "x", false, true),
            ("[x-]", "-", false, true),
            ("[x-]", "z", false, true),
            ("[-x]", "x", false, true),
            ("[-x]", "-", false, true),
            ("[-x]", "a", false, true),
            ("\\", "a", false, true),
            ("[a-b-c]", "a", false, true),
            ("[", "a", false, true),
            ("[^", "a", false, true),
            ("[^bc", "a", false, true),
            ("a[", "a", false, true),
            ("a[", "ab", false, true),
            ("a[", "x", false, true),
            ("a/b[", "x", false, true),
            ("*x", "xxx", true, false),
        ];
        for &(pattern, name, matched, bad) in table {
            match glob_match(pattern, name) {
                Ok(m) => {
                    assert!(
                        !bad,
                        "{pattern:?} vs {name:?}: want ErrBadPattern, got Ok({m})"
                    );
                    assert_eq!(m, matched, "{pattern:?} vs {name:?}");
                }
                Err(e) => {
                    assert!(bad, "{pattern:?} vs {name:?}: {e}");
                    assert_eq!(e.pattern, pattern);
                }
            }
        }
    }

    /// Hypervisor paths, and what Go's `Match` does beyond its table.
    #[test]
    fn glob_table() {
        let table: &[(&str, &str, bool)] = &[
            ("/opt/kata/bin/qemu", "/opt/kata/bin/qemu", true),
            ("/opt/kata/bin/qemu", "/opt/kata/bin/qemu2", false),
            ("/opt/kata/bin/*", "/opt/kata/bin/qemu", true),
            ("/opt/kata/bin/*", "/opt/kata/bin/x/qemu", false),
            ("/opt/*/bin/qemu-*", "/opt/kata/bin/qemu-snp", true),
            ("/opt/kata/bin/qemu-?", "/opt/kata/bin/qemu-x", true),
            ("/opt/kata/bin/qemu-?", "/opt/kata/bin/qemu-xy", false),
            ("/usr/bin/qemu-[a-z]*", "/usr/bin/qemu-system", true),
            ("/usr/bin/qemu-[^a-z]*", "/usr/bin/qemu-system", false),
            ("/usr/bin/\\*", "/usr/bin/*", true),
            ("/usr/bin/\\*", "/usr/bin/x", false),
            ("", "", true),
            ("", "/x", false),
            ("**", "abc", true),
            ("a**c", "abbc", true),
            // A class is not kept from `/` (only `*` and `?` are), as in Go's matchChunk.
            ("/opt[/]kata", "/opt/kata", true),
            ("/opt[^a]kata", "/opt/kata", true),
            ("[*]", "*", true),
            ("[z-a]", "m", false),
        ];
        for (pattern, path, expected) in table {
            assert_eq!(
                glob_match(pattern, path),
                Ok(*expected),
                "{pattern:?} vs {path:?}"
            );
        }
    }

    #[test]
    fn a_bad_pattern_says_what_is_wrong() {
        let cases = [
            ("/usr/bin/[", "a `[` class is not closed with `]`"),
            (
                "/usr/bin/[]a]",
                "a class is empty or has a `]` where a character goes",
            ),
            (
                "/usr/bin/[a-]",
                "a class is empty or has a `]` where a character goes",
            ),
            (
                "/usr/bin/[-a]",
                "a `-` in a class is not between two characters",
            ),
            ("/usr/bin/qemu\\", "it ends in a lone `\\`"),
        ];
        for (pattern, reason) in cases {
            let e = Glob::new(pattern).expect_err(pattern);
            assert!(
                e.to_string()
                    .starts_with(&format!("glob {pattern:?} is malformed: {reason}")),
                "{e}"
            );
        }
    }
}
