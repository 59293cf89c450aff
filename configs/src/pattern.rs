//! `enable_annotations` patterns. Each entry is a Go regular expression (RE2 syntax) that
//! Kata searches for, unanchored, in an annotation's name after
//! `io.katacontainers.config.hypervisor.`: `regexp.MatchString(entry, name)` in
//! `checkAnnotationNameIsValid` (Kata's Go runtime, `src/runtime/pkg/oci/utils.go`), an entry Go
//! cannot compile allowing nothing. So the entry `path` allows `path`, `jailer_path` and
//! `vhost_user_store_path`. [`matching`] answers which of a few names an entry matches.
//!
//! The `regex` crate reads RE2 syntax with the same meaning as Go for what both accept,
//! including Unicode case folding under `(?i)` (`(?i)ſource` matches `entropy_source`, as
//! in Go; `regex-lite` folds ASCII only). Two things differ, and an entry using either is
//! answered "all of them", so that a caller removing such entries stays safe: a pattern
//! `regex` refuses (Go may accept it: `\Q…\E`, octal escapes), and a character class that
//! nests `[…]` or uses `&&`, `--` or `~~` (Go reads those as literal characters, `regex`
//! as set operations, so the two could disagree on what matches). Names are annotation
//! names (ASCII letters, digits, `.`, `_`, `-`), where `regex`'s Unicode `\w \d \s \b` and
//! Go's ASCII ones agree.
//!
//! `valid_hypervisor_paths` globs are in [`kata_gpu_fsutil::glob`].

use regex::{Regex, RegexBuilder};
use regex_syntax::ast::{self, ClassSetBinaryOp, ClassSetItem};

/// How much memory one compiled entry may take: far above any sensible entry, low enough
/// that a hostile one cannot slow rendering down (it is then answered "all of them").
const SIZE_LIMIT: usize = 1 << 20;

/// Whether the Go regular expression `pattern`, searched unanchored as Kata does, may match
/// any of `names`. `true` when it does, and also when the pattern is one this module cannot
/// read as Go does (see the module docs): the answer errs towards "may match".
pub fn may_match_any(pattern: &str, names: &[&str]) -> bool {
    !matching(pattern, names).is_empty()
}

/// The names among `names` that `pattern` matches (see [`may_match_any`]); all of them
/// when the pattern is beyond this module.
pub fn matching<'a>(pattern: &str, names: &[&'a str]) -> Vec<&'a str> {
    if is_literal(pattern) {
        // The common case, a plain name: an unanchored search is a substring test, and
        // it spares compiling a regular expression per entry on every render.
        return names
            .iter()
            .copied()
            .filter(|n| n.contains(pattern))
            .collect();
    }
    match compile(pattern) {
        Ok(re) => names.iter().copied().filter(|n| re.is_match(n)).collect(),
        Err(Unsupported) => names.to_vec(),
    }
}

/// Whether `pattern` is one this module reads as Go does (see [`may_match_any`]).
pub fn is_supported(pattern: &str) -> bool {
    is_literal(pattern) || compile(pattern).is_ok()
}

