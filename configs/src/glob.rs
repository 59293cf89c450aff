//! `valid_hypervisor_paths` patterns: `glob(3)` as Go's `filepath.Match` reads them,
//! matched against a path as a string (Kata expands them on the host; we do not look).

/// Whether `path` matches the shell pattern `pattern` as Go's `filepath.Match` does: `*`
/// is any run of characters other than `/`, `?` one such character, `[...]` a class (`^`
/// negates), and `\` escapes. A malformed pattern matches nothing.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = path.chars().collect();
    glob_at(&p, &t).unwrap_or(false)
}

/// `None` when the pattern is malformed.
fn glob_at(p: &[char], t: &[char]) -> Option<bool> {
    let Some((&first, rest)) = p.split_first() else {
        return Some(t.is_empty());
    };
    match first {
        '*' => {
            // Try every split of the text up to the next `/`.
            let stop = t.iter().position(|&c| c == '/').unwrap_or(t.len());
            for i in 0..=stop {
                if glob_at(rest, &t[i..])? {
                    return Some(true);
                }
            }
            Some(false)
        }
        '?' => match t.split_first() {
            Some((&c, t_rest)) if c != '/' => glob_at(rest, t_rest),
            _ => Some(false),
        },
        '[' => {
            let (matched, after) = glob_class(rest, t.first().copied())?;
            if matched {
                glob_at(after, &t[1..])
            } else {
                Some(false)
            }
        }
        '\\' => {
            let (&c, after) = rest.split_first()?;
            match t.split_first() {
                Some((&tc, t_rest)) if tc == c => glob_at(after, t_rest),
                _ => Some(false),
            }
        }
        c => match t.split_first() {
            Some((&tc, t_rest)) if tc == c => glob_at(rest, t_rest),
            _ => Some(false),
        },
    }
}

/// Parses a class after `[`; returns whether `c` is in it and the pattern after `]`.
fn glob_class(p: &[char], c: Option<char>) -> Option<(bool, &[char])> {
    let mut i = 0;
    let negated = p.first() == Some(&'^');
    if negated {
        i += 1;
    }
    let mut found = false;
    let mut first = true;
    loop {
        let mut lo = *p.get(i)?;
        i += 1;
        if lo == ']' && !first {
            break;
        }
        first = false;
        if lo == '\\' {
            lo = *p.get(i)?;
            i += 1;
        }
        let mut hi = lo;
        if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&n| n != ']') {
            hi = *p.get(i + 1)?;
            i += 2;
            if hi == '\\' {
                hi = *p.get(i)?;
                i += 1;
            }
        }
        if let Some(c) = c {
            if lo <= c && c <= hi {
                found = true;
            }
        }
    }
    let in_class = c.is_some_and(|c| c != '/') && (found != negated);
    Some((in_class, &p[i..]))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ("/usr/bin/[", "/usr/bin/[", false),
            ("", "", true),
            ("", "/x", false),
        ];
        for (pattern, path, expected) in table {
            assert_eq!(
                glob_match(pattern, path),
                *expected,
                "{pattern:?} vs {path:?}"
            );
        }
    }
}
