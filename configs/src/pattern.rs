//! `enable_annotations` patterns. Each entry is a Go regular expression that Kata searches
//! for, unanchored, in an annotation's name after `io.katacontainers.config.hypervisor.`
//! (`regexp.MatchString(entry, name)`): the entry `path` allows `path`, `jailer_path` and
//! `vhost_user_store_path`. [`matching`] answers which of a few names an entry can match.
//! It understands a subset of RE2 (literals, `.`, classes, `\d \w \s`, groups,
//! alternation, `* + ?`, anchors) and, for anything else, answers "all of them", so that a
//! caller removing such entries stays safe.
//!
//! `valid_hypervisor_paths` globs are in [`crate::glob`].

use std::cell::Cell;

/// Whether the Go regular expression `pattern`, searched unanchored as Kata does, may match
/// any of `names`. `true` when it does, and also when the pattern uses syntax this module
/// does not understand or the search grows too long: the answer errs towards "may match".
pub fn may_match_any(pattern: &str, names: &[&str]) -> bool {
    if is_literal(pattern) {
        return names.iter().any(|n| n.contains(pattern));
    }
    match parse(pattern) {
        Ok(alternatives) => names
            .iter()
            .any(|name| search(&alternatives, name).unwrap_or(true)),
        Err(Unsupported) => true,
    }
}

/// The names among `names` that `pattern` may match (see [`may_match_any`]); all of them
/// when the pattern is beyond this module.
pub fn matching<'a>(pattern: &str, names: &[&'a str]) -> Vec<&'a str> {
    if is_literal(pattern) {
        // The common case, a plain name: an unanchored search is a substring test.
        return names
            .iter()
            .copied()
            .filter(|n| n.contains(pattern))
            .collect();
    }
    match parse(pattern) {
        Ok(alternatives) => names
            .iter()
            .copied()
            .filter(|name| search(&alternatives, name).unwrap_or(true))
            .collect(),
        Err(Unsupported) => names.to_vec(),
    }
}

/// Whether `pattern` is one this module understands (see [`may_match_any`]).
pub fn is_supported(pattern: &str) -> bool {
    is_literal(pattern) || parse(pattern).is_ok()
}