/// Whether `pattern` has no regular-expression syntax at all: letters, digits, `_`, `-`.
fn is_literal(pattern: &str) -> bool {
    pattern
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A pattern this module cannot read as Go does.
#[derive(Debug)]
struct Unsupported;

/// The pattern compiled, when `regex` accepts it and reads it as Go does.
fn compile(pattern: &str) -> Result<Regex, Unsupported> {
    let ast = ast::parse::Parser::new()
        .parse(pattern)
        .map_err(|_| Unsupported)?;
    ast::visit(&ast, GoClasses)?;
    RegexBuilder::new(pattern)
        .size_limit(SIZE_LIMIT)
        .build()
        .map_err(|_| Unsupported)
}

/// Refuses the character-class syntax that `regex` reads as set operations and Go as
/// literal characters: a nested `[…]` (`[:alpha:]` is parsed apart and passes) and the
/// `&&`, `--`, `~~` operators.
struct GoClasses;

impl ast::Visitor for GoClasses {
    type Output = ();
    type Err = Unsupported;

    fn finish(self) -> Result<(), Unsupported> {
        Ok(())
    }

    fn visit_class_set_item_pre(&mut self, item: &ClassSetItem) -> Result<(), Unsupported> {
        match item {
            ClassSetItem::Bracketed(_) => Err(Unsupported),
            _ => Ok(()),
        }
    }

    fn visit_class_set_binary_op_pre(&mut self, _op: &ClassSetBinaryOp) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &["path", "jailer_path", "kernel", "virtio_fs_daemon", "image"];

    #[test]
    fn regex_table() {
        // (pattern, names it matches)
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
            ("k.*?l$", &["kernel"]),
            // Beyond what Go and regex both read alike: answered "all of them".
            ("(unclosed", NAMES),
            ("x)", NAMES),
            ("*", NAMES),
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

    /// RE2 syntax as Go's `regexp` reads it (syntax from RE2's and Go's `regexp/syntax`
    /// documentation; each expected answer is what `regexp.MatchString(pattern, name)`
    /// gives). The hand-written matcher this module replaced answered "all of them" for
    /// every case marked `was all`: it did not read counted repetition, flags, `\b`,
    /// `\A`, `\z`, POSIX and Unicode classes, hex escapes or named groups, and it gave
    /// up (over its step budget) on nested stars.
    #[test]
    fn re2_table() {
        let names: &[&str] = &crate::annotations::HOST_PATH_ANNOTATIONS;
        // (pattern, names it matches)
        let table: &[(&str, &[&str])] = &[
            ("a{2}", &[]),                                                 // was all
            ("^.{4}$", &["path"]),                                         // was all
            ("^[a-z]{6,}$", &["ctlpath", "kernel", "initrd", "firmware"]), // was all
            (
                "_.{1,3}_",
                &[
                    "virtio_fs_daemon",
                    "virtio_fs_extra_args",
                    "file_mem_backend",
                ],
            ), // was all
            (
                "(?i)PATH",
                &["path", "ctlpath", "jailer_path", "vhost_user_store_path"],
            ), // was all
            ("(?i:KERNEL)$", &["kernel"]),                                 // was all
            // Unicode simple case folding, as Go's: KELVIN SIGN folds to k, LONG S to s.
            ("(?i)\u{212A}ernel", &["kernel"]),        // was all
            ("(?i)\u{17F}ource", &["entropy_source"]), // was all
            ("\u{212A}ernel", &[]),
            ("\\bpath", &["path"]), // was all
            (
                "\\Bpath",
                &["ctlpath", "jailer_path", "vhost_user_store_path"],
            ), // was all
            ("\\Akernel\\z", &["kernel"]), // was all
            ("[[:upper:]]", &[]),   // was all
            ("^[[:alpha:]_]+$", names), // was all
            ("[[:^alpha:]]v", &["firmware_volume"]), // was all
            (
                "^\\pL+$",
                &["path", "ctlpath", "kernel", "image", "initrd", "firmware"],
            ), // was all
            ("\\p{Greek}", &[]),    // was all
            ("\\x6bernel", &["kernel"]), // was all
            ("\\x{69}mage", &["image"]), // was all
            ("(?P<n>init)rd", &["initrd"]), // was all
            ("(?s)firm.are", &["firmware", "firmware_volume"]), // was all
            ("(?U)ima+", &["image"]), // was all
            ("^(a*)*(a*)*(a*)*(a*)*c$", &[]), // was all (step budget)
            ("\\d", &[]),
            ("[^a-z_]", &[]),
            ("\\.", &[]),
            ("ctl|jailer", &["ctlpath", "jailer_path"]),
            ("^(path|image)$", &["path", "image"]),
            ("^(|kernel)$", &["kernel"]),
            // Classes Go reads as literal characters and regex as set operations.
            ("[a-z--b]", names),
            ("[a-z&&[^p]]", names),
            ("[a~~b]", names),
            ("[[a]]", names),
            // Syntax Go accepts and regex refuses.
            ("\\Qa.b\\E", names),
            ("\\0", names),
        ];
        for (pattern, expected) in table {
            let expected: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| expected.contains(n))
                .collect();
            assert_eq!(matching(pattern, names), expected, "pattern {pattern:?}");
        }
    }

    #[test]
    fn unsupported_is_reported() {
        assert!(is_supported("default_(vcpus|memory)"));
        assert!(is_supported("a{2}"));
        assert!(is_supported("(?i)a"));
        assert!(is_supported("[[:alpha:]]"));
        assert!(!is_supported("(unclosed"));
        assert!(!is_supported("[a-z--b]"));
        assert!(!is_supported("[a[b]]"));
    }

    #[test]
    fn a_pattern_too_large_to_compile_is_answered_all() {
        // Over SIZE_LIMIT when compiled: "all of them", not a slow render.
        let huge = "(?:\\w{100}){100}";
        assert!(!is_supported(huge));
        assert_eq!(matching(huge, NAMES), NAMES.to_vec());
    }

    #[test]
    fn nested_stars_get_the_true_answer() {
        // The hand-written backtracker ran out of steps here and answered "may match".
        let names = ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"];
        assert!(!may_match_any("^(a*)*(a*)*(a*)*(a*)*c$", &names));
    }
}