/// Whether `pattern` has no regular-expression syntax at all: letters, digits, `_`, `-`.
fn is_literal(pattern: &str) -> bool {
    pattern
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Syntax beyond the subset understood here.
#[derive(Debug)]
struct Unsupported;

/// The search took more steps than allowed.
#[derive(Debug)]
struct Exhausted;

const STEP_BUDGET: u32 = 100_000;

#[derive(Debug)]
enum Node {
    /// One character from a set.
    Char(CharSet),
    /// A group of alternatives, each a sequence.
    Group(Vec<Vec<Node>>),
    /// `node{min,max}`; `max` `None` is unbounded.
    Repeat(Box<Node>, u32, Option<u32>),
    /// `^`: the start of the text.
    Start,
    /// `$`: the end of the text.
    End,
}

#[derive(Debug)]
enum CharSet {
    Any,
    Literal(char),
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl CharSet {
    fn contains(&self, c: char) -> bool {
        match self {
            CharSet::Any => c != '\n',
            CharSet::Literal(l) => *l == c,
            CharSet::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

struct Parser<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
}

fn parse(pattern: &str) -> Result<Vec<Vec<Node>>, Unsupported> {
    let mut p = Parser {
        chars: pattern.chars().peekable(),
    };
    let alternatives = p.alternatives()?;
    if p.chars.next().is_some() {
        // An unmatched `)`.
        return Err(Unsupported);
    }
    Ok(alternatives)
}

impl Parser<'_> {
    fn alternatives(&mut self) -> Result<Vec<Vec<Node>>, Unsupported> {
        let mut alternatives = vec![self.sequence()?];
        while self.chars.peek() == Some(&'|') {
            self.chars.next();
            alternatives.push(self.sequence()?);
        }
        Ok(alternatives)
    }

    fn sequence(&mut self) -> Result<Vec<Node>, Unsupported> {
        let mut nodes = Vec::new();
        while let Some(&c) = self.chars.peek() {
            if c == '|' || c == ')' {
                break;
            }
            self.chars.next();
            let atom = match c {
                '^' => Node::Start,
                '$' => Node::End,
                '.' => Node::Char(CharSet::Any),
                '[' => Node::Char(self.class()?),
                '(' => {
                    if self.chars.peek() == Some(&'?') {
                        self.chars.next();
                        // Only the non-capturing `(?:`; flags and names are beyond us.
                        if self.chars.next() != Some(':') {
                            return Err(Unsupported);
                        }
                    }
                    let group = self.alternatives()?;
                    if self.chars.next() != Some(')') {
                        return Err(Unsupported);
                    }
                    Node::Group(group)
                }
                '\\' => self.escape()?,
                '*' | '+' | '?' | '{' => return Err(Unsupported),
                c => Node::Char(CharSet::Literal(c)),
            };
            nodes.push(self.quantified(atom)?);
        }
        Ok(nodes)
    }

    fn quantified(&mut self, atom: Node) -> Result<Node, Unsupported> {
        let (min, max) = match self.chars.peek() {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            // Counted repetition is not understood.
            Some('{') => return Err(Unsupported),
            _ => return Ok(atom),
        };
        self.chars.next();
        if matches!(atom, Node::Start | Node::End) {
            return Err(Unsupported);
        }
        // A lazy quantifier matches the same texts; only the preferred match differs.
        if self.chars.peek() == Some(&'?') {
            self.chars.next();
        }
        if matches!(self.chars.peek(), Some('*' | '+' | '?' | '{')) {
            // Go rejects `a**`; an invalid pattern matches nothing in Kata, but err safe.
            return Err(Unsupported);
        }
        Ok(Node::Repeat(Box::new(atom), min, max))
    }

    fn escape(&mut self) -> Result<Node, Unsupported> {
        let c = self.chars.next().ok_or(Unsupported)?;
        Ok(Node::Char(match escape_set(c)? {
            Some(set) => set,
            None => CharSet::Literal(c),
        }))
    }

    fn class(&mut self) -> Result<CharSet, Unsupported> {
        let mut negated = false;
        if self.chars.peek() == Some(&'^') {
            self.chars.next();
            negated = true;
        }
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let c = self.chars.next().ok_or(Unsupported)?;
            if c == ']' && !first {
                break;
            }
            first = false;
            let lo = match c {
                '[' if self.chars.peek() == Some(&':') => return Err(Unsupported),
                '\\' => {
                    let e = self.chars.next().ok_or(Unsupported)?;
                    match escape_set(e)? {
                        Some(CharSet::Class {
                            negated: false,
                            ranges: r,
                        }) => {
                            ranges.extend(r);
                            continue;
                        }
                        Some(_) => return Err(Unsupported),
                        None => e,
                    }
                }
                c => c,
            };
            if self.chars.peek() == Some(&'-') {
                self.chars.next();
                match self.chars.peek() {
                    Some(']') => {
                        ranges.push((lo, lo));
                        ranges.push(('-', '-'));
                        continue;
                    }
                    Some(_) => {
                        let hi = match self.chars.next().ok_or(Unsupported)? {
                            '\\' => {
                                let e = self.chars.next().ok_or(Unsupported)?;
                                if escape_set(e)?.is_some() {
                                    return Err(Unsupported);
                                }
                                e
                            }
                            '[' => return Err(Unsupported),
                            h => h,
                        };
                        if hi < lo {
                            return Err(Unsupported);
                        }
                        ranges.push((lo, hi));
                    }
                    None => return Err(Unsupported),
                }
            } else {
                ranges.push((lo, lo));
            }
        }
        Ok(CharSet::Class { negated, ranges })
    }
}

/// The set a `\x` escape stands for: `Some` for a class, `None` for the literal `x`.
fn escape_set(c: char) -> Result<Option<CharSet>, Unsupported> {
    let class = |negated, ranges: &[(char, char)]| {
        Ok(Some(CharSet::Class {
            negated,
            ranges: ranges.to_vec(),
        }))
    };
    const DIGIT: &[(char, char)] = &[('0', '9')];
    const WORD: &[(char, char)] = &[('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')];
    const SPACE: &[(char, char)] = &[('\t', '\n'), ('\x0c', '\r'), (' ', ' ')];
    match c {
        'd' => class(false, DIGIT),
        'D' => class(true, DIGIT),
        'w' => class(false, WORD),
        'W' => class(true, WORD),
        's' => class(false, SPACE),
        'S' => class(true, SPACE),
        c if c.is_ascii_punctuation() => Ok(None),
        // `\b`, `\A`, `\pL`, `\x41`, ... are beyond this module.
        _ => Err(Unsupported),
    }
}

struct Search<'a> {
    text: &'a [char],
    steps: Cell<u32>,
}

type Step = Result<bool, Exhausted>;

fn search(alternatives: &[Vec<Node>], name: &str) -> Result<bool, Exhausted> {
    let text: Vec<char> = name.chars().collect();
    let s = Search {
        text: &text,
        steps: Cell::new(0),
    };
    for start in 0..=text.len() {
        for alternative in alternatives {
            if s.sequence(alternative, start, &mut |_| Ok(true))? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

impl Search<'_> {
    fn tick(&self) -> Result<(), Exhausted> {
        let n = self.steps.get() + 1;
        self.steps.set(n);
        if n > STEP_BUDGET {
            Err(Exhausted)
        } else {
            Ok(())
        }
    }

    /// Matches `nodes` from `pos`, then calls `k` with the position after them.
    fn sequence(&self, nodes: &[Node], pos: usize, k: &mut dyn FnMut(usize) -> Step) -> Step {
        self.tick()?;
        let Some((first, rest)) = nodes.split_first() else {
            return k(pos);
        };
        match first {
            Node::Char(set) => match self.text.get(pos) {
                Some(&c) if set.contains(c) => self.sequence(rest, pos + 1, k),
                _ => Ok(false),
            },
            Node::Start if pos == 0 => self.sequence(rest, pos, k),
            Node::End if pos == self.text.len() => self.sequence(rest, pos, k),
            Node::Start | Node::End => Ok(false),
            Node::Group(alternatives) => {
                for alternative in alternatives {
                    if self.sequence(alternative, pos, &mut |p| self.sequence(rest, p, k))? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Node::Repeat(node, min, max) => self.repeat(node, *min, *max, 0, pos, rest, k),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn repeat(
        &self,
        node: &Node,
        min: u32,
        max: Option<u32>,
        count: u32,
        pos: usize,
        rest: &[Node],
        k: &mut dyn FnMut(usize) -> Step,
    ) -> Step {
        self.tick()?;
        if max.is_none_or(|m| count < m) {
            let more = self.sequence(std::slice::from_ref(node), pos, &mut |p| {
                if p == pos {
                    // An empty iteration can repeat as often as still required.
                    self.sequence(rest, p, k)
                } else {
                    self.repeat(node, min, max, count + 1, p, rest, k)
                }
            })?;
            if more {
                return Ok(true);
            }
        }
        if count >= min {
            self.sequence(rest, pos, k)
        } else {
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &["path", "jailer_path", "kernel", "virtio_fs_daemon", "image"];

    #[test]
    fn regex_table() {
        // (pattern, names it may match)
        let table: &[(&str, &[&str])] = &[
            ("kernel_params", &[]),
            ("kernel", &["kernel"]),
            ("path", &["path", "jailer_path"]),
            ("^path$", &["path"]),
            ("^kernel_params$", &[]),
            (".*", NAMES),
            ("", NAMES),
            ("default_.*", &[]),
            ("default_(vcpus|memory)", &[]),
            ("virtio_fs", &["virtio_fs_daemon"]),
            ("^virtio_fs_(cache|cache_size)$", &[]),
            ("^(?:image|initrd)$", &["image"]),
            ("ima?ge", &["image"]),
            ("i[a-m]age", &["image"]),
            ("i[^m]age", &[]),
            ("[pk]", &["path", "jailer_path", "kernel"]),
            ("\\w+_path", &["jailer_path"]),
            ("^\\w+$", NAMES),
            ("enable_iommu", &[]),
            ("(a*)*x", &[]),
            ("(a?)+$", NAMES),
            ("^$", &[]),
            ("a{2}", NAMES),
            ("(?i)PATH", NAMES),
            ("\\bpath", NAMES),
            ("[[:alpha:]]", NAMES),
            ("(unclosed", NAMES),
            ("x)", NAMES),
            ("*", NAMES),
            ("k.*?l$", &["kernel"]),
        ];
        for (pattern, expected) in table {
            assert_eq!(
                matching(pattern, NAMES),
                expected.to_vec(),
                "pattern {pattern:?}"
            );
            assert_eq!(may_match_any(pattern, NAMES), !expected.is_empty());
        }
    }

    #[test]
    fn unsupported_is_reported() {
        assert!(is_supported("default_(vcpus|memory)"));
        assert!(!is_supported("a{2}"));
        assert!(!is_supported("(?i)a"));
    }

    #[test]
    fn nested_stars_stay_bounded() {
        // Catastrophic backtracking ends (in "may match" once over budget), never hangs.
        // The true answer is "no"; "may match" is the safe side.
        let names = ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"];
        let _ = may_match_any("^(a*)*(a*)*(a*)*(a*)*c$", &names);
    }
}
